"""Sequential inference (sbi_core/sequential.py): TSNPE truncation, SNLE/SNRE reuse, resume."""

import importlib.util
import json
import math
import warnings

import numpy as np
import pytest
import torch
from scipy import stats

import simulators
from diagnostics.c2st import c2st
from sbi_core import load, save
from sbi_core.cli.main import main
from sbi_core.priors import gaussian
from sbi_core.sequential import TruncationRegion, run_sequential, sample_truncated_prior
from simulators.gaussian_linear import gaussian_linear_posterior

TINY = {"max_epochs": 25, "hidden_features": 16, "num_transforms": 2}


def test_hpr_truncation_keeps_true_parameter_over_50_observations():
    """Calibration of the truncation rule on the analytic gaussian_linear posterior (D=10):
    with epsilon=1e-4 the region of each of 50 observations holds its true θ (coverage 50/50,
    expected misses 0.005); a large epsilon=0.5 misses about half (the check can fail)."""
    problem = simulators.get_problem("gaussian_linear")
    torch.manual_seed(3)
    theta = problem.prior.sample((50,))
    xs = problem.simulator(theta)
    covered = {1e-4: 0, 0.5: 0}
    for th, x in zip(theta, xs):
        post = gaussian_linear_posterior(x)
        samples = post.sample((10_000,)).float()
        for eps in covered:
            region = TruncationRegion.from_samples(
                lambda t, post=post: post.log_prob(t.double()).float(), samples, eps)
            covered[eps] += int(region.contains(th[None])[0])
    print(f"coverage of the true θ over 50 observations: epsilon=1e-4: {covered[1e-4]}/50, "
          f"epsilon=0.5: {covered[0.5]}/50")
    assert covered[1e-4] == 50
    assert 10 <= covered[0.5] <= 40


def _truncated_normal_mean(a: float, b: float) -> float:
    return float((stats.norm.pdf(a) - stats.norm.pdf(b)) / (stats.norm.cdf(b) - stats.norm.cdf(a)))


@pytest.mark.parametrize("min_prior_acceptance", [0.0, 1.0])  # rejection from prior, box
def test_truncated_prior_sampler_is_the_prior_restricted_to_the_region(min_prior_acceptance):
    """Prior N(0, 1), region = HPR(1e-4) of q = N(0.5, 0.3²) = [0.5 ± 0.3·3.89]: the draws
    are the truncated prior (mean 0.316 analytically), not uniform on the region (0.50)."""
    prior = gaussian([0.0], std=[1.0])
    q = torch.distributions.Normal(0.5, 0.3)
    torch.manual_seed(0)
    samples = q.sample((20_000, 1))
    region = TruncationRegion.from_samples(lambda t: q.log_prob(t[:, 0]), samples, 1e-4)
    # the region's half-width from its threshold (about 0.3 * 3.9 for epsilon = 1e-4)
    half = 0.3 * math.sqrt(-2 * (region.threshold + math.log(0.3 * math.sqrt(2 * math.pi))))
    assert 0.3 * 3.7 < half < 0.3 * 4.3
    expected = _truncated_normal_mean(0.5 - half, 0.5 + half)
    out = sample_truncated_prior(prior, region, 20_000, samples,
                                 min_prior_acceptance=min_prior_acceptance)
    assert out.sampler == ("prior" if min_prior_acceptance == 0.0 else "box")
    assert out.theta.shape == (20_000, 1)
    assert bool(region.contains(out.theta).all())
    assert abs(float(out.theta.mean()) - expected) < 0.02, (float(out.theta.mean()), expected)
    mass = stats.norm.cdf(0.5 + half) - stats.norm.cdf(0.5 - half)
    assert abs(out.prior_mass - mass) < 0.02


def test_tsnpe_gaussian_linear_2d_matches_analytic_and_reports_acceptance():
    """Light version of the issue's test: D=2, 3 rounds of 500 (C2ST < 0.6)."""
    problem = simulators.get_problem("gaussian_linear", dim=2)
    x_o = problem.observation(1)
    ref = problem.reference_posterior(x_o, 2000, seed=1)
    posterior, history = run_sequential(problem, x_o, rounds=3, sims_per_round=500, seed=0,
                                        progress=False, reference_samples=ref, **TINY)
    assert [h.total_simulations for h in history] == [500, 1000, 1500]
    assert history[0].proposal == "prior"
    for h in history[1:]:
        assert h.proposal.startswith("truncated prior")
        assert 0.0 < h.prior_mass <= 1.0 and 0.0 < h.acceptance <= 1.0
        assert h.truncation_threshold is not None
        # the truncation keeps the true posterior: (almost) all reference samples inside
        assert h.reference_inside >= 0.995, h.reference_inside
    acc = c2st(posterior.sample((2000,), x=x_o, seed=2), ref)
    print("TSNPE 2-D gaussian_linear C2ST", acc)
    assert acc < 0.6
    record = posterior.problem_spec["sequential"]
    assert record["method"] == "tsnpe" and record["total_simulations"] == 1500
    assert len(record["truncation"]["prior_mass_per_round"]) == 3


