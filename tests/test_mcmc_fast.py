"""The default MCMC sampler (method="auto" → batched HMC with dual-averaging step sizes and a
dense mass matrix; slice as fallback) on analytic targets: moments, C2ST, R-hat, ESS-driven
thinning, determinism, and the likelihood posterior with iid trials."""

import math

import pytest
import torch
from torch import nn

from diagnostics.c2st import c2st
from sbi_core.mcmc import MCMCConfig, run_mcmc
from sbi_core.mcmc.hmc import adaptation_windows
from sbi_core.mcmc_posterior import MCMCPosterior
from sbi_core.priors import gaussian
from simulators.gaussian_linear import gaussian_linear, gaussian_linear_posterior

D = 10
# a correlated 10-D Gaussian with scales from 0.05 to 2: needs the dense mass matrix
_A = torch.linspace(0.05, 2.0, D)
_Q, _ = torch.linalg.qr(torch.randn(D, D, generator=torch.Generator().manual_seed(3)))
COV = (_Q * _A ** 2) @ _Q.T
MEAN = torch.linspace(-1.0, 1.0, D)
TARGET = torch.distributions.MultivariateNormal(MEAN, COV)
PRIOR = gaussian(torch.zeros(D), std=10 * torch.ones(D))


def target_potential(theta, index):
    return TARGET.log_prob(theta)


def test_default_is_hmc_and_matches_a_correlated_10d_gaussian():
    torch.manual_seed(0)
    result = run_mcmc(target_potential, PRIOR, 2000, config=MCMCConfig(progress=False))
    s = result.samples[:, 0]
    assert result.method == "hmc" and s.shape == (2000, D)
    # thresholds: ~4 standard errors of the mean / covariance of 2000 near-independent draws
    assert float(((s.mean(0) - MEAN) / _A.max()).abs().max()) < 0.15
    assert float((torch.cov(s.T) - COV).abs().max()) < 0.35
    assert float(result.rhat.max()) < 1.05 and float(result.ess.min()) > 1000
    assert result.num_divergent == 0 and 0.6 < result.acceptance_rate < 0.95
    # C2ST (2 folds of 1000 + 1000 draws; its noise sd is about 0.011): indistinguishable
    assert c2st(s[::2], TARGET.sample((1000,)), seed=0, folds=2, epochs=50) < 0.55


def test_seeded_runs_are_identical_and_differ_across_seeds():
    def run(seed):
        torch.manual_seed(seed)
        return run_mcmc(target_potential, PRIOR, 200,
                        config=MCMCConfig(progress=False, num_chains=20, warmup_steps=40)).samples

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_auto_falls_back_to_slice_without_gradients():
    def numpy_potential(theta, index):  # not differentiable through torch
        d = theta.detach().numpy() - MEAN.numpy()
        return torch.from_numpy(-0.5 * (d ** 2).sum(-1)).float()

    torch.manual_seed(0)
    result = run_mcmc(numpy_potential, PRIOR, 400,
                      config=MCMCConfig(progress=False, num_chains=20, warmup_steps=40))
    assert result.method == "slice"
    assert float((result.samples[:, 0].mean(0) - MEAN).abs().max()) < 0.3
    with pytest.raises(ValueError, match="method='slice'"):
        run_mcmc(numpy_potential, PRIOR, 40, config=MCMCConfig(method="hmc", progress=False))


def test_thinning_grows_until_the_ess_target_or_its_cap():
    torch.manual_seed(0)
    # one short leapfrog step: strongly autocorrelated, ESS far below the target
    cfg = MCMCConfig(progress=False, num_chains=10, warmup_steps=30, hmc_num_steps=1,
                     ess_fraction=0.9, max_thin=3, warn_rhat=None)
    slow = run_mcmc(target_potential, PRIOR, 100, config=cfg)
    assert slow.thin == 3 and slow.samples.shape == (100, 1, D)
    assert slow.chains.shape == (10, 10, 1, D)
    fixed = run_mcmc(target_potential, PRIOR, 100,
                     config=MCMCConfig(**{**cfg.to_dict(), "ess_fraction": None}))
    assert fixed.thin == 1
    assert slow.summary()["thin"] == 3 and slow.summary()["num_chains"] == 10


