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

import torch
from torch import Tensor

__all__ = ["mmd", "mmd_test"]


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
