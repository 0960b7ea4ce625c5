"""End-to-end probes of wave 8 (own problems pushed through the whole path): each test pins a
problem a user met (a misleading message or a silently wrong result) and its fix."""
from __future__ import annotations

import pytest
import torch
from torch.distributions import Independent, Uniform

from sbi_core import Problem, fit, simulate
from sbi_core.posterior import ObservationError


def _channels(theta: torch.Tensor) -> torch.Tensor:
    """theta (N, 2) -> (N, 2 channels, 3 steps)."""
    steps = torch.arange(3.0)
    c0 = theta[:, :1] * steps
    c1 = theta[:, 1:] + 0 * steps
    return torch.stack([c0, c1], 1) + 0.1 * torch.randn(len(theta), 2, 3)


def _problem(names: list[str] | None, name: str) -> Problem:
    prior = Independent(Uniform(torch.zeros(2), torch.ones(2)), 1)
    return Problem(prior, _channels, param_names=names, name=name, x_shape=(2, 3))


@pytest.fixture(scope="module")
def channel_posterior():
    problem = _problem(["slope", "level"], "channels")
    sims = simulate(problem, 600, seed=0, progress=False)
    post = fit(problem, sims, seed=0, progress=False, max_epochs=2, hidden_features=16,
               num_transforms=1)
    return problem, post


def test_range_error_names_coordinates_of_a_2d_observation(channel_posterior):
    """A (2, 3) x beyond the training range in channel 1 was reported as flattened
    'dimension(s) [3, 4, 5]', and only the first 10 of many; now x[1, j] with the value and
    the training range, and the count."""
    _, post = channel_posterior
    x = torch.tensor([[0.0, 0.5, 1.0], [9.0, 9.0, 9.0]])
    with pytest.raises(ObservationError) as err:
        post.sample((5,), x=x)
    msg = str(err.value)
    assert "3 coordinate(s)" in msg
    assert "x[1, 0] = 9 (training [" in msg and "x[1, 2]" in msg
    assert "dimension(s) [3" not in msg


def test_diagnose_refuses_a_problem_with_other_parameters(channel_posterior):
    """diagnose(posterior, other_problem) with the same shapes but other parameters ran and
    printed a confident FAIL about a model that may be fine; now a clear error naming both."""
    from diagnostics.report import diagnose

    _, post = channel_posterior
    other = _problem(["a", "b"], "other")
    with pytest.raises(ValueError, match=r"\['a', 'b'\].*trained on 'channels'.*\['slope', "
                                         r"'level'\]"):
        diagnose(post, other, num=20, num_samples=20, checks=["sbc"], progress=False)


def test_diagnose_takes_checks_as_a_string(channel_posterior):
    """checks="sbc" was read letter by letter: "Unknown check(s) ['s', 'b', 'c']"."""
    from diagnostics.report import diagnose

    problem, post = channel_posterior
    report = diagnose(post, problem, num=20, num_samples=20, checks="sbc", progress=False)
    assert list(report.sections) == ["sbc"]
    with pytest.raises(ValueError, match=r"Unknown check\(s\) \['nope'\]"):
        diagnose(post, problem, num=20, num_samples=20, checks="sbc,nope", progress=False)


def test_cli_simulate_interrupted_into_a_file_gives_the_cli_fix(tmp_path, capsys, monkeypatch):
    """Ctrl-C of `sbi-core simulate --out sims.pt` said 'pass store=PATH.zarr, then
    resume=True' (Python words) and not that the finished chunks are lost; now it says so and
    gives --out PATH.zarr / --resume."""
    from sbi_core.cli.main import main

    (tmp_path / "stopper.py").write_text(
        "import torch\n"
        "from sbi_core import Problem, box_uniform\n"
        "calls = [0]\n"
        "def sim(theta):\n"
        "    calls[0] += 1\n"
        "    if calls[0] == 3:\n"
        "        raise KeyboardInterrupt\n"
        "    return theta + 0.1\n"
        "def make():\n"
        "    return Problem(box_uniform([0.0], [1.0]), sim, x_shape=(1,))\n")
    monkeypatch.chdir(tmp_path)
    code = main(["simulate", "stopper.py:make", "--num", "30", "--chunk-size", "10",
                 "--in-process", "--quiet", "--out", "sims.pt"])
    err = capsys.readouterr().err
    assert code == 130
    assert "1 of 3 chunks were done" in err and "they are lost" in err
    assert "--out PATH.zarr" in err and "--resume" in err and "store=PATH.zarr" not in err
    assert not (tmp_path / "sims.pt").exists()


