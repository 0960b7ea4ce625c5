"""Calibration diagnostics on exact Gaussian posteriors (no training).

TARP paper §4.1 toy: ``mu ~ U(-5, 5)^D``, ``log sigma ~ U(-5, -1)^D``, ``theta* ~ N(mu, sigma)``;
the observation is ``x = (mu, log sigma)``. Fake posteriors sample and evaluate exactly:

- correct ``N(mu, sigma)``; over-confident ``N(mu, 0.5 sigma)``; under-confident
  ``N(mu, 2 sigma)``; biased ``N(mu + sign(mu) sigma, sigma)`` (pushed away from 0, like the
  paper's bias).

Thresholds (from diagnostics.ecp): a check *passes* when its uniformity p-value >= 0.05 and
*fails* when it is < 1e-3. D = 3, N = 300 test pairs, n = 1000 samples, fixed seeds.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.distributions import Normal

from diagnostics import (
    calibration_pairs,
    diagnose,
    mmd_test,
    posterior_samples,
    sbc,
    tarp_coverage,
)
from diagnostics.coverage import expected_coverage
from diagnostics.ecp import ecp_curve
from diagnostics.sbc import ecdf_band
from sbi_core import Posterior, gaussian

D = 3


class FakeGaussian(Posterior):
    """Exact Gaussian posterior of the TARP toy with a width factor and an outward bias."""

    method = "fake"

    def __init__(self, scale: float = 1.0, bias: float = 0.0):
        prior = gaussian(torch.zeros(D), std=10 * torch.ones(D))
        super().__init__(nn.Identity(), prior, {"x_shape": [2 * D],
                                                "param_names": ["a", "b", "c"]})
        self.scale, self.bias = scale, bias

    def _dist(self, xs):
        mu, sigma = xs[:, :D], xs[:, D:].exp()
        return Normal(mu + self.bias * mu.sign() * sigma, self.scale * sigma)

    def _sample_batched(self, n, xs, **kwargs):
        return self._dist(xs).sample((n,))

    def _log_prob_batched(self, theta, xs, **kwargs):
        return self._dist(xs).log_prob(theta).sum(-1)


class PriorAsPosterior(Posterior):
    """Paper §4.2: theta ~ N(0, 1), x = theta + N(0, 0.1^2), the 'posterior' returns the prior."""

    def __init__(self):
        super().__init__(nn.Identity(), gaussian(torch.zeros(1), std=torch.ones(1)),
                         {"x_shape": [1]})

    def _sample_batched(self, n, xs, **kwargs):
        return self.prior.sample((n, xs.shape[0]))

    def _log_prob_batched(self, theta, xs, **kwargs):
        return self.prior.log_prob(theta)


def toy_pairs(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.rand(n, D, generator=g) * 10 - 5
    log_sigma = torch.rand(n, D, generator=g) * 4 - 5
    theta = mu + log_sigma.exp() * torch.randn(n, D, generator=g)
    return theta, torch.cat([mu, log_sigma], 1)


CASES = {
    "correct": (FakeGaussian(), "pass", 0),
    "over_confident": (FakeGaussian(scale=0.5), "fail", -1),
    "under_confident": (FakeGaussian(scale=2.0), "fail", +1),
    "biased": (FakeGaussian(bias=1.0), "fail", None),
}


@pytest.fixture(scope="module")
def pairs():
    return toy_pairs(300)


@pytest.mark.parametrize("case", list(CASES))
def test_paper_gaussian_cases_classified_by_every_check(case, pairs):
    posterior, expected, direction = CASES[case]
    theta, x = pairs
    report = diagnose(posterior, sims=(theta, x), num=300, num_samples=1000, progress=False,
                      checks=["tarp", "tarp_x", "sbc", "coverage"])
    for name in ("tarp", "tarp_x", "sbc", "coverage"):
        sec = report.sections[name]
        assert sec["status"] == expected, (case, name, sec["why"])
    if direction is not None:  # ATC sign: < 0 over-confident, > 0 under-confident
        for name in ("tarp", "coverage"):
            atc = report.sections[name]["metrics"]["atc"]
            assert atc * direction > 0.05 if direction else abs(atc) < 0.03, (case, name, atc)
    if case == "over_confident":
        assert "over-confident" in report.sections["sbc"]["why"]
    if case == "under_confident":
        assert "under-confident" in report.sections["sbc"]["why"]
    assert report.status == expected


def test_posterior_equal_to_prior_caught_only_by_x_dependent_references():
    g = torch.Generator().manual_seed(3)
    theta = torch.randn(500, 1, generator=g)
    x = theta + 0.1 * torch.randn(500, 1, generator=g)
    post = PriorAsPosterior()
    samples = posterior_samples(post, x, 1000, seed=0, progress=False)
    blind = tarp_coverage(samples, theta, references="box")
    assert blind.ks_pvalue > 0.05  # x-independent references cannot see it (paper §4.2)

    def near_x(xs):  # the paper's theta_ref = x + U(-1, 1)
        return xs + torch.rand(xs.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1

    for refs in (near_x, "regression"):
        res = tarp_coverage(samples, theta, references=refs, xs=x)
        assert res.status == "fail" and res.ks_pvalue < 1e-3, res.verdict()


def test_tarp_grid_spans_unit_interval_and_bootstrap_uses_a_generator(pairs):
    theta, x = pairs
    samples = FakeGaussian(scale=0.5).sample_batched((500,), x, seed=0)
    res = tarp_coverage(samples, theta, num_bins=20, num_bootstrap=50, seed=4)
    assert res.alpha[0] == 0 and res.alpha[-1] == 1 and len(res.alpha) == 21
    assert res.ecp[0] == 0 and res.ecp[-1] == 1
    # replicates differ from each other (no per-replicate reseeding), and are reproducible
    assert (res.ecp_bootstrap[0] != res.ecp_bootstrap[1]).any()
    again = tarp_coverage(samples, theta, num_bins=20, num_bootstrap=50, seed=4)
    assert torch.equal(res.ecp_bootstrap, again.ecp_bootstrap)


def test_tarp_normalization_makes_it_scale_invariant(pairs):
    theta, x = pairs
    samples = FakeGaussian().sample_batched((300,), x, seed=0)
    scale = torch.tensor([1.0, 1000.0, 0.001])
    a = tarp_coverage(samples, theta, seed=1)
    b = tarp_coverage(samples * scale, theta * scale, seed=1)
    assert torch.allclose(a.coverage_values, b.coverage_values, atol=1e-3)


def test_ties_are_broken_at_random():
    # discrete samples: every sample equals the truth; f must still be ~uniform, not 0
    theta = torch.zeros(400, 2)
    samples = torch.zeros(100, 400, 2)
    res = sbc(samples, theta)
    assert res.pvalue > 0.05
    f = tarp_coverage(samples, theta, normalize=False, references=torch.ones(400, 2))
    assert f.ks_pvalue > 0.05


def test_ecp_curve_counts_fraction_below_alpha():
    f = torch.tensor([0.05, 0.15, 0.15, 0.95])
    alpha, ecp = ecp_curve(f, num_bins=10)
    assert torch.allclose(ecp[1], torch.tensor(0.25)) and torch.allclose(ecp[2], torch.tensor(0.75))


def test_expected_coverage_from_log_prob_matches_sbc_verdicts(pairs):
    theta, x = pairs
    for post, ok in ((FakeGaussian(), True), (FakeGaussian(scale=0.5), False)):
        samples = post.sample_batched((1000,), x, seed=0)
        res = expected_coverage(post, samples, theta, x, progress=False)
        assert (res.ks_pvalue > 0.05) == ok, res.verdict()


def test_ecdf_band_has_its_simultaneous_coverage():
    z, lower, upper = ecdf_band(100, confidence=0.95, seed=0)
    g = torch.Generator().manual_seed(5)
    u = torch.rand(1000, 100, generator=g).sort(1).values.numpy()
    import numpy as np

    ecdf = np.stack([np.searchsorted(row, z, side="right") / 100 for row in u]) - z
    inside = ((ecdf >= lower - 1e-9) & (ecdf <= upper + 1e-9)).all(1).mean()
    assert 0.92 <= inside <= 0.98


def test_mmd_separates_shifted_samples():
    g = torch.Generator().manual_seed(0)
    p = torch.randn(400, 2, generator=g)
    same = torch.randn(400, 2, generator=g)
    shifted = torch.randn(400, 2, generator=g) + 0.5
    stat0, p0 = mmd_test(p, same)
    stat1, p1 = mmd_test(p, shifted)
    # the permutation p-value is uniform under the null: same-distribution p > 0.01 (99%)
    assert p0 > 0.01 and p1 < 0.01 and stat1 > stat0


def test_nan_simulations_are_dropped_with_a_warning(pairs):
    theta, x = pairs
    x = x.clone()
    x[:7, 0] = float("nan")
    x[7, 1] = float("inf")
    with pytest.warns(UserWarning, match="Dropping 8 of 300 invalid"):
        t, xs = calibration_pairs(sims=(theta, x), num=300)
    assert len(t) == 292 and torch.isfinite(xs).all()
    with pytest.warns(UserWarning, match="Dropping 8"):
        report = diagnose(FakeGaussian(), sims=(theta, x), num=300, num_samples=200,
                          checks=["tarp", "sbc"], progress=False)
    assert report.meta["num_test_pairs"] == 292


def test_bad_input_gets_clear_errors(pairs):
    theta, x = pairs
    with pytest.raises(ValueError, match="samples \\(n, N, D\\)"):
        tarp_coverage(torch.zeros(10, 5, 3), theta)
    with pytest.raises(ValueError, match="Unknown check"):
        diagnose(FakeGaussian(), sims=(theta, x), checks=["nope"], progress=False)
    with pytest.raises(ValueError, match="needs test simulations"):
        diagnose(FakeGaussian())
    with pytest.raises(ValueError, match="D=3"):
        diagnose(FakeGaussian(), sims=(theta[:, :2], x), progress=False)
    with pytest.raises(ValueError, match="References must have shape"):
        tarp_coverage(torch.zeros(10, 300, 3), theta, references=torch.zeros(5, 3))


def test_regression_references_do_not_leak_the_truth_with_many_features():
    # 150 pairs, 120 noisy features: an in-sample fit would memorize theta* and fail a
    # correct posterior; cross-fitted references keep it calibrated (p >= 0.05).
    g = torch.Generator().manual_seed(2)
    theta = torch.randn(150, 1, generator=g)
    x = torch.cat([theta + 0.5 * torch.randn(150, 1, generator=g),
                   torch.randn(150, 119, generator=g)], 1)
    post_var = 0.25 / 1.25  # analytic posterior of the first feature
    mean = x[:, :1] / 1.25
    samples = mean + post_var**0.5 * torch.randn(1000, 150, 1, generator=g)
    res = tarp_coverage(samples, theta, references="regression", xs=x)
    assert res.ks_pvalue > 0.05, res.verdict()
