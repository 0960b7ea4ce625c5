"""The cheaper training step (issue 18): the fused MAF's hand-written backward and fused Adam.

The fast path must learn the same thing as the reference computation: the same values and
gradients as the autograd graph of the same flow, the same result for a fixed seed, and the
autograd graph wherever higher derivatives or input gradients are needed.
"""

from __future__ import annotations

import math

import pytest
import torch

from estimators.fast_maf import FusedMAF
from sbi_core.training import TrainConfig, make_adam, train


def _flow(dim: int, blocks: int, dtype: torch.dtype = torch.float64, seed: int = 0,
          context_dim: int = 3) -> FusedMAF:
    torch.manual_seed(seed)
    flow = FusedMAF(dim, context_dim, hidden_features=12, num_transforms=3, num_blocks=blocks).to(dtype)
    with torch.no_grad():  # larger weights than the initialization: saturated units, scales
        for p in flow.parameters():
            p.mul_(3.0)
    return flow


def _reference_log_prob(flow: FusedMAF, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    z, log_det = flow._forward_autograd(x, c)
    return log_det - 0.5 * (z.square().sum(-1) + flow.dim * math.log(2 * math.pi))


def _grads(loss: torch.Tensor, flow: FusedMAF) -> list[torch.Tensor]:
    params = list(flow.parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


@pytest.mark.parametrize("dim,blocks", [(1, 1), (2, 2), (3, 0), (5, 2)])
def test_fused_backward_matches_autograd(dim: int, blocks: int) -> None:
    flow = _flow(dim, blocks)
    x, c = torch.randn(40, dim, dtype=torch.float64), torch.randn(40, 3, dtype=torch.float64)
    fast = flow.log_prob(x, c)  # parameters need gradients, x and c do not: the fused pass
    ref = _reference_log_prob(flow, x, c)
    assert torch.allclose(fast, ref, rtol=0, atol=1e-10)
    # a loss that uses both outputs of the pass with different weights per row
    w = torch.rand(40, dtype=torch.float64)
    for g_fast, g_ref in zip(_grads((w * fast).sum(), flow), _grads((w * ref).sum(), flow)):
        assert torch.allclose(g_fast, g_ref, rtol=1e-9, atol=1e-10)


def test_fused_backward_masks_the_gradients() -> None:
    flow = _flow(4, 2)
    x, c = torch.randn(30, 4, dtype=torch.float64), torch.randn(30, 3, dtype=torch.float64)
    flow.log_prob(x, c).sum().backward()
    assert torch.all(flow.w_in.grad[flow.mask_in == 0] == 0)
    assert torch.all(flow.w_out.grad[flow.mask_out == 0] == 0)
    assert flow.w_in.grad.abs().sum() > 0


def test_fused_pass_only_without_input_gradients() -> None:
    """Jacobians (input gradients) and double backward go through the autograd graph."""
    flow = _flow(3, 1)
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    c = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    lp = flow.log_prob(x, c)
    assert "FusedMAFPass" not in type(lp.grad_fn).__name__
    (gx,) = torch.autograd.grad(lp.sum(), x, create_graph=True)
    (gc,) = torch.autograd.grad(gx.square().sum(), c)  # second order through the context
    assert torch.isfinite(gc).all() and gc.abs().sum() > 0
    lp_fast = flow.log_prob(x.detach(), c.detach())
    assert torch.allclose(lp_fast, lp.detach(), atol=1e-10)


def test_fused_pass_float32_close_to_autograd() -> None:
    flow = _flow(2, 2, dtype=torch.float32)
    x, c = torch.randn(256, 2), torch.randn(256, 3)
    fast, ref = flow.log_prob(x, c), _reference_log_prob(flow, x, c)
    assert torch.allclose(fast, ref, rtol=1e-5, atol=1e-4)
    for g_fast, g_ref in zip(_grads(fast.mean(), flow), _grads(ref.mean(), flow)):
        assert torch.allclose(g_fast, g_ref, rtol=1e-4, atol=1e-5 * float(g_ref.abs().max()))


def test_make_adam_is_fused_where_available_and_matches_default() -> None:
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(7, 3)), torch.nn.Parameter(torch.randn(3))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    opt_a, opt_b = make_adam(a, 1e-2), torch.optim.Adam(b, lr=1e-2)
    assert opt_a.defaults.get("fused") in (True, None)  # None: torch without the CPU kernel
    for step in range(20):
        for params, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            loss = sum((p * (step + 1.0)).sin().sum() for p in params)
            loss.backward()
            opt.step()
    for p, q in zip(a, b):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-6)
    # integer tensors cannot use the fused kernel: the default implementation, no error
    assert make_adam([torch.nn.Parameter(torch.randn(2, dtype=torch.float64))], 1e-3)


