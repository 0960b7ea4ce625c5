"""The fused NSF (``flow="fnsf"``): a correct, normalized, invertible spline coupling flow."""

import pytest
import torch
from nflows.transforms.splines.rational_quadratic import (
    unconstrained_rational_quadratic_spline,
)

from diagnostics.c2st import c2st
from estimators.fast_nsf import _DERIV_SHIFT, FusedNSF, rq_spline
from sbi_core import fit, load, save, simulate
from simulators.linear_gaussian import linear_gaussian_posterior


def _scrambled(dim: int, transforms: int = 3, seed: int = 0, scale: float = 0.3) -> FusedNSF:
    """A flow with random (nonzero) spline and mixing weights, far from the identity."""
    torch.manual_seed(seed)
    flow = FusedNSF(dim, 3, hidden_features=16, num_transforms=transforms, num_blocks=2,
                    num_bins=6)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(scale * torch.randn_like(p))
    return flow


def test_spline_matches_nflows_and_inverts():
    """Forward values and log-derivatives equal nflows' spline (same parametrization up to
    the derivative shift that makes zero parameters the identity); inverse undoes forward."""
    torch.manual_seed(0)
    k = 8
    x = torch.randn(2000, dtype=torch.float64) * 2.5  # some outside [-3, 3]: linear tails
    p = torch.randn(2000, 3 * k - 1, dtype=torch.float64) * 2
    y, lad = rq_spline(x, p, 3.0)
    y_ref, lad_ref = unconstrained_rational_quadratic_spline(
        x, p[:, :k], p[:, k:2 * k], p[:, 2 * k:] + _DERIV_SHIFT, tails="linear", tail_bound=3.0)
    assert torch.allclose(y, y_ref, atol=1e-10) and torch.allclose(lad, lad_ref, atol=1e-8)
    x_back, lad_inv = rq_spline(y, p, 3.0, inverse=True)
    assert torch.allclose(x_back, x, atol=1e-8) and torch.allclose(lad_inv, -lad, atol=1e-8)
    # zero parameters: the identity
    y0, lad0 = rq_spline(x, torch.zeros_like(p), 3.0)
    assert torch.allclose(y0, x, atol=1e-12) and torch.allclose(lad0, torch.zeros_like(x),
                                                                atol=1e-12)


@pytest.fixture
def float64():
    """Exactness checks in double precision (far from the identity, float32 round-off through
    several spline and LU layers reaches ~1e-3)."""
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize("dim", [1, 2, 3, 5])
def test_inverse_undoes_forward_batched(dim, float64):
    """Sampling's inverse for B contexts x n draws undoes the forward pass, with and without
    gradients (differentiable samples)."""
    flow = _scrambled(dim)
    ctx = torch.randn(3, 3)
    z = torch.randn(3, 11, dim)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            x = flow._inverse(z, ctx)
        z_back, _ = flow.forward_transform(x.detach().reshape(-1, dim),
                                           ctx.repeat_interleave(11, 0))
        assert torch.allclose(z_back.reshape(3, 11, dim), z, atol=1e-8)


@pytest.mark.parametrize("dim", [2, 3, 5])
def test_log_det_matches_jacobian(dim, float64):
    flow = _scrambled(dim, seed=1)
    ctx, x = torch.randn(1, 3), torch.randn(1, dim)
    jac = torch.autograd.functional.jacobian(lambda v: flow.forward_transform(v, ctx)[0], x)
    _, log_det = flow.forward_transform(x, ctx)
    assert torch.allclose(torch.linalg.slogdet(jac.reshape(dim, dim)).logabsdet,
                          log_det[0], atol=1e-8)


@pytest.mark.parametrize("dim", [2, 3, 5])
def test_every_feature_is_transformed(dim):
    """Each feature is changed by some coupling (also for odd D), and each coupling keeps
    at least one feature as its conditioner input."""
    flow = FusedNSF(dim, 2, num_transforms=2)
    changed = set(flow.tr_index.flatten().tolist())
    assert changed == set(range(dim))
    for t in range(2):
        assert len(set(flow.tr_index[t].tolist())) < dim


def test_density_integrates_to_one():
    flow = _scrambled(2, seed=2)
    ctx = torch.randn(1, 3)
    grid = torch.linspace(-10, 10, 401)
    gx, gy = torch.meshgrid(grid, grid, indexing="ij")
    pts = torch.stack([gx.ravel(), gy.ravel()], 1)
    with torch.no_grad():
        dens = flow.log_prob(pts, ctx.expand(len(pts), 3)).exp()
    mass = float(dens.sum() * (grid[1] - grid[0]) ** 2)
    assert abs(mass - 1.0) < 0.01


def test_samples_carry_their_log_prob():
    flow = _scrambled(2, seed=3)
    ctx = torch.randn(2, 3)
    with torch.no_grad():
        s, lp = flow.sample_and_log_prob(500, ctx)
        direct = flow.log_prob(s.reshape(-1, 2), ctx.repeat_interleave(500, 0))
    assert s.shape == (2, 500, 2) and lp.shape == (2, 500)
    assert torch.allclose(lp.reshape(-1), direct, atol=1e-5)


def test_fnsf_npe_is_accurate_and_saves(linear_problem, tmp_path):
    sims = simulate(linear_problem, 1000, seed=2, progress=False)
    post = fit(linear_problem, sims, flow="fnsf", seed=0, progress=False, max_epochs=25,
               batch_size=128, hidden_features=32, num_transforms=2, detector=False)
    x_o = linear_problem.observation(1)
    samples = post.sample((1000,), x=x_o, seed=0)
    ref = linear_gaussian_posterior(x_o)
    assert torch.allclose(samples.mean(0), ref.mean, atol=0.15)
    assert c2st(samples, ref.sample((1000,)), seed=0) < 0.62
    save(post, tmp_path / "fnsf.pt")
    again = load(tmp_path / "fnsf.pt")  # weights_only, built on the meta device first
    assert again.estimator.config["flow"] == "fnsf"
    assert torch.equal(again.sample((50,), x=x_o, seed=4), post.sample((50,), x=x_o, seed=4))
    theta = samples[:20]
    assert torch.allclose(again.log_prob(theta, x=x_o), post.log_prob(theta, x=x_o))


def test_device_moves_keep_the_flow_consistent():
    """.to(dtype/device) moves buffers (coupling indices, masks) with the weights; the
    float64 copy gives the same density as the float32 original."""
    flow = _scrambled(3, seed=4)
    ctx, x = torch.randn(5, 3), torch.randn(5, 3)
    with torch.no_grad():
        lp32 = flow.log_prob(x, ctx)
        flow64 = flow.to(torch.float64)
        lp64 = flow64.log_prob(x.double(), ctx.double())
        s = flow64.sample(4, ctx.double())
    assert lp64.dtype == torch.float64 and s.dtype == torch.float64
    assert torch.allclose(lp64.float(), lp32, atol=1e-4)
    assert flow64.tr_index.dtype == torch.long
    with torch.device("meta"):  # serialization builds models on the meta device first
        meta = FusedNSF(3, 3)
    assert all(p.device.type == "meta" for p in meta.parameters())


def test_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="dim"):
        FusedNSF(0, 3)
    with pytest.raises(ValueError, match="tail_bound"):
        FusedNSF(2, 3, tail_bound=0.0)
