r"""The fused NSF's training pass with a hand-written backward (:class:`FusedNSFPass`).

:meth:`estimators.fast_nsf.FusedNSF.forward_transform` as an autograd graph records ~500
nodes per call at the default size; a small flow's training step on a CPU is dominated by
that per-node overhead, not by arithmetic (benchmarks/RESULTS.md, "Issue 18: the cost of the
whole default fit"). As for the fused MAF (:class:`estimators.fast_maf._FusedMAFPass`), the
forward here runs without autograd and keeps what the backward needs; the backward runs the
chain rule transform by transform -- through the LU mixing layer, the rational-quadratic
spline (its bin search fixed: the gradient of the selected bin's formula, the knots' softmax
and cumulative sums, the softplus of the derivatives, the linear tails) and the conditioner
MLP (ReLU layers, the masked input weights) -- and then computes the weight gradients of all
transforms with one batched matrix product per parameter tensor, then the context layer's
(tanh) and the LU factors'. One autograd node per call instead of ~500.

Only for ``inputs`` and ``context`` that need no gradient (``forward_transform`` checks) and
outside ``torch.func`` transforms; once differentiable. The forward values are the autograd
version's operation for operation; the gradients equal autograd's up to float rounding
(tests/test_fnsf_backward.py).

Shapes: ``N`` rows, ``D`` features, ``D_t`` transformed features per transform, ``T``
transforms, ``H`` hidden units, ``L = num_blocks + 1`` hidden layers, ``K`` bins,
``P = 3K - 1`` spline parameters per feature, ``C`` context features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["FusedNSFPass", "nsf_forward", "rq_spline_saved", "rq_spline_backward"]


_CONSTANTS: dict[tuple, Tensor] = {}


def _const(value: float, like: Tensor) -> Tensor:
    """``value`` as a cached 0-dim tensor of ``like``'s dtype and device: on the CPU builds
    measured here an elementwise op with a Python float is ~2x slower than with a tensor
    (the float is wrapped into a new tensor per call)."""
    key = (value, like.dtype, like.device)
    out = _CONSTANTS.get(key)
    if out is None:
        out = _CONSTANTS[key] = torch.tensor(value, dtype=like.dtype, device=like.device)
    return out


def rq_spline_saved(inputs: Tensor, params: Tensor, bound: float, min_bin: float,
                    min_derivative: float, deriv_shift: float
                    ) -> tuple[Tensor, Tensor, tuple]:
    """The forward spline of :func:`estimators.fast_nsf.rq_spline` (the same elementwise
    operations, so the same values) for ``inputs`` ``(N, D_t)``, ``params`` ``(N, D_t, P)``,
    returning ``out``, ``lad`` ``(N, D_t)`` and what :func:`rq_spline_backward` needs. The
    widths' and heights' knots are computed as one ``(N, D_t, 2, K)`` tensor."""
    n, dt, p = params.shape
    k = (p + 1) // 3
    u = params[..., :2 * k].reshape(n, dt, 2, k)
    e = (u - u.amax(-1, keepdim=True)).exp()
    prob = e / e.sum(-1, keepdim=True)                                  # (N, D_t, 2, K)
    frac = min_bin + (1.0 - min_bin * k) * prob
    cum = F.pad(torch.cumsum(frac, -1), (1, 0))
    knots = (2.0 * bound) * cum - bound                                 # (N, D_t, 2, K + 1)
    shifted = params[..., 2 * k:] + deriv_shift
    derivs = F.pad(min_derivative + F.softplus(shifted), (1, 1), value=1.0)
    inside = (inputs >= -bound) & (inputs <= bound)
    v = inputs.clamp(-bound, bound)
    idx = (v[..., None] >= knots[..., 0, 1:-1]).sum(-1, keepdim=True)  # bin in [0, K-1]
    table = torch.cat([knots, derivs[..., None, :]], -2)                # (N, D_t, 3, K + 1)
    ends = torch.cat([idx, idx + 1], -1)[..., None, :].expand(n, dt, 3, 2)
    lo_hi = table.gather(-1, ends)                                      # (N, D_t, 3, 2)
    x_k, y_k, d_k = lo_hi[..., 0].unbind(-1)
    d_k1 = lo_hi[..., 2, 1]
    w_k, h_k = (lo_hi[..., :2, 1] - lo_hi[..., :2, 0]).unbind(-1)
    delta = h_k / w_k
    slope_sum = d_k1 + d_k - 2.0 * delta
    theta = (v - x_k) / w_k
    t1 = theta * (1.0 - theta)
    den = delta + slope_sum * t1
    num = delta * theta.square() + d_k * t1
    out = y_k + h_k * num / den
    deriv_num = d_k1 * theta.square() + 2.0 * delta * t1 + d_k * (1.0 - theta).square()
    lad = 2.0 * delta.log() + deriv_num.log() - 2.0 * den.log()
    saved = (inside, idx, theta, w_k, h_k, delta, d_k, d_k1, slope_sum, t1, den, num,
             deriv_num, prob, shifted)
    return (torch.where(inside, out, inputs), torch.where(inside, lad, torch.zeros_like(lad)),
            saved)


def rq_spline_backward(saved: tuple, g_out: Tensor, g_lad: Tensor, bound: float,
                       min_bin: float) -> tuple[Tensor, Tensor]:
    """Gradients of :func:`rq_spline_saved` w.r.t. its ``inputs`` ``(N, D_t)`` and ``params``
    ``(N, D_t, P)``, given those of ``out`` ``(N, D_t)`` and ``lad`` (broadcastable).

    In the selected bin (``x_k, y_k`` its lower knot, ``w, h`` its width and height,
    ``delta = h / w``, ``d_k, d_k1`` the knot derivatives, ``theta = (v - x_k) / w``):
    ``out = y_k + h r``, ``r = (delta theta^2 + d_k t1) / den``, ``t1 = theta (1 - theta)``,
    ``den = delta + s t1``, ``s = d_k1 + d_k - 2 delta`` and ``lad = 2 log delta + log M -
    2 log den``, ``M = d_k1 theta^2 + 2 delta t1 + d_k (1 - theta)^2``; reverse mode through
    these, then through the knots: ``x_j = 2B (j MIN_BIN + (1 - K MIN_BIN) sum_{i<j}
    softmax(u_w)_i) - B``, so the gradient of ``softmax(u_w)_j`` is ``2B (1 - K MIN_BIN)``
    times that of ``x_k`` for ``j < k`` plus that of ``w`` for ``j == k`` (likewise for the
    heights); the interior derivatives are ``MIN_DERIVATIVE + softplus(u_d + shift)``. Outside
    ``[-B, B]`` the spline is the identity: the input gradient is ``g_out``, the parameters
    get none."""
    (inside, idx, theta, w, h, delta, d_k, d_k1, slope_sum, t1, den, num, deriv_num,
     prob, shifted) = saved
    mask = inside.to(g_out.dtype)
    go, gl = g_out * mask, g_lad * mask
    inv_den, inv_w = den.reciprocal(), w.reciprocal()
    ratio = num * inv_den
    g_num = go * h * inv_den                                 # d/d(numerator of r)
    gl_den = gl * inv_den
    g_den = torch.addcmul(gl_den * _const(-2.0, go), g_num, ratio, value=-1.0)
    g_m = gl / deriv_num                                     # d/dM
    g_s = g_den * t1                                         # d/ds
    one_m = _const(1.0, go) - theta
    theta_sq, delta2 = theta.square(), delta + delta
    g_t1 = (delta2 * g_m).addcmul_(d_k, g_num).addcmul_(slope_sum, g_den)
    g_delta = (torch.add(g_den, g_s, alpha=-2.0).addcmul_(t1, g_m, value=2.0)
               .addcmul_(theta_sq, g_num).addcdiv_(gl, delta, value=2.0))
    g_dk1 = torch.addcmul(g_s, theta_sq, g_m)
    g_dk = torch.addcmul(g_s, one_m.square(), g_m).addcmul_(t1, g_num)
    slope_m = (d_k1 * theta).addcmul_(d_k, one_m, value=-1.0)      # dM/dtheta / 2 - ...
    g_theta = ((one_m - theta) * g_t1).addcmul_(slope_m, g_m, value=2.0).addcmul_(
        delta2 * theta, g_num)
    g_v = g_theta * inv_w
    g_h = (go * ratio).addcmul_(g_delta, inv_w)
    g_w = (g_delta * delta).addcmul_(g_theta, theta).mul_(inv_w).neg_()
    g_in = torch.where(inside, g_v, g_out)
    k = prob.shape[-1]
    bins = torch.arange(k, device=idx.device)
    onehot = (bins == idx).to(g_out.dtype)[..., None, :]     # (N, D_t, 1, K): the bin
    below = (bins < idx).to(g_out.dtype)[..., None, :]       # bins left of it
    # knots_x[k] = x_k (gradient -g_v), knots_x[k + 1] - knots_x[k] = w; likewise y_k, h
    scale = _const(2.0 * bound * (1.0 - min_bin * k), go)
    g_low = torch.stack([g_v, go.neg()], -1).mul_(-scale)[..., None]      # (N, D_t, 2, 1)
    g_bin = torch.stack([g_w, g_h], -1).mul_(scale)[..., None]
    g_p = torch.addcmul(below * g_low, onehot, g_bin)                     # (N, D_t, 2, K)
    g_u = (g_p - (g_p * prob).sum(-1, keepdim=True)).mul_(prob)
    # interior derivative j (knot j + 1) is d_k for k == j + 1 and d_k1 for k == j
    onehot = onehot[..., 0, :]
    g_der = torch.addcmul(onehot[..., 1:] * g_dk[..., None], onehot[..., :-1], g_dk1[..., None])
    g_ud = torch.ops.aten.softplus_backward(g_der, shifted, 1.0, 20.0)
    return g_in, torch.cat([g_u.flatten(-2), g_ud], -1)


def _mixing_factors(lu_lower: Tensor, lu_upper: Tensor, lu_diag: Tensor
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``L`` (unit lower), ``U`` (upper, positive diagonal), ``W = L U`` ``(T, D, D)`` and
    the diagonal of ``U`` ``(T, D)``, as :meth:`FusedNSF._mixing`."""
    d = lu_lower.shape[-1]
    eye = torch.eye(d, device=lu_lower.device, dtype=lu_lower.dtype)
    diag = F.softplus(lu_diag) + 1e-3
    lower = lu_lower.tril(-1) + eye
    upper = lu_upper.triu(1) + torch.diag_embed(diag)
    return lower, upper, lower @ upper, diag


