r"""A fused neural spline flow written with plain torch ops: ``flow="fnsf"``.

The model family of the nflows NSF used by ``flow="nsf"`` (Durkan et al. 2019, "Neural
Spline Flows"): ``T`` rational-quadratic spline *coupling* transforms, each followed by an
LU-parametrized linear mixing layer, with a standard normal base. In transform ``t`` the
features with ``i % 2 == t % 2`` are transformed elementwise by a monotonic rational-quadratic
spline with ``K`` bins on ``[-B, B]`` (identity with unit slope outside: linear tails) whose
knots and derivatives are computed from the other features and the context by an MLP; for
``D == 1`` the single feature is transformed conditioned on the context only.

Built for speed the way :mod:`estimators.fast_maf` is:

- the weights of all transforms are stacked into a few parameter tensors (``(T, H, D)``,
  ``(T, K', H, H)``, ...), so Adam and gradient clipping update ~12 tensors, and the
  stacked tensors are split with one ``unbind`` each (one backward node per tensor);
- the coupling split is a mask on the input weights, so every transform has the same shapes
  and the spline runs on all ``D`` features at once (a ``where`` keeps the identity half);
- the context projections of all transforms are one matrix product (through a tanh layer,
  as in the fused MAF);
- the spline is evaluated without data-dependent control flow or host synchronisation
  (inputs are clamped into ``[-B, B]`` and the tails selected with ``where``), so the same
  code runs unchanged on a GPU;
- in training (gradients for the weights only) ``forward_transform`` is one
  :class:`torch.autograd.Function` with a hand-written backward
  (:mod:`estimators.fast_nsf_pass`): one autograd node per call instead of ~500, the
  weight gradients of all transforms one batched product per parameter tensor (~30% less
  CPU per slcp epoch; docs/performance.md, "a hand-written backward for the fused NSF");
- sampling inverts each coupling in one pass (no per-variable loop as in an autoregressive
  flow) and the LU layer with a precomputed inverse; the context features are computed once
  per context row and broadcast over its draws.

Against the nflows NSF the conditioner is a plain MLP (``num_blocks`` hidden ``H -> H``
layers, ReLU) instead of a residual net with context gating, the context enters through the
tanh layer, and the last layer starts at zero so that every spline starts at the identity.

``log_prob(inputs (N, D), context (N, C)) -> (N,)``; ``sample(n, context (B, C)) -> (B, n,
D)``; ``forward_transform`` / ``inverse_transform`` as in :class:`~estimators.fast_maf.FusedMAF`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from estimators.fast_maf import GaussianBaseFlow, _fast_tanh, _functorch_active
from estimators.fast_nsf_inverse import rq_spline_inverse_fm
from estimators.fast_nsf_pass import FusedNSFPass

__all__ = ["FusedNSF", "rq_spline"]

MIN_BIN = 1e-3        # smallest bin width / height, as a fraction of the interval
MIN_DERIVATIVE = 1e-3
# softplus(u + _DERIV_SHIFT) + MIN_DERIVATIVE == 1 at u == 0: zero outputs give the identity
_DERIV_SHIFT = math.log(math.expm1(1.0 - MIN_DERIVATIVE))
_DIAG_SHIFT = math.log(math.expm1(1.0 - 1e-3))


def _knots(unnormalized: Tensor, bound: float) -> Tensor:
    """Bin widths (or heights) from logits ``(..., K)`` → knot positions ``(..., K + 1)``
    from ``-bound`` to ``bound`` (each bin at least ``MIN_BIN`` of the interval)."""
    k = unnormalized.shape[-1]
    # softmax by hand: torch.softmax over a last dimension of ~10 is ~4x slower on CPU
    e = (unnormalized - unnormalized.amax(-1, keepdim=True)).exp()
    frac = MIN_BIN + (1.0 - MIN_BIN * k) * (e / e.sum(-1, keepdim=True))
    cum = F.pad(torch.cumsum(frac, -1), (1, 0))
    return (2.0 * bound) * cum - bound


def rq_spline(inputs: Tensor, params: Tensor, bound: float,
              inverse: bool = False) -> tuple[Tensor, Tensor]:
    r"""Monotonic rational-quadratic spline (Durkan et al. 2019, eqs. 4-6) with linear tails.

    Args:
        inputs: ``(...,)`` values.
        params: ``(..., 3K - 1)`` unnormalized bin widths ``K``, heights ``K`` and interior
            knot derivatives ``K - 1`` (the two boundary derivatives are 1, matching the
            identity tails).
        bound: the spline acts on ``[-bound, bound]``; identity outside.
        inverse: evaluate the inverse map (solving the quadratic of eq. 6 in the paper's
            appendix) instead.

    Returns:
        Outputs ``(...,)`` and ``log |d out / d in|`` ``(...,)`` of the direction evaluated.
    """
    k = (params.shape[-1] + 1) // 3
    # contiguous pieces: softmax over a strided slice is ~10x slower on CPU
    u_w, u_h, u_d = (v.contiguous() for v in params.split([k, k, k - 1], -1))
    knots_x, knots_y = _knots(u_w, bound), _knots(u_h, bound)
    derivs = F.pad(MIN_DERIVATIVE + F.softplus(u_d + _DERIV_SHIFT), (1, 1), value=1.0)
    inside = (inputs >= -bound) & (inputs <= bound)
    v = inputs.clamp(-bound, bound)
    search = knots_y if inverse else knots_x
    idx = (v[..., None] >= search[..., 1:-1]).sum(-1, keepdim=True)  # bin in [0, K-1]
    table = torch.stack([knots_x, knots_y, derivs], -2)                # (..., 3, K + 1)
    lo = table.gather(-1, idx[..., None, :].expand(*idx.shape[:-1], 3, 1)).squeeze(-1)
    hi = table.gather(-1, (idx + 1)[..., None, :].expand(*idx.shape[:-1], 3, 1)).squeeze(-1)
    x_k, y_k, d_k = lo.unbind(-1)
    w_k, h_k, d_k1 = hi[..., 0] - x_k, hi[..., 1] - y_k, hi[..., 2]
    delta = h_k / w_k
    slope_sum = d_k1 + d_k - 2.0 * delta
    if inverse:
        dy = v - y_k
        a = h_k * (delta - d_k) + dy * slope_sum
        b = h_k * d_k - dy * slope_sum
        c = -delta * dy
        disc = (b.square() - 4.0 * a * c).clamp(min=0.0)
        theta = (2.0 * c) / (-b - disc.sqrt())
        out = theta * w_k + x_k
    else:
        theta = (v - x_k) / w_k
    t1 = theta * (1.0 - theta)
    den = delta + slope_sum * t1
    if not inverse:
        out = y_k + h_k * (delta * theta.square() + d_k * t1) / den
    lad = (2.0 * delta.log() + (d_k1 * theta.square() + 2.0 * delta * t1
                                + d_k * (1.0 - theta).square()).log() - 2.0 * den.log())
    if inverse:
        lad = -lad
    return torch.where(inside, out, inputs), torch.where(inside, lad, torch.zeros_like(lad))


def _transformed(dim: int, t: int) -> Tensor:
    """Indices of the features transform ``t`` changes: ``ceil(D / 2)`` of them, the even
    features for even ``t``, the odd ones (plus the last feature when ``D`` is odd) for odd
    ``t``, so every transform has the same shapes and every feature is changed; ``[0]``
    for ``D == 1`` (conditioned on the context only)."""
    if dim == 1:
        return torch.zeros(1, dtype=torch.long)
    if t % 2 == 0:
        return torch.arange(0, dim, 2)
    odd = torch.arange(1, dim, 2)
    return torch.cat([odd, torch.tensor([dim - 1])]) if dim % 2 else odd


class FusedNSF(GaussianBaseFlow):
    """Conditional spline coupling flow over ``dim`` features, all transforms in stacked tensors.

    Args:
        dim: number of (standardized) parameters ``D``.
        context_dim: size ``C`` of the context vector.
        hidden_features: conditioner width ``H``.
        num_transforms: number of coupling transforms ``T``.
        num_blocks: hidden ``H -> H`` layers per conditioner (after the input layer).
        num_bins: spline bins ``K``.
        tail_bound: the splines act on ``[-tail_bound, tail_bound]`` (standardized units).
    """

    #: train through the hand-written backward (:mod:`estimators.fast_nsf_pass`); False:
    #: the autograd graph of :meth:`_forward_autograd` (the reference).
    hand_backward: bool = True

    def __init__(self, dim: int, context_dim: int, hidden_features: int = 50,
                 num_transforms: int = 5, num_blocks: int = 2, num_bins: int = 10,
                 tail_bound: float = 3.0):
        super().__init__()
        if dim < 1 or num_transforms < 1 or hidden_features < 1 or num_blocks < 0 \
                or num_bins < 1 or not tail_bound > 0:
            raise ValueError("FusedNSF needs dim, num_transforms, hidden_features, num_bins >= 1, "
                             "num_blocks >= 0 and tail_bound > 0.")
        d, h, t, c, k = dim, hidden_features, num_transforms, context_dim, num_bins
        self.dim, self.num_transforms, self.num_blocks = d, t, num_blocks
        self.num_params, self.tail_bound = 3 * k - 1, float(tail_bound)
        # Transform t changes the features tr_index[t] (ceil(D/2) of them: the even features,
        # then the odd ones plus, for odd D, the last one) conditioned on the others.
        self.register_buffer("tr_index", torch.stack([_transformed(d, i) for i in range(t)]))
        self.dim_transformed = dt = int(self.tr_index.shape[1])
        kept = torch.ones(t, d)
        kept.scatter_(1, self.tr_index, 0.0)
        # conditioner inputs: the features kept fixed by transform t
        self.register_buffer("mask_in", kept[:, :, None].expand(t, d, h).transpose(1, 2).clone())

        def uniform(*shape: int, fan_in: int) -> nn.Parameter:
            bound = 1.0 / math.sqrt(max(fan_in, 1))
            return nn.Parameter(torch.empty(*shape).uniform_(-bound, bound))

        p = self.num_params
        self.w_in = uniform(t, h, d, fan_in=d)
        self.w_ctx, self.b_ctx = uniform(t * h, c, fan_in=c), uniform(t * h, fan_in=c)
        self.b_in = uniform(t, h, fan_in=d)
        self.w_hid = uniform(t, num_blocks, h, h, fan_in=h)
        self.b_hid = uniform(t, num_blocks, h, fan_in=h)
        # zero last layer: every spline starts as the identity on [-B, B]
        self.w_out = nn.Parameter(torch.zeros(t, dt * p, h))
        self.b_out = nn.Parameter(torch.zeros(t, dt * p))
        # LU mixing W = L U (L unit lower, U upper with positive diagonal), identity at init;
        # none for D == 1 (a scale there is redundant with the spline and the standardization)
        self.mixing = d > 1
        if self.mixing:
            self.lu_lower = nn.Parameter(torch.zeros(t, d, d))
            self.lu_upper = nn.Parameter(torch.zeros(t, d, d))
            self.lu_diag = nn.Parameter(torch.full((t, d), _DIAG_SHIFT))
            self.lu_bias = nn.Parameter(torch.zeros(t, d))

    # --- pieces -----------------------------------------------------------------------
    def _context(self, context: Tensor) -> Tensor:
        """Per-transform first-layer context input, input bias included: ``(T, N, H)``."""
        ctx = _fast_tanh(F.linear(context, self.w_ctx, self.b_ctx))
        ctx = ctx.reshape(context.shape[0], self.num_transforms, -1) + self.b_in
        return ctx.transpose(0, 1)

    def _mixing(self) -> tuple[Tensor, Tensor]:
        """Mixing matrices ``W = L U`` ``(T, D, D)`` and ``log |det W|`` ``(T,)``."""
        d = self.dim
        eye = torch.eye(d, device=self.lu_lower.device, dtype=self.lu_lower.dtype)
        diag = F.softplus(self.lu_diag) + 1e-3
        lower = self.lu_lower.tril(-1) + eye
        upper = self.lu_upper.triu(1) + torch.diag_embed(diag)
        return lower @ upper, diag.log().sum(-1)

    def _params(self, z: Tensor, ctx_h: Tensor, w_in: Tensor, w_hid: list[Tensor],
                b_hid: list[Tensor], w_out: Tensor, b_out: Tensor) -> Tensor:
        """Conditioner of one transform: ``z`` ``(N, D)``, ``ctx_h`` broadcastable to ``(N, H)``
        → spline parameters ``(N, D_t, 3K - 1)`` of the ``D_t`` transformed features. Weights
        are pre-transposed ``(in, out)``."""
        hid = torch.relu(z @ w_in + ctx_h)
        for w, b in zip(w_hid, b_hid):
            hid = torch.relu(torch.addmm(b, hid, w))
        return torch.addmm(b_out, hid, w_out).reshape(z.shape[0], self.dim_transformed,
                                                      self.num_params)

    def _weights(self) -> tuple[list[Tensor], list[list[Tensor]], list[list[Tensor]],
                                list[Tensor], list[Tensor]]:
        t_all, k_all, h = self.num_transforms, self.num_blocks, self.w_in.shape[1]
        w_in = (self.w_in * self.mask_in).transpose(1, 2).unbind(0)          # (D, H) each
        w_hid = self.w_hid.transpose(2, 3).reshape(t_all * k_all, h, h).unbind(0)
        b_hid = self.b_hid.reshape(t_all * k_all, h).unbind(0)
        w_hid_t = [list(w_hid[t * k_all:(t + 1) * k_all]) for t in range(t_all)]
        b_hid_t = [list(b_hid[t * k_all:(t + 1) * k_all]) for t in range(t_all)]
        return (list(w_in), w_hid_t, b_hid_t, list(self.w_out.transpose(1, 2).unbind(0)),
                list(self.b_out.unbind(0)))

    # --- flow interface ---------------------------------------------------------------
    def forward_transform(self, inputs: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """Data → base: ``z`` ``(N, D)`` and ``log |det dz/dinputs|`` ``(N,)``.

        Training (gradients for the weights only, as in NPE's loss) runs one pass with a
        hand-written backward (:class:`estimators.fast_nsf_pass.FusedNSFPass`) unless
        ``hand_backward`` is False. Without gradients, where ``inputs`` or ``context`` need
        gradients (Jacobians, the FIM regularizer's double backward, embedding networks) or
        under ``torch.func`` transforms (the batched ensemble's ``vmap``), the autograd graph
        of :meth:`_forward_autograd` runs; both give the same values and, up to float
        rounding, the same gradients (tests/test_fnsf_backward.py).
        """
        if (not self.hand_backward or not torch.is_grad_enabled() or inputs.requires_grad
                or context.requires_grad or _functorch_active()):
            return self._forward_autograd(inputs, context)
        params = [self.w_in, self.w_ctx, self.b_ctx, self.b_in, self.w_hid, self.b_hid,
                  self.w_out, self.b_out]
        if self.mixing:
            params += [self.lu_lower, self.lu_upper, self.lu_diag, self.lu_bias]
        return FusedNSFPass.apply(self, inputs, context, *params)

    def _forward_autograd(self, inputs: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`forward_transform` as an autograd graph (any order of derivatives; the
        reference for the hand-written pass)."""
        w_in, w_hid, b_hid, w_out, b_out = self._weights()
        ctx_h = self._context(context).unbind(0)
        if self.mixing:
            mix, mix_ld = self._mixing()
            mix_t, bias = mix.transpose(1, 2).unbind(0), self.lu_bias.unbind(0)
        z, log_det = inputs, None
        for t in range(self.num_transforms):
            params = self._params(z, ctx_h[t], w_in[t], w_hid[t], b_hid[t], w_out[t], b_out[t])
            idx = self.tr_index[t]
            out, lad = rq_spline(z.index_select(1, idx), params, self.tail_bound)
            z = z.index_copy(1, idx, out)
            ld = lad.sum(-1)
            if self.mixing:
                z = torch.addmm(bias[t], z, mix_t[t])
                ld = ld + mix_ld[t]
            log_det = ld if log_det is None else log_det + ld
        return z, log_det

    def _inverse(self, z: Tensor, context: Tensor) -> Tensor:
        """Base draws ``z`` ``(B, n, D)`` → data space for contexts ``(B, C)``: transforms in
        reverse, each mixing layer through its inverse matrix and each coupling in one pass
        (its conditioner only reads the features the coupling keeps fixed)."""
        b, n, d = z.shape
        w_in, w_hid, b_hid, _, _ = self._weights()
        ctx_h = self._context(context)                                   # (T, B, H)
        if self.mixing:
            mix, _ = self._mixing()
            inv_t = torch.linalg.inv(mix).transpose(1, 2)                # (T, D, D)
        x = z.reshape(b * n, d)
        dt, p = self.dim_transformed, self.num_params
        for t in reversed(range(self.num_transforms)):
            if self.mixing:
                x = (x - self.lu_bias[t]) @ inv_t[t]
            ctx = ctx_h[t][:, None, :].expand(b, n, -1).reshape(b * n, -1) if b > 1 \
                else ctx_h[t]
            hid = torch.addmm(ctx, x, w_in[t]).relu_() if b == 1 \
                else (x @ w_in[t]).add_(ctx).relu_()
            for w, bias in zip(w_hid[t], b_hid[t]):
                hid = torch.addmm(bias, hid, w).relu_()
            # the output layer feature-major: (D_t * (3K - 1), N), draws contiguous
            params = torch.addmm(self.b_out[t][:, None], self.w_out[t], hid.t())
            idx = self.tr_index[t]
            out = rq_spline_inverse_fm(x.index_select(1, idx).t(),
                                       params.reshape(dt, p, b * n), self.tail_bound,
                                       MIN_BIN, MIN_DERIVATIVE, _DERIV_SHIFT)
            x = x.index_copy(1, idx, out.t())
        return x.reshape(b, n, d)
