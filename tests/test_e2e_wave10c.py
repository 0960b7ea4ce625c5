"""End-to-end probes of wave 10 (c): leftovers met by end-to-end sweeps (labels of sequential
models, CLI wording of messages, strict integers in the server, ``diagnose(x=)`` feeding the
misspecification check, the ArviZ layout of MCMC draws); each test pins one fix."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch.distributions import Independent, Uniform

from diagnostics import diagnose
from sbi_core import Problem


def _sim1(theta: torch.Tensor) -> torch.Tensor:
    """theta (N, 1) -> x (N, 1)."""
    return theta + 0.2 * torch.randn_like(theta)


def _problem() -> Problem:
    prior = Independent(Uniform(torch.full((1,), -2.0), torch.full((1,), 2.0)), 1)
    return Problem(prior, _sim1, param_names=["m"], name="one", x_shape=(1,))


@pytest.fixture(scope="module")
def seq_post():
    """A tiny TSNPE posterior (2 rounds x 100 simulations) trained for x_o = 0.3."""
    from sbi_core.sequential import run_sequential

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        res = run_sequential(_problem(), torch.tensor([0.3]), method="tsnpe", rounds=2,
                             sims_per_round=100, seed=0, progress=False, max_epochs=2,
                             hidden_features=8, num_transforms=1)
    return res.posterior


def test_sequential_model_is_labelled_by_its_sequential_method(seq_post):
    """A `sbi-core run` / run_sequential model was labelled 'npe' in the report card header
    and in the ArviZ attributes; now both name the sequential method and that it is for x_o."""
    assert seq_post.method == "npe"  # the estimator's registry name is unchanged (loading)
    assert seq_post.method_label == "tsnpe (sequential, for one x_o; estimator npe)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        report = diagnose(seq_post, _problem(), num=20, num_samples=30, progress=False,
                          checks=["coverage"])
    assert report.summary().startswith("Report card (tsnpe (sequential, for one x_o")
    pytest.importorskip("arviz")
    idata = seq_post.to_inference_data(torch.tensor([0.3]), num=20)
    assert idata.posterior.attrs["sbi_core_method"].startswith("tsnpe (sequential")
    assert idata.posterior.attrs["sbi_core_estimator"] == "npe"


def test_invalid_rows_warning_names_what_a_cli_user_can_inspect():
    """During `sbi-core run` the warning about excluded invalid simulations said only
    'inspect sims.valid' (a Python name); it now also says where a CLI user finds them."""
    from sbi_core.simulation_set import SimulationSet

    x = torch.zeros(6, 1)
    x[2] = float("nan")
    sims = SimulationSet(torch.zeros(6, 1), x, torch.isfinite(x).all(-1), {})
    with pytest.warns(UserWarning, match=r"sims\.valid \(CLI: the `valid` array of the "
                      r"simulation file, or of the zarr store of `sbi-core run --store`\)"):
        sims.training_data()


def test_missing_detector_skip_names_the_cli_way(seq_post):
    """`sbi-core diagnose MODEL --x obs.csv` on a model without a detector said only 'train one
    with posterior.fit_detector(sims)'; it now also says what the command line offers."""
    from diagnostics.misspecification_check import misspecification_section

    sec = misspecification_section(seq_post, torch.tensor([[0.3]]))
    assert sec["status"] == "skip"
    assert "posterior.fit_detector(sims)" in sec["why"]
    assert "(CLI: `sbi-core train` trains one with the model" in sec["why"]


@pytest.fixture(scope="module")
def client():
    from fastapi.testclient import TestClient
    from serve_helpers import tiny_posterior

    from sbi_core.server import create_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = tiny_posterior(num=300, epochs=2)  # under 500: no detector to train
    return TestClient(create_app({"m": post}))


@pytest.mark.parametrize("endpoint,body,field", [
    ("sample", {"n": True}, "n"),
    ("sample", {"n": 2.5}, "n"),
    ("sample", {"n": 3, "seed": False}, "seed"),
    ("summary", {"n": 20.0}, "n"),
    ("map", {"steps": True}, "steps"),
    ("map", {"num_init": 1.0}, "num_init"),
    ("sample", {"n": 3, "mcmc": {"num_chains": True}}, "num_chains"),
])
def test_server_integer_fields_refuse_booleans_and_floats(client, endpoint, body, field):
    """The server read `"n": true` as n = 1 (pydantic's lax mode); integer fields are strict
    now: a boolean or a decimal number is a 422 whose loc names the field."""
    r = client.post(f"/api/models/m/{endpoint}", json={"x": [0.0, 0.0], **body})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"][-1] == field
    ok = client.post("/api/models/m/sample", json={"x": [0.0, 0.0], "n": 3, "seed": 1})
    assert ok.status_code == 200 and len(ok.json()["samples"]) == 3


