"""Expected coverage of highest-posterior-density (HPD) regions, from ``log_prob`` ranks.

For test pair ``i`` the smallest HPD region containing ``theta*_i`` has credibility

    f_i = (1/n) #{ j : log q(theta_ij | x_i) > log q(theta*_i | x_i) },

estimated with ``n`` posterior samples; ``ECP(alpha) = mean_i 1[f_i < alpha]`` is the
fraction of true parameters inside the ``alpha``-HPD region, and equals ``alpha`` for a
calibrated posterior. Only ranks of ``log_prob`` within one observation matter, so an
unnormalized ``log_prob`` (MCMC posteriors) works too. Ties are broken at random.

Shapes: ``samples`` ``(n, N, D)``, ``theta`` ``(N, D)``, ``xs`` ``(N, *x_shape)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from diagnostics.ecp import (
    area_to_curve,
    derived_seed,
    ecp_curve,
    rank_to_unit,
    uniform_ks_pvalue,
    verdict,
)
from diagnostics.testset import _range_check_off, posterior_samples
from sbi_core.posterior import DirectPosterior, Posterior
from sbi_core.threads import auto_threads

__all__ = ["CoverageResult", "hpd_levels", "expected_coverage", "run_expected_coverage"]


@dataclass
class CoverageResult:
    """HPD expected coverage: ``alpha`` and ``ecp`` ``(B + 1,)``, levels ``f`` ``(N,)``."""

    alpha: Tensor
    ecp: Tensor
    levels: Tensor
    atc: float
    ks_pvalue: float
    max_deviation: float

    def verdict(self) -> tuple[str, str]:
        return verdict(self.ks_pvalue, self.atc, self.max_deviation, "HPD expected coverage")

    @property
    def status(self) -> str:
        return self.verdict()[0]

    def to_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha.tolist(), "ecp": self.ecp.tolist(), "atc": self.atc,
                "ks_pvalue": self.ks_pvalue, "max_deviation": self.max_deviation}


def hpd_levels(log_prob_samples: Tensor, log_prob_true: Tensor, seed: int = 0) -> Tensor:
    """HPD credibility ``(N,)`` of the truth from ``log_prob`` of samples ``(n, N)`` and truth ``(N,)``."""
    gen = torch.Generator().manual_seed(derived_seed(seed, "coverage"))
    greater = (log_prob_samples > log_prob_true).sum(0)
    equal = (log_prob_samples == log_prob_true).sum(0)
    return rank_to_unit(greater, equal, log_prob_samples.shape[0], gen)


def expected_coverage(posterior: Posterior, samples: Tensor, theta: Tensor, xs: Tensor,
                      num_bins: int | None = None, seed: int = 0, chunk: int | None = None,
                      progress: bool | None = None) -> CoverageResult:
    """HPD expected coverage for precomputed ``samples`` ``(n, N, D)`` of ``posterior``.

    ``log_prob_batched`` is evaluated on the samples and the truth together, in chunks of
    observations (about 200,000 evaluations per call).

    Raises:
        NotImplementedError: if the posterior has no ``log_prob``.
    """
    from sbi_core.progress import progress_bar

    n, num, _ = samples.shape
    points = torch.cat([torch.as_tensor(theta, dtype=torch.float32)[None], samples])  # (n+1, N, D)
    chunk = chunk or max(1, 200_000 // (n + 1))
    # Ranks within one observation ignore a per-x constant, so skip leakage normalization.
    extra = {"normalize": False} if isinstance(posterior, DirectPosterior) else {}
    parts = []
    with _range_check_off(posterior):
        starts = list(range(0, num, chunk))
        for s in progress_bar(starts, desc="log_prob", unit="chunk",
                              progress=False if len(starts) == 1 else progress):
            parts.append(posterior.log_prob_batched(points[:, s:s + chunk], xs[s:s + chunk],
                                                    **extra))
    lp = torch.cat(parts, dim=1)  # (n+1, N)
    lp = torch.nan_to_num(lp, nan=-torch.inf)
    levels = hpd_levels(lp[1:], lp[0], seed)
    alpha, ecp = ecp_curve(levels, num_bins)
    return CoverageResult(alpha=alpha, ecp=ecp, levels=levels, atc=area_to_curve(alpha, ecp),
                          ks_pvalue=uniform_ks_pvalue(levels),
                          max_deviation=float((ecp - alpha).abs().max()))


@auto_threads
def run_expected_coverage(posterior: Posterior, theta: Tensor, xs: Tensor,
                          num_samples: int = 1000, seed: int = 0,
                          progress: bool | None = None) -> CoverageResult:
    """Sample ``posterior`` for every ``xs`` and compute the HPD expected coverage."""
    samples = posterior_samples(posterior, xs, num_samples, seed=seed, progress=progress)
    return expected_coverage(posterior, samples, theta, xs, seed=seed, progress=progress)
