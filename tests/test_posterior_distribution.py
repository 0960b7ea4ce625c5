"""posterior.condition(x_o) is a torch Distribution usable in plain torch code."""

import math

import pytest
import torch
from torch import nn
from torch.distributions import Distribution, MultivariateNormal, constraints

from sbi_core import box_uniform
from sbi_core.conditioned import ConditionedPosterior
from sbi_core.mcmc_posterior import MCMCPosterior
from sbi_core.posterior import DirectPosterior
from simulators.linear_gaussian import linear_gaussian_posterior

X = torch.tensor([0.4, -0.3])


def test_is_a_torch_distribution_with_the_right_shapes(trained_npe):
    q = trained_npe.condition(X)
    assert isinstance(q, Distribution) and isinstance(q, ConditionedPosterior)
    assert q.batch_shape == () and q.event_shape == (2,)
    assert repr(q.support) == repr(trained_npe.prior.support)  # Independent(Real(), 1)
    assert not q.has_rsample
    assert q.sample().shape == (2,)
    assert q.sample((3, 4)).shape == (3, 4, 2)
    value = torch.randn(5, 3, 2) * 0.3
    lp = q.log_prob(value)
    assert lp.shape == (5, 3)
    assert torch.allclose(lp.reshape(-1), trained_npe.log_prob(value.reshape(-1, 2), X))
    assert q.log_prob(torch.zeros(2)).shape == ()
    with pytest.raises(ValueError):  # torch's own shape validation
        q.log_prob(torch.zeros(4, 3))
    assert "ConditionedPosterior(DirectPosterior" in repr(q)


def test_importance_sampling_with_the_posterior_as_proposal(trained_npe):
    """Evidence and posterior mean of the linear Gaussian by importance sampling with q as the
    proposal, against their analytic values (x ~ N(0, 1.25 I); posterior mean 0.8 x)."""
    torch.manual_seed(0)
    q = trained_npe.condition(X)
    prior = trained_npe.prior
    theta = q.sample((4000,))
    log_lik = MultivariateNormal(theta, 0.25 * torch.eye(2)).log_prob(X)
    log_w = prior.log_prob(theta) + log_lik - q.log_prob(theta)
    log_evidence = torch.logsumexp(log_w, 0) - math.log(theta.shape[0])
    true = MultivariateNormal(torch.zeros(2), 1.25 * torch.eye(2)).log_prob(X)
    assert abs(float(log_evidence - true)) < 0.05
    mean = (torch.softmax(log_w, 0)[:, None] * theta).sum(0)
    assert torch.allclose(mean, linear_gaussian_posterior(X).mean, atol=0.05)


def test_condition_uses_the_default_x_and_checks_x_at_once(trained_npe):
    with pytest.raises(ValueError, match="set_default_x"):
        trained_npe.condition()
    with pytest.raises(ValueError, match="shape"):
        trained_npe.condition(torch.zeros(3))
    try:
        q = trained_npe.set_default_x(X).condition()
        assert torch.equal(q.x, X)
    finally:
        trained_npe.set_default_x(None)


class _BoxEstimator(nn.Module):
    """Uniform on [-1, 1]^2 (a stand-in estimator with an exact density)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def sample(self, n, xs):
        return torch.rand(n, xs.shape[0], 2) * 2 - 1

    def log_prob(self, theta, x):
        return torch.full(theta.shape[:1], -math.log(4.0))


def test_support_and_validate_args_follow_torch():
    post = DirectPosterior(_BoxEstimator(), box_uniform([-1, -1], [1, 1]),
                           {"x_shape": [2], "param_names": ["a", "b"]})
    outside = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    q = post.condition(torch.zeros(2))
    assert isinstance(q.support, constraints.Constraint)
    assert q.support.check(outside).tolist() == [True, False]
    with pytest.raises(ValueError, match="support"):  # like any torch distribution
        q.log_prob(outside)
    lp = post.condition(torch.zeros(2), validate_args=False).log_prob(outside)
    assert lp[0] == pytest.approx(-math.log(4.0), abs=1e-4) and lp[1] == -math.inf
    assert q.support.check(q.sample((100,))).all()


class _Likelihood(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def log_likelihood(self, theta, x):
        return -((x - theta) ** 2).sum(-1) / (2 * 0.25)


def test_mcmc_posterior_conditions_too(linear_problem):
    post = MCMCPosterior(_Likelihood(), linear_problem.prior, linear_problem.spec(),
                         mcmc={"num_chains": 10, "warmup_steps": 20, "progress": False})
    q = post.condition(torch.stack([X, X]))  # a set of 2 iid observations
    assert q.sample((30,)).shape == (30, 2)
    assert q.log_prob(torch.zeros(4, 2)).shape == (4,)
