"""Wall-clock budgets (``max_seconds``): every sampler stops with a SamplingTimeoutError that
says how far it got, instead of running on. Slow cases are mocked (a sleep per call), so
each test takes well under 3 s with max_seconds=0.3."""

import re
import time

import pytest
import torch
from torch import nn

from estimators.npse import build_npse
from estimators.pfn_method import PFNPosterior, build_pfn
from estimators.vector_field_posterior import VectorFieldPosterior
from sbi_core import box_uniform
from sbi_core.budget import Budget, SamplingError, SamplingTimeoutError
from sbi_core.mcmc import run_mcmc
from sbi_core.mcmc_posterior import MCMCPosterior
from sbi_core.posterior import DirectPosterior

SPEC = {"x_shape": [2], "param_names": ["a", "b"]}
PRIOR = box_uniform([-1.0, -1.0], [1.0, 1.0])
X = torch.tensor([0.1, 0.2])


class LeakyEstimator(nn.Module):
    """Draws inside the box [-1, 1]^2 with probability ``inside``, else 10 units away; each
    ``sample`` call sleeps ``delay`` seconds (a slow estimator)."""

    def __init__(self, inside: float, delay: float = 0.0, per_draw: float = 0.0):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.inside, self.delay, self.per_draw = inside, delay, per_draw
        self.calls = 0

    def sample(self, n, xs):
        self.calls += 1
        time.sleep(self.delay + self.per_draw * n * xs.shape[0])
        theta = torch.rand(n, xs.shape[0], 2) * 2 - 1
        out = torch.rand(n, xs.shape[0]) > self.inside
        theta[..., 0] += 10.0 * out
        return theta

    def log_prob(self, theta, x):
        return -(theta ** 2).sum(-1) + self.w


def test_budget_checks_and_validation():
    with pytest.raises(ValueError, match="positive number of seconds"):
        Budget(0)
    with pytest.raises(ValueError, match="positive number"):
        Budget(float("nan"))
    Budget(None).check("never")  # no limit
    budget = Budget(0.01, "My loop", "Do less.")
    time.sleep(0.02)
    with pytest.raises(SamplingTimeoutError, match=r"My loop stopped after .* s \(max_seconds="
                       r"0.01\): 3 of 9 steps\. Do less\. .*max_seconds=None"):
        budget.check("3 of 9 steps")
    assert issubclass(SamplingTimeoutError, SamplingError)


def test_rejection_sampling_stops_at_its_budget_and_says_how_far_it_got():
    # acceptance 0.2 % (above min_acceptance 0.1 %): without a budget this would draw about
    # 5 million proposals in slow batches; the budget ends it after 0.3 s.
    est = LeakyEstimator(inside=0.002, delay=0.05)
    post = DirectPosterior(est, PRIOR, SPEC, max_batch=2000)
    assert post.max_seconds == 60.0  # the documented default for direct posteriors
    start = time.perf_counter()
    with pytest.raises(SamplingTimeoutError) as info:
        post.sample((10_000,), X, seed=0, max_seconds=0.3)
    elapsed = time.perf_counter() - start
    msg = str(info.value)
    assert elapsed < 1.5, elapsed
    assert "Rejection sampling stopped after" in msg and "max_seconds=0.3" in msg
    assert re.search(r"\d+ of 10,000 samples drawn, acceptance 0\.\d+%", msg), msg
    assert "theta_transform='unconstrained'" in msg
    # the posterior-wide default applies when the call does not pass max_seconds
    post.max_seconds = 0.2
    with pytest.raises(SamplingTimeoutError, match="max_seconds=0.2"):
        post.sample((10_000,), X, seed=0)
    # and None lifts the limit: a fast, fully accepting estimator finishes
    fast = DirectPosterior(LeakyEstimator(inside=1.0), PRIOR, SPEC)
    assert fast.sample((100,), X, max_seconds=None).shape == (100, 2)


def test_rejection_batches_fit_into_the_time_left():
    # 10 us per draw: the second batch would be max_batch = 100,000 draws (1 s) at 0.2 %
    # acceptance; sized from the measured time per draw it fits into the 0.4 s left instead.
    est = LeakyEstimator(inside=0.002, per_draw=1e-5)
    post = DirectPosterior(est, PRIOR, SPEC)
    start = time.perf_counter()
    with pytest.raises(SamplingTimeoutError, match="max_seconds=0.4"):
        post.sample((10_000,), X, seed=0, max_seconds=0.4)
    assert time.perf_counter() - start < 0.75


