"""The fused MAF's training-step pass on persistent buffers (:class:`StepBuffers`).

:class:`estimators.fast_maf.FusedNLLStep` runs the pass of ``_fused_forward`` and the chain
rule of ``_fused_backward`` once per minibatch, always at the same batch size. Most of
those functions' CPU on a small flow is fixed cost per torch call, and about a third of
their calls only allocate a buffer (activations, pre-activations, gradient buffers, the
masked weights) or split one into per-transform and per-layer views (~140 ``select`` views
per step). Here all of them are made once per training run: the buffers, their views, the
views of the parameters, and one gradient tensor per parameter in its layout, which each
step fills in place (``out=``). The arithmetic is the same operations on the same values in
the same order as those two functions, so the loss and gradients are the same bits
(tests/test_fused_step.py; docs/performance.md, "Issue 18: sir's margin").

Shapes: ``N`` rows, ``D`` features, ``C`` context features, ``T`` transforms, ``K``
hidden blocks (``L = K + 1`` tanh layers per transform), ``H`` hidden units.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["StepBuffers", "step_forward", "step_backward"]


class StepBuffers:
    """Everything a training step of ``flow`` at ``n`` rows writes into, with its views.

    Valid while the flow's parameters and masks keep their storage (``key``: optimizer
    steps and ``load_state_dict`` update them in place; replacing ``.data`` makes a new
    key and the caller builds new buffers)."""

    def __init__(self, flow: nn.Module, n: int):
        t, k = flow.num_transforms, flow.num_blocks
        h, d, c = flow.w_in.shape[1], flow.dim, flow.w_ctx.shape[1]
        layers = k + 1
        like = flow.w_in.detach()
        self.key = self.key_of(flow, n)
        self.n = n

        def new(*shape: int) -> Tensor:
            return like.new_empty(shape)

        # masked weights, and their per-transform / per-layer views for both passes
        self.wm_in, self.wm_hid, self.wm_out = new(t, h, d), new(t, k, h, h), new(t, 2 * d, h)
        self.w_in_t = self.wm_in.transpose(1, 2).unbind(0)               # (D, H) each
        self.w_out_t = self.wm_out.transpose(1, 2).unbind(0)             # (H, 2D) each
        self.w_hid_t = self.wm_hid.transpose(2, 3).flatten(0, 1).unbind(0)  # [t * K + k]
        self.wm_in_t, self.wm_out_t = self.wm_in.unbind(0), self.wm_out.unbind(0)
        self.wm_hid_t = self.wm_hid.flatten(0, 1).unbind(0)
        # views of the biases (parameters: updated in place, the views follow)
        self.b_hid_t = flow.b_hid.detach().flatten(0, 1).unbind(0)
        self.b_out_t = flow.b_out.detach().unbind(0)
        # forward activations
        self.feats = new(n, t * h)                                        # context features
        self.ctx = new(n, t, h)
        self.ctx_h = self.ctx.unbind(1)                                   # T x (N, H)
        self.acts = new(layers, t, n, h)
        self.acts_t = self.acts.flatten(0, 1).unbind(0)                   # [k * T + t]
        self.pre, self.scales = new(t, n, d), new(t, n, d)
        self.pre_t, self.scales_t = self.pre.unbind(0), self.scales.unbind(0)
        self.zs = new(t, n, d)                                            # each transform's input
        self.zs_t = self.zs.unbind(0)
        self.out = new(n, 2 * d)                                          # a transform's output
        self.out_a, self.out_b = self.out[:, :d], self.out[:, d:]
        # backward buffers
        self.g_acts = new(layers, t, n, h)
        self.g_acts_t = self.g_acts.flatten(0, 1).unbind(0)
        self.g_outs = new(t, n, 2 * d)
        self.g_out_t = self.g_outs.unbind(0)
        self.g_out_a = self.g_outs[:, :, :d].unbind(0)
        self.g_out_b = self.g_outs[:, :, d:].unbind(0)
        self.g_h = new(n, h)                          # a hidden layer's gradient (N, H)
        self.g_pre_c = new(t, n, h)
        self.feats_tnh = self.feats.view(n, t, h).transpose(0, 1)
        self.g_w_hid = new(k * t, h, h)
        self.g_w_in = new(t, d, h)
        self.g_w_ctx = new(t, c, h)
        self.g_b_hid = new(k, t, h)
        # one gradient per parameter, in the parameter's layout (autograd's accumulation);
        # contiguous ones as consecutive slices of one tensor (gradient clipping multiplies
        # them with one operation, sbi_core.training._GradientClipper)
        params = _params(flow)
        if all(p.is_contiguous() for p in params):
            whole = like.new_empty(sum(p.numel() for p in params))
            self.grads = tuple(whole[o - p.numel():o].view(p.shape) for p, o in zip(
                params, itertools.accumulate(p.numel() for p in params)))
        else:
            self.grads = tuple(p.detach().new_empty_strided(p.shape, p.stride())
                               for p in params)

    @staticmethod
    def key_of(flow: nn.Module, n: int) -> tuple:
        """What the buffers depend on: the batch size and the tensors' storage (a new
        device, dtype or ``.data`` is new storage)."""
        return (n, flow.w_in.data_ptr(), flow.b_in.data_ptr(), flow.w_ctx.data_ptr(),
                flow.b_ctx.data_ptr(), flow.w_hid.data_ptr(), flow.b_hid.data_ptr(),
                flow.w_out.data_ptr(), flow.b_out.data_ptr(), flow.mask_in.data_ptr(),
                flow.mask_hidden.data_ptr(), flow.mask_out.data_ptr())


def _params(flow: nn.Module) -> tuple[Tensor, ...]:
    return (flow.w_in, flow.b_in, flow.w_ctx, flow.b_ctx, flow.w_hid, flow.b_hid,
            flow.w_out, flow.b_out)


def step_forward(buf: StepBuffers, flow: nn.Module, inputs: Tensor,
                 context: Tensor) -> tuple[Tensor, Tensor]:
    """``_fused_forward(..., keep=True)`` into ``buf``: ``z`` ``(N, D)`` and ``log_det``
    ``(N,)`` (fresh tensors); the activations stay in ``buf`` for :func:`step_backward`.
    Without autograd."""
    from estimators.fast_maf import _tanh_

    t_all, k_all = flow.num_transforms, flow.num_blocks
    n = inputs.shape[0]
    with torch.no_grad():
        torch.mul(flow.w_in, flow.mask_in, out=buf.wm_in)
        torch.mul(flow.w_hid, flow.mask_hidden[:, None], out=buf.wm_hid)
        torch.mul(flow.w_out, flow.mask_out, out=buf.wm_out)
        feats = _tanh_(torch.addmm(flow.b_ctx, context, flow.w_ctx.t(), beta=2.0, alpha=2.0,
                                   out=buf.feats))
        torch.add(feats.view(n, t_all, -1), flow.b_in, out=buf.ctx)
        acts_t, w_hid_t, b_hid_t = buf.acts_t, buf.w_hid_t, buf.b_hid_t
        out, out_a, out_b = buf.out, buf.out_a, buf.out_b
        z = inputs
        buf.zs_t[0].copy_(inputs)
        for t in range(t_all):
            hid = _tanh_(torch.addmm(buf.ctx_h[t], z, buf.w_in_t[t], beta=2.0, alpha=2.0,
                                     out=acts_t[t]))
            for k in range(k_all):
                hid = _tanh_(torch.addmm(b_hid_t[t * k_all + k], hid, w_hid_t[t * k_all + k],
                                         beta=2.0, alpha=2.0, out=acts_t[(k + 1) * t_all + t]))
            torch.addmm(buf.b_out_t[t], hid, buf.w_out_t[t], out=out)      # (N, 2D)
            a = buf.pre_t[t]
            a.copy_(out_a)
            scale = torch.add(F.softplus(a), 1e-3, out=buf.scales_t[t])
            z = torch.addcmul(out_b, z, scale, out=buf.zs_t[t + 1]) if t + 1 < t_all else \
                torch.addcmul(out_b, z, scale)
        log_det = buf.scales.log().sum((0, 2))
    return z, log_det


def step_backward(buf: StepBuffers, flow: nn.Module, context: Tensor, g_z: Tensor,
                  g_ld: Tensor) -> tuple[Tensor, ...]:
    """``_fused_backward`` after :func:`step_forward`: the gradients of the eight
    parameters (``buf.grads``, overwritten in place) from those of ``z`` ``(N, D)`` and
    ``log_det`` ``(N,)``."""
    t_all, k_all = flow.num_transforms, flow.num_blocks
    layers = k_all + 1
    n, h = buf.n, flow.w_in.shape[1]
    tanh_bwd = torch.ops.aten.tanh_backward.grad_input
    softplus_bwd = torch.ops.aten.softplus_backward.grad_input
    acts_t, g_acts_t, scales_t, zs_t = buf.acts_t, buf.g_acts_t, buf.scales_t, buf.zs_t
    g_w_in, g_b_in, g_w_ctx, g_b_ctx, g_w_hid, g_b_hid, g_w_out, g_b_out = buf.grads
    with torch.no_grad():
        g = g_z
        g_ld_col = g_ld[:, None]
        for t in reversed(range(t_all)):
            scale = scales_t[t]
            g_scale = torch.addcmul(g_ld_col / scale, g, zs_t[t])
            softplus_bwd(g_scale, buf.pre_t[t], 1.0, 20.0, grad_input=buf.g_out_a[t])
            buf.g_out_b[t].copy_(g)
            g_h = torch.mm(buf.g_out_t[t], buf.wm_out_t[t], out=buf.g_h)   # (N, H)
            for k in reversed(range(1, layers)):
                g_pre = tanh_bwd(g_h, acts_t[k * t_all + t], grad_input=g_acts_t[k * t_all + t])
                g_h = torch.mm(g_pre, buf.wm_hid_t[t * k_all + k - 1], out=buf.g_h)
            g_pre = tanh_bwd(g_h, acts_t[t], grad_input=g_acts_t[t])
            g = torch.addmm(g * scale, g_pre, buf.wm_in_t[t])
        acts, g_acts, g_outs = buf.acts, buf.g_acts, buf.g_outs
        torch.bmm(g_outs.transpose(1, 2), acts[-1], out=g_w_out).mul_(flow.mask_out)
        torch.sum(g_outs, 1, out=g_b_out)
        hid_raw = torch.bmm(g_acts[1:].reshape(-1, n, h).transpose(1, 2),
                            acts[:-1].reshape(-1, n, h), out=buf.g_w_hid)
        torch.mul(hid_raw.view(layers - 1, t_all, h, h).transpose(0, 1),
                  flow.mask_hidden[:, None], out=g_w_hid)
        g_b_hid.copy_(torch.sum(g_acts[1:], 2, out=buf.g_b_hid).transpose(0, 1))
        in_raw = torch.bmm(buf.zs.transpose(1, 2), g_acts[0], out=buf.g_w_in)
        torch.mul(in_raw.transpose(1, 2), flow.mask_in, out=g_w_in)
        torch.sum(g_acts[0], 1, out=g_b_in)                                   # (T, H)
        g_pre_c = tanh_bwd(g_acts[0], buf.feats_tnh, grad_input=buf.g_pre_c)  # (T, N, H)
        ctx_raw = torch.bmm(context.t().expand(t_all, -1, -1), g_pre_c, out=buf.g_w_ctx)
        g_w_ctx.view(t_all, h, -1).copy_(ctx_raw.transpose(1, 2))
        torch.sum(g_pre_c, 1, out=g_b_ctx.view(t_all, h))
    return buf.grads
