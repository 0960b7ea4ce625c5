"""Importance-sampling correction of an NPE posterior (sbi_core.importance).

The main check: a deliberately undertrained NPE on gaussian_linear (10-D) is sharpened by
SIR with the true likelihood to C2ST < 0.55 against the analytic posterior, while the
uncorrected NPE is far off (C2ST > 0.7), and the effective sample size is reported.
"""

from __future__ import annotations

import math

import pytest
import torch

from diagnostics.c2st import c2st
from sbi_core import fit, simulate
from sbi_core.importance import ImportanceInfo, ImportanceSamplingError, importance_sample
from simulators import get_problem
from simulators.gaussian_linear import gaussian_linear_posterior


def _loglik(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """True gaussian_linear likelihood: x ~ N(theta, 0.1 I)."""
    return torch.distributions.Normal(theta, math.sqrt(0.1)).log_prob(x).sum(-1)


@pytest.fixture(scope="module")
def poor_npe():
    problem = get_problem("gaussian_linear")
    sims = simulate(problem, 2000, seed=0)
    post = fit(problem, sims, max_epochs=20, progress=False, detector=False, seed=0,
               preset="fast")
    return problem, post


def test_is_correction_reaches_analytic_posterior(poor_npe):
    problem, post = poor_npe
    x_o = problem.observation(1)
    ref = gaussian_linear_posterior(x_o).sample((1000,)).float()
    raw = post.sample((1000,), x=x_o, seed=1)
    corrected = post.sample((1000,), x=x_o, seed=1, correct="is", log_likelihood=_loglik)
    info = post.last_importance
    assert isinstance(info, ImportanceInfo)
    assert info.num_proposals == 32 * 1000 and info.num_samples == 1000
    assert 1000 < info.ess <= info.num_proposals
    assert info.ess_fraction == pytest.approx(info.ess / info.num_proposals)
    assert c2st(raw, ref) > 0.7  # the proposal is deliberately poor
    assert c2st(corrected, ref) < 0.55
    # the evidence estimate is close to the analytic log p(x_o) (N(0, 0.2 I))
    evidence = torch.distributions.Normal(0.0, math.sqrt(0.2)).log_prob(x_o).sum()
    assert abs(info.log_evidence - float(evidence)) < 0.5


def test_proposal_equal_to_target_gives_full_ess(poor_npe):
    """With log_likelihood = log q - log prior the weights are constant: ESS = M."""
    problem, post = poor_npe
    x_o = problem.observation(2)

    def loglik(theta, x):
        return post.log_prob(theta, x=x[0]) - problem.prior.log_prob(theta)

    _, info = importance_sample(post, 200, x_o, loglik, oversampling=4, seed=0)
    assert info.ess == pytest.approx(800, rel=1e-3)
    assert info.max_weight == pytest.approx(1 / 800, rel=1e-3)


def test_resampled_draws_are_proposals_and_seed_reproduces(poor_npe):
    problem, post = poor_npe
    x_o = problem.observation(1)
    a = post.sample((50,), x=x_o, seed=3, correct="is", log_likelihood=_loglik,
                    oversampling=4, min_ess=1)
    b = post.sample((50,), x=x_o, seed=3, correct="is", log_likelihood=_loglik,
                    oversampling=4, min_ess=1)
    assert torch.equal(a, b) and a.shape == (50, 10)
    # every resampled draw is one of the proposals (SIR never invents points)
    props = post.sample((200,), x=x_o, seed=3)
    gap = (a[:, None, :] - props[None, :, :]).abs().amax(-1).min(1).values
    assert bool((gap == 0).all())


def test_tiny_ess_raises_naming_the_fix(poor_npe):
    problem, post = poor_npe
    x_o = problem.observation(1)

    def sharp(theta, x):  # a likelihood far narrower than the proposal
        return torch.distributions.Normal(theta, 1e-3).log_prob(x).sum(-1)

    with pytest.raises(ImportanceSamplingError, match="oversampling="):
        post.sample((100,), x=x_o, correct="is", log_likelihood=sharp, seed=0)


def test_ess_below_n_warns(poor_npe):
    problem, post = poor_npe
    x_o = problem.observation(1)
    with pytest.warns(UserWarning, match="repeat proposals"):
        post.sample((500,), x=x_o, correct="is", log_likelihood=_loglik, seed=0,
                    oversampling=1, min_ess=1)


def test_bad_arguments_are_explained(poor_npe):
    problem, post = poor_npe
    x_o = problem.observation(1)
    with pytest.raises(ValueError, match="log_likelihood"):
        post.sample((10,), x=x_o, correct="is")
    with pytest.raises(ValueError, match="correct='is'"):
        post.sample((10,), x=x_o, correct="smc", log_likelihood=_loglik)
    with pytest.raises(ValueError, match="oversampling"):
        post.sample((10,), x=x_o, correct="is", log_likelihood=_loglik, oversampling=0)
    with pytest.raises(TypeError, match="log_likelihood must be"):
        post.sample((10,), x=x_o, correct="is", log_likelihood=3.0)
    with pytest.raises(ValueError, match="one value per row"):
        post.sample((10,), x=x_o, correct="is", log_likelihood=lambda t, x: t)
    with pytest.raises(ImportanceSamplingError, match="do not overlap"):
        post.sample((10,), x=x_o, correct="is",
                    log_likelihood=lambda t, x: torch.full((t.shape[0],), -math.inf))


def test_trained_nle_posterior_as_likelihood(poor_npe):
    """A trained NLE posterior (its per-trial learned log-likelihood) gives the weights."""
    problem, post = poor_npe
    sims = simulate(problem, 2000, seed=1)
    nle = fit(problem, sims, method="nle", max_epochs=30, progress=False, detector=False,
              seed=0)
    x_o = problem.observation(1)
    draws = post.sample((500,), x=x_o, seed=0, correct="is", log_likelihood=nle)
    info = post.last_importance
    assert draws.shape == (500, 10) and 100 < info.ess < info.num_proposals
    # the learned likelihood moves the draws toward the analytic posterior mean
    true_mean = gaussian_linear_posterior(x_o).mean.float()
    raw = post.sample((500,), x=x_o, seed=0)
    assert float((draws.mean(0) - true_mean).norm()) < float((raw.mean(0) - true_mean).norm())
