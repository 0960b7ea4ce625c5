"""Adversarial attacks and the robustness report: analytic checks and a trained NPE."""

import math

import pytest
import torch
from torch import nn

from diagnostics.attacks import pgd_attack, random_perturbation
from diagnostics.robustness import (
    divergence,
    expected_coverage,
    robustness_report,
    robustness_section,
)
from estimators.npe import build_npe
from estimators.robust_training import fim_trace, relative_scale
from sbi_core import Problem, fit, gaussian, simulate
from simulators import get_problem

pytestmark = pytest.mark.filterwarnings("ignore:Reached max_epochs")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small nets run fastest (and steadiest on a shared machine) on one thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class GaussianPosterior(nn.Module):
    """Exact posterior of ``x = theta + 0.5 eps``, ``theta ~ N(0, I)``: ``N(c x, w I)``."""

    def __init__(self, dim: int, c: float = 0.8, w: float = 0.2):
        super().__init__()
        self.dim, self.c, self.w = dim, c, w
        self.dummy = nn.Parameter(torch.ones(()))  # gives the module a device and parameters
        self.register_buffer("x_min", torch.full((dim,), -100.0))
        self.register_buffer("x_max", torch.full((dim,), 100.0))

    def log_prob(self, theta, x):
        r = theta - self.c * x * self.dummy
        return -0.5 * (r.pow(2).sum(-1) / self.w + self.dim * math.log(2 * math.pi * self.w))

    def sample_and_log_prob(self, n, x):
        theta = self.c * x * self.dummy + math.sqrt(self.w) * torch.randn(n, *x.shape)
        xr = x.unsqueeze(0).expand(n, *x.shape)
        return theta, self.log_prob(theta, xr)

    def sample(self, n, x):
        with torch.no_grad():
            return self.sample_and_log_prob(n, x)[0]


def _kl_bound(est: GaussianPosterior, eps_abs: float, d_eff: int = 1) -> float:
    return est.c**2 * d_eff * eps_abs**2 / (2 * est.w)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_attack_reaches_the_analytic_worst_case(norm):
    """For N(c x, w I) the worst KL within the ball is c^2 max||delta||^2 / (2 w)."""
    est = GaussianPosterior(dim=5)
    xs = torch.randn(20, 5)
    scale = relative_scale(xs)
    x_adv = pgd_attack(est, xs, 0.5, norm=norm, steps=40, mc_samples=8)
    delta = x_adv - xs
    eps_abs = 0.5 * scale
    if norm == "l2":
        assert float(delta.norm(dim=1).max()) <= eps_abs * (1 + 1e-5)
        bound = _kl_bound(est, eps_abs)
    else:
        assert float(delta.abs().max()) <= eps_abs * (1 + 1e-5)
        bound = _kl_bound(est, eps_abs, d_eff=5)
    kl = divergence(est, xs, x_adv, "rkl", num_samples=4000)
    # the attack finds >= 95% of the optimum; MC error of the KL estimate is ~ 3%
    assert float(kl.mean()) > 0.95 * bound
    assert float(kl.max()) < 1.1 * bound
    fkl = divergence(est, xs, x_adv, "fkl", num_samples=4000)
    assert abs(float(fkl.mean()) - float(kl.mean())) < 0.1 * bound  # equal covariances


def test_random_noise_has_the_same_norm():
    est = GaussianPosterior(dim=4)
    xs = torch.randn(50, 4)
    x2 = random_perturbation(est, xs, 1.0, norm="l2", scale=2.0)
    assert torch.allclose((x2 - xs).norm(dim=1), torch.full((50,), 2.0), atol=1e-4)
    xi = random_perturbation(est, xs, 1.0, norm="linf", scale=2.0)
    assert torch.allclose((xi - xs).abs(), torch.full((50, 4), 2.0), atol=1e-4)


def test_fim_trace_matches_the_analytic_value():
    """tr I(x) = c^2 D / w for N(c x, w I)."""
    est = GaussianPosterior(dim=3)
    tr = fim_trace(est, torch.randn(4, 3), num_samples=4000, create_graph=False)
    assert torch.allclose(tr, torch.full((4,), 0.64 * 3 / 0.2), rtol=0.06)