class _FlowLoss(torch.nn.Module):
    """A density estimator for :func:`train`: ``loss = -log q(theta | x)``."""

    def __init__(self, flow: FusedMAF) -> None:
        super().__init__()
        self.flow = flow

    def loss(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return -self.flow.log_prob(theta, x)


def test_training_is_deterministic_with_a_fixed_seed() -> None:
    torch.manual_seed(1)
    theta = torch.randn(600, 2)
    x = theta + 0.3 * torch.randn(600, 2)
    cfg = TrainConfig(batch_size=64, max_epochs=4, seed=3, progress=False, ema_decay=0.9,
                      lr_schedule="cosine", schedule_epochs=4, warmup_epochs=1.0)
    states, losses = [], []
    for _ in range(2):
        est = _FlowLoss(_flow(2, 1, dtype=torch.float32, seed=5, context_dim=2))
        hist = train(est, theta, x, cfg)
        states.append({k: v.clone() for k, v in est.state_dict().items()})
        losses.append(hist.validation_loss)
    assert losses[0] == losses[1]
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k])
    assert losses[0][-1] < losses[0][0]  # it learned something


def _graph_names(t: torch.Tensor) -> set[str]:
    seen, stack, names = set(), [t.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.add(type(fn).__name__)
        stack.extend(f for f, _ in fn.next_functions)
    return names


def test_default_npe_loss_trains_through_the_fused_pass() -> None:
    """The default NPE estimator (fmaf, identity embedding) takes the fused pass in training,
    the autograd graph for differentiable samples, and matches it in value."""
    from estimators.npe import build_npe

    torch.manual_seed(0)
    theta = torch.randn(200, 2)
    x = torch.cat([theta, theta.square()], 1) + 0.1 * torch.randn(200, 4)
    est = build_npe(theta, x, prior=None, hidden_features=8, num_transforms=2)
    loss = est.loss(theta[:32], x[:32])
    assert any("FusedMAFPass" in n for n in _graph_names(loss))
    z, _ = est._to_z(theta[:32])
    z_ref, ld_ref = est.density._forward_autograd(z, est.context(x[:32]))
    lp_ref = ld_ref - 0.5 * (z_ref.square().sum(-1) + 2 * math.log(2 * math.pi))
    assert torch.allclose(-loss, lp_ref + est._to_z(theta[:32])[1], atol=1e-4)
    samples, _ = est.sample_and_log_prob(3, x[:2])  # differentiable samples: autograd graph
    assert samples.requires_grad


def _clip_reference_grads(seed: int, scale: float) -> tuple[FusedMAF, list]:
    flow = _flow(3, 2, dtype=torch.float32, seed=seed)
    torch.manual_seed(seed)
    for p in flow.parameters():
        p.grad = scale * torch.randn_like(p)
    flow.b_in.grad = None  # a parameter without a gradient is skipped, as torch's does
    return flow, [None if p.grad is None else p.grad.clone() for p in flow.parameters()]


@pytest.mark.parametrize("scale", [1e-3, 10.0])  # below and above max_norm
def test_gradient_clipper_equals_torch_clip_grad_norm(scale: float) -> None:
    """The loop's clipping (setup once per training run) gives bit-identical gradients to
    ``nn.utils.clip_grad_norm_`` whether or not the norm exceeds ``max_norm``."""
    from sbi_core.training import _GradientClipper

    flow, grads = _clip_reference_grads(0, scale)
    clip = _GradientClipper(flow, 5.0)
    assert clip.lean
    clip()
    ref, _ = _clip_reference_grads(0, scale)
    torch.nn.utils.clip_grad_norm_(ref.parameters(), 5.0)
    for p, q, g in zip(flow.parameters(), ref.parameters(), grads):
        if g is None:
            assert p.grad is None
            continue
        assert torch.equal(p.grad, q.grad)
    total = torch.sqrt(sum(p.grad.double().square().sum() for p in flow.parameters()
                           if p.grad is not None))
    assert (abs(float(total) - 5.0) < 1e-3) if scale > 1 else torch.equal(
        flow.w_hid.grad, grads[list(dict(flow.named_parameters())).index("w_hid")])
    # mixed dtypes: torch's function (same result) instead of one foreach call
    mixed = torch.nn.Module()
    mixed.a = torch.nn.Parameter(torch.ones(3))
    mixed.b = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    mixed.a.grad, mixed.b.grad = torch.full((3,), 4.0), torch.full((2,), 4.0, dtype=torch.float64)
    mixed_clip = _GradientClipper(mixed, 1.0)
    assert not mixed_clip.lean
    mixed_clip()
    total = (mixed.a.grad.double().square().sum() + mixed.b.grad.square().sum()).sqrt()
    assert abs(float(total) - 1.0) < 1e-5