@pytest.mark.slow
def test_tsnpe_gaussian_linear_10d_three_rounds_of_1000():
    """The issue's test: gaussian_linear (D=10), 3 rounds of 1,000, C2ST < 0.6."""
    problem = simulators.get_problem("gaussian_linear")
    x_o = problem.observation(1)
    posterior, history = run_sequential(problem, x_o, rounds=3, sims_per_round=1000, seed=0,
                                        progress=False)
    print("acceptance per round", [h.acceptance for h in history],
          "prior mass", [h.prior_mass for h in history])
    assert all(h.acceptance is not None for h in history[1:])
    ref = problem.reference_posterior(x_o, 5000, seed=1)
    acc = c2st(posterior.sample((5000,), x=x_o, seed=2), ref)
    print("TSNPE 10-D gaussian_linear C2ST", acc)
    assert acc < 0.6


@pytest.mark.parametrize("method", ["snle", "snre"])
def test_snle_and_snre_reuse_all_rounds(monkeypatch, method):
    import sbi_core.training as training

    seen = []
    real_train = training._train

    def spy(estimator, theta, x, cfg, loss_fn):
        # all rows of all rounds (tensors, or the warm start's per-round split batches)
        seen.append(len(theta) if isinstance(theta, torch.Tensor)
                    else theta.num_train + theta.num_validation)
        return real_train(estimator, theta, x, cfg, loss_fn)

    monkeypatch.setattr(training, "_train", spy)
    problem = simulators.get_problem("gaussian_linear", dim=2)
    x_o = problem.observation(1)
    posterior, history = run_sequential(
        problem, x_o, method=method, rounds=2, sims_per_round=200, seed=0, progress=False,
        max_epochs=10, hidden_features=16, mcmc={"num_chains": 10, "warmup_steps": 20})
    base = method[1:]
    assert seen == [200, 400]
    assert history[1].proposal == "posterior"
    assert posterior.method == base
    assert posterior.problem_spec["sequential"]["truncation"] is None


def _tiny_run(problem, x_o, store, **kw):
    return run_sequential(problem, x_o, rounds=3, sims_per_round=200, seed=5, store=store,
                          chunk_size=50, progress=False, **TINY, **kw)


def kill_after_round(run, round_, *args, **kw):
    """``run(*args, **kw)`` killed (``KeyboardInterrupt``, as Ctrl-C) right after round
    ``round_`` is saved; the test resumes it from the store."""
    def stop(rec):
        if rec.round == round_:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(*args, on_round=stop, **kw)


def _same_posterior(a, b, x_o):
    sa, sb = a.estimator.state_dict(), b.estimator.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(a.sample((50,), x=x_o, seed=0), b.sample((50,), x=x_o, seed=0))


def test_resume_after_kill_between_rounds_and_mid_chunk_gives_identical_posterior(tmp_path):
    problem = simulators.get_problem("gaussian_linear", dim=2)
    x_o = problem.observation(2)
    full, full_hist = _tiny_run(problem, x_o, tmp_path / "full.zarr")

    # killed between rounds (after round 1 was saved)
    store = tmp_path / "a.zarr"
    kill_after_round(_tiny_run, 1, problem, x_o, store)
    with pytest.raises(ValueError, match="resume=True"):
        _tiny_run(problem, x_o, store)
    resumed, hist = _tiny_run(problem, x_o, store, resume=True)
    _same_posterior(full, resumed, x_o)
    assert [h.total_simulations for h in hist] == [200, 400, 600]

    # killed inside round 2's simulations, after its first chunk (of 4) was committed
    calls = {"n": 0}
    real = problem.simulator

    def dying(theta):
        calls["n"] += 1
        if calls["n"] == 4 + 2:  # round 1: 4 chunks; round 2: dies in its 2nd chunk
            raise KeyboardInterrupt
        return real(theta)

    problem.simulator = dying
    store = tmp_path / "b.zarr"
    try:
        with pytest.raises(KeyboardInterrupt):
            _tiny_run(problem, x_o, store)
    finally:
        problem.simulator = real
    state = json.loads((store / "_sequential" / "state.json").read_text())
    assert len(state["rounds"]) == 1 and state["pending"]["round"] == 2
    assert len(list((store / "_committed").iterdir())) == 5
    calls["n"] = 0
    problem.simulator = lambda theta: (calls.__setitem__("n", calls["n"] + 1), real(theta))[1]
    try:
        resumed, _ = _tiny_run(problem, x_o, store, resume=True)
    finally:
        problem.simulator = real
    assert calls["n"] == 3 + 4  # round 2's 3 uncommitted chunks, then round 3
    _same_posterior(full, resumed, x_o)

    # a resume with different settings is refused, naming the difference
    with pytest.raises(ValueError, match="epsilon"):
        _tiny_run(problem, x_o, store, resume=True, epsilon=0.01)