def test_report_coverage_and_predictives_under_attack():
    problem = get_problem("linear_gaussian", dim=3)
    est = GaussianPosterior(dim=3)
    sims = simulate(problem, 300, seed=3, progress=False)
    clean = expected_coverage(est, sims.x, sims.theta)
    assert clean["error"] < 0.06  # the exact posterior is calibrated
    report = robustness_report(est, sims.x[:60], sims.theta[:60], eps=[0.2, 2.0], steps=20,
                               num_samples=500, simulator=problem.simulator, kl_warn=1.0,
                               kl_fail=5.0, status_eps=2.0)
    small, large = report["results"]
    assert large["attack"]["mean"] > 10 * small["attack"]["mean"]  # KL grows like eps^2
    assert large["coverage"]["coverage"][2] < 0.5  # 90% HPD coverage collapses at eps = 2
    assert large["predictive"]["attacked"] > 1.2 * large["predictive"]["clean"]
    assert report["status"] == "fail" and "eps=2" in report["reason"]
    assert all(isinstance(v, float) for v in large["attack"].values())


def test_robustness_section_simulates_its_test_data():
    problem = get_problem("linear_gaussian", dim=3)
    est = GaussianPosterior(dim=3)
    a = robustness_section(est, problem, num_observations=30, eps=[0.5], steps=10,
                           num_samples=200)
    b = robustness_section(est, problem, num_observations=30, eps=[0.5], steps=10,
                           num_samples=200)
    assert a["num_observations"] == 30 and "predictive" in a["results"][0]
    assert a["results"][0]["attack"]["mean"] == b["results"][0]["attack"]["mean"]  # seeded
    bound = _kl_bound(est, 0.5 * a["scale"])
    assert 0.8 * bound < a["results"][0]["attack"]["mean"] < 1.2 * bound


def test_non_differentiable_estimator_is_refused():
    class Plain(nn.Module):
        def log_prob(self, theta, x):
            return theta.sum(-1)

    with pytest.raises(ValueError, match="sample_and_log_prob"):
        pgd_attack(Plain(), torch.randn(4, 2), 0.5)
    with pytest.raises(ValueError, match="Unknown attack loss"):
        pgd_attack(GaussianPosterior(2), torch.randn(4, 2), 0.5, loss="kl")
    with pytest.raises(ValueError, match="theta"):
        pgd_attack(GaussianPosterior(2), torch.randn(4, 2), 0.5, loss="nll")


@pytest.mark.parametrize("flow", ["maf", "nsf", "mdn"])
def test_npe_sampling_is_differentiable_in_x(flow):
    problem = get_problem("linear_gaussian", dim=2)
    theta = problem.prior.sample((100,))
    x = problem.simulator(theta)
    est = build_npe(theta, x, problem.prior, flow=flow, hidden_features=16, num_transforms=2)
    xq = x[:3].clone().requires_grad_(True)
    samples, lp = est.sample_and_log_prob(4, xq)
    assert samples.shape == (4, 3, 2) and lp.shape == (4, 3)
    (g,) = torch.autograd.grad(samples.sum() + lp.sum(), xq)
    assert torch.isfinite(g).all() and float(g.abs().sum()) > 0
    direct = est.log_prob(samples.detach().reshape(-1, 2), xq.detach().repeat(4, 1))
    assert torch.allclose(direct.reshape(4, 3), lp.detach(), atol=1e-3)


def _distractor_problem() -> Problem:
    """2 parameters observed in 2 of 12 features; the other 10 are pure noise."""

    def simulator(theta):
        informative = theta + 0.1 * torch.randn_like(theta)
        return torch.cat([informative, torch.randn(theta.shape[0], 10)], dim=1)

    return Problem(gaussian(torch.zeros(2), torch.ones(2)), simulator, name="distractors",
                   x_shape=(12,))


def test_attack_is_far_stronger_than_random_noise_on_trained_npe():
    problem = _distractor_problem()
    sims = simulate(problem, 2000, seed=0, progress=False)
    post = fit(problem, sims, hidden_features=32, num_transforms=2, max_epochs=20,
               learning_rate=2e-3, progress=False)
    test = simulate(problem, 40, seed=1, progress=False)
    for loss in ["rkl", "fkl", "mmd", "nll"]:
        x_adv = pgd_attack(post, test.x, 0.3, loss=loss, theta=test.theta, steps=25)
        x_noise = random_perturbation(post, test.x, 0.3)
        attacked = divergence(post, test.x, x_adv, "rkl", num_samples=128).mean()
        noise = divergence(post, test.x, x_noise, "rkl", num_samples=128).mean()
        # noise spends ~1/6 of its norm on the informative features; the attack all of it
        assert attacked > 5 * noise, (loss, float(attacked), float(noise))  # measured ~14x
