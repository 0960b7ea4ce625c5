"""Bar (Riemann) distribution: normalization, cdf/icdf, sampling, mean, borders with ties."""

import math

import pytest
import torch

from estimators.bar_distribution import BarDistribution, quantile_borders

K = 40


def _bar(left: bool, right: bool, d: int = 1) -> BarDistribution:
    gen = torch.Generator().manual_seed(0)
    borders = quantile_borders(torch.randn(5000, d, generator=gen), K,
                               torch.full((d,), -math.inf if left else -3.0),
                               torch.full((d,), math.inf if right else 3.0))
    return BarDistribution(borders, torch.full((d,), left), torch.full((d,), right))


@pytest.mark.parametrize("left,right", [(False, False), (True, True), (True, False)])
def test_density_integrates_to_one(left, right):
    bar = _bar(left, right)
    logits = torch.randn(1, K, generator=torch.Generator().manual_seed(1))
    y = torch.linspace(-40, 40, 400_001)[:, None]
    dens = bar.log_prob(logits.expand(len(y), -1, -1), y).exp()
    integral = float(torch.trapezoid(dens[:, 0], y[:, 0]))
    assert integral == pytest.approx(1.0, abs=2e-3)


def test_bounded_sides_have_no_mass_outside():
    bar = _bar(False, False)
    logits = torch.zeros(3, 1, K)
    lp = bar.log_prob(logits, torch.tensor([[-3.5], [0.0], [3.5]]))
    assert torch.isinf(lp[0]).all() and torch.isinf(lp[2]).all() and torch.isfinite(lp[1]).all()
    samples = bar.sample(torch.randn(1, K).expand(20_000, -1, -1))
    assert samples.min() >= -3.0 and samples.max() <= 3.0


@pytest.mark.parametrize("left,right", [(False, False), (True, True)])
def test_icdf_inverts_cdf(left, right):
    bar = _bar(left, right, d=2)
    logits = torch.randn(500, 2, K, generator=torch.Generator().manual_seed(2))
    u = torch.rand(500, 2, generator=torch.Generator().manual_seed(3)) * 0.998 + 0.001
    y = bar.icdf(logits, u)
    assert torch.allclose(bar.cdf(logits, y), u, atol=1e-4)
    # cdf is monotone and agrees with the integral of the density on a grid
    grid = torch.linspace(-6, 6, 200_001)[:, None].expand(-1, 2)
    lg = logits[:1].expand(len(grid), -1, -1)
    cdf = bar.cdf(lg, grid)
    assert (cdf.diff(dim=0) >= -1e-6).all()
    dens = bar.log_prob(lg, grid).exp()
    integral = torch.trapezoid(dens, grid, dim=0)
    assert torch.allclose(integral, cdf[-1] - cdf[0], atol=5e-4)


def test_sample_mean_matches_mean_and_cdf():
    bar = _bar(True, True, d=2)
    logits = torch.randn(2, K, generator=torch.Generator().manual_seed(4))
    torch.manual_seed(5)
    s = bar.sample(logits.expand(200_000, -1, -1))
    assert torch.allclose(s.mean(0), bar.mean(logits), atol=0.02)
    for q in (-1.0, 0.3, 2.0):
        emp = (s <= q).float().mean(0)
        assert torch.allclose(emp, bar.cdf(logits, torch.full((2,), q)), atol=0.005)


def test_uniform_logits_reproduce_prior_cdf():
    gen = torch.Generator().manual_seed(6)
    prior = torch.distributions.Gamma(2.0, 1.0)
    draws = prior.sample((20_000, 1))
    bar = BarDistribution(quantile_borders(draws, K, torch.zeros(1), torch.full((1,), math.inf)),
                          torch.tensor([False]), torch.tensor([True]))
    y = torch.rand(1000, 1, generator=gen) * 6
    model_cdf = bar.cdf(torch.zeros(1000, 1, K), y)
    assert torch.allclose(model_cdf, prior.cdf(y), atol=0.02)


def test_tied_prior_samples_give_no_zero_width_bucket():
    draws = torch.randint(0, 3, (10_000, 2)).float()  # three values only: massive ties
    borders = quantile_borders(draws, 100)
    assert (borders.diff(dim=-1) > 0).all()
    bar = BarDistribution(borders)
    lp = bar.log_prob(torch.zeros(10_000, 2, 100), draws)
    assert torch.isfinite(lp).all()


def test_invalid_borders_and_degenerate_prior_raise():
    with pytest.raises(ValueError, match="strictly increasing"):
        BarDistribution(torch.tensor([0.0, 1.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="no spread"):
        quantile_borders(torch.ones(100, 1), 10)
    with pytest.raises(ValueError, match="NaN"):
        quantile_borders(torch.tensor([[0.0], [math.nan]]), 10)
