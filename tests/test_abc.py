"""Rejection ABC and SMC-ABC: recovery of known posteriors, budgets, errors, save/load."""

import math

import pytest
import torch

from sbi_core import fit, load, save, simulate
from sbi_core.posterior import ObservationError
from sbi_core.simulation_set import SimulationSet
from simulators import get_problem
from simulators.g_and_k import TRUE_THETA, g_and_k_data
from simulators.gaussian_linear import gaussian_linear_posterior


@pytest.fixture(scope="module")
def gl2():
    p = get_problem("gaussian_linear", dim=2)
    return p, p.observation(1), simulate(p, 1000, seed=0, progress=False)


def test_smc_abc_recovers_gaussian_linear_posterior(gl2):
    p, x_o, sims = gl2
    post = fit(p, sims, method="smc_abc", x_o=x_o, num_particles=300, num_simulations=6000,
               detector=False)
    s = post.sample((4000,), seed=0)
    ref = gaussian_linear_posterior(x_o)  # N(x_o / 2, 0.05 I): sd 0.224
    # measured: mean error 0.011, sd 0.235 / 0.234
    assert float((s.mean(0) - ref.mean).abs().max()) < 0.05
    assert torch.allclose(s.std(0).double(), ref.stddev, rtol=0.25)
    h = post.history
    assert h["num_simulations"] <= 6000 and h["num_simulations"] == sum(h["simulations_per_round"])
    assert h["rounds"] >= 5 and h["epsilons"] == sorted(h["epsilons"], reverse=True)
    assert post.method == "smc_abc" and not post.normalized_log_prob


def test_rejection_abc_basics(gl2):
    p, x_o, sims = gl2
    post = fit(p, sims, method="abc", x_o=x_o, quantile=0.1, detector=False)
    theta, w = post.particles
    assert theta.shape == (100, 2) and torch.allclose(w.sum(), torch.tensor(1.0))
    assert post.history["num_simulations"] == 1000 and post.history["acceptance_rate"] == 0.1
    s = post.sample((500,), seed=0)  # x defaults to x_o
    assert s.shape == (500, 2)
    # the accepted particles are the 100 simulations nearest x_o in standardized distance
    d = ((sims.x - x_o) / sims.x.std(0)).norm(dim=-1)
    assert torch.allclose(post.estimator.distances.sort().values, d.sort().values[:100], atol=1e-5)
    lp = post.log_prob(s[:10])
    assert lp.shape == (10,) and bool(torch.isfinite(lp).all())
    smooth = post.sample((200,), seed=0, smooth=True)
    assert bool(torch.isfinite(p.prior.log_prob(smooth)).all())  # KDE draws stay in the support
    with pytest.raises(ObservationError, match="fitted to one observation"):
        post.sample((10,), x=x_o + 1.0)
    other = fit(p, sims, method="abc", x_o=x_o, num_accept=50, detector=False)
    assert other.estimator.theta.shape == (50, 2)


def test_abc_errors_name_the_problem_and_the_fix(gl2):
    p, x_o, sims = gl2
    with pytest.raises(ValueError, match="x_o=x_o"):
        fit(p, sims, method="abc", detector=False)
    with pytest.raises(ValueError, match="keeps 1 particle"):
        fit(p, sims, method="abc", x_o=x_o, quantile=0.001, detector=False)
    with pytest.raises(ValueError, match="quantile must be in"):
        fit(p, sims, method="abc", x_o=x_o, quantile=1.5, detector=False)
    with pytest.raises(ValueError, match="within epsilon"):
        fit(p, sims, method="abc", x_o=x_o, epsilon=1e-9, detector=False)
    with pytest.raises(ValueError, match="no room for one SMC round"):
        fit(p, sims, method="smc_abc", x_o=x_o, num_simulations=1050, detector=False)
    with pytest.raises(ValueError, match="num_particles=5000"):
        fit(p, sims, method="smc_abc", x_o=x_o, num_particles=5000, detector=False)
    with pytest.raises(ValueError, match="set of iid observations use distance='mmd'"):
        fit(p, sims, method="abc", x_o=torch.zeros(3, 2), detector=False)
    with pytest.raises(TypeError, match="Unknown abc options"):
        fit(p, sims, method="abc", x_o=x_o, quantil=0.1, detector=False)
    bad = SimulationSet.from_arrays(sims.theta, torch.full_like(sims.x, math.nan))
    with pytest.raises(ValueError, match="All 1000 simulations are invalid"):
        fit(p, bad, method="abc", x_o=x_o, detector=False)


def test_smc_abc_skips_invalid_simulations():
    from sbi_core import Problem, box_uniform

    def sim(theta):  # fails (NaN) for theta_1 > 0.5
        x = theta + 0.1 * torch.randn_like(theta)
        return torch.where(theta[:, :1] > 0.5, torch.full_like(x, math.nan), x)

    p = Problem(box_uniform([-1.0, -1.0], [1.0, 1.0]), sim, name="fails")
    sims = simulate(p, 600, seed=0, progress=False)
    with pytest.warns(UserWarning, match="Excluding"):
        post = fit(p, sims, method="smc_abc", x_o=torch.tensor([0.3, 0.0]), num_particles=100,
                   num_simulations=2000, detector=False)
    assert post.history["num_invalid"] > 0
    assert bool((post.estimator.distances < math.inf).all())