def test_saved_model_records_x_o_and_warns_far_from_it(tmp_path):
    problem = simulators.get_problem("gaussian_linear", dim=2)
    x_o = problem.observation(1)
    posterior, _ = run_sequential(problem, x_o, rounds=2, sims_per_round=200, seed=0,
                                  progress=False, warm_start=False, **TINY)  # fresh per round
    path = save(posterior, tmp_path / "m.pt")
    loaded = load(path)
    assert loaded.problem_spec["sequential"]["x_o"] == pytest.approx(x_o.tolist())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded.sample((10,), x=x_o)  # at x_o: no warning
    scale = torch.tensor(loaded.problem_spec["sequential"]["x_scale"])
    loaded.range_check = "warn"
    with pytest.warns(UserWarning, match="valid only near it"):
        loaded.sample((10,), x=x_o + 6 * scale)

    # the server says so in its response too (the Python warning only reaches its log)
    from fastapi.testclient import TestClient

    from sbi_core.server import create_app

    client = TestClient(create_app({"seq": loaded}, max_samples=1000))
    near = client.post("/api/models/seq/sample", json={"x": x_o.tolist(), "n": 5, "seed": 0})
    assert near.status_code == 200 and near.json()["warnings"] == []
    far_x = (x_o + 6 * scale).tolist()
    with pytest.warns(UserWarning, match="valid only near it"):
        far = client.post("/api/models/seq/sample", json={"x": far_x, "n": 5, "seed": 0})
        summary = client.post("/api/models/seq/summary", json={"xs": [x_o.tolist(), far_x],
                                                               "n": 50, "seed": 0})
    assert far.status_code == 200 and summary.status_code == 200
    assert any("valid only near it" in w and "first: 0" in w for w in far.json()["warnings"])
    assert any("valid only near it" in w and "first: 1" in w
               for w in summary.json()["warnings"])


def test_bad_inputs_are_clear_errors():
    problem = simulators.get_problem("gaussian_linear", dim=2)
    x_o = problem.observation(1)
    with pytest.raises(ValueError, match="Unknown sequential method"):
        run_sequential(problem, x_o, method="abc")
    with pytest.raises(ValueError, match="x_o has shape"):
        run_sequential(problem, torch.zeros(3))
    with pytest.raises(ValueError, match="rounds must be a positive integer"):
        run_sequential(problem, x_o, rounds=0)
    with pytest.raises(ValueError, match="restrict=True applies to tsnpe and snpe_c"):
        run_sequential(problem, x_o, method="snle", restrict=True)
    with pytest.raises(ValueError, match="resume=True needs the store"):
        run_sequential(problem, x_o, resume=True)
    with pytest.raises(ValueError, match="epsilon must be in"):
        run_sequential(problem, x_o, epsilon=1.5)
    with pytest.raises(ValueError, match="chunk_size=300 must divide"):
        run_sequential(problem, x_o, sims_per_round=500, chunk_size=300)
    if importlib.util.find_spec("estimators.apt") is None:
        with pytest.raises(ValueError, match="not available"):
            run_sequential(problem, x_o, method="snpe_c")
    if importlib.util.find_spec("estimators.restriction") is None:
        with pytest.raises(ValueError, match="not available"):
            run_sequential(problem, x_o, restrict=True)


def test_cli_run_resume_and_sample_warning(tmp_path, capsys):
    problem = simulators.get_problem("gaussian_linear", dim=2)
    xfile = tmp_path / "x.csv"
    np.savetxt(xfile, problem.observation(1).numpy()[None], delimiter=",")
    model, store = tmp_path / "m.pt", tmp_path / "run.zarr"
    args = ["run", "gaussian_linear", "--x", str(xfile), "--rounds", "2", "--sims-per-round",
            "200", "--out", str(model), "--store", str(store), "--max-epochs", "10"]
    # gaussian_linear is 10-D: a 2-D observation is refused with the shapes named
    assert main(args) == 2
    assert "shape" in capsys.readouterr().err
    np.savetxt(xfile, simulators.get_problem("gaussian_linear").observation(1).numpy()[None],
               delimiter=",")
    assert main(args) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out.strip().splitlines()[-1])
    assert out["total_simulations"] == 400 and len(out["rounds"]) == 2
    assert "round 2/2" in captured.err
    assert main(args) == 2  # the store exists: --resume is needed
    assert "--resume" in capsys.readouterr().err
    assert main(args + ["--resume"]) == 0
    assert "resumed" in capsys.readouterr().err
    far = tmp_path / "far.csv"
    np.savetxt(far, np.full((1, 10), 3.0), delimiter=",")
    with pytest.warns(UserWarning, match="valid only near it"):
        # far outside the training range too: the warning comes first, then the range error
        assert main(["sample", str(model), "--x", str(far), "--num", "5", "--out",
                     str(tmp_path / "s.csv")]) == 2
    assert math.isfinite(out["rounds"][1]["prior_mass"])


