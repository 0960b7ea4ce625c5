"""Simulation-based calibration (SBC) of reference posterior samplers.

If a sampler draws from the true posterior, then for ``theta ~ prior``, ``x ~ simulator``,
the rank of each coordinate of ``theta`` among ``L`` posterior draws for ``x`` is uniform on
``0..L``. :func:`sbc_ranks` collects those ranks; :func:`sbc_uniformity_pvalues` tests them
per dimension with a Kolmogorov-Smirnov test. Used by ``benchmarks/verify_references.py``
and the slow tests.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import kstest
from torch import Tensor

from sbi_core.problem import Problem

__all__ = ["sbc_ranks", "sbc_uniformity_pvalues"]


def sbc_ranks(problem: Problem, num_runs: int, num_posterior: int, seed: int = 0) -> Tensor:
    """Ranks ``(num_runs, D)`` in ``0..num_posterior`` of true parameters among reference draws."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        np.random.seed(seed)
        theta = problem.prior.sample((num_runs,))
        x = problem.simulator(theta)
    ranks = []
    for i in range(num_runs):
        samples = problem.reference_posterior(x[i], num_posterior, seed + i + 1)
        ranks.append((samples < theta[i]).sum(0))
    return torch.stack(ranks)


def sbc_uniformity_pvalues(ranks: Tensor, num_posterior: int, seed: int = 0) -> list[float]:
    """KS-test p-values (one per dimension) that ``ranks`` are uniform on ``0..num_posterior``
    (ranks are jittered uniformly within their bin, with ``seed``, to make them continuous)."""
    gen = torch.Generator().manual_seed(seed)
    jitter = torch.rand(ranks.shape, dtype=torch.float64, generator=gen)
    u = (ranks.double() + jitter) / (num_posterior + 1)
    return [float(kstest(u[:, j].numpy(), "uniform").pvalue) for j in range(ranks.shape[1])]