def test_log_prob_refuses_what_sample_refuses():
    post = DirectPosterior(LeakyEstimator(inside=0.0002), PRIOR, SPEC)
    theta = torch.zeros(3, 2)
    with pytest.raises(SamplingError, match=r"Only 0\.0\d% of the posterior's samples"):
        post.sample((100,), X, seed=0)
    with pytest.raises(SamplingError, match="log_prob cannot be normalized"):
        post.log_prob(theta, X)
    raw = post.log_prob(theta, X, normalize=False)  # explicit opt-out: the raw density
    assert torch.isfinite(raw).all()
    # a healthy posterior is normalized by its acceptance rate (here about 50 %)
    half = DirectPosterior(LeakyEstimator(inside=0.5), PRIOR, SPEC)
    lp = half.log_prob(theta, X)
    assert torch.allclose(lp - half.log_prob(theta, X, normalize=False),
                          torch.full((3,), 0.693), atol=0.03)


def test_map_search_has_a_budget(monkeypatch):
    post = DirectPosterior(LeakyEstimator(inside=1.0), PRIOR, SPEC)

    def slow(theta, xs):
        time.sleep(0.05)
        return -(theta ** 2).sum(-1) + 0.0 * theta.sum(-1)

    monkeypatch.setattr(post, "_differentiable_log_prob", slow)
    torch.optim.Adam([nn.Parameter(torch.zeros(1))]).step()  # first use imports a lot
    with pytest.raises(SamplingTimeoutError, match=r"MAP search stopped .* of 100 gradient "
                                                   r"steps\. Pass fewer steps"):
        post.map(X, max_seconds=0.3)


def _slow_potential(theta, index):
    time.sleep(0.005)
    return -0.5 * (theta ** 2).sum(-1)


def test_mcmc_stops_at_its_budget():
    start = time.perf_counter()
    with pytest.raises(SamplingTimeoutError) as info:
        run_mcmc(_slow_potential, PRIOR, 1000, max_seconds=0.3, num_chains=4,
                 warmup_steps=50, progress=False)
    assert time.perf_counter() - start < 2.0
    msg = str(info.value)
    assert "MCMC (hmc, 4 chains) stopped" in msg and "of 300 transitions done" in msg
    assert "num_chains" in msg  # what to do


class _SlowLikelihood(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def log_likelihood(self, theta, x):
        time.sleep(0.005)
        return -((theta - x) ** 2).sum(-1)


def test_mcmc_posterior_budget_default_and_per_call():
    post = MCMCPosterior(_SlowLikelihood(), PRIOR, SPEC, mcmc={"num_chains": 4,
                                                               "warmup_steps": 50})
    assert post.max_seconds == 300.0
    with pytest.raises(SamplingTimeoutError, match="transitions done"):
        post.sample((500,), X, max_seconds=0.3)


def test_score_sampler_stops_at_its_budget(monkeypatch):
    theta = PRIOR.sample((200,))
    est = build_npse(theta, theta + 0.1 * torch.randn_like(theta), PRIOR)
    post = VectorFieldPosterior(est, PRIOR, SPEC)
    assert post.max_seconds == 300.0
    score = est.score

    def slow(*args):
        time.sleep(0.02)
        return score(*args)

    monkeypatch.setattr(est, "score", slow)
    start = time.perf_counter()
    with pytest.raises(SamplingTimeoutError, match=r"Sampler 'sde' \(500 steps\) stopped .*"
                                                   r"reached diffusion time t="):
        post.sample((10,), X, max_seconds=0.3, progress=False)
    assert time.perf_counter() - start < 1.5


def test_pfn_sampling_stops_at_its_budget(monkeypatch):
    theta = PRIOR.sample((100,))
    est = build_pfn(theta, theta.clone(), PRIOR, num_border_samples=2000, d_model=16,
                    num_layers=1, num_heads=2, ff_features=16)
    post = PFNPosterior(est, PRIOR, SPEC)
    logits = est.logits

    def slow(*args):
        time.sleep(0.1)
        return logits(*args)

    monkeypatch.setattr(est, "logits", slow)
    with pytest.raises(SamplingTimeoutError, match=r"PFN autoregressive sampling stopped .*"
                                                   r"of 10,000 samples drawn"):
        post.sample((10_000,), X, max_seconds=0.3)
