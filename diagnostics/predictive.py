"""Posterior predictive checks: simulate from posterior samples and compare with ``x_o``.

For each observation ``x_o`` (``M`` of them) take ``m`` posterior samples, simulate
``x_rep ~ p(x | theta)`` for all ``M * m`` of them in one simulator call, and measure, on
features standardized by the spread of the observations:

- the distances ``||x_rep - x_o||`` (quantiles summarize how close the predictive is);
- a posterior predictive p-value: the fraction of replicates at least as far from the
  predictive mean as ``x_o`` is. Small values mean ``x_o`` is atypical of what the
  posterior predicts. These p-values are conservative (they cluster around 0.5 even for
  a correct posterior), so a check fails only when many observations are atypical.

Replicates that fail to simulate (NaN/inf) are dropped with a warning.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from sbi_core.problem import Problem

__all__ = ["PredictiveResult", "predictive_check", "ATYPICAL_PVALUE"]

#: An observation is "atypical" when its predictive p-value is below this.
ATYPICAL_PVALUE = 0.05


@dataclass
class PredictiveResult:
    """Posterior predictive check over ``M`` observations.

    Attributes:
        pvalues: predictive p-value per observation ``(M,)``.
        distance_quantiles: 5%, 50%, 95% quantiles of ``||x_rep - x_o||`` per observation ``(M, 3)``.
        scale: typical distance between two independent observations (median pairwise
            distance of the ``x_o``), to read the distances against.
        fraction_atypical: fraction of observations with p-value < ``ATYPICAL_PVALUE``.
        num_invalid: replicates dropped because the simulation returned NaN/inf.
    """

    pvalues: Tensor
    distance_quantiles: Tensor
    scale: float
    fraction_atypical: float
    num_invalid: int

    def verdict(self, warn_fraction: float = 0.1, fail_fraction: float = 0.25) -> tuple[str, str]:
        """``fail`` when more than ``fail_fraction`` of observations are atypical, ``warn``
        above ``warn_fraction``."""
        median = float(self.distance_quantiles[:, 1].median())
        detail = (f"{self.fraction_atypical:.0%} of {len(self.pvalues)} observations have "
                  f"predictive p < {ATYPICAL_PVALUE}; median distance of replicates to x_o "
                  f"{median:.3g} (vs {self.scale:.3g} between two observations)")
        if self.fraction_atypical > fail_fraction:
            return "fail", f"Posterior predictive does not reproduce the observations; {detail}."
        if self.fraction_atypical > warn_fraction:
            return "warn", f"Posterior predictive misses some observations; {detail}."
        return "pass", f"Posterior predictive reproduces the observations; {detail}."

    def to_dict(self) -> dict[str, Any]:
        return {"pvalues": self.pvalues.tolist(),
                "distance_quantiles": self.distance_quantiles.tolist(), "scale": self.scale,
                "fraction_atypical": self.fraction_atypical, "num_invalid": self.num_invalid}


def predictive_check(problem: Problem, samples: Tensor, xs: Tensor, seed: int = 0) -> PredictiveResult:
    """Predictive check for posterior samples ``(m, M, D)`` of observations ``xs`` ``(M, *x_shape)``.

    The simulator runs once on all ``m * M`` samples (seeded with ``seed``); rows it fails on
    (raises, or reports with :class:`sbi_core.failures.RowFailures`) are isolated as in
    :func:`sbi_core.simulate` and dropped like NaN rows.
    """
    m, num, dim = samples.shape
    if xs.shape[0] != num:
        raise ValueError(f"samples cover {num} observations but xs has {xs.shape[0]}.")
    from sbi_core.failures import isolate_failures

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # as in simulate: rows the simulator fails on (raised, reported) become NaN rows
        reps = isolate_failures(problem.simulator, samples.reshape(m * num, dim),
                                problem.x_shape or (), seed).x
    reps = torch.as_tensor(reps, dtype=torch.float32).reshape(m, num, -1)
    obs = xs.reshape(num, -1).float()
    ok = torch.isfinite(reps).all(-1)  # (m, M)
    num_invalid = int((~ok).sum())
    if num_invalid:
        warnings.warn(f"Dropping {num_invalid} of {m * num} posterior predictive simulations that "
                      "failed or returned NaN/inf.", stacklevel=2)
    std = obs.std(0).clamp(min=1e-8) if num > 1 else reps[ok].std(0).clamp(min=1e-8)
    reps, obs = reps / std, obs / std
    reps = torch.where(ok[..., None], reps, torch.nan)
    dist = (reps - obs).norm(dim=-1)  # (m, M), NaN where invalid
    mean = torch.nanmean(reps, dim=0)  # (M, F)
    d_rep = (reps - mean).norm(dim=-1)
    d_obs = (obs - mean).norm(dim=-1)  # (M,)
    counts = ok.sum(0).clamp(min=1)
    pvalues = ((d_rep >= d_obs) & ok).sum(0).float().add(1) / (counts + 1)
    q = torch.tensor([0.05, 0.5, 0.95])
    quantiles = torch.nanquantile(dist, q, dim=0).T  # (M, 3)
    scale = float(torch.pdist(obs).median()) if num > 1 else float("nan")
    return PredictiveResult(pvalues=pvalues, distance_quantiles=quantiles, scale=scale,
                            fraction_atypical=float((pvalues < ATYPICAL_PVALUE).float().mean()),
                            num_invalid=num_invalid)