def test_mmd_abc_on_g_and_k_uses_optimal_weights():
    p = get_problem("g_and_k")
    y = g_and_k_data(TRUE_THETA, 200, seed=1)
    sims = simulate(p, 500, seed=0, progress=False)
    post = fit(p, sims, method="smc_abc", x_o=y, distance="mmd", num_draws=32,
               num_particles=200, num_simulations=150_000, detector=False)
    assert post.history["estimator"] == "ow" and post.supports_iid
    assert post.history["num_simulations"] <= 150_000
    m = post.sample((2000,), seed=0).mean(0)
    # measured: A 2.92, B 1.04 (g and k are weakly identified by 200 draws)
    assert abs(float(m[0]) - 3.0) < 0.3 and abs(float(m[1]) - 1.0) < 0.3


def test_mmd_falls_back_to_v_statistic_with_a_note(gl2):
    from sbi_core import Problem, box_uniform

    p = Problem(box_uniform([-1.0], [1.0]), lambda t: t + 0.1 * torch.randn_like(t), name="plain")
    sims = simulate(p, 200, seed=0, progress=False)
    with pytest.warns(UserWarning, match="does not expose its random inputs"):
        post = fit(p, sims, method="abc", x_o=0.1 * torch.randn(50, 1), distance="mmd",
                   num_draws=8, quantile=0.05, detector=False)
    assert post.history["estimator"] == "v"
    assert post.history["num_simulations"] == 200 + 200 * 8  # every simulator call counted
    with pytest.raises(ValueError, match="no noise_dim"):
        fit(p, sims, method="abc", x_o=torch.zeros(50, 1), distance="mmd", estimator="ow",
            detector=False)


def test_save_load_round_trip(gl2, tmp_path):
    p, x_o, sims = gl2
    post = fit(p, sims, method="smc_abc", x_o=x_o, num_particles=100, num_simulations=2000,
               detector=False)
    path = save(post, tmp_path / "abc.pt")
    back = load(path)
    assert back.method == "smc_abc" and type(back).__name__ == "ABCPosterior"
    assert torch.equal(back.estimator.theta, post.estimator.theta)
    assert torch.equal(back.estimator.weights, post.estimator.weights)
    assert torch.equal(back.sample((50,), seed=3), post.sample((50,), seed=3))
    t = post.sample((5,), seed=1)
    assert torch.allclose(back.log_prob(t), post.log_prob(t))
    assert back.history["num_simulations"] == post.history["num_simulations"]
    with pytest.raises(ObservationError):
        back.sample((5,), x=torch.zeros(2))


def test_cli_train_smc_abc_with_observation_file(tmp_path, capsys):
    from sbi_core.cli.main import main

    sims_path, obs, model = tmp_path / "sims.pt", tmp_path / "obs.csv", tmp_path / "abc.pt"
    assert main(["simulate", "two_moons", "--num", "500", "--out", str(sims_path),
                 "--quiet"]) == 0
    x_o = get_problem("two_moons").observation(1)
    obs.write_text(",".join(str(float(v)) for v in x_o) + "\n")
    assert main(["train", "--sims", str(sims_path), "--method", "smc_abc", "--x", str(obs),
                 "--option", "num_simulations=1500", "--option", "num_particles=100",
                 "--out", str(model), "--quiet"]) == 0
    post = load(model)
    assert post.method == "smc_abc" and post.history["num_simulations"] <= 1500
    assert torch.allclose(post.default_x, x_o, atol=1e-6)
    capsys.readouterr()
    # without --x the error names the fix
    assert main(["train", "--sims", str(sims_path), "--method", "abc", "--out",
                 str(tmp_path / "b.pt"), "--quiet"]) != 0
    assert "--x FILE" in capsys.readouterr().err


def test_smc_abc_with_a_plain_torch_prior_that_validates_its_arguments():
    """torch.distributions.Uniform raises (validate_args) for values outside its support;
    SMC-ABC's perturbations leave the box and must be redrawn, not crash the run."""
    from sbi_core import Problem

    prior = torch.distributions.Independent(
        torch.distributions.Uniform(torch.tensor([0.0, 0.0]), torch.tensor([1.0, 1.0])), 1)
    p = Problem(prior, lambda t: t + 0.05 * torch.randn_like(t), name="torch_box")
    sims = simulate(p, 600, seed=0, progress=False)
    post = fit(p, sims, method="smc_abc", x_o=torch.tensor([0.95, 0.5]), num_particles=100,
               num_simulations=2000, detector=False)
    s = post.sample((300,), seed=0)
    assert bool(((s >= 0) & (s <= 1)).all())
    assert abs(float(s[:, 0].mean()) - 0.93) < 0.05  # piled against the upper edge


def test_diagnose_an_abc_posterior_skips_calibration_instead_of_failing(gl2):
    """TARP/SBC/coverage need posteriors at many test observations; an ABC posterior answers
    one x_o, so these checks are reported not applicable (skip), not as failures."""
    from diagnostics.report import diagnose

    p, x_o, sims = gl2
    post = fit(p, sims, method="abc", x_o=x_o, quantile=0.1, detector=False)
    rep = diagnose(post, p, num=20, num_samples=50, seed=0, progress=False)
    for name in ("tarp", "sbc", "coverage"):
        sec = rep.sections[name]
        assert sec["status"] == "skip" and "not applicable" in sec["why"], (name, sec)
        assert "fitted to one observation" in sec["why"]
    assert rep.status != "fail", {k: (v["status"], v["why"][:80]) for k, v in rep.sections.items()}
