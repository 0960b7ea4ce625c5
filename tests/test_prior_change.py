"""posterior.with_prior: importance reweighting (any posterior) and its failure modes.

The trained posterior here is the exact posterior of the linear Gaussian toy
(tests/_analytic_gaussian.py: prior N(0, I), x = theta + 0.5 eps), so any mismatch comes
from the reweighting itself. Under a new prior N(m, s^2 I) the posterior is Gaussian with
precision 1/s^2 + 4 and mean (m/s^2 + 4x) / precision.
"""

from __future__ import annotations

import math

import pytest
import scipy.stats as st
import torch
from _analytic_gaussian import GaussianEstimator, gaussian_posterior

from diagnostics.c2st import c2st
from sbi_core.posterior import DirectPosterior
from sbi_core.prior_change import (
    LowESSError,
    PriorSupportError,
    ReweightedPosterior,
    effective_sample_size,
)
from sbi_core.priors import box_uniform, gaussian
from sbi_core.serialization import ModelFileError, save

X_O = torch.tensor([0.5, -0.3])


def exact(m: torch.Tensor, s: float, n: int = 1000, seed: int = 0):
    prec = 1 / s ** 2 + 4.0
    mean = (m / s ** 2 + 4.0 * X_O) / prec
    g = torch.Generator().manual_seed(seed)
    return mean + torch.randn(n, 2, generator=g) / math.sqrt(prec), mean, 1 / math.sqrt(prec)


def test_reweighting_matches_the_analytic_posterior_under_a_new_gaussian_prior():
    m = torch.tensor([1.0, 0.0])
    post = gaussian_posterior(2).with_prior(gaussian(m, std=torch.full((2,), 0.5)))
    assert isinstance(post, ReweightedPosterior)
    samples = post.sample((1000,), X_O, seed=0)
    ref, mean, sd = exact(m, 0.5)
    assert c2st(samples, ref, seed=0) < 0.55
    # the effective sample size is reported, and is large for a nearby prior
    assert post.last_ess is not None and 5000 < float(post.last_ess[0]) <= 20_000
    assert 0.25 < float(post.info["ess_fraction"][0]) < 1.0
    # log_prob is normalized by an importance-sampling estimate of Z(x)
    lp = post.log_prob(ref[:200], X_O)
    truth = torch.distributions.Normal(mean, sd).log_prob(ref[:200]).sum(-1)
    assert float((lp - truth).abs().max()) < 0.05
    unnorm = post.log_prob(ref[:5], X_O, normalize=False)
    assert not torch.allclose(unnorm, lp[:5], atol=1e-3)  # differs by log Z
    assert torch.allclose(post.map(X_O), mean.float(), atol=2e-2)


def test_reweighting_accepts_scipy_and_torch_priors():
    post = gaussian_posterior(2)
    ref_mean = exact(torch.tensor([1.0, 0.0]), 0.5)[1]
    for prior in ([st.norm(1.0, 0.5), st.norm(0.0, 0.5)],
                  torch.distributions.Independent(
                      torch.distributions.Normal(torch.tensor([1.0, 0.0]), 0.5), 1)):
        mean = post.with_prior(prior).sample((4000,), X_O, seed=1).mean(0)
        assert torch.allclose(mean, ref_mean.float(), atol=0.03)


def test_reweighting_refuses_a_prior_outside_the_training_support():
    prior = box_uniform([-3.0, -3.0], [3.0, 3.0])
    spec = {"param_names": ["a", "b"], "x_shape": [2], "prior": prior.spec}
    post = DirectPosterior(GaussianEstimator(2), prior, spec)
    with pytest.raises(PriorSupportError, match="outside the training prior's support"):
        post.with_prior(box_uniform([5.0, 5.0], [6.0, 6.0]))
    with pytest.raises(PriorSupportError, match="max_outside_mass"):
        post.with_prior(gaussian(torch.zeros(2), std=torch.full((2,), 2.0)))
    # a prior inside the support (or nearly: 0.3% outside) is fine
    post.with_prior(gaussian(torch.zeros(2), std=torch.full((2,), 1.0)), max_outside_mass=0.01)


def test_collapsed_effective_sample_size_raises_and_names_the_fixes():
    post = gaussian_posterior(2).with_prior(gaussian(torch.tensor([4.0, 0.0]),
                                                     std=torch.full((2,), 0.05)))
    with pytest.raises(LowESSError, match="num_proposals=.*prior_npe"):
        post.sample((100,), X_O, seed=0)
    assert float(post.last_ess[0]) < 100
    # min_ess=0 returns the degenerate resample (the benchmark scores it)
    degenerate = gaussian_posterior(2).with_prior(
        gaussian(torch.tensor([4.0, 0.0]), std=torch.full((2,), 0.05)), min_ess=0)
    assert degenerate.sample((50,), X_O, seed=0).unique(dim=0).shape[0] < 10


def test_effective_sample_size_of_known_weights():
    assert float(effective_sample_size(torch.zeros(100))) == pytest.approx(100.0)
    lw = torch.tensor([0.0, -torch.inf, -torch.inf])
    assert float(effective_sample_size(lw)) == pytest.approx(1.0)
    assert float(effective_sample_size(torch.full((3,), -torch.inf))) == 0.0


def test_reweighted_posterior_is_not_saved_silently(tmp_path):
    post = gaussian_posterior(2).with_prior(gaussian(torch.zeros(2), std=torch.ones(2)))
    with pytest.raises(ModelFileError, match="with_prior"):
        save(post, tmp_path / "m.pt")
    assert not (tmp_path / "m.pt").exists()


def test_with_prior_rejects_conditioned_method_for_plain_posteriors():
    with pytest.raises(ValueError, match="prior_npe"):
        gaussian_posterior(2).with_prior(gaussian(torch.zeros(2), std=torch.ones(2)),
                                         method="conditioned")


def test_diagnose_a_reweighted_posterior_tests_it_under_its_new_prior():
    """Calibration holds under the prior a posterior targets: diagnose draws the test
    parameters from the new prior (inside the training support), so the exact posterior
    reweighted to N([1, 0], 0.3^2) is calibrated (it would look badly over-confident on test
    parameters from the training prior N(0, I))."""
    from diagnostics.report import diagnose
    from simulators.linear_gaussian import linear_gaussian

    problem = linear_gaussian(dim=2, prior_std=1.0, noise_std=0.5)
    post = gaussian_posterior(2).with_prior(gaussian(torch.tensor([1.0, 0.0]),
                                                     std=torch.full((2,), 0.3)))
    rep = diagnose(post, problem, num=150, num_samples=300, checks=["sbc", "coverage"],
                   seed=0, progress=False)
    assert rep.status == "pass", {k: v["why"] for k, v in rep.sections.items()}
    assert "posterior's own prior" in rep.meta["test_data"]
    theta = rep.context.theta
    assert abs(float(theta[:, 0].mean()) - 1.0) < 0.1 and float(theta.std(0).max()) < 0.4