def nsf_forward(flow, inputs: Tensor, context: Tensor) -> tuple[Tensor, Tensor, tuple]:
    """``flow.forward_transform(inputs, context)`` without autograd: ``z`` ``(N, D)``,
    ``log_det`` ``(N,)`` and what :class:`FusedNSFPass` needs (each transform's input and
    mixing input, the hidden activations ``(L, T, N, H)``, the context features ``(N, T H)``,
    the splines' saved tensors, the LU factors)."""
    from estimators.fast_nsf import _DERIV_SHIFT, MIN_BIN, MIN_DERIVATIVE

    t_all, k_all, h = flow.num_transforms, flow.num_blocks, flow.w_in.shape[1]
    n, bound = inputs.shape[0], flow.tail_bound
    with torch.no_grad():
        wm_in = flow.w_in * flow.mask_in                                       # (T, H, D)
        w_in_t = wm_in.transpose(1, 2).unbind(0)                               # (D, H) each
        w_hid_t = flow.w_hid.transpose(2, 3).reshape(t_all * k_all, h, h).unbind(0)
        b_hid_t = flow.b_hid.reshape(t_all * k_all, h).unbind(0)
        w_out_t, b_out_t = flow.w_out.transpose(1, 2).unbind(0), flow.b_out.unbind(0)
        a = F.linear(context, flow.w_ctx, flow.b_ctx)
        feats = a.mul_(2.0).sigmoid_().mul_(2.0).sub_(1.0)   # _fast_tanh, (N, T * H)
        ctx_h = (feats.reshape(n, t_all, -1) + flow.b_in).transpose(0, 1).unbind(0)
        if flow.mixing:
            lower, upper, mix, diag = _mixing_factors(flow.lu_lower, flow.lu_upper,
                                                      flow.lu_diag)
            mix_ld = diag.log().sum(-1)
            mix_t, bias = mix.transpose(1, 2).unbind(0), flow.lu_bias.unbind(0)
        acts = inputs.new_empty(k_all + 1, t_all, n, h)
        acts_t = acts.unbind(0)
        zs, zs_mix, splines = [], [], []
        z, log_det = inputs, None
        for t in range(t_all):
            zs.append(z)
            hid = torch.relu_(torch.add(z @ w_in_t[t], ctx_h[t], out=acts_t[0][t]))
            for k in range(k_all):
                hid = torch.relu_(torch.addmm(b_hid_t[t * k_all + k], hid,
                                              w_hid_t[t * k_all + k], out=acts_t[k + 1][t]))
            params = torch.addmm(b_out_t[t], hid, w_out_t[t]).reshape(
                n, flow.dim_transformed, flow.num_params)
            idx = flow.tr_index[t]
            out, lad, saved = rq_spline_saved(z.index_select(1, idx), params, bound, MIN_BIN,
                                              MIN_DERIVATIVE, _DERIV_SHIFT)
            splines.append(saved)
            z = z.index_copy(1, idx, out)
            ld = lad.sum(-1)
            if flow.mixing:
                zs_mix.append(z)
                z = torch.addmm(bias[t], z, mix_t[t])
                ld = ld + mix_ld[t]
            log_det = ld if log_det is None else log_det + ld
    lu = (lower, upper, mix, diag) if flow.mixing else None
    return z, log_det, (zs, zs_mix, acts, feats, splines, lu)


