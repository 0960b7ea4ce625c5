"""Samplers, ODE log_prob and compositional iid methods on exact (analytic) scores.

The estimators in ``_analytic_score`` return the exact diffused score of the 2-D linear
Gaussian toy, so every discrepancy measured here is the sampler's own error.
"""

import pytest
import torch
from _analytic_score import exact_posterior

from diagnostics.c2st import c2st
from estimators.compositional import ensure_positive_definite, jac_precisions
from estimators.score_sampling import time_grid
from estimators.sde import build_schedule
from simulators.linear_gaussian import linear_gaussian_posterior

THETA_O = torch.tensor([0.5, -0.3])


def _obs(n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return THETA_O + 0.5 * torch.randn(n, 2, generator=g)


@pytest.mark.parametrize("sde", ["vp", "subvp", "ve"])
def test_schedules_consistent(sde):
    """g^2 = d sigma^2/dt - 2 f sigma^2 and f = d log m / dt (finite differences)."""
    s = build_schedule(sde)
    t = torch.linspace(0.05, 0.95, 10, dtype=torch.float64)
    h = 1e-5
    dlogm = (s.mean_scale(t + h).log() - s.mean_scale(t - h).log()) / (2 * h)
    dvar = (s.std(t + h) ** 2 - s.std(t - h) ** 2) / (2 * h)
    assert torch.allclose(s.drift_scale(t), dlogm, rtol=1e-3, atol=1e-6)
    assert torch.allclose(s.diffusion_sq(t), dvar - 2 * s.drift_scale(t) * s.std(t) ** 2,
                          rtol=1e-3, atol=1e-6)
    ts = time_grid(s, 20)
    assert ts[0] == s.t_max and ts[-1] == s.t_min and all(a > b for a, b in zip(ts, ts[1:]))


@pytest.mark.parametrize("kind,sde,sampler", [
    ("npse", "vp", "sde"), ("npse", "vp", "pc"), ("npse", "vp", "ode"), ("npse", "vp", "ddim"),
    ("npse", "ve", "sde"), ("npse", "subvp", "sde"), ("fmpe", "linear", "ode"),
])
def test_samplers_reproduce_gaussian(kind, sde, sampler):
    post = exact_posterior(kind, sde)
    x = _obs(1)[0]
    steps = 30 if sampler == "ode" else 100
    samples = post.sample((1000,), x, seed=0, sampler=sampler, steps=steps)
    ref = linear_gaussian_posterior(x).sample((1000,))
    true = linear_gaussian_posterior(x)
    assert torch.allclose(samples.mean(0), true.mean, atol=0.06)
    assert torch.allclose(samples.std(0), true.variance.sqrt(), rtol=0.1)
    assert c2st(samples, ref) < 0.56


@pytest.mark.parametrize("kind,sde", [("npse", "vp"), ("npse", "subvp"), ("fmpe", "linear")])
def test_ode_log_prob_matches_analytic(kind, sde):
    post = exact_posterior(kind, sde)
    x = _obs(1)[0]
    true = linear_gaussian_posterior(x)
    theta = true.sample((20,))
    lp = post.log_prob(theta, x)
    assert torch.allclose(lp, true.log_prob(theta), atol=0.02)
    lp_h = post.log_prob(theta, x, steps=20)  # fewer steps still close
    assert torch.allclose(lp_h, true.log_prob(theta), atol=0.1)


def test_hutchinson_trace_is_unbiased():
    post = exact_posterior("npse", "vp")
    post.config["exact_trace_max_dim"] = 0  # force Hutchinson
    x = _obs(1)[0]
    true = linear_gaussian_posterior(x)
    theta = true.sample((1,)).expand(400, 2)
    lp = post.log_prob(theta, x, steps=20)
    assert abs(float(lp.mean() - true.log_prob(theta[:1]))) < 0.1


@pytest.mark.parametrize("n", [5, 20])
@pytest.mark.parametrize("method", ["gauss", "jac", "fnpe"])
def test_compositional_exact_scores(method, n):
    """With exact single-observation scores GAUSS and JAC are exact up to discretization."""
    post = exact_posterior("npse", "vp")
    xo = _obs(n)
    kw = {"levels": 100, "steps_per_level": 2} if method == "fnpe" else {"steps": 100}
    samples = post.sample((1000,), xo, seed=0, iid_method=method, **kw)
    ref = linear_gaussian_posterior(xo).sample((1000,))
    assert c2st(samples, ref) < (0.6 if method == "fnpe" else 0.57)


def test_psd_safeguard():
    lam = torch.tensor([[1.0, 0.0], [0.0, -2.0]])
    prec = torch.eye(2).expand(3, 2, 2).clone()
    lam2, prec2 = ensure_positive_definite(lam, prec, n=3)
    assert bool((torch.linalg.eigvalsh(lam2) > 0).all())
    assert torch.allclose(lam2, lam + 3 * (prec2[0] - prec[0]))
    assert torch.allclose(ensure_positive_definite(torch.eye(2), prec, 3)[1], prec)


def test_jac_precisions_clipped():
    jac = torch.tensor([[[5.0, 0.0], [0.0, -1e6]]])  # wildly wrong network Jacobian
    p = jac_precisions(jac, m=0.5, sd=0.5, min_precision=1.0, max_precision=100.0)
    ev = torch.linalg.eigvalsh(p)
    assert bool((ev >= 1.0 + 1.0 - 1e-4).all()) and bool((ev <= 1.0 + 100.0 + 1e-3).all())


def test_bad_sampler_options():
    post = exact_posterior("fmpe")
    with pytest.raises(ValueError, match="flow-matching"):
        post.sample((10,), _obs(1)[0], sampler="sde")
    with pytest.raises(ValueError, match="iid_method"):
        post.sample((10,), _obs(3), iid_method="nope")
    with pytest.raises(ValueError, match="not available"):
        post.log_prob(torch.zeros(2), _obs(3))