def test_rhat_above_105_warns():
    centers = torch.tensor([[-4.0] * 2, [4.0] * 2])

    def bimodal(theta, index):
        d2 = ((theta[:, None, :] - centers[None]) ** 2).sum(-1)
        return torch.logsumexp(-0.5 * d2 / 0.1, dim=1)

    torch.manual_seed(0)
    with pytest.warns(UserWarning, match=r"R-hat .* > 1.05"):
        run_mcmc(bimodal, gaussian([0.0, 0.0], std=[5.0, 5.0]), 200,
                 config=MCMCConfig(progress=False, num_chains=20, warmup_steps=40, max_thin=1))


def test_adaptation_windows_lie_inside_warmup():
    assert adaptation_windows(10) == []
    w = adaptation_windows(100)
    assert w[0] > 15 and w[-1] == 85 and w == sorted(w)


class _GaussianLinearLikelihood(nn.Module):
    """The exact likelihood of gaussian_linear: x ~ N(theta, 0.1 I)."""

    def log_likelihood(self, theta, x):
        return torch.distributions.Normal(theta, math.sqrt(0.1)).log_prob(x).sum(-1)


def test_iid_likelihood_posterior_10d_10_trials_against_analytic():
    problem = gaussian_linear(dim=10)
    torch.manual_seed(1)
    x_o = problem.simulator(problem.prior.sample().expand(10, -1))
    post = MCMCPosterior(_GaussianLinearLikelihood(), problem.prior, problem.spec(),
                         mcmc={"progress": False})
    s = post.sample((2000,), x=x_o, seed=0)
    run = post.last_mcmc
    assert run.method == "hmc" and float(run.rhat.max()) < 1.05
    ref = gaussian_linear_posterior(x_o).sample((2000,)).float()
    assert c2st(s[::2], ref[::2], seed=0, folds=2, epochs=50) < 0.55
    again = post.sample((2000,), x=x_o, seed=0)
    assert torch.equal(s, again)
    # an NPE-like proposal (here: the analytic posterior, widened) starts the chains
    wide = torch.distributions.MultivariateNormal(ref.mean(0), 4 * torch.cov(ref.T))
    s2 = post.sample((500,), x=x_o, seed=0, init_proposal=wide, warmup_steps=30)
    assert float((s2.mean(0) - ref.mean(0)).abs().max()) < 0.05
    with pytest.raises(TypeError, match="init_proposal"):
        post.sample((10,), x=x_o, init_proposal="npe")


class _PosteriorLikeProposal:
    """Stands in for an NPE posterior: ``sample_batched`` / ``log_prob_batched`` given x."""

    def __init__(self, dist):
        self.dist, self.calls = dist, []

    def sample_batched(self, shape, xs):
        self.calls.append(tuple(xs.shape))
        return self.dist.sample((*shape, xs.shape[0]))

    def log_prob_batched(self, theta, xs):
        return self.dist.log_prob(theta)


def test_posterior_proposal_is_conditioned_on_the_first_trial_of_each_set():
    problem = gaussian_linear(dim=10)
    torch.manual_seed(2)
    sets = problem.simulator(problem.prior.sample((2,)).repeat_interleave(5, 0)).reshape(2, 5, 10)
    post = MCMCPosterior(_GaussianLinearLikelihood(), problem.prior, problem.spec(),
                         mcmc={"progress": False, "num_chains": 20, "warmup_steps": 40})
    proposal = _PosteriorLikeProposal(problem.prior)
    s = post.sample_batched((200,), sets, seed=0, init_proposal=proposal)
    assert proposal.calls == [(2, 10)]  # one call, the first trial of each of the 2 sets
    for b in range(2):
        exact = gaussian_linear_posterior(sets[b])
        assert float((s[:, b].mean(0) - exact.mean.float()).abs().max()) < 0.06
