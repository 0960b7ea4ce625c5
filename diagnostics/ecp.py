"""Expected-coverage curves from per-pair credibility levels, and their verdicts.

TARP, SBC and HPD coverage all reduce a calibration check to one number ``f_i`` per test
pair: the credibility level of the smallest region (of some family) that contains the
true parameter. For a calibrated posterior ``f ~ U(0, 1)``. Ties are broken at random
(:func:`rank_to_unit`) so that this holds exactly, also for discrete samples, and the
uniformity test is then an exact one-sample KS test against ``U(0, 1)``.

The expected coverage probability is ``ECP(alpha) = mean_i 1[f_i < alpha]`` on a grid
that always spans ``[0, 1]``. ATC ("area to curve") is ``sum_{alpha >= 1/2} (ECP - alpha)
dalpha``: below 0 means over-confident (too narrow), above 0 under-confident (too wide).
"""

from __future__ import annotations

import zlib

import numpy as np
import torch
from scipy import stats
from torch import Tensor

__all__ = ["derived_seed", "rank_to_unit", "ecp_curve", "area_to_curve", "uniform_ks_pvalue", "verdict",
           "FAIL_PVALUE", "WARN_PVALUE", "ATC_TOLERANCE"]

#: A uniformity p-value below this fails a check; below WARN_PVALUE it warns.
FAIL_PVALUE = 1e-3
WARN_PVALUE = 0.05
#: |ATC| below this counts as "no clear direction" when naming the failure.
ATC_TOLERANCE = 0.01


def derived_seed(seed: int, tag: str) -> int:
    """A seed for stream ``tag`` derived from the user's ``seed``.

    Internal random streams (references, tie-breaking, bootstrap, posterior sampling) must
    not coincide with the stream that drew the test data: a user who simulates with
    ``torch.manual_seed(0)`` and diagnoses with ``seed=0`` would otherwise get reference
    points correlated with the true parameters, and a wrong verdict.
    """
    mixed = np.random.SeedSequence([int(seed) % 2**63, zlib.crc32(tag.encode())])
    return int(mixed.generate_state(1, dtype=np.uint64)[0] % 2**62)


def rank_to_unit(less: Tensor, equal: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """Randomized normalized rank: ``(less + U * (equal + 1)) / (n + 1)``.

    ``less`` and ``equal`` count the ``n`` samples below / tied with the true value. If the
    true value is exchangeable with the samples the result is exactly ``U(0, 1)``.
    """
    u = torch.rand(less.shape, generator=generator, dtype=torch.float64)
    return ((less.double() + u * (equal.double() + 1.0)) / (n + 1)).float()


def ecp_curve(f: Tensor, num_bins: int | None = None) -> tuple[Tensor, Tensor]:
    """``alpha`` and ``ECP(alpha)``, both ``(num_bins + 1,)``, for credibility levels ``f`` ``(N,)``.

    ``alpha`` spans ``[0, 1]`` (default ``max(10, N // 10)`` bins); ``f`` of shape
    ``(K, N)`` gives ``ECP`` ``(K, num_bins + 1)`` (used for bootstrap replicates).
    """
    n = f.shape[-1]
    bins = num_bins or max(10, n // 10)
    alpha = torch.linspace(0.0, 1.0, bins + 1)
    ecp = (f[..., None] < alpha).float().mean(-2)
    ecp[..., -1] = 1.0  # f < 1 always; avoids float edge effects at alpha = 1
    return alpha, ecp


def area_to_curve(alpha: Tensor, ecp: Tensor) -> float:
    """ATC ``sum_{alpha >= 1/2} (ECP - alpha) * dalpha``; < 0 over-confident, > 0 under-confident."""
    mid = len(alpha) // 2
    return float(((ecp[mid:] - alpha[mid:]) * (alpha[1] - alpha[0])).sum())


def uniform_ks_pvalue(f: Tensor) -> float:
    """Exact one-sample KS p-value of ``f`` ``(N,)`` against ``U(0, 1)``."""
    return float(stats.kstest(np.asarray(f, dtype=np.float64), "uniform").pvalue)


def verdict(pvalue: float, atc: float, max_deviation: float, what: str) -> tuple[str, str]:
    """``(status, why)`` from a uniformity p-value and the ATC direction.

    ``fail`` when ``pvalue < FAIL_PVALUE``, ``warn`` when ``< WARN_PVALUE``, else ``pass``.
    """
    if atc < -ATC_TOLERANCE:
        shape = "over-confident (posterior too narrow: ECP below the diagonal)"
    elif atc > ATC_TOLERANCE:
        shape = "under-confident (posterior too wide: ECP above the diagonal)"
    else:
        shape = "biased or mis-shaped (ECP off the diagonal without a clear width error)"
    detail = f"KS p = {pvalue:.2g}, ATC = {atc:+.3f}, max |ECP - alpha| = {max_deviation:.3f}"
    if pvalue < FAIL_PVALUE:
        return "fail", f"{what} is not calibrated: {shape}; {detail}."
    if pvalue < WARN_PVALUE:
        return "warn", f"{what} is marginally off, possibly {shape}; {detail}."
    return "pass", f"{what} is consistent with calibration; {detail}."