def test_warm_start_validation_rows_are_never_trained_on_in_later_rounds():
    """A row held out for validation in round 1 stays held out in round 2 (a fresh random
    split of all rows would train on it, making the validation loss optimistic)."""
    from sbi_core.sequential import _RoundBatches
    from sbi_core.simulation_set import SimulationSet

    torch.manual_seed(0)
    theta = torch.randn(400, 2)
    sims = SimulationSet(theta, theta + 1.0, torch.ones(400, dtype=torch.bool), {})
    first = SimulationSet(theta[:200], theta[:200] + 1.0, torch.ones(200, dtype=torch.bool), {})
    one = _RoundBatches(first, 200, 0.1, seed=3, device="cpu")
    two = _RoundBatches(sims, 200, 0.1, seed=3, device="cpu")
    assert one.num_validation == 20 and two.num_validation == 40
    assert torch.equal(two.theta_va[:20], one.theta_va)
    trained = {tuple(r) for r in two.theta_tr.tolist()}
    assert not any(tuple(r) in trained for r in one.theta_va.tolist())


def test_snpe_c_and_restrict_go_through_the_documented_interfaces(monkeypatch, tmp_path):
    """Orchestration only (the atomic loss and the classifier live in estimators.apt and
    estimators.restriction): stand-ins with the documented signatures are called with all
    rounds' data, and restricted proposals stay inside the restriction."""
    import sys
    import types

    from sbi_core.training import train

    calls = {"apt": [], "restriction": []}

    def train_apt(estimator, theta, x, prior, proposal_log_prob_fn, config, num_atoms=10,
                  batches=None):
        calls["apt"].append((len(theta), num_atoms, proposal_log_prob_fn))
        # the per-round fixed validation split covers the same rows
        assert batches.num_train + batches.num_validation == len(theta)
        return train(estimator, theta, x, config)

    class HalfPrior(torch.distributions.Distribution):  # the prior where theta_0 > 0
        arg_constraints = {}

        def __init__(self, prior):
            super().__init__(event_shape=prior.event_shape, validate_args=False)
            self.prior, self.acceptance = prior, 0.5

        def sample(self, shape=()):
            n = int(np.prod(shape))
            draws = self.prior.sample((4 * n + 100,))
            return draws[draws[:, 0] > 0][:n].reshape(*shape, -1)

        def log_prob(self, theta):
            lp = self.prior.log_prob(theta) - math.log(0.5)
            return torch.where(theta[..., 0] > 0, lp, torch.full_like(lp, -math.inf))

    def fit_restriction(prior, theta, valid, seed=0, **options):
        calls["restriction"].append(len(theta))
        return HalfPrior(prior)

    monkeypatch.setitem(sys.modules, "estimators.apt", types.SimpleNamespace(train_apt=train_apt))
    monkeypatch.setitem(sys.modules, "estimators.restriction",
                        types.SimpleNamespace(fit_restriction=fit_restriction))
    problem = simulators.get_problem("gaussian_linear", dim=2)
    x_o = problem.observation(1)
    posterior, history = run_sequential(problem, x_o, method="snpe_c", rounds=2,
                                        sims_per_round=200, seed=0, progress=False, **TINY)
    assert calls["apt"] == [(400, 10, None)]
    assert history[1].proposal == "posterior" and posterior.method == "npe"

    calls["restriction"].clear()
    posterior, history = run_sequential(problem, x_o, method="tsnpe", rounds=3,
                                        sims_per_round=200, seed=0, restrict=True,
                                        store=tmp_path / "r.zarr", progress=False, **TINY)
    assert calls["restriction"] == [200, 400, 600]
    assert history[1].proposal == "truncated prior (restricted)"
    assert history[1].prior_mass <= 0.5 + 1e-6
    from sbi_core.stores import load_store

    theta = load_store(tmp_path / "r.zarr").theta
    assert bool((theta[200:, 0] > 0).all()) and not bool((theta[:200, 0] > 0).all())
