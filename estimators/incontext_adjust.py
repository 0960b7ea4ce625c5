r"""Closed-form nonlinear, heteroscedastic regression adjustment of the in-context context.

The ``"nonlinear"`` candidates of the in-context posterior (:mod:`estimators.incontext_select`)
give the network the *standardized residuals*

.. math:: r_i = \frac{\theta_i - m(x_i)}{s(x_i)}

of a nonlinear regression :math:`m(x) \approx E[\theta \mid x]` and a scale regression
:math:`s(x)` of the context, and map the network's :math:`q(r \mid x_o)` back by
:math:`\theta = m(x_o) + s(x_o)\, r` (Blum & François 2010, used as an exact
reparameterization: for a fixed :math:`x_o` it is an affine bijection of :math:`\theta` with
log-Jacobian :math:`-\sum_j \log s_j(x_o)`, so ``sample`` and ``log_prob`` stay exact for the
model, and the prior bounds map to :math:`(\text{low} - m(x_o)) / s(x_o)` and likewise).

Both regressions are ridge regressions on the features

.. math:: \phi(z) = \bigl[1,\; z,\; \exp(-\lVert z - c_k \rVert^2 / (2 h^2))_{k=1..M}\bigr]

of the standardized :math:`z = (x - \bar x) / s_x`, with :math:`M \le` :data:`MAX_CENTRES`
centres :math:`c_k` (a seeded random subset of the context), a small penalty on the linear
part (as the linear residual variant) and a penalty :math:`\lambda` on the kernel part.
The bandwidth :math:`h` (a multiple of the median distance between centres) and
:math:`\lambda` are chosen per parameter by the closed-form leave-one-out error of the ridge
fit (hat-matrix diagonal): no training, no gradient steps. The network's context targets are
the leave-one-out residuals (the in-sample residuals of a flexible fit are too small: they
would make the posterior too narrow). The scale is :math:`s(z) = \exp(g(z)/2)` with
:math:`g` the same kind of ridge fit to :math:`\log(e_i^2 + \epsilon)` of the leave-one-out
residuals :math:`e_i`, clipped to :data:`SCALE_RANGE` times its median over the context
(any constant factor is absorbed by the network's per-data-set standardization).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["MAX_CENTRES", "BANDWIDTHS", "PENALTIES", "SCALE_RANGE", "PARAM_KEYS",
           "fit_adjustment", "apply_adjustment", "features", "adjustment_size", "param_shapes"]

#: kernel centres (a random subset of the context when it is larger)
MAX_CENTRES = 150
#: bandwidth grid, in units of the median distance between centres
BANDWIDTHS = (0.25, 0.5, 1.0, 2.0)
#: kernel-part ridge penalties tried (on features scaled to [0, 1], per simulation)
PENALTIES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
#: the linear columns are scaled by this factor, so their penalty is ``lambda / LINEAR_SCALE**2``
#: (at most 1e-2 on standardized x: nearly the unpenalized linear residual variant)
LINEAR_SCALE = 10.0
#: the scale is clipped to [median / SCALE_RANGE, median * SCALE_RANGE]
SCALE_RANGE = 20.0


def adjustment_size(n: int, d: int) -> tuple[int, int]:
    """``(M, P)``: the number of kernel centres and of features for ``n`` context pairs with
    ``d`` data values."""
    m = min(int(n), MAX_CENTRES)
    return m, 1 + d + m


def features(z: Tensor, centres: Tensor, bandwidth: Tensor | float) -> Tensor:
    """``phi(z)`` ``(B, 1 + d + M)`` for standardized data ``z`` ``(B, d)``, ``centres``
    ``(M, d)`` and a scalar bandwidth (absolute, in standardized units)."""
    d2 = torch.cdist(z, centres).square()
    k = torch.exp(-d2 / (2.0 * float(bandwidth) ** 2))
    return torch.cat([torch.ones(z.shape[0], 1, dtype=z.dtype, device=z.device), z, k], 1)


class _Basis:
    """The ridge problems on one feature matrix ``phi`` ``(N, 1 + d + M)``, all penalties at
    once: the columns are centred (the intercept is then exact and unpenalized), the linear
    columns scaled by :data:`LINEAR_SCALE` (a penalty ``lambda`` on all columns is then
    ``lambda / LINEAR_SCALE**2`` on the linear part), and the Gram matrix is diagonalized
    once (``P`` is at most ``1 + d + MAX_CENTRES``: cheap)."""

    def __init__(self, phi: Tensor, d: int):
        self.phi, self.d = phi, d
        self.n = phi.shape[0]
        self.mean = phi[:, 1:].mean(0)
        self.c = phi[:, 1:] - self.mean  # (N, d + M)
        self.scale = torch.ones(self.c.shape[1], dtype=self.c.dtype)
        self.scale[:d] = LINEAR_SCALE
        cs = self.c * self.scale
        e, self.v = torch.linalg.eigh(cs.T @ cs / self.n)
        self.e = e.clamp(min=0.0)
        self.cv = cs @ self.v  # (N, P - 1)
        self.cv2 = self.cv.square()

    def solve(self, y: Tensor, lam: float) -> tuple[Tensor, Tensor]:
        """Weights ``(P, k)`` on ``phi`` for ``y`` ``(N, k)`` and the leave-one-out
        residuals ``(N, k)``."""
        e, v, cv, scale = self.e, self.v, self.cv, self.scale
        ym = y.mean(0)
        coef_v = (cv.T @ (y - ym) / self.n) / (e + lam)[:, None]  # (P - 1, k)
        fitted = cv @ coef_v + ym
        h = self.cv2 @ (1.0 / (e + lam)) / self.n + 1.0 / self.n
        loo = (y - fitted) / (1.0 - h).clamp(min=1e-3)[:, None]
        w_rest = (v @ coef_v) * scale[:, None]  # on the centred, unscaled columns
        w0 = ym - self.mean @ w_rest
        return torch.cat([w0[None], w_rest], 0), loo


def _median_distance(centres: Tensor) -> float:
    dist = torch.cdist(centres, centres)
    iu = torch.triu_indices(centres.shape[0], centres.shape[0], 1)
    v = dist[iu[0], iu[1]]
    med = float(v.median()) if v.numel() else 1.0
    return med if med > 0 else 1.0


def _best_fit(bases: dict[float, _Basis], y: Tensor, penalties: tuple[float, ...]
              ) -> tuple[float, float, Tensor, Tensor]:
    """The bandwidth (a key of ``bases``) and penalty of least leave-one-out error for one
    target ``y`` ``(N, 1)``: ``(bandwidth, penalty, weights (P,), loo residuals (N,))``."""
    best: tuple[float, float, float, Tensor, Tensor] = (math.inf, 1.0, 1.0, None, None)  # type: ignore
    for b, basis in bases.items():
        for lam in penalties:
            w, loo = basis.solve(y, lam)
            e = float(loo.square().mean())
            if e < best[0] or best[3] is None:
                best = (e, b, lam, w[:, 0], loo[:, 0])
    return best[1:]


@torch.no_grad()
def fit_adjustment(theta: Tensor, x: Tensor, seed: int = 0, hetero: bool = True,
                   fixed: dict[str, Tensor] | None = None) -> tuple[dict[str, Tensor], Tensor]:
    """Choose bandwidths and penalties by leave-one-out error and fit the adjustment.

    Args:
        theta: ``(N, D)`` context parameters.
        x: ``(N, d)`` context data (flattened).
        seed: seeds the choice of the kernel centres.
        hetero: fit the scale regression (else ``s = 1``).
        fixed: an earlier fit whose standardization, centres, bandwidths and penalties are
            kept (only the weights are refitted: the held-out folds of the variant choice).

    Returns:
        ``(params, targets)``: ``params`` = ``{"x_mean", "x_std": (d,)`` (standardization of
        ``x``), ``"centres": (M, d)``, ``"bandwidth", "penalty": (2, D)`` (rows: mean, scale
        regression; bandwidths absolute, in standardized units), ``"w_mean", "w_scale": (P,
        D)``, ``"log_scale_low", "log_scale_high": (D,)}`` and the network's context targets
        ``(N, D)``: the leave-one-out residuals of the mean fit divided by ``s`` (float32).
    """
    n, d = x.shape
    dt = torch.float64
    xd, t = x.to(dt), theta.to(dt)
    big_d = t.shape[1]
    if fixed is None:
        x_mean = xd.mean(0)
        x_std = xd.std(0) if n > 1 else torch.ones(d, dtype=dt)
        x_std = torch.where(x_std > 0, x_std, torch.ones_like(x_std))  # no absolute floor
        z = (xd - x_mean) / x_std
        m, _ = adjustment_size(n, d)
        centres = z[torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))[:m]]
        med = _median_distance(centres)
        grid = [[b * med for b in BANDWIDTHS]] * (2 * big_d)
        pens = [PENALTIES] * (2 * big_d)
    else:
        x_mean, x_std = fixed["x_mean"].to(dt), fixed["x_std"].to(dt)
        z = (xd - x_mean) / x_std
        centres = fixed["centres"].to(dt)
        m = centres.shape[0]
        grid = [[float(fixed["bandwidth"][r, j])] for r in (0, 1) for j in range(big_d)]
        pens = [(float(fixed["penalty"][r, j]),) for r in (0, 1) for j in range(big_d)]
        hetero = bool((fixed["w_scale"] != 0).any())
    cache: dict[float, _Basis] = {}

    def bases(bands: list[float]) -> dict[float, _Basis]:
        for b in bands:
            if b not in cache:
                cache[b] = _Basis(features(z, centres, b), d)
        return {b: cache[b] for b in bands}

    bw = torch.ones(2, big_d, dtype=dt)
    pen = torch.ones(2, big_d, dtype=dt)
    w_mean = torch.zeros(1 + d + m, big_d, dtype=dt)
    w_scale = torch.zeros_like(w_mean)
    lo, hi = torch.zeros(big_d, dtype=dt), torch.zeros(big_d, dtype=dt)
    loo = torch.zeros_like(t)
    for j in range(big_d):
        bw[0, j], pen[0, j], w_mean[:, j], loo[:, j] = _best_fit(
            bases(grid[j]), t[:, j:j + 1], pens[j])
    log_s = torch.zeros_like(t)
    if hetero:
        eps = 1e-3 * loo.square().mean(0).clamp(min=1e-30)
        y = torch.log(loo.square() + eps)  # (N, D)
        for j in range(big_d):
            b, lam, w, _ = _best_fit(bases(grid[big_d + j]), y[:, j:j + 1], pens[big_d + j])
            bw[1, j], pen[1, j], w_scale[:, j] = b, lam, w
            ls = cache[b].phi @ w / 2.0
            mid = float(ls.median())
            lo[j], hi[j] = mid - math.log(SCALE_RANGE), mid + math.log(SCALE_RANGE)
            log_s[:, j] = ls.clamp(float(lo[j]), float(hi[j]))
    params = {"x_mean": x_mean.float(), "x_std": x_std.float(), "centres": centres.float(),
              "bandwidth": bw.float(), "penalty": pen.float(), "w_mean": w_mean.float(),
              "w_scale": w_scale.float(), "log_scale_low": lo.float(),
              "log_scale_high": hi.float()}
    return params, (loo / log_s.exp()).float()


#: the keys of an adjustment's parameters (:func:`fit_adjustment`)
PARAM_KEYS = ("x_mean", "x_std", "centres", "bandwidth", "penalty", "w_mean", "w_scale",
              "log_scale_low", "log_scale_high")


def param_shapes(n: int, d: int, big_d: int) -> dict[str, tuple[int, ...]]:
    """The shapes of :func:`fit_adjustment`'s parameters for ``n`` context pairs, ``d``
    data values and ``big_d`` parameters (the buffers of a saved estimator)."""
    m, p = adjustment_size(n, d)
    return {"x_mean": (d,), "x_std": (d,), "centres": (m, d), "bandwidth": (2, big_d),
            "penalty": (2, big_d), "w_mean": (p, big_d), "w_scale": (p, big_d),
            "log_scale_low": (big_d,), "log_scale_high": (big_d,)}


def apply_adjustment(params: dict[str, Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    """``(m(x), s(x))``, each ``(B, D)``, for flattened data ``x`` ``(B, d)``."""
    big_d = params["w_mean"].shape[1]
    z = (x - params["x_mean"].to(x)) / params["x_std"].to(x)
    centres = params["centres"].to(x)
    mean = torch.empty(x.shape[0], big_d, dtype=x.dtype, device=x.device)
    log_s = torch.zeros_like(mean)
    hetero = bool((params["w_scale"] != 0).any())
    for j in range(big_d):
        mean[:, j] = features(z, centres, float(params["bandwidth"][0, j])) \
            @ params["w_mean"][:, j].to(x)
        if hetero:
            ls = features(z, centres, float(params["bandwidth"][1, j])) \
                @ params["w_scale"][:, j].to(x) / 2.0
            log_s[:, j] = torch.minimum(torch.maximum(ls, params["log_scale_low"][j].to(x)),
                                        params["log_scale_high"][j].to(x))
    return mean, log_s.exp()