class FusedNSFPass(torch.autograd.Function):
    """:meth:`FusedNSF.forward_transform` with a hand-written first-order backward.

    ``apply(flow, inputs, context, *flow_parameters)``: the parameters (in
    ``flow.parameters()`` order) are arguments so that autograd routes their gradients; the
    module supplies the shapes, buffers and constants. Only for ``inputs`` and ``context``
    that need no gradient; once differentiable.
    """

    @staticmethod
    def forward(ctx, flow, inputs, context, *params):
        z, log_det, saved = nsf_forward(flow, inputs, context)
        ctx.flow, ctx.saved = flow, saved
        ctx.save_for_backward(context)
        return z, log_det

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_z, g_ld):
        from estimators.fast_nsf import MIN_BIN

        (context,) = ctx.saved_tensors
        flow, (zs, zs_mix, acts, feats, splines, lu) = ctx.flow, ctx.saved
        ctx.saved = None
        layers, t_all, n, h = acts.shape
        d, dt, bound = flow.dim, flow.dim_transformed, flow.tail_bound
        g = torch.zeros_like(zs[0]) if g_z is None else g_z
        g_ld = acts.new_zeros(n) if g_ld is None else g_ld
        g_lad = g_ld[:, None]
        g_acts = torch.empty_like(acts)            # gradients of the pre-activations
        g_params = acts.new_empty(t_all, n, dt * flow.num_params)
        g_mixed = acts.new_empty(t_all, n, d) if flow.mixing else None
        acts_t, g_acts_t = acts.unbind(0), g_acts.unbind(0)
        relu_bwd = torch.ops.aten.threshold_backward.grad_input
        w_out, w_in = flow.w_out.detach(), (flow.w_in * flow.mask_in).detach()
        w_hid = flow.w_hid.detach()
        if flow.mixing:
            mix = lu[2]
        for t in reversed(range(t_all)):
            if flow.mixing:
                g_mixed[t].copy_(g)
                g = g.mm(mix[t])                   # before the mixing layer
            idx = flow.tr_index[t]
            g_in, g_p = rq_spline_backward(splines[t], g.index_select(1, idx), g_lad, bound,
                                           MIN_BIN)
            g_params[t].copy_(g_p.reshape(n, -1))
            g = g.index_copy(1, idx, g_in)
            g_h = g_params[t].mm(w_out[t])                                   # (N, H)
            for k in reversed(range(1, layers)):
                g_pre = relu_bwd(g_h, acts_t[k][t], 0, grad_input=g_acts_t[k][t])
                g_h = g_pre.mm(w_hid[t, k - 1])
            g_pre = relu_bwd(g_h, acts_t[0][t], 0, grad_input=g_acts_t[0][t])
            g = torch.addmm(g, g_pre, w_in[t])
        # weight gradients of all transforms at once
        g_w_out = torch.bmm(g_params.transpose(1, 2), acts[-1])             # (T, D_t P, H)
        g_b_out = g_params.sum(1)
        g_w_hid = torch.bmm(g_acts[1:].reshape(-1, n, h).transpose(1, 2),
                            acts[:-1].reshape(-1, n, h)).view(layers - 1, t_all, h, h)
        g_w_hid = g_w_hid.transpose(0, 1)                                    # (T, K, H, H)
        g_b_hid = g_acts[1:].sum(2).transpose(0, 1)                          # (T, K, H)
        g_w_in = torch.bmm(torch.stack(zs).transpose(1, 2), g_acts[0]).transpose(1, 2)
        g_w_in = g_w_in.mul(flow.mask_in)                                    # (T, H, D)
        g_b_in = g_acts[0].sum(1)                                            # (T, H)
        g_pre_c = torch.ops.aten.tanh_backward(
            g_acts[0], feats.view(n, t_all, h).transpose(0, 1))              # (T, N, H)
        g_w_ctx = torch.bmm(g_pre_c.transpose(1, 2), context.expand(t_all, -1, -1))
        g_b_ctx = g_pre_c.sum(1).reshape(-1)
        grads = [g_w_in, g_w_ctx.reshape(t_all * h, -1), g_b_ctx, g_b_in, g_w_hid, g_b_hid,
                 g_w_out, g_b_out]
        if flow.mixing:
            lower, upper, _, diag = lu
            g_mix = torch.bmm(g_mixed.transpose(1, 2), torch.stack(zs_mix))  # (T, D, D)
            g_upper = lower.transpose(1, 2) @ g_mix
            g_lower = g_mix @ upper.transpose(1, 2)
            g_diag = g_upper.diagonal(dim1=-2, dim2=-1) + g_ld.sum() / diag
            grads += [g_lower.tril(-1), g_upper.triu(1),
                      g_diag * torch.sigmoid(flow.lu_diag.detach()), g_mixed.sum(1)]
        return (None, None, None, *grads)
