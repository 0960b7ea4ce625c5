"""MCMC on known targets: moments, R-hat, ESS, two modes, bounded supports, batching."""

import math

import pytest
import torch
from scipy.stats import truncnorm

from sbi_core.mcmc import MCMCConfig, effective_sample_size, run_mcmc, split_rhat
from sbi_core.priors import box_uniform, gaussian, independent, within_support

MEAN = torch.tensor([1.0, -2.0])
COV = torch.tensor([[1.0, 0.6], [0.6, 2.0]])
PRECISION = torch.linalg.inv(COV)


def gaussian_potential(theta, index):
    d = theta - MEAN
    return -0.5 * ((d @ PRECISION) * d).sum(-1)


@pytest.mark.parametrize("method", ["slice", "hmc"])
def test_correlated_gaussian_moments_and_rhat(method):
    torch.manual_seed(0)
    result = run_mcmc(gaussian_potential, gaussian([0.0, 0.0], std=[5.0, 5.0]), 2000,
                      config=MCMCConfig(method=method, progress=False))
    s = result.samples[:, 0]
    assert s.shape == (2000, 2)
    assert torch.allclose(s.mean(0), MEAN, atol=0.2)
    assert torch.allclose(torch.cov(s.T), COV, atol=0.35)
    assert result.rhat.shape == (1, 2) and float(result.rhat.max()) < 1.05
    assert float(result.ess.min()) > 200
    assert result.chains.shape[0] == MCMCConfig().num_chains == 100


def test_bimodal_target_finds_both_modes_and_warns_about_mixing():
    torch.manual_seed(0)
    centers = torch.tensor([[-3.0, 0.0], [3.0, 0.0]])

    def potential(theta, index):
        d2 = ((theta[:, None, :] - centers[None]) ** 2).sum(-1)  # (M, 2)
        return torch.logsumexp(-0.5 * d2 / 0.25, dim=1)

    with pytest.warns(UserWarning, match="R-hat"):
        result = run_mcmc(potential, gaussian([0.0, 0.0], std=[5.0, 5.0]), 2000,
                          config=MCMCConfig(num_chains=40, progress=False))
    s = result.samples[:, 0]
    right = float((s[:, 0] > 0).float().mean())
    assert 0.3 < right < 0.7  # both modes, roughly equal mass
    near = ((s[:, None, :] - centers[None]) ** 2).sum(-1).min(1).values.sqrt()
    assert float((near < 1.5).float().mean()) > 0.98  # and nothing in between


@pytest.mark.parametrize("method", ["slice", "hmc"])
def test_bounded_prior_respected_and_truncated_mean_matched(method):
    torch.manual_seed(0)
    prior = box_uniform([0.0, 0.0], [1.0, 1.0])

    def potential(theta, index):  # Gaussian centred outside the box, at 1.2 with std 0.5
        return prior.log_prob(theta) - 0.5 * ((theta - 1.2) ** 2).sum(-1) / 0.25

    result = run_mcmc(potential, prior, 2000, config=MCMCConfig(method=method, progress=False))
    s = result.samples[:, 0]
    assert bool(within_support(prior, s).all())
    assert float(s.min()) > 0.0 and float(s.max()) < 1.0
    expected = truncnorm.mean((0 - 1.2) / 0.5, (1 - 1.2) / 0.5, loc=1.2, scale=0.5)
    assert torch.allclose(s.mean(0), torch.full((2,), float(expected)), atol=0.04)


def test_positive_and_interval_components_stay_in_support():
    torch.manual_seed(0)
    prior = independent(("lognormal", {"loc": 0.0, "scale": 1.0}),
                        ("uniform", {"low": -1.0, "high": 2.0}))
    result = run_mcmc(lambda t, i: prior.log_prob(t), prior, 1000,
                      config=MCMCConfig(progress=False))
    s = result.samples[:, 0]
    assert float(s[:, 0].min()) > 0.0
    assert float(s[:, 1].min()) > -1.0 and float(s[:, 1].max()) < 2.0
    # the target is the prior itself: median of LogNormal(0, 1) is 1, uniform mean 0.5
    assert abs(float(s[:, 0].median()) - 1.0) < 0.2
    assert abs(float(s[:, 1].mean()) - 0.5) < 0.15


def test_batched_observations_are_sampled_independently():
    torch.manual_seed(0)
    means = torch.tensor([[-2.0, 0.0], [0.0, 1.0], [3.0, -1.0]])

    def potential(theta, index):
        return -0.5 * ((theta - means[index]) ** 2).sum(-1) / 0.09

    result = run_mcmc(potential, gaussian([0.0, 0.0], std=[3.0, 3.0]), 500, num_batches=3,
                      config=MCMCConfig(progress=False))
    assert result.samples.shape == (500, 3, 2)
    assert torch.allclose(result.samples.mean(0), means, atol=0.06)
    assert torch.allclose(result.samples.std(0), torch.full((3, 2), 0.3), atol=0.06)
    assert result.rhat.shape == (3, 2) and result.ess.shape == (3, 2)


def test_thinning_and_sample_count():
    torch.manual_seed(0)
    cfg = MCMCConfig(num_chains=7, warmup_steps=10, thin=3, progress=False)
    result = run_mcmc(gaussian_potential, gaussian([0.0, 0.0], std=[5.0, 5.0]), 100, config=cfg)
    assert result.samples.shape == (100, 1, 2)
    assert result.chains.shape == (7, math.ceil(100 / 7), 1, 2)


def test_rhat_and_ess_on_synthetic_chains():
    torch.manual_seed(0)
    iid = torch.randn(4, 1000, 2)
    assert float((split_rhat(iid) - 1).abs().max()) < 0.01
    assert torch.allclose(effective_sample_size(iid), torch.full((2,), 4000.0), rtol=0.2)
    shifted = iid + torch.tensor([0.0, 0.0, 0.0, 3.0])[:, None, None]
    assert float(split_rhat(shifted).min()) > 1.3
    rho = 0.9  # AR(1): ESS = N (1 - rho) / (1 + rho)
    ar = torch.zeros(4, 4000)
    noise = torch.randn(4, 4000) * math.sqrt(1 - rho**2)
    for t in range(1, 4000):
        ar[:, t] = rho * ar[:, t - 1] + noise[:, t]
    expected = 16000 * (1 - rho) / (1 + rho)
    assert abs(float(effective_sample_size(ar)) - expected) / expected < 0.3
    assert torch.isnan(split_rhat(torch.randn(2, 3)))


def test_bad_options_are_rejected_with_clear_messages():
    with pytest.raises(ValueError, match="Unknown MCMC method"):
        MCMCConfig(method="gibbs")
    with pytest.raises(TypeError, match="Unknown MCMC options"):
        MCMCConfig.from_options({"chains": 3})
    with pytest.raises(ValueError, match="num_chains"):
        MCMCConfig(num_chains=0)
    prior = box_uniform([0.0], [1.0])
    with pytest.raises(ValueError, match="finite potential"):
        run_mcmc(lambda t, i: torch.full((t.shape[0],), -torch.inf), prior, 10,
                 config=MCMCConfig(progress=False))
