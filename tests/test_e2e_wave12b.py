"""Wave 12 hardening follow-ups (h12-e2e12b): ``sbi-core sample --quiet``, bool observations,
padded sets in the streaming fit, score-based log_prob on a non-box support."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from sbi_core.cli.main import main


@pytest.fixture(scope="module")
def nle_model(tmp_path_factory):
    """A small NLE model file (its sampling runs MCMC, which has a progress bar)."""
    d = tmp_path_factory.mktemp("nle")
    sims, model = d / "sims.pt", d / "m.pt"
    assert main(["simulate", "linear_gaussian", "--num", "300", "--seed", "0", "--out",
                 str(sims), "--quiet"]) == 0
    assert main(["train", "--sims", str(sims), "--out", str(model), "--method", "nle",
                 "--max-epochs", "2", "--quiet"]) == 0
    xfile = d / "x.csv"
    xfile.write_text("x1,x2\n0.1,0.2\n")
    return model, xfile


def test_sample_quiet_hides_mcmc_bar(nle_model, tmp_path, capsys, monkeypatch):
    model, xfile = nle_model
    monkeypatch.setenv("SBI_CORE_PROGRESS", "1")  # a bar even off a terminal ...
    args = ["sample", str(model), "--x", str(xfile), "--num", "20", "--out",
            str(tmp_path / "s.csv"), "--num-chains", "2", "--warmup-steps", "5"]
    capsys.readouterr()
    assert main(args) == 0
    assert "step" in capsys.readouterr().err  # ... shown without --quiet
    assert main(args + ["--force", "--quiet"]) == 0  # ... hidden with it
    captured = capsys.readouterr()
    assert "step" not in captured.err and "%|" not in captured.err
    assert json.loads(captured.out.strip().splitlines()[-1])["observations"] == 1
    import os
    assert os.environ["SBI_CORE_PROGRESS"] == "1"  # restored afterwards


def test_sample_help_lists_quiet(capsys):
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    assert "--quiet" in capsys.readouterr().out


# ------------------------------------------------------------------ bool observations
@pytest.mark.parametrize("make", [
    lambda: torch.tensor([True, False]),
    lambda: np.array([True, False]),
    lambda: [True, False],
    lambda: [[0.1, 0.2], [True, 0.3]],
])
def test_bool_observation_is_refused(trained_npe, make):
    from sbi_core.posterior import ObservationError

    x = make()
    for call in (lambda: trained_npe.sample((5,), x=x),
                 lambda: trained_npe.log_prob(torch.zeros(1, 2), x=x)):
        with pytest.raises(ObservationError, match=r"booleans \(dtype .*bool.*\.float\(\)"):
            call()
    # the same values as numbers are accepted
    assert trained_npe.sample((5,), x=torch.tensor([1.0, 0.0])).shape == (5, 2)


def test_bool_observation_files_are_refused(tmp_path):
    from sbi_core.io import read_observations

    np.save(tmp_path / "x.npy", np.array([True, False]))
    with pytest.raises(ValueError, match=r"booleans \(dtype bool\).*astype"):
        read_observations(tmp_path / "x.npy", (2,))
    (tmp_path / "x.json").write_text('{"x": [true, 0.5]}')
    with pytest.raises(ValueError, match="JSON booleans"):
        read_observations(tmp_path / "x.json", (2,))
    (tmp_path / "x.csv").write_text("x1,x2\nTrue,False\n")
    with pytest.raises(ValueError, match="non-numeric value 'True'"):
        read_observations(tmp_path / "x.csv", (2,))
    (tmp_path / "ok.json").write_text('{"x": [1, 0.5]}')
    assert read_observations(tmp_path / "ok.json", (2,)).tolist() == [[1.0, 0.5]]


def test_server_refuses_json_booleans():
    from sbi_core.server.schemas import InputError, to_tensor

    with pytest.raises(InputError, match=r"x\[1\] is a boolean"):
        to_tensor([0.1, True], "x", 100)


# ------------------------------------------------------------------ padded sets, streaming
def trials_3_to_10(theta: torch.Tensor) -> torch.Tensor:
    """theta (N, 1) -> x (N, 10, 1): 3 to 10 trials x_i ~ N(theta, 1), then all-NaN padding."""
    x = theta[:, None, :] + torch.randn(len(theta), 10, 1)
    k = torch.randint(3, 11, (len(theta),))
    x[torch.arange(10)[None, :] >= k[:, None]] = float("nan")
    return x


def test_streaming_fit_trains_on_padded_sets_as_fit_in_memory(tmp_path):
    pytest.importorskip("zarr")
    from sbi_core import Problem, fit, gaussian, simulate
    from sbi_core.streaming import StoreBatches

    problem = Problem(gaussian([0.0], std=[1.0]), trials_3_to_10, param_names=["mu"],
                      x_shape=(10, 1))
    store = tmp_path / "sims.zarr"
    simulate(problem, 1000, seed=0, progress=False, store=store, chunk_size=100)
    with pytest.warns(UserWarning, match="Excluding 8"):  # without the embedding: invalid
        assert StoreBatches(store).num_train < 200
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # was: "Excluding 880 of 1000 invalid ..."
        warnings.filterwarnings("ignore", "Reached max_epochs")
        post = fit(problem, str(store), streaming=True, embedding="set", max_epochs=30,
                   progress=False, detector=False)
    assert post.history["num_train"] + post.history["num_validation"] == 1000
    x_o = torch.full((10, 1), float("nan"))
    x_o[:5, 0] = torch.tensor([0.8, 1.2, 0.5, 1.5, 1.0])  # 5 trials: N(5/6, 1/6) exactly
    samples = post.sample((2000,), x=x_o, seed=0)
    assert abs(float(samples.mean()) - 5 / 6) < 0.15 and abs(float(samples.std()) - 6**-0.5) < 0.1


# ------------------------------------------------------------------ score log_prob, non-box
@pytest.mark.parametrize("method", ["fmpe"])
def test_score_log_prob_is_renormalized_on_a_non_box_support(method):
    from test_e2e_wave12 import Triangle  # a ~ U(0, 1), b | a ~ U(0, a); no support

    from sbi_core import Problem, fit, simulate

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        problem = Problem(Triangle(), lambda t: t + 0.2 * torch.randn_like(t),
                          param_names=["a", "b"], x_shape=(2,))
        post = fit(problem, simulate(problem, 1000, seed=0, progress=False), method=method,
                   max_epochs=30, detector=False, progress=False)
    x_o = torch.tensor([0.5, 0.6])  # b > a: much of the likelihood lies outside the support
    g = (torch.arange(30) + 0.5) / 30  # midpoint grid of the unit square (holds the support)
    grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    raw = post.log_prob(grid, x=x_o, normalize=False).exp().sum() / 30**2
    rate = float(post.acceptance_rate(x_o[None])[0])
    integral = float(post.log_prob(grid, x=x_o).exp().sum() / 30**2)
    assert float(raw) < 0.95 and rate < 0.95  # the raw density leaks (was log_prob: 0.87)
    assert abs(float(raw) / rate - integral) < 1e-3 * integral  # log_prob = raw / rate
    assert abs(integral - 1.0) < 0.05, integral