def test_server_shape_error_names_the_xs_field(channel_posterior):
    """POST sample with x = [one observation] wrapped in a list answered 'use sample_batched'
    (a Python method a client cannot call); now it names the request field 'xs'."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from sbi_core.server import create_app

    _, post = channel_posterior
    client = TestClient(create_app({"m": post}))
    one = [[0.0, 0.5, 1.0], [0.5, 0.5, 0.5]]
    r = client.post("/api/models/m/sample", json={"x": [one], "n": 3, "seed": 0})
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert "sample_batched" not in detail and "'xs'" in detail and "(2, 3)" in detail
    ok = client.post("/api/models/m/sample", json={"xs": [one], "n": 3, "seed": 0})
    assert ok.status_code == 200 and len(ok.json()["samples"]) == 1


def test_theta_csv_with_a_typo_in_its_first_row_is_not_called_a_header(tmp_path):
    """`--theta` CSV whose first data row holds a typo ('2,0.2,abc') was read as a header and
    reported as 'has columns ['2', '0.2', 'abc']'; a ';'-separated file got no hint either."""
    from sbi_core.cli.simulate_cmd import read_theta_file

    names = ["omega", "zeta", "x0"]
    typo = tmp_path / "typo.csv"
    typo.write_text("2,0.2,abc\n1,0.1,1\n")
    with pytest.raises(ValueError, match=r"mixes numbers with \['abc'\].*neither a header"):
        read_theta_file(typo, names)
    semi = tmp_path / "semi.csv"
    semi.write_text("2;0.2;1\n")
    with pytest.raises(ValueError, match="Separate values with commas"):
        read_theta_file(semi, names)
    good = tmp_path / "good.csv"
    good.write_text("omega,zeta,x0\n2,0.2,1\n")
    assert read_theta_file(good, names).tolist() == [[2.0, 0.2, 1.0]]


def test_loading_a_simulation_file_or_store_as_a_model_says_what_it_is(tmp_path):
    """`sbi-core sample sims.zarr ...` said 'No model file at sims.zarr' (it exists) and a
    simulation .pt 'is not an sbi-core model file'; now both name what they are and the fix."""
    from sbi_core import load
    from sbi_core.serialization import ModelFileError

    problem = _problem(["slope", "level"], "channels")
    sims = simulate(problem, 20, seed=0, progress=False)
    sims.save(tmp_path / "sims.pt")
    with pytest.raises(ModelFileError, match=r"is a simulation file.*sbi-core train --sims"):
        load(tmp_path / "sims.pt")
    (tmp_path / "sims.zarr").mkdir()
    with pytest.raises(ModelFileError, match=r"is a folder \(a simulation store\?\)"):
        load(tmp_path / "sims.zarr")
    with pytest.raises(ModelFileError, match="No model file at"):
        load(tmp_path / "missing.pt")


def test_cli_robustness_refuses_a_problem_with_other_parameters(channel_posterior, tmp_path,
                                                                 capsys, monkeypatch):
    """`sbi-core robustness model.pt --problem other.py:make` ran on another problem of the
    same shapes and reported 'clean coverage 0.00 ... fail'; now a one-line error."""
    from sbi_core import save
    from sbi_core.cli.main import main

    _, post = channel_posterior
    save(post, tmp_path / "model.pt")
    (tmp_path / "other.py").write_text(
        "import torch\n"
        "from sbi_core import Problem, box_uniform\n"
        "def make():\n"
        "    return Problem(box_uniform([0.0, 0.0], [1.0, 1.0]),\n"
        "                   lambda t: t[:, :, None].expand(-1, 2, 3) + 0.0,\n"
        "                   param_names=['a', 'b'], name='other', x_shape=(2, 3))\n")
    monkeypatch.chdir(tmp_path)
    code = main(["robustness", "model.pt", "--problem", "other.py:make", "--num", "5",
                 "--eps", "0.1", "--steps", "2", "--no-predictive"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "given to robustness ('other') has parameters ['a', 'b']" in err


def test_misspecification_check_reports_an_out_of_range_observation(channel_posterior):
    """diagnose(..., observations=x) with x beyond the training range: the check 'raised
    ObservationError' (advising `sbi-core sample --range-check`) instead of reporting it; now
    a failed section naming the coordinates, with the tests' p-values."""
    from diagnostics.report import diagnose

    _, post = channel_posterior
    far = torch.tensor([[0.0, 0.5, 1.0], [9.0, 9.0, 9.0]])
    report = diagnose(post, checks=["misspecification"], observations=far[None],
                      progress=False)
    section = report.sections["misspecification"]
    assert section["status"] == "fail"
    assert "raised" not in section["why"] and "--range-check" not in section["why"]
    assert "x[1, 0] = 9" in section["why"]
    assert section["metrics"]["outside_training_range"].startswith("3 coordinate(s)")
    assert post.range_check == "error"  # restored
    inside = torch.tensor([[0.0, 0.5, 1.0], [0.5, 0.5, 0.5]])
    assert post.outside_training_range(inside) is None


