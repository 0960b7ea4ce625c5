"""The optimally weighted MMD estimator (Bharti et al. 2023) against the V- and U-statistics
on a case with a known answer, and the simulators that expose their random inputs."""

import math

import pytest
import torch

from diagnostics.mmd import (
    bq_weights,
    median_lengthscale,
    mmd,
    mmd2_estimate,
    mmd2_weighted,
    observed_term,
)
from sbi_core import Problem, box_uniform, simulate
from simulators import get_problem


def _known_case():
    """x = mu + sd * Phi^-1(u), u iid uniform (R sets of m); y: 500 fixed N(0, 1) draws.
    The exact MMD² between N(mu, sd²) and the empirical y is closed form (Gaussian kernel)."""
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(500, 1, generator=gen, dtype=torch.float64)
    mu, sd, m, reps = 0.5, 1.2, 64, 200
    ell = median_lengthscale(y)
    yy = observed_term(y, ell)
    exx = ell / math.sqrt(ell**2 + 2 * sd**2)
    exy = (ell / math.sqrt(ell**2 + sd**2)
           * torch.exp(-(mu - y[:, 0]) ** 2 / (2 * (ell**2 + sd**2)))).mean()
    truth = exx - 2 * float(exy) + yy
    u = torch.rand(reps, m, 1, generator=gen, dtype=torch.float64)
    x = mu + sd * torch.special.ndtri(u)
    return x, y, u, ell, yy, truth


def test_ow_estimator_nearly_unbiased_and_far_less_variable_than_v_statistic():
    x, y, u, ell, yy, truth = _known_case()  # truth = 0.0468
    w = torch.stack([bq_weights(ur) for ur in u])  # (R, m): one weight set per draw of u
    ow = mmd2_weighted(x, y, w, ell, yy)
    v = mmd2_weighted(x, y, None, ell, yy)
    un = mmd2_weighted(x, y, None, ell, yy, unbiased=True)
    se = un.std() / math.sqrt(len(un))
    # measured (seed 0, R=200, m=64): bias OW +3.4e-4 (0.7% of the truth), V +1.27e-2,
    # U +2.8e-3 (1.4 SE); sd OW 5.2e-4, V 2.85e-2
    assert abs(float(ow.mean()) - truth) < 0.01 * truth
    assert abs(float(un.mean()) - truth) < 3 * float(se)  # the U-statistic is unbiased
    assert float(v.mean()) - truth > 5 * float(se)  # the V-statistic is biased upwards
    assert float(ow.std()) < float(v.std()) / 20
    rmse = lambda e: float(((e - truth) ** 2).mean().sqrt())  # noqa: E731
    assert rmse(ow) < rmse(v) / 20


def test_bq_weights_integrate_constants_and_gaussian_base():
    u = torch.rand(128, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    w = bq_weights(u)
    assert abs(float(w.sum()) - 1.0) < 1e-3  # quadrature of the constant 1
    # integral of u1 * u2 over [0, 1]^2 is 1/4
    assert abs(float((w * u.prod(-1)).sum()) - 0.25) < 1e-3
    z = torch.randn(256, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    wg = bq_weights(z, base="gaussian")
    assert abs(float((wg * z[:, 0] ** 2).sum()) - 1.0) < 0.02  # E[z^2] = 1 under N(0, 1)
    with pytest.raises(ValueError, match="base='gaussian'"):
        bq_weights(z, base="uniform")


def test_estimator_options_and_errors():
    gen = torch.Generator().manual_seed(3)
    u = torch.rand(32, 1, generator=gen, dtype=torch.float64)
    x = torch.special.ndtri(u)
    y = torch.randn(100, 1, generator=gen, dtype=torch.float64)
    for est in ("v", "u", "ow"):
        assert mmd2_estimate(x, y, est, u=u).shape == ()
    with pytest.raises(ValueError, match="random inputs u"):
        mmd2_estimate(x, y, "ow")
    with pytest.raises(ValueError, match="estimator must be"):
        mmd2_estimate(x, y, "w")
    # the existing two-sample API is unchanged
    assert mmd(x.float(), y.float()) == pytest.approx(mmd(x.float(), y.float()))


def test_problem_noise_dim_draws_inputs_and_rejects_hidden_randomness():
    def g(theta, u):  # deterministic in (theta, u)
        return theta + 0.1 * torch.special.ndtri(u).to(theta.dtype)

    problem = Problem(box_uniform([-1.0], [1.0]), g, noise_dim=1, name="noisy")
    assert problem.noise_dim == 1 and problem.noise_simulator is g
    sims = simulate(problem, 50, seed=0, progress=False)
    assert sims.x.shape == (50, 1) and bool(sims.valid.all())

    def hidden(theta, u):  # draws its own noise: the inputs are not all exposed
        return theta + torch.randn_like(theta)

    with pytest.raises(ValueError, match="draws random numbers besides u"):
        Problem(box_uniform([-1.0], [1.0]), hidden, noise_dim=1)
    with pytest.raises(ValueError, match="noise_dim must be a positive"):
        Problem(box_uniform([-1.0], [1.0]), g, noise_dim=0)


def test_builtin_noise_simulators_match_the_plain_simulators_in_distribution():
    for name in ("two_moons", "gaussian_linear", "g_and_k"):
        p = get_problem(name)
        assert p.noise_simulator is not None, name
        theta = p.prior.sample((1,)).expand(1000, -1)
        torch.manual_seed(0)
        a = p.simulator(theta).double()
        u = torch.rand(1000, p.noise_dim, dtype=torch.float64)
        b = p.noise_simulator(theta, u).double()
        assert abs(mmd(a, b)) < 5e-3, name  # same distribution (unbiased MMD² ~ 0)
