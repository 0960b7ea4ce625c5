r"""A fused masked autoregressive flow (MAF) written with plain torch ops: ``flow="fmaf"``.

The same model family as the nflows MAF (Papamakarios et al. 2017): ``T`` masked affine
autoregressive transforms, each a MADE with tanh units conditioned on a context vector,

.. math:: z_i = \theta_i \, (\mathrm{softplus}(a_i(\theta_{<i}, c)) + 10^{-3}) + b_i(\theta_{<i}, c),

with a standard normal base. It is built for speed on CPUs, where a small flow's training
step is dominated by per-operation overhead rather than arithmetic:

- the weights of all transforms are stacked into a few parameter tensors (``(T, H, D)``,
  ``(T, H, H)``, ...), so Adam and gradient clipping update ~10 tensors instead of ~60;
- the masks are applied to all transforms in one multiply per layer type;
- the context projections of all transforms are one matrix product (through a tanh layer,
  unlike nflows' linear context input);
- the stacked tensors are split with one ``unbind`` each in the forward pass, so the
  backward pass has one node per tensor instead of one per transform and layer;
- the variable orderings between transforms are folded into the MADE degrees (a
  permutation of ``1..D`` per transform: alternately reversed and random), so no
  permutation layers run;
- in training (gradients for the weights only) ``forward_transform`` is one
  :class:`torch.autograd.Function` with a hand-written backward: the forward pass runs
  without autograd into stacked activation buffers, and the backward computes the
  weight gradients of all transforms with one batched product per parameter tensor
  (one autograd node per step instead of ~90; ~25% less CPU per NPE epoch,
  docs/performance.md, "Issue 18: a cheaper training step");
- NPE's training loop skips autograd altogether (:class:`FusedNLLStep`: the same pass and
  backward fed with the gradients autograd would pass, the same bits; ~15% less CPU per
  epoch, docs/performance.md, "Issue 18: sir and the per-step overhead"), on buffers and
  views made once per run (:mod:`estimators.fast_maf_step`; ~10% less again, "Issue 18:
  sir's margin").

``log_prob(inputs (N, D), context (N, C)) -> (N,)`` is one pass; ``sample(n, context (B, C))
-> (B, n, D)`` inverts each transform with ``D`` passes. Both match the nflows ``Flow``
interface used by :mod:`estimators.npe`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FusedMAF"]

_LOG_2PI = math.log(2 * math.pi)


def _fast_tanh(a: Tensor) -> Tensor:
    """``tanh(a) = 2 sigmoid(2a) - 1`` (exact up to rounding, ~1e-7 absolute).

    On the CPU builds measured here (docs/performance.md) ``torch.tanh`` is ~9x slower than
    ``torch.sigmoid`` and dominated sampling; this form is ~2.5x faster. Used in sampling.
    """
    if a.requires_grad or torch.is_grad_enabled():  # under vmap a may not show requires_grad
        return 2.0 * torch.sigmoid(a * 2.0) - 1.0
    return a.mul_(2.0).sigmoid_().mul_(2.0).sub_(1.0)  # in place: `a` is a fresh product


def _degrees(dim: int, hidden: int, order: Tensor) -> tuple[Tensor, Tensor]:
    """Input degrees (a permutation of ``1..D``) and hidden degrees in ``[1, D-1]``."""
    deg_in = order + 1
    if dim == 1:
        return deg_in, torch.zeros(hidden, dtype=torch.long)
    return deg_in, torch.arange(hidden) % (dim - 1) + 1


def _functorch_active() -> bool:
    """True inside ``torch.func`` transforms (``vmap``, ``grad``), which need autograd ops."""
    check = getattr(torch._C, "_are_functorch_transforms_active", None)
    return True if check is None else bool(check())


#: ``-1`` as a 0-dim tensor (usable with any device and floating dtype) for :func:`_tanh_`.
_MINUS_ONE = torch.tensor(-1.0)


def _tanh_(a: Tensor) -> Tensor:
    """``tanh(a / 2)`` in place on a fresh tensor without autograd: ``a`` holds twice the
    pre-activation (:func:`torch.addmm` with ``alpha=beta=2``), see :func:`_fast_tanh`.

    ``2 s - 1`` is one ``add(-1, s, alpha=2)`` instead of ``mul_(2)`` then ``sub_(1)``: the
    same value bit for bit (``2 s`` is exact, so both round ``2 s - 1`` once;
    tests/test_fit_cost.py), one operation less per unit layer."""
    return torch.add(_MINUS_ONE, a.sigmoid_(), alpha=2.0, out=a)


def _fused_forward(num_transforms: int, num_blocks: int, inputs: Tensor, context: Tensor,
                   w_in: Tensor, b_in: Tensor, w_ctx: Tensor, b_ctx: Tensor, w_hid: Tensor,
                   b_hid: Tensor, w_out: Tensor, b_out: Tensor, mask_in: Tensor,
                   mask_hidden: Tensor, mask_out: Tensor, keep: bool = True,
                   ) -> tuple[Tensor, Tensor, tuple]:
    """The fused MAF's forward pass without autograd: ``z`` ``(N, D)``, ``log_det`` ``(N,)``
    and what the backward pass needs: masked weights, the context features ``(N, T * H)``,
    the hidden activations ``(L, T, N, H)`` (``L = num_blocks + 1`` layers), each
    transform's input (a list of ``T`` tensors ``(N, D)``), pre-softplus scales and scales
    ``(T, N, D)``, and the per-layer views of the last three (for the backward pass, so it
    does not split them again).

    Stacked tensors are split into per-transform (and per-layer) views with one ``unbind``
    each before the loop instead of one Python-level index per use: the same views, so the
    same products and values (bit-identical), at less per-step CPU (docs/performance.md,
    "Issue 18: the cost of the whole default fit").

    ``keep=False`` (no backward pass follows: validation, ``log_prob`` without gradients):
    the hidden layers are written alternately into two ``(N, H)`` buffers instead of the
    stacked ``(L, T, N, H)`` activations, the same products into a working set that stays in
    the cache; ``z`` and ``log_det`` are the same bits (tests/test_fit_cost.py), the
    returned activations are not all kept."""
    t_all, k_all = num_transforms, num_blocks
    n, d, h = inputs.shape[0], inputs.shape[1], w_in.shape[1]
    with torch.no_grad():
        wm_in, wm_hid, wm_out = w_in * mask_in, w_hid * mask_hidden[:, None], w_out * mask_out
        w_in_t, w_out_t = wm_in.transpose(1, 2).unbind(0), wm_out.transpose(1, 2).unbind(0)
        w_hid_t = wm_hid.transpose(2, 3).flatten(0, 1).unbind(0)           # T*K views
        b_hid_t, b_out_t = b_hid.flatten(0, 1).unbind(0), b_out.unbind(0)
        feats = _tanh_(torch.addmm(b_ctx, context, w_ctx.t(), beta=2.0, alpha=2.0))
        ctx_h = (feats.view(n, t_all, h) + b_in).unbind(1)                # T x (N, H)
        acts = inputs.new_empty(k_all + 1 if keep else min(k_all + 1, 2), t_all if keep else 1,
                                n, h)
        pre = inputs.new_empty(t_all, n, d)
        scales = inputs.new_empty(t_all, n, d)
        acts_t = acts.flatten(0, 1).unbind(0)                              # [k * T + t]
        if not keep:  # layer k of every transform into buffer k % 2
            acts_t = tuple(acts_t[(i // t_all) % 2] for i in range((k_all + 1) * t_all))
        pre_t, scales_t = pre.unbind(0), scales.unbind(0)
        zs: list[Tensor] = []  # each transform's input (fresh tensors: kept, not copied)
        z = inputs
        for t in range(t_all):
            zs.append(z)
            hid = _tanh_(torch.addmm(ctx_h[t], z, w_in_t[t], beta=2.0, alpha=2.0,
                                     out=acts_t[t]))
            for k in range(k_all):
                hid = _tanh_(torch.addmm(b_hid_t[t * k_all + k], hid, w_hid_t[t * k_all + k],
                                         beta=2.0, alpha=2.0, out=acts_t[(k + 1) * t_all + t]))
            out = torch.addmm(b_out_t[t], hid, w_out_t[t])                 # (N, 2D)
            a = pre_t[t]
            a.copy_(out[:, :d])
            scale = torch.add(F.softplus(a), 1e-3, out=scales_t[t])
            z = torch.addcmul(out[:, d:], z, scale)
        log_det = scales.log().sum((0, 2))
    return z, log_det, (wm_in, wm_hid, wm_out, feats, acts, zs, pre, scales,
                        (acts_t, pre_t, scales_t))


class _FusedMAFPass(torch.autograd.Function):
    """:meth:`FusedMAF.forward_transform` with a hand-written first-order backward.

    A small flow's training step on a CPU is dominated by per-operation overhead: autograd
    records ~90 nodes per step for the MAF. Here the forward runs without autograd and keeps
    the activations in stacked buffers; the backward runs the chain rule transform by
    transform (``tanh' = 1 - tanh^2`` from the saved activations) and then computes the
    weight gradients of all transforms and layers with one batched matrix product per
    parameter tensor (the masks applied to the gradients once). Only for ``inputs`` and
    ``context`` that need no gradient (``forward_transform`` checks); once differentiable.
    """

    @staticmethod
    def forward(ctx, num_transforms, num_blocks, inputs, context, w_in, b_in, w_ctx, b_ctx,
                w_hid, b_hid, w_out, b_out, mask_in, mask_hidden, mask_out):
        z, log_det, saved = _fused_forward(num_transforms, num_blocks, inputs, context, w_in,
                                           b_in, w_ctx, b_ctx, w_hid, b_hid, w_out, b_out,
                                           mask_in, mask_hidden, mask_out)
        ctx.saved = saved
        ctx.save_for_backward(context, mask_in, mask_hidden, mask_out)
        return z, log_det

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_z, g_ld):
        context, mask_in, mask_hidden, mask_out = ctx.saved_tensors
        saved, ctx.saved = ctx.saved, None
        return _fused_backward(saved, context, mask_in, mask_hidden, mask_out, g_z, g_ld)


class _FusedMAFPassLogProb(torch.autograd.Function):
    """:meth:`FusedMAF.log_prob` in training: the pass of :class:`_FusedMAFPass` and the
    standard-normal base density ``log_det - (|z|^2 + D log 2 pi) / 2`` as one node.

    The forward computes the log density with the same operations as
    :meth:`GaussianBaseFlow.log_prob` (without autograd), so the same values. The backward
    gives the pass the gradients the autograd graph of those operations would: ``g`` for
    ``log_det`` and ``-g z`` for ``z`` (autograd computes ``(-g / 2) (2 z)``; halving and
    doubling are exact in floating point, so the same bits; tests/test_fit_cost.py). Five
    autograd nodes and their operations less per step (docs/performance.md, "Issue 18:
    sir and the per-step overhead").
    """

    @staticmethod
    def forward(ctx, dim, num_transforms, num_blocks, inputs, context, w_in, b_in, w_ctx, b_ctx,
                w_hid, b_hid, w_out, b_out, mask_in, mask_hidden, mask_out):
        z, log_det, saved = _fused_forward(num_transforms, num_blocks, inputs, context, w_in,
                                           b_in, w_ctx, b_ctx, w_hid, b_hid, w_out, b_out,
                                           mask_in, mask_hidden, mask_out)
        ctx.saved = (saved, z)
        ctx.save_for_backward(context, mask_in, mask_hidden, mask_out)
        return log_det - 0.5 * (z.square().sum(-1) + dim * _LOG_2PI)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_lp):
        context, mask_in, mask_hidden, mask_out = ctx.saved_tensors
        (saved, z), ctx.saved = ctx.saved, None
        g_z = torch.mul(z, g_lp[:, None]).neg_()
        grads = _fused_backward(saved, context, mask_in, mask_hidden, mask_out, g_z, g_lp)
        return (None,) + grads


def _fused_backward(saved: tuple, context: Tensor, mask_in: Tensor, mask_hidden: Tensor,
                    mask_out: Tensor, g_z: Tensor | None, g_ld: Tensor | None) -> tuple:
    """The chain rule through the fused MAF pass: from the gradients of ``z`` ``(N, D)`` and
    ``log_det`` ``(N,)`` (``None``: zero) and what :func:`_fused_forward` saved, the
    gradients of :class:`_FusedMAFPass`'s inputs (``None`` for the non-tensors, ``inputs``,
    ``context`` and the masks)."""
    wm_in, wm_hid, wm_out, feats, acts, zs, pre, scales, views = saved
    layers, t_all, n, h = acts.shape
    d = zs[0].shape[1]
    g = torch.zeros_like(zs[0]) if g_z is None else g_z
    g_ld = scales.new_zeros(n) if g_ld is None else g_ld
    g_acts = torch.empty_like(acts)           # gradients of the pre-activations
    g_outs = scales.new_empty(t_all, n, 2 * d)
    g_ld_col = g_ld[:, None]
    tanh_bwd = torch.ops.aten.tanh_backward.grad_input
    softplus_bwd = torch.ops.aten.softplus_backward.grad_input
    # per-transform / per-layer views: the forward's, and the gradient buffers' split once
    # (the same views as indexing each use)
    acts_t, pre_t, scales_t = views
    zs_t, g_acts_t = zs, g_acts.flatten(0, 1).unbind(0)
    g_out_t, g_out_a, g_out_b = (g_outs.unbind(0), g_outs[:, :, :d].unbind(0),
                                 g_outs[:, :, d:].unbind(0))
    wm_out_t, wm_in_t = wm_out.unbind(0), wm_in.unbind(0)
    wm_hid_t = wm_hid.flatten(0, 1).unbind(0)                            # [t * K + k]
    k_all = layers - 1
    for t in reversed(range(t_all)):
        scale = scales_t[t]
        # z_{t+1} = b + z_t * scale; log_det += sum log scale
        g_scale = torch.addcmul(g_ld_col / scale, g, zs_t[t])
        softplus_bwd(g_scale, pre_t[t], 1.0, 20.0, grad_input=g_out_a[t])
        g_out_b[t].copy_(g)
        g_h = g_out_t[t].mm(wm_out_t[t])                                 # (N, H)
        for k in reversed(range(1, layers)):
            g_pre = tanh_bwd(g_h, acts_t[k * t_all + t], grad_input=g_acts_t[k * t_all + t])
            g_h = g_pre.mm(wm_hid_t[t * k_all + k - 1])
        g_pre = tanh_bwd(g_h, acts_t[t], grad_input=g_acts_t[t])
        g = torch.addmm(g * scale, g_pre, wm_in_t[t])
    # weight gradients of all transforms at once: (T, 2D, H), (K, T, H, H), (T, H, D)
    g_w_out = torch.bmm(g_outs.transpose(1, 2), acts[-1]).mul_(mask_out)
    g_b_out = g_outs.sum(1)
    g_w_hid = torch.bmm(g_acts[1:].reshape(-1, n, h).transpose(1, 2),
                        acts[:-1].reshape(-1, n, h)).view(layers - 1, t_all, h, h)
    g_w_hid = g_w_hid.transpose(0, 1).mul(mask_hidden[:, None])
    g_b_hid = g_acts[1:].sum(2).transpose(0, 1)
    # (small dimension first: a (D, N) @ (N, H) product is ~5x faster than (H, N) @ (N, D))
    g_w_in = torch.bmm(torch.stack(zs).transpose(1, 2), g_acts[0]).transpose(1, 2)
    g_w_in = g_w_in.mul(mask_in)
    g_b_in = g_acts[0].sum(1)                                            # (T, H)
    g_pre_c = tanh_bwd(g_acts[0], feats.view(n, t_all, h).transpose(0, 1),
                       grad_input=torch.empty_like(g_acts[0]))           # (T, N, H)
    g_w_ctx = torch.bmm(context.t().expand(t_all, -1, -1), g_pre_c).transpose(1, 2)
    g_b_ctx = g_pre_c.sum(1).reshape(-1)
    return (None, None, None, None, g_w_in, g_b_in,
            g_w_ctx.reshape(t_all * h, -1), g_b_ctx, g_w_hid, g_b_hid, g_w_out, g_b_out,
            None, None, None)


class FusedNLLStep:
    """One training step's loss and gradients without autograd for ``flow``:
    ``step(inputs (N, D), context (N, C), offset)`` returns the mean over rows of
    ``-(flow.log_prob(inputs, context) + offset)`` (``offset``: a 0-dim tensor or ``None``)
    and sets each parameter's ``.grad`` to its gradient (they must have none yet).

    The same operations and the same bits as ``loss.backward()`` on that loss through
    :class:`_FusedMAFPassLogProb`: the mean's gradient ``1 / N`` (float, as autograd's
    ``MeanBackward``), negated, into :func:`_fused_backward`; the gradients are stored in the
    parameter's layout, as autograd's gradient accumulation does. What it saves per step:
    the autograd engine, the graph's nodes and the eight gradient accumulations; built once
    per training run, it also keeps the parameter list, the row gradient ``-1 / N`` per
    batch size (docs/performance.md, "Issue 18: sir and the per-step overhead";
    tests/test_fused_step.py) and the pass's buffers, views and gradient tensors
    (:class:`estimators.fast_maf_step.StepBuffers`: the same kernels with ``out=``; the
    gradients it sets are the same tensors at every step, slices of one tensor;
    docs/performance.md, "Issue 18: sir's margin"; tests/test_step_buffers.py). The loss
    returned is 0-dim, without a graph.
    """

    def __init__(self, flow: FusedMAF):
        self.flow = flow
        self.params = (flow.w_in, flow.b_in, flow.w_ctx, flow.b_ctx, flow.w_hid, flow.b_hid,
                       flow.w_out, flow.b_out)
        self._g_lp: dict[tuple, Tensor] = {}
        self._buffers: Any = None  # estimators.fast_maf_step.StepBuffers, last batch size

    def _row_gradient(self, n: int, like: Tensor) -> Tensor:
        """``d mean(-(lp + c)) / d lp`` ``(n,)``: autograd's ``1`` expanded, ``/ n``, negated
        (read only: kept per batch size)."""
        key = (n, like.dtype, like.device)
        g = self._g_lp.get(key)
        if g is None:
            g = torch.ones((), dtype=like.dtype, device=like.device).expand(n).div(n).neg()
            self._g_lp = {key: g}  # one batch size at a time (the last batch may differ)
        return g

    def __call__(self, inputs: Tensor, context: Tensor, offset: Tensor | None = None) -> Tensor:
        from estimators.fast_maf_step import StepBuffers, step_backward, step_forward

        flow, params = self.flow, self.params
        n = inputs.shape[0]
        buf = self._buffers
        if buf is None or buf.n != n or buf.key != StepBuffers.key_of(flow, n):
            # the pass's buffers, views and gradient tensors, made once per batch size
            buf = self._buffers = StepBuffers(flow, n)
        with torch.no_grad():
            z, log_det = step_forward(buf, flow, inputs, context)
            lp = log_det - 0.5 * (z.square().sum(-1) + flow.dim * _LOG_2PI)
            loss = -(lp if offset is None else lp + offset)
            mean = loss.mean()
            g_lp = self._row_gradient(loss.shape[0], mean)
            g_z = torch.mul(z, g_lp[:, None]).neg_()
            grads = step_backward(buf, flow, context, g_z, g_lp)
            for p, g in zip(params, grads):
                if p.requires_grad:  # in p's layout, as autograd's accumulation
                    p.grad = g
        return mean


class GaussianBaseFlow(nn.Module):
    """Shared interface of the fused flows over a standard-normal base: subclasses define
    ``dim``, ``forward_transform(inputs, context) -> (z, log_det)`` and
    ``_inverse(z (B, n, D), context (B, C)) -> (B, n, D)``."""

    dim: int

    def inverse_transform(self, z: Tensor, context: Tensor) -> Tensor:
        """Base → data: the inverse of ``forward_transform`` for ``z`` ``(N, D)``."""
        return self._inverse(z[:, None, :], context)[:, 0, :]

    def log_prob(self, inputs: Tensor, context: Tensor) -> Tensor:
        """``log q(inputs | context)``: ``inputs`` ``(N, D)``, ``context`` ``(N, C)`` → ``(N,)``."""
        z, log_det = self.forward_transform(inputs, context)
        return log_det - 0.5 * (z.square().sum(-1) + self.dim * _LOG_2PI)

    def sample(self, num_samples: int, context: Tensor) -> Tensor:
        """``num_samples`` draws per context row: ``context`` ``(B, C)`` → ``(B, n, D)``."""
        b = context.shape[0]
        z = torch.randn(b, num_samples, self.dim, device=context.device, dtype=context.dtype)
        return self._inverse(z, context)

    def sample_and_log_prob(self, num_samples: int, context: Tensor) -> tuple[Tensor, Tensor]:
        """Samples ``(B, n, D)`` and their log densities ``(B, n)``."""
        samples = self.sample(num_samples, context)
        ctx = context.repeat_interleave(num_samples, 0)
        lp = self.log_prob(samples.reshape(-1, self.dim), ctx)
        return samples, lp.reshape(samples.shape[:2])


class FusedMAF(GaussianBaseFlow):
    """Conditional MAF over ``dim`` features with ``num_transforms`` stacked MADEs.

    Args:
        dim: number of (standardized) parameters ``D``.
        context_dim: size ``C`` of the context vector.
        hidden_features: MADE width ``H``.
        num_transforms: number of autoregressive transforms ``T``.
        num_blocks: hidden ``H -> H`` layers per MADE (after the input layer).
        permutation_seed: fixes the variable ordering of each transform (part of the model).
    """

    def __init__(self, dim: int, context_dim: int, hidden_features: int = 50,
                 num_transforms: int = 5, num_blocks: int = 2, permutation_seed: int = 0):
        super().__init__()
        if dim < 1 or num_transforms < 1 or hidden_features < 1 or num_blocks < 0:
            raise ValueError("FusedMAF needs dim, num_transforms, hidden_features >= 1 and "
                             "num_blocks >= 0.")
        d, h, t, c = dim, hidden_features, num_transforms, context_dim
        self.dim, self.num_transforms, self.num_blocks = d, t, num_blocks
        gen = torch.Generator().manual_seed(permutation_seed)
        # Odd transforms reverse the previous order, so every variable comes late in some
        # transform (the first variable of a MADE only depends on the context through its
        # bias otherwise); even transforms draw a fresh random order.
        orders = [torch.arange(d)]
        for i in range(1, t):
            orders.append(orders[-1].flip(0) if i % 2 else torch.randperm(d, generator=gen))
        m_in, m_hid, m_out, deg_in_all = [], [], [], []
        for order in orders:
            deg_in, deg_h = _degrees(d, h, order)
            m_in.append((deg_h[:, None] >= deg_in[None, :]).float())        # (H, D)
            m_hid.append((deg_h[:, None] >= deg_h[None, :]).float())        # (H, H)
            m_out.append((deg_in[:, None] > deg_h[None, :]).float().repeat(2, 1))  # (2D, H)
            deg_in_all.append(deg_in)
        self.register_buffer("mask_in", torch.stack(m_in))
        self.register_buffer("mask_hidden", torch.stack(m_hid))
        self.register_buffer("mask_out", torch.stack(m_out))
        # Inverse order: position p of the sampling loop fills feature order[p] of transform t.
        self.register_buffer("orders", torch.stack([torch.argsort(g) for g in deg_in_all]))

        def uniform(*shape: int, fan_in: int) -> nn.Parameter:
            bound = 1.0 / math.sqrt(max(fan_in, 1))
            return nn.Parameter(torch.empty(*shape).uniform_(-bound, bound))

        self.w_in, self.b_in = uniform(t, h, d, fan_in=d), uniform(t, h, fan_in=d)
        self.w_ctx, self.b_ctx = uniform(t * h, c, fan_in=c), uniform(t * h, fan_in=c)
        self.w_hid = uniform(t, num_blocks, h, h, fan_in=h)
        self.b_hid = uniform(t, num_blocks, h, fan_in=h)
        self.w_out, self.b_out = uniform(t, 2 * d, h, fan_in=h), uniform(t, 2 * d, fan_in=h)

    def _masked(self) -> tuple[Tensor, Tensor, Tensor]:
        return (self.w_in * self.mask_in, self.w_hid * self.mask_hidden[:, None],
                self.w_out * self.mask_out)

    def _context(self, context: Tensor) -> Tensor:
        """Per-transform first-layer input of the context, input bias included: ``(T, N, H)``.

        The context passes through one tanh layer (``T * H`` units, one matrix product for
        all transforms) before it is added to each MADE's first hidden layer. (A purely
        linear context input, as in the nflows MADE, was measured 0.02 worse in mean C2ST on
        two_moons over three seeds; docs/performance.md.)
        """
        ctx = _fast_tanh(F.linear(context, self.w_ctx, self.b_ctx))
        ctx = ctx.reshape(context.shape[0], self.num_transforms, -1) + self.b_in
        return ctx.transpose(0, 1)

    def log_prob(self, inputs: Tensor, context: Tensor) -> Tensor:
        """``log q(inputs | context)``: ``inputs`` ``(N, D)``, ``context`` ``(N, C)`` → ``(N,)``.

        In training (gradients for the weights only) the pass and the base density are one
        node (:class:`_FusedMAFPassLogProb`: the same values and gradients as
        :meth:`forward_transform` followed by the base density); otherwise as
        :meth:`GaussianBaseFlow.log_prob`."""
        if not torch.is_grad_enabled() or inputs.requires_grad or context.requires_grad or \
                _functorch_active():
            return super().log_prob(inputs, context)
        return _FusedMAFPassLogProb.apply(
            self.dim, self.num_transforms, self.num_blocks, inputs, context, self.w_in,
            self.b_in, self.w_ctx, self.b_ctx, self.w_hid, self.b_hid, self.w_out, self.b_out,
            self.mask_in, self.mask_hidden, self.mask_out)

    def forward_transform(self, inputs: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """Data → base: ``z`` ``(N, D)`` and ``log |det dz/dinputs|`` ``(N,)``.

        Training (gradients for the weights only, as in NPE's loss) runs one pass with a
        hand-written backward (:class:`_FusedMAFPass`); without gradients the same forward
        code runs alone. Where ``inputs`` or ``context`` need gradients (Jacobians, the FIM
        regularizer's double backward, embedding networks) or under ``torch.func``
        transforms (the batched ensemble's ``vmap``), the autograd graph of
        :meth:`_forward_autograd` is used instead; both give the same values and gradients
        up to float rounding (tests/test_training_speedups.py).
        """
        if inputs.requires_grad or context.requires_grad or _functorch_active():
            return self._forward_autograd(inputs, context)
        args = (self.num_transforms, self.num_blocks, inputs, context, self.w_in, self.b_in,
                self.w_ctx, self.b_ctx, self.w_hid, self.b_hid, self.w_out, self.b_out,
                self.mask_in, self.mask_hidden, self.mask_out)
        if not torch.is_grad_enabled():
            return _fused_forward(*args, keep=False)[:2]
        return _FusedMAFPass.apply(*args)

    def _forward_autograd(self, inputs: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`forward_transform` as an autograd graph (any order of derivatives).

        The stacked parameters are split with one ``unbind`` each (one backward node per
        tensor, not one per transform and layer).
        """
        w_in, w_hid, w_out = self._masked()
        t_all, k_all, h = self.num_transforms, self.num_blocks, self.w_in.shape[1]
        w_in_t = w_in.transpose(1, 2).unbind(0)                       # (D, H) each
        w_hid_t = w_hid.transpose(2, 3).reshape(t_all * k_all, h, h).unbind(0)
        b_hid_t = self.b_hid.reshape(t_all * k_all, h).unbind(0)
        w_out_t, b_out_t = w_out.transpose(1, 2).unbind(0), self.b_out.unbind(0)
        ctx_h = self._context(context).unbind(0)                      # (N, H) each
        z, log_det = inputs, None
        for t in range(t_all):
            hid = torch.tanh(torch.addmm(ctx_h[t], z, w_in_t[t]))
            for k in range(k_all):
                hid = torch.tanh(torch.addmm(b_hid_t[t * k_all + k], hid, w_hid_t[t * k_all + k]))
            out = torch.addmm(b_out_t[t], hid, w_out_t[t])
            # contiguous halves: softplus / addcmul on strided column slices are ~4x slower
            a, b = (v.contiguous() for v in out.split(self.dim, 1))
            scale = F.softplus(a) + 1e-3
            z = torch.addcmul(b, z, scale)
            ld = scale.log().sum(-1)
            log_det = ld if log_det is None else log_det + ld
        return z, log_det

    def _inverse(self, z: Tensor, context: Tensor) -> Tensor:
        """Map base draws ``z`` ``(B, n, D)`` to data space for contexts ``(B, C)``, transform
        by transform in reverse.

        Pass ``p`` of a transform solves for the variable of degree ``p + 1``, whose scale and
        shift only depend on hidden units of degree ``<= p`` (the masks forbid the others).
        A hidden unit of degree ``k`` depends only on inputs (and lower-layer units) of
        degree ``<= k``, all fixed once pass ``k`` starts; so pass ``p`` computes only the
        units of degree exactly ``p`` in every layer and reuses the others from the earlier
        passes of the same transform (exact; for D = 5 about 3x fewer multiply-adds in the
        hidden layers than recomputing every unit of degree ``<= p``). The first pass
        depends on no unit (only the output bias). Activations are feature-major ``(B, H,
        n)`` with units sorted by degree, so each product reads a contiguous row prefix; the
        context features are computed once per context row and broadcast over its draws.
        Without gradients new units are written into preallocated buffers, with gradients
        (differentiable samples) they are concatenated.
        """
        grad = torch.is_grad_enabled()
        order, counts, variables, weights = self._sorted_weights(cache=not grad)
        ctx_h = self._context(context)[:, :, order, None]  # (T, B, H, 1), units sorted
        b, n, d = z.shape
        z = z.transpose(1, 2).contiguous()  # (B, D, n)
        for t in reversed(range(self.num_transforms)):
            w_in, w_hid, b_hid, w_out, b_out = weights[t]
            x = torch.zeros_like(z)
            acts: list[Tensor | None] = (
                [None] * (self.num_blocks + 1) if grad
                else [z.new_empty(b, order.numel(), n) for _ in range(self.num_blocks + 1)])
            prev = 0
            for p, i in enumerate(variables[t]):
                c = counts[p]
                if c == 0:  # no hidden unit feeds this variable: bias only
                    out = b_out[p].expand(b, 2, n)
                else:
                    if c > prev:  # the units of degree exactly p, layer by layer
                        inp = x
                        for k in range(self.num_blocks + 1):
                            w, bias = ((w_in[prev:c], ctx_h[t][:, prev:c]) if k == 0 else
                                       (w_hid[k - 1][prev:c, :c], b_hid[k - 1][prev:c]))
                            new = _fast_tanh(torch.baddbmm(bias, w.expand(b, -1, -1), inp))
                            if grad:
                                acts[k] = new if acts[k] is None else torch.cat([acts[k], new], 1)
                            else:
                                acts[k][:, prev:c] = new
                            inp = acts[k][:, :c]
                    out = torch.baddbmm(b_out[p], w_out[p][:, :c].expand(b, -1, -1),
                                        acts[-1][:, :c])
                prev = c
                scale = F.softplus(out[:, 0]) + 1e-3
                if grad:  # autograd saved x for this pass: write into a copy
                    x = x.clone()
                x[:, i] = (z[:, i] - out[:, 1]) / scale
            z = x
        return z.transpose(1, 2)

    def _sorted_weights(self, cache: bool) -> tuple[Tensor, list[int], list[list[int]],
                                                     list[tuple]]:
        """Hidden units sorted by degree, the number of units of degree ``<= p`` per pass,
        the variable each pass solves per transform, and per transform the masked weights in
        unit order: ``W_in (H, D)``, ``[W_h (H, H)]``, ``[b_h (H, 1)]``, ``W_out`` per pass
        ``(2, H)``, ``b_out`` per pass ``(2, 1)``.

        With ``cache`` (sampling without gradients) the detached result is kept until a
        parameter changes (optimizer steps and ``load_state_dict`` bump the parameters'
        version counters); otherwise it is built with gradients."""
        key = tuple(p._version for p in self.parameters()) + tuple(
            p.data_ptr() for p in self.parameters()) + (self.w_in.device.type,)
        stored = getattr(self, "_sorted_cache", None)
        if cache and stored is not None and stored[0] == key:
            return stored[1]
        with torch.set_grad_enabled(not cache):
            w_in, w_hid, w_out = self._masked()
            hidden, d, dev = self.w_in.shape[1], self.dim, self.w_in.device
            deg_h = (torch.arange(hidden, device=dev) % max(d - 1, 1) + 1
                     if d > 1 else torch.zeros(hidden, dtype=torch.long, device=dev))
            order = torch.argsort(deg_h, stable=True)
            counts = [int((deg_h <= p).sum()) for p in range(d)]
            variables = [[int(v) for v in self.orders[t]] for t in range(self.num_transforms)]
            weights = []
            for t in range(self.num_transforms):
                rows = [torch.tensor([v, d + v], device=dev) for v in variables[t]]
                weights.append((
                    w_in[t][order].contiguous(),                                   # (H, D)
                    [w_hid[t, k][order][:, order].contiguous() for k in range(self.num_blocks)],
                    [self.b_hid[t, k][order][:, None].contiguous()                # (H, 1)
                     for k in range(self.num_blocks)],
                    [w_out[t][r][:, order].contiguous() for r in rows],           # (2, H)
                    [self.b_out[t][r][:, None].clone() for r in rows],            # (2, 1)
                ))
        result = (order, counts, variables, weights)
        if cache:
            self._sorted_cache = (key, result)
        return result
