r"""Maximum mean discrepancy (MMD) between two sample sets, with a permutation test.

Unbiased estimate with a Gaussian kernel :math:`k(a, b) = \exp(-\|a - b\|^2 / (2 h^2))`:

.. math:: \mathrm{MMD}^2 = \frac{1}{m(m-1)}\sum_{i \ne j} k(p_i, p_j)
          + \frac{1}{n(n-1)}\sum_{i \ne j} k(q_i, q_j) - \frac{2}{mn}\sum_{i,j} k(p_i, q_j).

Inputs are z-scored with the statistics of ``p``; the bandwidth ``h`` defaults to the
median pairwise distance of the pooled samples (median heuristic). Zero means the same
distribution; the p-value comes from ``num_permutations`` label permutations, all
evaluated from one kernel matrix.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["mmd", "mmd_test", "bq_weights", "mmd2_weighted", "mmd2_estimate", "median_lengthscale",
           "rbf", "observed_term", "ESTIMATORS"]


def _prepare(p: Tensor, q: Tensor, max_samples: int) -> tuple[Tensor, Tensor]:
    p = torch.as_tensor(p, dtype=torch.float64)
    q = torch.as_tensor(q, dtype=torch.float64)
    if p.ndim != 2 or q.ndim != 2 or p.shape[1] != q.shape[1]:
        raise ValueError(f"MMD needs two sample sets (N, D) and (M, D); got {tuple(p.shape)} and "
                         f"{tuple(q.shape)}.")
    if len(p) < 2 or len(q) < 2:
        raise ValueError("MMD needs at least 2 samples in each set.")
    if not (torch.isfinite(p).all() and torch.isfinite(q).all()):
        raise ValueError("MMD got NaN or inf samples; remove them first.")
    p, q = p[:max_samples], q[:max_samples]
    mean, std = p.mean(0), p.std(0).clamp(min=1e-12)
    return (p - mean) / std, (q - mean) / std


def _kernel(z: Tensor, bandwidth: float | None) -> tuple[Tensor, float]:
    sq = torch.cdist(z, z).square()
    if bandwidth is None:
        off = sq[~torch.eye(len(z), dtype=torch.bool)]
        bandwidth = float(off.median().sqrt().clamp(min=1e-12))
    return torch.exp(-sq / (2 * bandwidth**2)), bandwidth


def _mmd2(k: Tensor, labels: Tensor) -> Tensor:
    """Unbiased MMD^2 for kernel ``k`` ``(n, n)`` and boolean labels ``(P, n)`` (True = p)."""
    a = labels.double()
    b = 1.0 - a
    m, n = a.sum(-1), b.sum(-1)
    diag = k.diagonal()
    kaa = torch.einsum("pi,ij,pj->p", a, k, a) - a @ diag
    kbb = torch.einsum("pi,ij,pj->p", b, k, b) - b @ diag
    kab = torch.einsum("pi,ij,pj->p", a, k, b)
    return kaa / (m * (m - 1)) + kbb / (n * (n - 1)) - 2 * kab / (m * n)


def mmd(p: Tensor, q: Tensor, bandwidth: float | None = None, max_samples: int = 5000) -> float:
    """Unbiased squared MMD between ``p`` ``(N, D)`` and ``q`` ``(M, D)`` (z-scored by ``p``)."""
    return mmd_test(p, q, bandwidth, num_permutations=0, max_samples=max_samples)[0]


def mmd_test(p: Tensor, q: Tensor, bandwidth: float | None = None, num_permutations: int = 200,
             seed: int = 0, max_samples: int = 2000) -> tuple[float, float]:
    """``(MMD^2, permutation p-value)``; the p-value is 1.0 when ``num_permutations == 0``.

    At most ``max_samples`` rows of each set are used (the kernel matrix is dense).
    """
    p, q = _prepare(p, q, max_samples)
    z = torch.cat([p, q])
    k, _ = _kernel(z, bandwidth)
    labels = torch.zeros(1, len(z), dtype=torch.bool)
    labels[0, : len(p)] = True
    stat = float(_mmd2(k, labels)[0])
    if num_permutations <= 0:
        return stat, 1.0
    gen = torch.Generator().manual_seed(seed + 7919)
    perms = torch.argsort(torch.rand(num_permutations, len(z), generator=gen), dim=1)
    null = _mmd2(k, perms < len(p))
    pvalue = float(((null >= stat).sum() + 1) / (num_permutations + 1))
    return stat, pvalue


# ---------------------------------------------------------------------------------------
# Estimators of MMD^2 between a simulator and observed data, for ABC and minimum distance:
# the V-statistic, the U-statistic and the optimally weighted (OW) estimator of
# Bharti et al. (ICML 2023). Shapes: simulated x (..., m, d) batched over leading dims
# (one set per parameter), observed y (n, d).
# ---------------------------------------------------------------------------------------

ESTIMATORS = ("v", "u", "ow")


def median_lengthscale(z: Tensor, max_points: int = 2000) -> float:
    r"""Median heuristic :math:`\ell = \sqrt{\mathrm{median}_{i<j} \|z_i - z_j\|^2 / 2}` of
    ``z`` ``(n, d)`` (first ``max_points`` rows)."""
    z = torch.as_tensor(z, dtype=torch.float64).reshape(len(z), -1)[:max_points]
    if len(z) < 2:
        raise ValueError("The median heuristic needs at least 2 points.")
    sq = torch.cdist(z, z).square()
    iu = torch.triu_indices(len(z), len(z), 1)
    return float((sq[iu[0], iu[1]].median() / 2).sqrt().clamp(min=1e-12))


def rbf(a: Tensor, b: Tensor, lengthscale: float) -> Tensor:
    r"""Gaussian kernel :math:`\exp(-\|a - b\|^2 / (2\ell^2))` for ``a`` ``(..., m, d)`` and
    ``b`` ``(..., n, d)`` → ``(..., m, n)``."""
    return torch.exp(-torch.cdist(a, b).square() / (2 * lengthscale**2))


def bq_weights(u: Tensor, base: str = "uniform", lengthscale: float | None = None,
               jitter: float = 1e-8) -> Tensor:
    r"""Bayesian-quadrature (optimal) weights ``(m,)`` for the simulator's random inputs ``u``
    ``(m, s)``, with a Gaussian kernel :math:`c` on the input space.

    ``w = (C + \delta I)^{-1} z`` with :math:`C_{ii'} = c(u_i, u_{i'})` and the kernel mean
    embedding :math:`z_i = \int c(u, u_i)\, U(du)` in closed form for ``base="uniform"``
    (:math:`U = \mathcal U[0,1]^s`) or ``base="gaussian"`` (:math:`U = N(0, I_s)`). The
    lengthscale defaults to the median heuristic on ``u``. The weights depend only on ``u``:
    with common random numbers (the same ``u`` for every parameter) compute them once.
    Cost :math:`O(m^3)`; the benefit over uniform weights fades as ``s`` grows.
    """
    u = torch.as_tensor(u, dtype=torch.float64)
    if u.ndim == 1:
        u = u[:, None]
    if u.ndim != 2 or len(u) < 2:
        raise ValueError(f"u must have shape (m, s) with m >= 2 points, got {tuple(u.shape)}.")
    if base == "uniform":
        if bool(((u < 0) | (u > 1)).any()):
            raise ValueError("base='uniform' needs u in [0, 1]^s (the simulator's uniform random "
                             "inputs); use base='gaussian' for standard-normal inputs.")
    elif base != "gaussian":
        raise ValueError(f"base must be 'uniform' or 'gaussian', got {base!r}.")
    ell = median_lengthscale(u) if lengthscale is None else float(lengthscale)
    s = u.shape[1]
    if base == "uniform":
        normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0)
        per_dim = (ell * math.sqrt(2 * math.pi)
                   * (normal.cdf((1 - u) / ell) - normal.cdf(-u / ell)))
        z = per_dim.prod(-1)
    else:
        z = (ell**2 / (ell**2 + 1)) ** (s / 2) * torch.exp(-u.square().sum(-1) / (2 * (ell**2 + 1)))
    gram = rbf(u, u, ell) + jitter * torch.eye(len(u), dtype=torch.float64)
    return torch.linalg.solve(gram, z)


def mmd2_weighted(x: Tensor, y: Tensor, w: Tensor | None = None, lengthscale: float | None = None,
                  yy_term: float | None = None, unbiased: bool = False) -> Tensor:
    r"""Weighted MMD² between simulated sets ``x`` ``(..., m, d)`` and observed ``y`` ``(n, d)``:

    .. math:: w^\top K_{xx} w - \tfrac{2}{n} w^\top K_{xy} 1 + \tfrac{1}{n^2} 1^\top K_{yy} 1

    ``w`` ``(m,)`` or ``(..., m)``: ``None`` gives ``1/m`` (the V-statistic); :func:`bq_weights`
    gives the optimally weighted estimator. ``unbiased=True`` (only with ``w=None``) drops the
    diagonals of both Gram matrices (the U-statistic). The Gaussian kernel's lengthscale
    defaults to the median heuristic on ``y``; ``yy_term`` (the last term, see
    :func:`observed_term`) can be passed to skip its :math:`O(n^2)` cost. Returns ``(...)``.
    """
    x = torch.as_tensor(x, dtype=torch.float64)
    y = torch.as_tensor(y, dtype=torch.float64)
    if y.ndim == 1:
        y = y[:, None]
    if x.ndim < 2 or x.shape[-1] != y.shape[-1] or y.ndim != 2:
        raise ValueError(f"x must be (..., m, d) and y (n, d) with the same d; got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}.")
    m, n = x.shape[-2], y.shape[0]
    if m < 2 or n < 2:
        raise ValueError(f"MMD² needs at least 2 simulated and 2 observed points (m={m}, n={n}).")
    ell = median_lengthscale(y) if lengthscale is None else float(lengthscale)
    kxx = rbf(x, x, ell)
    kxy_mean = rbf(x, y.expand(*x.shape[:-2], n, y.shape[-1]), ell).mean(-1)  # (..., m)
    if unbiased:
        if w is not None:
            raise ValueError("unbiased=True is the U-statistic with uniform weights; pass w=None.")
        off = kxx.sum((-1, -2)) - kxx.diagonal(dim1=-2, dim2=-1).sum(-1)
        yy = yy_term if yy_term is not None else observed_term(y, ell, unbiased=True)
        return off / (m * (m - 1)) - 2 * kxy_mean.mean(-1) + yy
    w = torch.full((m,), 1.0 / m, dtype=torch.float64) if w is None else \
        torch.as_tensor(w, dtype=torch.float64)
    if w.shape[-1] != m:
        raise ValueError(f"w has {w.shape[-1]} weights for m={m} simulated points.")
    yy = yy_term if yy_term is not None else observed_term(y, ell)
    quad = torch.einsum("...i,...ij,...j->...", w.expand(*x.shape[:-1]), kxx,
                        w.expand(*x.shape[:-1]))
    return quad - 2 * (w * kxy_mean).sum(-1) + yy


def observed_term(y: Tensor, lengthscale: float, unbiased: bool = False, chunk: int = 2048) -> float:
    r""":math:`\frac{1}{n^2} 1^\top K_{yy} 1` (``unbiased``: the mean over :math:`i \ne j`) for
    observed ``y`` ``(n, d)``, in row chunks (no ``n x n`` matrix is held)."""
    y = torch.as_tensor(y, dtype=torch.float64)
    n = len(y)
    total = sum(float(rbf(y[i:i + chunk], y, lengthscale).sum()) for i in range(0, n, chunk))
    if unbiased:
        return (total - n) / (n * (n - 1))
    return total / n**2


def mmd2_estimate(x: Tensor, y: Tensor, estimator: str = "v", u: Tensor | None = None,
                  base: str = "uniform", lengthscale: float | None = None) -> Tensor:
    """MMD² of simulated ``x`` ``(..., m, d)`` against observed ``y`` ``(n, d)`` by
    ``estimator``: ``"v"`` (V-statistic), ``"u"`` (U-statistic) or ``"ow"`` (optimally
    weighted; needs the random inputs ``u`` ``(m, s)`` that produced ``x``, shared across the
    leading dims). Returns ``(...)``."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}.")
    if estimator == "ow":
        if u is None:
            raise ValueError("estimator='ow' needs the simulator's random inputs u (m, s) that "
                             "produced x; without them use estimator='v' or 'u'.")
        return mmd2_weighted(x, y, bq_weights(u, base), lengthscale)
    return mmd2_weighted(x, y, None, lengthscale, unbiased=estimator == "u")
