"""The fused MAF (``flow="fmaf"``): a correct, normalized, invertible autoregressive flow."""

import pytest
import torch

from diagnostics.c2st import c2st
from estimators.fast_maf import FusedMAF
from sbi_core import fit, load, save, simulate
from simulators.linear_gaussian import linear_gaussian_posterior


def _scrambled(dim: int, transforms: int = 3, seed: int = 0, factor: float = 3.0) -> FusedMAF:
    """A flow with large random weights, so that it is far from the identity."""
    torch.manual_seed(seed)
    flow = FusedMAF(dim, 3, hidden_features=16, num_transforms=transforms, num_blocks=2,
                    permutation_seed=seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.mul_(factor)
    return flow


@pytest.mark.parametrize("dim", [1, 2, 5])
def test_inverse_undoes_forward(dim):
    flow = _scrambled(dim)
    ctx = torch.randn(64, 3)
    z = torch.randn(64, dim)
    with torch.no_grad():
        x = flow.inverse_transform(z, ctx)
        z_back, _ = flow.forward_transform(x, ctx)
    assert torch.allclose(z_back, z, atol=1e-4)


@pytest.mark.parametrize("dim", [2, 5, 10])
def test_batched_inverse_with_and_without_gradients(dim):
    """Sampling's inverse for B contexts x n draws: the incremental no-grad path and the
    differentiable path both undo the forward pass; the cached weights follow updates."""
    flow = _scrambled(dim, factor=2.0)
    ctx = torch.randn(3, 3)
    z = torch.randn(3, 11, dim)
    flat_ctx = ctx.repeat_interleave(11, 0)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            x = flow._inverse(z, ctx)
        z_back, _ = flow.forward_transform(x.detach().reshape(-1, dim), flat_ctx)
        assert torch.allclose(z_back.reshape(3, 11, dim), z, atol=1e-4)
    with torch.no_grad():
        before = flow._inverse(z, ctx)
        flow.w_hid.mul_(0.5)  # an in-place update, as an optimizer step makes
        after = flow._inverse(z, ctx)
        z_back, _ = flow.forward_transform(after.reshape(-1, dim), flat_ctx)
    assert not torch.allclose(before, after)
    assert torch.allclose(z_back.reshape(3, 11, dim), z, atol=1e-4)


@pytest.mark.parametrize("dim", [2, 4])
def test_jacobian_is_triangular_and_log_det_matches(dim):
    """Autoregressive: with the right ordering dz/dx is triangular; log_det = log|det J|."""
    flow = _scrambled(dim, seed=1)
    ctx = torch.randn(1, 3)
    x = torch.randn(1, dim)
    jac = torch.autograd.functional.jacobian(lambda v: flow.forward_transform(v, ctx)[0], x)
    jac = jac.reshape(dim, dim)
    _, log_det = flow.forward_transform(x, ctx)
    assert torch.allclose(torch.linalg.slogdet(jac).logabsdet, log_det[0], atol=1e-4)
    # a single transform only depends on earlier variables in its order
    single = FusedMAF(dim, 3, 16, num_transforms=1, num_blocks=2)
    j1 = torch.autograd.functional.jacobian(lambda v: single.forward_transform(v, ctx)[0], x)
    order = single.orders[0]
    j1 = j1.reshape(dim, dim)[order][:, order]
    assert torch.allclose(j1, torch.tril(j1))


def test_density_integrates_to_one():
    flow = _scrambled(2, seed=2, factor=1.5)
    ctx = torch.randn(1, 3)
    grid = torch.linspace(-20, 20, 801)
    gx, gy = torch.meshgrid(grid, grid, indexing="ij")
    pts = torch.stack([gx.ravel(), gy.ravel()], 1)
    with torch.no_grad():
        dens = flow.log_prob(pts, ctx.expand(len(pts), 3)).exp()
    mass = float(dens.sum() * (grid[1] - grid[0]) ** 2)
    assert abs(mass - 1.0) < 0.01


def test_samples_follow_log_prob():
    """Samples and log_prob agree: the sample mean of log q equals -entropy estimated by MC,
    and samples from sample_and_log_prob carry their own log densities."""
    flow = _scrambled(2, seed=3)
    ctx = torch.randn(2, 3)
    with torch.no_grad():
        s, lp = flow.sample_and_log_prob(500, ctx)
        direct = flow.log_prob(s.reshape(-1, 2), ctx.repeat_interleave(500, 0))
    assert s.shape == (2, 500, 2) and lp.shape == (2, 500)
    assert torch.allclose(lp.reshape(-1), direct, atol=1e-5)


def test_fmaf_npe_is_accurate_and_saves(linear_problem, tmp_path):
    sims = simulate(linear_problem, 2000, seed=2, progress=False)
    post = fit(linear_problem, sims, flow="fmaf", seed=0, progress=False, max_epochs=80,
               batch_size=128, hidden_features=32, num_transforms=2)
    x_o = linear_problem.observation(1)
    samples = post.sample((1000,), x=x_o, seed=0)
    ref = linear_gaussian_posterior(x_o)
    assert torch.allclose(samples.mean(0), ref.mean, atol=0.15)
    assert c2st(samples, ref.sample((1000,)), seed=0) < 0.62
    save(post, tmp_path / "fmaf.pt")
    again = load(tmp_path / "fmaf.pt")
    assert torch.equal(again.sample((50,), x=x_o, seed=4), post.sample((50,), x=x_o, seed=4))


def test_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="dim"):
        FusedMAF(0, 3)