def test_diagnose_x_feeds_the_misspecification_check():
    """`sbi-core diagnose MODEL --x obs.csv` tests the observation for misspecification, but
    `diagnose(posterior, x=x_o)` in Python skipped it ('no observation was given ...
    observations=x_o'); x= now feeds it as the CLI's --x does."""
    from sbi_core import fit, simulate

    problem = _problem()
    sims = simulate(problem, 500, seed=0, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        post = fit(problem, sims, seed=0, progress=False, max_epochs=2, hidden_features=8,
                   num_transforms=1)
    assert post.detector is not None
    far = torch.tensor([[9.0]])  # far beyond x's training range (about -2.5 .. 2.5)
    report = diagnose(post, x=far, checks=["misspecification"], progress=False)
    sec = report.sections["misspecification"]
    assert sec["status"] == "fail", sec["why"]
    assert sec["metrics"]["num_observations"] == 1


def test_mcmc_export_has_no_more_chains_than_draws():
    """`sbi-core sample NLE_MODEL --num 100 --out s.nc` wrote 100 chains x 10 draws and ArviZ
    warned 'More chains (100) than draws (10)'. Without num_chains the export now runs
    max(4, isqrt(num)) chains (10 x 10 here, real chains, never joined); an explicit
    num_chains is kept as asked, without the misleading warning."""
    pytest.importorskip("arviz")
    from sbi_core import fit, simulate

    problem = _problem()
    sims = simulate(problem, 200, seed=0, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        nle = fit(problem, sims, method="nle", seed=0, progress=False, max_epochs=2,
                  detector=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        idata = nle.to_inference_data(torch.tensor([0.3]), num=100, warmup_steps=5)
        asked = nle.to_inference_data(torch.tensor([0.3]), num=40, num_chains=20,
                                      warmup_steps=5)
    assert dict(idata.posterior.sizes) == {"chain": 10, "draw": 10}
    assert idata.posterior.attrs["num_chains"] == 10
    assert dict(asked.posterior.sizes) == {"chain": 20, "draw": 10}
    assert not [w for w in caught if "More chains" in str(w.message)]


def test_sequential_note_left_out_when_only_the_observation_is_tested(seq_post):
    """`sbi-core diagnose RUN_MODEL --x x_o.csv` (no --sims/--problem: 0 test pairs, only the
    observation tested) printed the sequential NOTE 'the test pairs cover the whole prior ...
    Check it at x_o instead: ... --x x_o.csv' although there were no test pairs and --x was
    given; the note (and its warning) now only comes with test pairs."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = diagnose(seq_post, x=torch.tensor([[0.3]]), checks=["misspecification"],
                          progress=False)
    assert report.meta["num_test_pairs"] == 0 and "sequential" not in report.meta
    assert "NOTE" not in report.summary()
    assert not [w for w in caught if "trained by sequential" in str(w.message)]


def test_detector_messages_name_the_cli_way(seq_post, monkeypatch):
    """Two more detector messages that reach CLI users (`sbi-core train` when the detector
    cannot be trained; loading a model whose saved detector is damaged) named only
    posterior.fit_detector(sims); they now also say what to do on the command line."""
    import diagnostics.misspecification as mis
    from sbi_core.inference import _with_detector
    from sbi_core.serialization import _load_detector

    def broken(*args, **kwargs):
        raise ValueError("too few rows")

    monkeypatch.setattr(mis, "fit_detector", broken)
    with pytest.warns(UserWarning, match=r"\(CLI: rerun `sbi-core train` with more simulations"):
        _with_detector(seq_post, torch.zeros(10, 1), None, 0)
    with pytest.warns(UserWarning, match=r"\(CLI: retrain the model with `sbi-core train`\)"):
        _load_detector(seq_post, "not a dict", __import__("pathlib").Path("m.pt"))
    assert seq_post.detector is None