def test_cli_diagnose_x_with_nan_is_a_bad_input(channel_posterior, tmp_path, capsys):
    """`sbi-core diagnose MODEL --x obs.npy` with NaN printed a FAIL report card ('the check
    raised ObservationError'); now a one-line error naming the row, exit 2."""
    import numpy as np

    from sbi_core import save
    from sbi_core.cli.main import main

    _, post = channel_posterior
    save(post, tmp_path / "model.pt")
    obs = np.array([[[0.0, 0.5, 1.0], [0.5, 0.5, 0.5]], [[0.0, 0.5, 1.0], [np.nan, 0.5, 0.5]]])
    np.save(tmp_path / "obs.npy", obs)
    code = main(["diagnose", str(tmp_path / "model.pt"), "--x", str(tmp_path / "obs.npy"),
                 "--checks", "misspecification", "--quiet", "--out", str(tmp_path / "d")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "NaN or inf in 1 row(s) (first: row 1" in err


def test_cli_embedding_errors_use_command_line_words(channel_posterior, tmp_path):
    """`sbi-core sample model.pt --embedding f.py:fn` on a model without a user embedding said
    'load(..., embedding=...) was given ... load it without embedding=.'; now '--embedding'."""
    from sbi_core import save
    from sbi_core.serialization import ModelFileError, load_model

    _, post = channel_posterior
    save(post, tmp_path / "model.pt")
    with pytest.raises(ModelFileError) as err:
        load_model(tmp_path / "model.pt", embedding=lambda: torch.nn.Flatten())
    assert "--embedding was given" in str(err.value)
    assert "leave out --embedding" in str(err.value) and "load(" not in str(err.value)


def test_fit_refuses_simulations_of_a_problem_with_other_parameters(tmp_path):
    """`sbi-core train --sims osc.zarr --problem other.py:make` (same shapes, other parameter
    names) trained a posterior under the wrong prior with at most a support warning; the
    simulations now record their parameter names (file and store) and fit stops."""
    problem = _problem(["slope", "level"], "channels")
    sims = simulate(problem, 30, seed=0, progress=False)
    assert sims.provenance["param_names"] == ["slope", "level"]
    other = _problem(["a", "b"], "other")
    with pytest.raises(ValueError, match=r"made by problem 'channels' with parameters "
                                         r"\['slope', 'level'\].*'other'"):
        fit(other, sims, max_epochs=1, progress=False, detector=False)
    pytest.importorskip("zarr")
    simulate(problem, 30, seed=0, progress=False, store=str(tmp_path / "s.zarr"), chunk_size=10)
    with pytest.raises(ValueError, match="made by problem 'channels'"):
        fit(other, str(tmp_path / "s.zarr"), max_epochs=1, progress=False, detector=False)
    from sbi_core.streaming import fit_streaming

    with pytest.raises(ValueError, match="made by problem 'channels'"):  # streaming too
        fit_streaming(other, str(tmp_path / "s.zarr"), max_epochs=1)
    unnamed = _problem(None, "unnamed")  # default names theta_1.. are not compared
    fit(unnamed, sims, max_epochs=1, progress=False, detector=False)


def test_range_warning_does_not_advise_the_mode_already_set(channel_posterior):
    """With range_check='warn' the warning still said "pass range_check='warn' ... to proceed"."""
    _, post = channel_posterior
    x = torch.tensor([[0.0, 0.5, 1.0], [9.0, 9.0, 9.0]])
    post.range_check = "warn"
    try:
        with pytest.warns(UserWarning, match="outside the range") as record:
            post.sample((5,), x=x, seed=0)
    finally:
        post.range_check = "error"
    text = " ".join(str(w.message) for w in record if "outside the range" in str(w.message))
    assert "range_check='warn'" not in text and "range_check='off' silences" in text


def test_nan_in_one_of_several_observations_names_the_row():
    """sample_batched with NaN in one row of several says which row (a CSV of many
    observations would otherwise leave the user searching)."""
    import simulators

    problem = simulators.get_problem("linear_gaussian")
    post = fit(problem, simulate(problem, 200, seed=0, progress=False), max_epochs=1,
               progress=False, detector=False)
    xs = problem.observation(1).repeat(4, 1)
    xs[2, 0] = float("nan")
    with pytest.raises(ObservationError, match=r"NaN or inf \(in 1 of 4 rows; first: row 2"):
        post.sample_batched((5,), xs)
    with pytest.raises(ObservationError, match=r"contains NaN or inf\. Remove"):
        post.sample((5,), x=xs[2])  # one observation: no row to name


def test_sequential_run_warns_about_invalid_simulations_once():
    """A simulator that fails in part of the prior: round 1 warns that the failed rows are
    excluded; later rounds that add no failures no longer repeat it (the count is in the
    progress line and the history)."""
    import warnings

    from sbi_core import run_sequential

    def sim(theta):
        x = theta + 0.1 * torch.randn_like(theta)
        x[theta[:, 0] > 2.5] = float("nan")
        return x

    problem = Problem(Independent(Uniform(-3 * torch.ones(2), 3 * torch.ones(2)), 1), sim,
                      name="fails_right")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, history = run_sequential(problem, -2 * torch.ones(2), rounds=3,
                                    sims_per_round=500, seed=0, progress=False, max_epochs=30,
                                    hidden_features=16, num_transforms=2)
    failing = [h.round for h in history if h.num_invalid > 0]
    assert failing[:1] == [1] and len(failing) < len(history)  # some round added none
    excluded = [w for w in caught if "invalid simulations" in str(w.message)]
    assert len(excluded) == len(failing) and "Excluding" in str(excluded[0].message)
