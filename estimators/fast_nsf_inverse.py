r"""Sampling path of the fused NSF (:mod:`estimators.fast_nsf`): the inverse coupling
splines evaluated *feature-major*.

:func:`estimators.fast_nsf.rq_spline` works on ``(N, D_t, 3K - 1)`` parameters, so its
softmax, ``sum`` and ``cumsum`` over the ``K`` bins reduce a last dimension of ~10, which
torch's CPU kernels do element by element, and it computes the log-determinant that
sampling discards. Here the conditioner's output layer is one product into ``(D_t * (3K -
1), N)`` (the draws contiguous, last), so the reductions over bins are small matrix
products over contiguous draws, every gather reads ``(D_t, K + 1, N)`` tables, and no
log-determinant is computed. Same formulas as :func:`rq_spline` (``inverse=True``): the
outputs agree to float rounding (tests/test_fnsf_sample.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["knots_fm", "rq_spline_inverse_fm"]


def knots_fm(unnormalized: Tensor, bound: float, min_bin: float) -> Tensor:
    """Bin widths (or heights) from logits ``(D_t, K, N)`` → knots ``(D_t, K + 1, N)`` from
    ``-bound`` to ``bound`` (each bin at least ``min_bin`` of the interval).

    The softmax's normalizer and the cumulative sum are one product with a ``(K + 1, K)``
    strictly lower triangular matrix of ones (its last row sums all bins), and the affine
    map to ``[-bound, bound]`` one ``addcmul``: 3x fewer passes over the draws than
    softmax, ``cumsum``, ``pad`` and scaling (``_knots`` in :mod:`estimators.fast_nsf`).
    """
    k = unnormalized.shape[1]
    e = (unnormalized - unnormalized.amax(1, keepdim=True)).exp()
    ones = torch.ones(k + 1, k, dtype=e.dtype, device=e.device).tril(-1)
    partial = torch.matmul(ones, e)                                 # (D_t, K + 1, N)
    # knot j = -bound + 2 bound (j min_bin + (1 - K min_bin) partial_j / partial_K)
    j = torch.arange(k + 1, dtype=e.dtype, device=e.device)[:, None]
    offset = (2.0 * bound * min_bin) * j - bound
    return torch.addcmul(offset, partial, (2.0 * bound * (1.0 - min_bin * k)) / partial[:, k:])


def rq_spline_inverse_fm(inputs: Tensor, params: Tensor, bound: float, min_bin: float,
                         min_derivative: float, deriv_shift: float) -> Tensor:
    """Inverse of the rational-quadratic spline with linear tails, feature-major.

    Args:
        inputs: ``(D_t, N)`` values (spline outputs).
        params: ``(D_t, 3K - 1, N)`` unnormalized widths ``K``, heights ``K`` and interior
            derivatives ``K - 1`` (the same parameters as :func:`~estimators.fast_nsf.rq_spline`
            reads from ``(N, D_t, 3K - 1)``).
        bound: the spline acts on ``[-bound, bound]``; identity outside.

    Returns:
        The spline inputs ``(D_t, N)`` that map to ``inputs``.
    """
    k = (params.shape[1] + 1) // 3
    knots_x = knots_fm(params[:, :k], bound, min_bin)
    knots_y = knots_fm(params[:, k:2 * k], bound, min_bin)
    derivs = F.pad(min_derivative + F.softplus(params[:, 2 * k:] + deriv_shift),
                   (0, 0, 1, 1), value=1.0)                               # (D_t, K + 1, N)
    inside = (inputs >= -bound) & (inputs <= bound)
    v = inputs.clamp(-bound, bound)
    idx = (v[:, None, :] >= knots_y[:, 1:-1]).sum(1, keepdim=True)       # (D_t, 1, N)
    idx1 = idx + 1
    x_k, y_k, d_k = (t.gather(1, idx)[:, 0] for t in (knots_x, knots_y, derivs))
    w_k = knots_x.gather(1, idx1)[:, 0] - x_k
    h_k = knots_y.gather(1, idx1)[:, 0] - y_k
    d_k1 = derivs.gather(1, idx1)[:, 0]
    delta = h_k / w_k
    slope_sum = d_k1 + d_k - 2.0 * delta
    dy = v - y_k
    a = h_k * (delta - d_k) + dy * slope_sum
    b = h_k * d_k - dy * slope_sum
    c = -delta * dy
    disc = (b.square() - 4.0 * a * c).clamp(min=0.0)
    out = (2.0 * c) / (-b - disc.sqrt()) * w_k + x_k
    return torch.where(inside, out, inputs)
