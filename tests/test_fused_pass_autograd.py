"""The fused MAF training pass (``_FusedMAFPass``: a forward without autograd and a
hand-written backward) against the autograd graph of ``FusedMAF._forward_autograd``.

It must stay the same function with the same gradients (plain ``torch.tanh`` there),
including where units saturate and for several transforms, layers and context sizes. (Written
in wave 8 for a variant that folded tanh's affine ``2 s - 1`` into the next layer's weights;
that variant was not merged: docs/performance.md, "Issue 18: a cheaper step, wave 8".)
"""

from __future__ import annotations

import math

import pytest
import torch
from autograd_helpers import autograd_nodes

from estimators.fast_maf import FusedMAF


def _flow(dim: int, blocks: int, transforms: int, context_dim: int, scale: float,
          dtype: torch.dtype) -> FusedMAF:
    torch.manual_seed(11)
    flow = FusedMAF(dim, context_dim, hidden_features=10, num_transforms=transforms,
                    num_blocks=blocks).to(dtype)
    with torch.no_grad():
        for p in flow.parameters():
            p.mul_(scale)
    return flow


def _log_prob_ref(flow: FusedMAF, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    z, log_det = flow._forward_autograd(x, c)
    return log_det - 0.5 * (z.square().sum(-1) + flow.dim * math.log(2 * math.pi))


_graph = autograd_nodes


def _grads(loss: torch.Tensor, flow: FusedMAF) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, list(flow.parameters())))


@pytest.mark.parametrize("dim,blocks,transforms,context_dim", [(2, 2, 5, 2), (4, 1, 2, 1),
                                                               (1, 3, 3, 6)])
def test_fused_pass_equals_autograd_in_float64(dim: int, blocks: int, transforms: int,
                                                context_dim: int) -> None:
    flow = _flow(dim, blocks, transforms, context_dim, scale=2.0, dtype=torch.float64)
    x = torch.randn(64, dim, dtype=torch.float64)
    c = torch.randn(64, context_dim, dtype=torch.float64)
    fast, ref = flow.log_prob(x, c), _log_prob_ref(flow, x, c)
    assert any("FusedMAFPass" in type(f).__name__ for f in _graph(fast))  # the fused pass
    assert torch.allclose(fast, ref, rtol=0, atol=1e-11)
    w = torch.rand(64, dtype=torch.float64)  # row weights: both outputs, unequal rows
    for g_fast, g_ref in zip(_grads((w * fast).sum(), flow), _grads((w * ref).sum(), flow)):
        assert torch.allclose(g_fast, g_ref, rtol=1e-9, atol=1e-11)
    with torch.no_grad():  # the same forward code alone (validation, posterior.log_prob)
        assert torch.allclose(flow.log_prob(x, c), ref.detach(), rtol=0, atol=1e-11)


def test_fused_pass_with_saturated_units() -> None:
    """Weights x 40: most units saturate (s exactly 0 or 1 in float32); values and gradients
    still match the autograd graph's (float64), and float32 stays finite and close."""
    flow = _flow(3, 2, 3, 2, scale=40.0, dtype=torch.float64)
    x, c = torch.randn(50, 3, dtype=torch.float64), torch.randn(50, 2, dtype=torch.float64)
    with torch.no_grad():
        acts = torch.sigmoid(2 * (c @ flow.w_ctx.t() + flow.b_ctx))
    assert float(((acts < 1e-12) | (acts > 1 - 1e-12)).double().mean()) > 0.3  # saturated
    fast, ref = flow.log_prob(x, c), _log_prob_ref(flow, x, c)
    assert torch.allclose(fast, ref, rtol=1e-12, atol=1e-9)
    for g_fast, g_ref in zip(_grads(fast.sum(), flow), _grads(ref.sum(), flow)):
        assert torch.allclose(g_fast, g_ref, rtol=1e-8, atol=1e-8 * float(g_ref.abs().max()))
    flow32 = flow.float()
    fast32 = flow32.log_prob(x.float(), c.float())
    assert torch.isfinite(fast32).all()
    assert torch.allclose(fast32.double(), ref.detach(), rtol=1e-4, atol=1e-2)
    assert all(torch.isfinite(g).all() for g in _grads(fast32.sum(), flow32))


def test_fused_pass_float32_gradients_close_to_float64() -> None:
    """At the default size (D=2, H=50, T=5, K=2, batch 256) float32 gradients of the fused
    pass are as close to exact (float64 autograd) as float32 autograd's own."""
    torch.manual_seed(3)
    flow = FusedMAF(2, 2, hidden_features=50, num_transforms=5, num_blocks=2)
    x, c = torch.randn(256, 2), torch.randn(256, 2)
    exact = _grads(_log_prob_ref(flow.double(), x.double(), c.double()).mean(), flow)
    flow = flow.float()
    fast = _grads(flow.log_prob(x, c).mean(), flow)
    auto = _grads(_log_prob_ref(flow, x, c).mean(), flow)
    for g_f, g_a, g_e in zip(fast, auto, exact):
        err_fast = float((g_f.double() - g_e).abs().max())
        err_auto = float((g_a.double() - g_e).abs().max())
        assert err_fast <= 10 * err_auto + 1e-7 * float(g_e.abs().max())
