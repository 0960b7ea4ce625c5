"""Simulation-based calibration (SBC; Talts et al. 2018).

For each test pair and each parameter dimension, the rank of ``theta*_d`` among the
posterior samples' ``theta_{j,d}`` is uniform on ``{0, ..., n}`` when the posterior is
calibrated. Ranks are turned into exact ``U(0, 1)`` values by random tie-breaking
(:func:`diagnostics.ecp.rank_to_unit`) and tested per dimension with a KS test and a
chi-squared test on equal-width bins (p-values Bonferroni-combined over ``2 D`` tests).

The data-averaged posterior (DAP: one posterior draw per test ``x``) must match the prior;
it is compared with the test ``theta*`` (prior draws) by per-dimension two-sample KS tests.

Shapes: ``samples`` ``(n, N, D)``, ``theta`` ``(N, D)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from diagnostics.ecp import FAIL_PVALUE, WARN_PVALUE, derived_seed, rank_to_unit
from diagnostics.testset import posterior_samples
from sbi_core.posterior import Posterior
from sbi_core.threads import auto_threads

__all__ = ["SBCResult", "sbc_ranks", "sbc", "run_sbc", "ecdf_band"]


@dataclass
class SBCResult:
    """SBC ranks and tests.

    Attributes:
        ranks: normalized randomized ranks ``(N, D)`` in [0, 1).
        ks_pvalues, chi2_pvalues: per-dimension uniformity p-values ``(D,)``.
        pvalue: Bonferroni-combined p-value over all ``2 D`` tests.
        dap_ks_pvalues: per-dimension KS p-values, DAP vs prior draws ``(D,)``.
        dap_pvalue: Bonferroni-combined DAP p-value.
        mean_rank: mean normalized rank per dimension (0.5 ideal; > 0.5 means the posterior
            sits below the truth, i.e. is biased low).
        rank_std: std of the normalized ranks per dimension (0.289 ideal; larger: too
            narrow, smaller: too wide).
    """

    ranks: Tensor
    ks_pvalues: list[float]
    chi2_pvalues: list[float]
    pvalue: float
    dap_ks_pvalues: list[float]
    dap_pvalue: float
    mean_rank: list[float]
    rank_std: list[float]

    def verdict(self, param_names: list[str] | None = None) -> tuple[str, str]:
        """``(status, why)``: fail when a combined p-value < 1e-3, warn when < 0.05."""
        d = self.ranks.shape[1]
        names = param_names or [f"theta_{i + 1}" for i in range(d)]
        worst = int(np.argmin(np.minimum(self.ks_pvalues, self.chi2_pvalues)))
        m, s = self.mean_rank[worst], self.rank_std[worst]
        if abs(m - 0.5) > 0.1:
            shape = f"biased {'low' if m > 0.5 else 'high'} (ranks pile up on one side)"
        elif s > 0.32:
            shape = "over-confident (ranks pile up at the ends)"
        elif s < 0.26:
            shape = "under-confident (ranks pile up in the middle)"
        else:
            shape = "mis-shaped"
        detail = (f"worst dimension {names[worst]}: KS p = {self.ks_pvalues[worst]:.2g}, "
                  f"chi2 p = {self.chi2_pvalues[worst]:.2g}, mean rank {m:.3f} (ideal 0.5), "
                  f"rank std {s:.3f} (ideal 0.289); combined p = {self.pvalue:.2g}; DAP vs prior "
                  f"p = {self.dap_pvalue:.2g}")
        if self.pvalue < FAIL_PVALUE:
            return "fail", f"SBC ranks are not uniform: {shape}; {detail}."
        if self.dap_pvalue < FAIL_PVALUE:
            return "fail", f"The data-averaged posterior does not match the prior; {detail}."
        if self.pvalue >= WARN_PVALUE and self.dap_pvalue < WARN_PVALUE:
            return "warn", ("SBC ranks look uniform, but the data-averaged posterior differs "
                            f"marginally from the prior; {detail}.")
        if self.pvalue < WARN_PVALUE:
            return "warn", f"SBC is marginal, possibly {shape}; {detail}."
        return "pass", f"SBC ranks are consistent with uniform; {detail}."

    def to_dict(self) -> dict[str, Any]:
        return {"ks_pvalues": self.ks_pvalues, "chi2_pvalues": self.chi2_pvalues,
                "pvalue": self.pvalue, "dap_ks_pvalues": self.dap_ks_pvalues,
                "dap_pvalue": self.dap_pvalue, "mean_rank": self.mean_rank,
                "rank_std": self.rank_std}


def sbc_ranks(samples: Tensor, theta: Tensor, seed: int = 0) -> Tensor:
    """Normalized randomized ranks ``(N, D)`` of ``theta`` ``(N, D)`` among ``samples`` ``(n, N, D)``."""
    samples = torch.as_tensor(samples, dtype=torch.float32)
    theta = torch.as_tensor(theta, dtype=torch.float32)
    if samples.ndim != 3 or samples.shape[1:] != theta.shape:
        raise ValueError(f"SBC needs samples (n, N, D) and theta (N, D); got "
                         f"{tuple(samples.shape)} and {tuple(theta.shape)}.")
    gen = torch.Generator().manual_seed(derived_seed(seed, "sbc"))
    less = (samples < theta).sum(0)
    equal = (samples == theta).sum(0)
    return rank_to_unit(less, equal, samples.shape[0], gen)


def sbc(samples: Tensor, theta: Tensor, num_bins: int | None = None, seed: int = 0) -> SBCResult:
    """SBC from precomputed samples ``(n, N, D)`` and true parameters ``(N, D)``.

    ``num_bins`` for the chi-squared test defaults to ``clip(N // 10, 2, 20)`` (expected
    count per bin >= 5 for N >= 20).
    """
    ranks = sbc_ranks(samples, theta, seed)
    num, dim = ranks.shape
    r = ranks.double().numpy()
    bins = num_bins or int(np.clip(num // 10, 2, 20))
    ks = [float(stats.kstest(r[:, d], "uniform").pvalue) for d in range(dim)]
    counts = np.stack([np.histogram(r[:, d], bins=bins, range=(0.0, 1.0))[0] for d in range(dim)])
    chi2 = [float(p) for p in np.atleast_1d(stats.chisquare(counts, axis=1).pvalue)]
    pvalue = min(1.0, 2 * dim * min(ks + chi2))
    dap = samples[0].double().numpy()
    prior = torch.as_tensor(theta).double().numpy()
    dap_ks = [float(stats.ks_2samp(dap[:, d], prior[:, d]).pvalue) for d in range(dim)]
    return SBCResult(ranks=ranks, ks_pvalues=ks, chi2_pvalues=chi2, pvalue=pvalue,
                     dap_ks_pvalues=dap_ks, dap_pvalue=min(1.0, dim * min(dap_ks)),
                     mean_rank=r.mean(0).tolist(), rank_std=r.std(0).tolist())


@auto_threads
def run_sbc(posterior: Posterior, theta: Tensor, xs: Tensor, num_samples: int = 1000,
            seed: int = 0, progress: bool | None = None) -> SBCResult:
    """Sample ``posterior`` for every ``xs`` ``(N, *x_shape)`` (batched) and run SBC."""
    samples = posterior_samples(posterior, xs, num_samples, seed=seed, progress=progress)
    return sbc(samples, theta, seed=seed)


def ecdf_band(num: int, confidence: float = 0.95, grid_size: int = 100,
              num_simulations: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray,
                                                                    np.ndarray]:
    """Simultaneous band for ``ECDF(z) - z`` of ``num`` uniform values (Säilynoja et al. 2022).

    Pointwise binomial intervals at level ``1 - gamma`` are widened (``gamma`` lowered) until
    ``confidence`` of ``num_simulations`` simulated uniform ECDFs stay inside on the whole grid.

    Returns:
        ``z`` ``(grid_size,)``, ``lower`` and ``upper`` bounds on ``ECDF(z) - z``.
    """
    rng = np.random.default_rng(seed)
    z = np.linspace(0.0, 1.0, grid_size + 2)[1:-1]
    u = np.sort(rng.random((num_simulations, num)), axis=1)
    counts = np.stack([np.searchsorted(row, z, side="right") for row in u])  # (S, G)
    cdf = stats.binom.cdf(counts, num, z)
    sf = stats.binom.sf(counts - 1, num, z)  # P(K >= k)
    tail = 2 * np.minimum(cdf, sf).min(axis=1)  # smallest two-sided pointwise tail per run
    gamma = float(np.quantile(tail, 1 - confidence))
    lower = stats.binom.ppf(gamma / 2, num, z) / num - z
    upper = stats.binom.ppf(1 - gamma / 2, num, z) / num - z
    return z, lower, upper
