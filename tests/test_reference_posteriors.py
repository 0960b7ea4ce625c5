"""Reference posterior samplers: analytic checks, MCMC against exact posteriors, cache."""

import numpy as np
import pytest
import torch
from scipy.stats import truncnorm

from diagnostics.c2st import c2st
from simulators import get_problem
from simulators.gaussian_linear import gaussian_linear_posterior
from simulators.gaussian_mixture import gaussian_mixture_reference
from simulators.reference_mcmc import cached_reference, de_mcmc


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SBI_CORE_CACHE", str(tmp_path / "cache"))


def test_gaussian_linear_reference_matches_analytic():
    p = get_problem("gaussian_linear")
    x_o = p.observation(1)
    ref = p.reference_posterior(x_o, 1000, 0)
    torch.manual_seed(5)
    exact = torch.distributions.MultivariateNormal(0.5 * x_o, 0.05 * torch.eye(10)).sample((1000,))
    assert c2st(ref, exact, seed=0) < 0.55


def test_de_mcmc_recovers_analytic_gaussian_posterior():
    """The MCMC used for slcp/glm/sir/lv, run on a likelihood with a known posterior."""
    p = get_problem("gaussian_linear")
    x_o = p.observation(2)

    def log_lik(theta):
        return -0.5 * ((theta - x_o.double()) ** 2).sum(1) / 0.1

    # Records far apart (thin=20), so that repeated states (rejections) do not give the
    # classifier duplicates to memorize across folds.
    samples = de_mcmc(log_lik, p.prior, 1000, seed=0, num_chains=1000, num_init=20_000,
                      warmup=200, thin=20)
    exact = gaussian_linear_posterior(x_o).sample((1000,)).float()
    assert torch.allclose(samples.mean(0), exact.mean(0), atol=0.03)
    assert c2st(samples, exact, seed=0) < 0.55


def test_de_mcmc_covers_the_four_slcp_modes():
    from simulators.slcp import slcp_log_likelihood
    p = get_problem("slcp")
    x_o = p.observation(1)
    s = de_mcmc(lambda t: slcp_log_likelihood(t, x_o), p.prior, 2000, seed=0, num_chains=600,
                num_init=200_000, warmup=300, thin=10)
    for j in (2, 3):
        frac = float((s[:, j] > 0).float().mean())
        assert 0.4 < frac < 0.6, (j, frac)
    quadrants = torch.stack([(s[:, 2] > 0), (s[:, 3] > 0)], 1).long() @ torch.tensor([1, 2])
    counts = torch.bincount(quadrants, minlength=4)
    assert counts.min() > 0.15 * 2000


def test_gaussian_linear_uniform_is_truncated_gaussian():
    p = get_problem("gaussian_linear_uniform")
    x_o = p.observation(3)
    s = p.reference_posterior(x_o, 20_000, 0)
    assert (s.abs() <= 1).all()
    sd = 0.1**0.5
    a, b = (-1 - x_o.numpy()) / sd, (1 - x_o.numpy()) / sd
    mean = truncnorm.mean(a, b, loc=x_o.numpy(), scale=sd)
    std = truncnorm.std(a, b, loc=x_o.numpy(), scale=sd)
    assert np.abs(s.mean(0).numpy() - mean).max() < 0.01
    assert np.abs(s.std(0).numpy() - std).max() < 0.01


def test_gaussian_mixture_reference_mixture_weights():
    x_o = torch.tensor([1.0, -2.0])
    s = gaussian_mixture_reference(x_o, 20_000, 0)
    r = (s - x_o).norm(dim=1)
    # P(r < 0.3): narrow component (sd 0.1) almost surely, wide one 1 - exp(-0.045).
    expect = 0.5 * (1 - np.exp(-0.3**2 / (2 * 0.01))) + 0.5 * (1 - np.exp(-0.3**2 / 2))
    assert abs(float((r < 0.3).float().mean()) - expect) < 0.015


def test_two_moons_reference_shows_both_crescents():
    p = get_problem("two_moons")
    s = p.reference_posterior(p.observation(1), 5000, 0)
    branch = (s[:, 0] + s[:, 1]) > 0  # the two mirror-image crescents
    assert 0.3 < float(branch.float().mean()) < 0.7
    centers = torch.stack([s[branch].mean(0), s[~branch].mean(0)])
    assert (centers[0] - centers[1]).norm() > 0.3


def test_reference_cache_runs_sampler_once(tmp_path):
    calls = []

    def sampler():
        calls.append(1)
        return torch.randn(7, 3)

    x = torch.tensor([1.0, 2.0])
    a = cached_reference("toy", x, 7, 0, sampler)
    b = cached_reference("toy", x, 7, 0, sampler)
    c = cached_reference("toy", x + 1, 7, 0, sampler)
    assert len(calls) == 2 and torch.equal(a, b) and not torch.equal(a, c)
    assert len(list((tmp_path / "cache" / "reference" / "toy").glob("*.pt"))) == 2


@pytest.mark.slow
@pytest.mark.parametrize("name", ["slcp", "bernoulli_glm", "sir", "lotka_volterra"])
def test_mcmc_reference_sbc(name):
    """Simulation-based calibration of the MCMC references (slow: ~3 min for slcp and
    bernoulli_glm, ~20 min each for the ODE problems on a loaded 2-core machine)."""
    from simulators.reference_check import sbc_ranks, sbc_uniformity_pvalues
    runs, draws = (10, 100) if name in ("sir", "lotka_volterra") else (30, 200)
    ranks = sbc_ranks(get_problem(name), num_runs=runs, num_posterior=draws, seed=0)
    pvalues = sbc_uniformity_pvalues(ranks, draws)
    assert min(pvalues) > 0.01 / len(pvalues), pvalues


def test_sbc_uniformity_detects_miscalibration():
    from simulators.reference_check import sbc_uniformity_pvalues
    gen = torch.Generator().manual_seed(0)
    uniform = torch.randint(0, 101, (200, 2), generator=gen)
    biased = torch.randint(0, 30, (200, 2), generator=gen)  # true values sit too low
    assert min(sbc_uniformity_pvalues(uniform, 100)) > 0.01
    assert max(sbc_uniformity_pvalues(biased, 100)) < 1e-6
