"""Uncertain evidence (sbi_core/uncertain.py) against closed forms on the linear Gaussian toy.

Prior N(0, I_2), x = theta + sigma eps (sigma = 0.5), evidence Normal(m, tau) (tau = 0.5):

- Jeffrey:        N(k m, (v + k^2 tau^2) I), k = 1/(1+sigma^2), v = sigma^2/(1+sigma^2);
- virtual:        N(m / (1+sigma^2+tau^2), (sigma^2+tau^2)/(1+sigma^2+tau^2) I)
                  (the reading m = x + tau eps' adds its noise to the simulator's);
- distributional: N(k xbar, v I), xbar the mean of the M evidence draws
                  (exp E log N(x; theta, sigma^2) is Gaussian in theta around the mean).

The wrapped posterior is the exact one (tests/_analytic_gaussian.py), so the wrappers are
tested, not a network. Threshold: C2ST < 0.55 on 2,000 vs 2,000 samples.
"""

from __future__ import annotations

import math

import pytest
import torch
from _analytic_gaussian import gaussian_posterior
from torch.distributions import Independent, MultivariateNormal, Normal

from diagnostics.c2st import c2st
from sbi_core.uncertain import UncertainEvidencePosterior
from simulators.linear_gaussian import linear_gaussian

SIGMA2, TAU = 0.25, 0.5
M = torch.tensor([0.5, -0.3])
N = 2000


def _evidence():
    return Independent(Normal(M, TAU * torch.ones(2)), 1)


def _normal(mean, var):
    return MultivariateNormal(mean, var * torch.eye(2))


def _closed_form(rule: str, post: UncertainEvidencePosterior):
    k, v = 1 / (1 + SIGMA2), SIGMA2 / (1 + SIGMA2)
    if rule == "jeffrey":
        return _normal(k * M, v + k**2 * TAU**2)
    if rule == "virtual":
        s = SIGMA2 + TAU**2
        return _normal(M / (1 + s), s / (1 + s))
    return _normal(k * post.evidence_samples.mean(0), v)


@pytest.mark.parametrize("rule", ["jeffrey", "virtual", "distributional"])
def test_rules_match_closed_forms(rule):
    post = gaussian_posterior().given_uncertain_x(
        _evidence(), rule=rule, num_evidence=256 if rule == "jeffrey" else 64,
        simulator=linear_gaussian(2), oversampling=16, seed=1)
    samples = post.sample((N,), seed=2)
    assert samples.shape == (N, 2)
    ref = _closed_form(rule, post).sample((N,))
    score = c2st(ref, samples, seed=0)
    assert score < 0.55, f"{rule}: C2ST {score:.3f} vs closed form"
    if rule != "jeffrey":
        assert post.last_ess is not None and post.last_ess > N  # enough distinct proposals


def test_rules_differ():
    """The three interpretations give different posteriors (the point of offering three)."""
    base = gaussian_posterior()
    var = {}
    for rule in ("jeffrey", "virtual", "distributional"):
        s = base.given_uncertain_x(_evidence(), rule=rule, simulator=linear_gaussian(2),
                                   oversampling=8, seed=1).sample((2000,), seed=3)
        var[rule] = float(s.var(0).mean())
    assert abs(var["jeffrey"] - 0.36) < 0.04        # 0.2 + 0.64 * 0.25
    assert abs(var["virtual"] - 0.3333) < 0.04       # 0.5 / 1.5
    assert abs(var["distributional"] - 0.2) < 0.03


def test_log_prob_matches_closed_form():
    base = gaussian_posterior()
    theta = torch.tensor([[0.3, -0.2], [1.0, 0.5], [-0.5, 0.0]])
    jeff = base.given_uncertain_x(_evidence(), rule="jeffrey", num_evidence=4000, seed=1)
    exact = _closed_form("jeffrey", jeff).log_prob(theta)
    assert torch.allclose(jeff.log_prob(theta), exact, atol=0.05)
    dist = base.given_uncertain_x(_evidence(), rule="distributional", seed=1)
    assert torch.allclose(dist.log_prob(theta), _closed_form("distributional", dist).log_prob(theta),
                          atol=0.05)
    virt = base.given_uncertain_x(_evidence(), rule="virtual", simulator=linear_gaussian(2))
    with pytest.raises(NotImplementedError, match="sample_and_log_weights"):
        virt.log_prob(theta)


def test_set_of_observations_is_a_mixture():
    """A set of plausible observations: Jeffrey's rule gives each its posterior, equally
    weighted (two far-apart readings give a bimodal belief)."""
    xs = torch.tensor([[-2.0, 0.0], [2.0, 0.0]])
    s = gaussian_posterior().given_uncertain_x(xs, rule="jeffrey").sample((2000,), seed=0)
    left = (s[:, 0] < 0).float().mean()
    assert abs(float(left) - 0.5) < 0.05
    assert abs(float(s[s[:, 0] < 0, 0].mean()) + 1.6) < 0.06


def test_bad_evidence_errors():
    post = gaussian_posterior()
    with pytest.raises(ValueError, match="likelihood lambda"):
        post.given_uncertain_x(torch.zeros(5, 2), rule="virtual")
    with pytest.raises(ValueError, match="one observation"):
        post.given_uncertain_x(torch.zeros(2), rule="jeffrey")
    with pytest.raises(ValueError, match="Unknown rule"):
        post.given_uncertain_x(torch.zeros(5, 2), rule="pearl")
    with pytest.raises(ValueError, match="Evidence draws"):
        post.given_uncertain_x(torch.zeros(5, 3), rule="jeffrey")
    spec_less = gaussian_posterior()
    spec_less.problem_spec = {k: v for k, v in spec_less.problem_spec.items() if k != "source"}
    with pytest.raises(ValueError, match="simulator=problem"):
        spec_less.given_uncertain_x(_evidence(), rule="virtual")


def test_recorded_builtin_problem_is_used_for_virtual():
    post = gaussian_posterior().given_uncertain_x(_evidence(), rule="virtual")
    theta, logw = post.sample_and_log_weights(500, seed=0)
    assert theta.shape == (500, 2) and logw.shape == (500,)
    assert math.isfinite(float(torch.logsumexp(logw, 0)))
    assert post.sample((0,)).shape == (0, 2) and post.sample(()).shape == (2,)
