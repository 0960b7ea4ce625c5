"""TARP: Tests of Accuracy with Random Points (Lemos et al., ICML 2023).

For each test pair ``(theta*_i, x_i)`` with posterior samples ``theta_ij`` and a reference
point ``theta_r,i``, the ball around the reference through ``theta*_i`` has credibility

    f_i = (1/n) #{ j : d(theta_ij, theta_r,i) < d(theta*_i, theta_r,i) }

under the posterior; a calibrated posterior gives ``f ~ U(0, 1)``. With references that may
depend on ``x``, ``ECP(alpha) = alpha`` for all reference distributions is necessary *and
sufficient* for a correct posterior; with ``x``-independent references (the common default)
a posterior equal to the prior passes, so ``references="regression"`` is offered.

Fixes to known pitfalls of other implementations: the alpha grid always spans [0, 1];
parameters are min–max normalized by the test ``theta*`` so no scale dominates the
distance, and default references are drawn inside that normalized box; ties are broken at
random; bootstrap replicates come from one ``numpy``-free ``torch.Generator``; the KS
p-value is the exact one-sample test of ``f`` against ``U(0, 1)`` (not a KS between the
curve values and the grid). Everything is batched: ``(n, N, D)`` samples in, one pass.

Example::

    result = run_tarp(posterior, theta_test, x_test, num_samples=1000)
    result.atc, result.ks_pvalue, result.status
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

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
from diagnostics.testset import TooFewPairsError, posterior_samples
from sbi_core.posterior import Posterior
from sbi_core.threads import auto_threads

__all__ = ["TarpResult", "tarp_coverage", "run_tarp", "regression_references"]

References = Literal["box", "regression"] | Tensor | Callable[[Tensor], Tensor]


@dataclass
class TarpResult:
    """TARP expected coverage.

    Attributes:
        alpha: credibility levels ``(B + 1,)`` spanning [0, 1].
        ecp: expected coverage probability at each ``alpha`` ``(B + 1,)``.
        ecp_bootstrap: bootstrap replicates ``(num_bootstrap, B + 1)`` (resampled test pairs).
        coverage_values: per-pair ball credibility ``f`` ``(N,)``.
        atc: area to curve for ``alpha >= 1/2`` (< 0 over-confident, > 0 under-confident).
        ks_pvalue: one-sample KS p-value of ``f`` against ``U(0, 1)``.
        max_deviation: ``max |ECP - alpha|``.
        references: how references were chosen.
    """

    alpha: Tensor
    ecp: Tensor
    ecp_bootstrap: Tensor
    coverage_values: Tensor
    atc: float
    ks_pvalue: float
    max_deviation: float
    references: str

    @property
    def status(self) -> str:
        """``pass`` / ``warn`` / ``fail`` (see :func:`diagnostics.ecp.verdict`)."""
        return self.verdict()[0]

    def verdict(self) -> tuple[str, str]:
        return verdict(self.ks_pvalue, self.atc, self.max_deviation,
                       f"TARP ({self.references} references)")

    def to_dict(self) -> dict[str, Any]:
        """Plain values (lists and floats)."""
        band = self.ecp_bootstrap.std(0) if len(self.ecp_bootstrap) > 1 else \
            torch.zeros_like(self.ecp)
        return {"alpha": self.alpha.tolist(), "ecp": self.ecp.tolist(),
                "ecp_std": band.tolist(), "atc": self.atc, "ks_pvalue": self.ks_pvalue,
                "max_deviation": self.max_deviation, "references": self.references}


def regression_references(theta: Tensor, xs: Tensor, width: float = 2.0, ridge: float = 1e-3,
                          generator: torch.Generator | None = None) -> Tensor:
    """``x``-dependent references ``(N, D)``: a ridge regression of ``theta`` on ``x`` plus noise.

    ``theta_r = g(x) + U(-w, w)`` with ``g`` a linear least-squares fit of ``theta`` ``(N, D)``
    on the flattened, standardized ``xs`` ``(N, ...)``, and ``w = width * residual std`` per
    dimension. Such references sit near the truth, so a posterior that ignores ``x`` (e.g.
    equal to the prior) puts too little mass in the small balls and fails.

    The fit is cross-fitted (two folds): the reference of pair ``i`` comes from a regression
    that never saw ``theta*_i``, so it carries no information about the truth beyond ``x_i``
    (otherwise, with many features, the fit would memorize ``theta*`` and fail correct
    posteriors).
    """
    n = theta.shape[0]
    if n < 4:
        raise TooFewPairsError(f"x-dependent references (a regression of theta on x) need at "
                               f"least 4 test pairs, got {n}; pass more test pairs.")
    feats = xs.reshape(n, -1).double()
    feats = (feats - feats.mean(0)) / feats.std(0).clamp(min=1e-12)
    design = torch.cat([torch.ones(n, 1, dtype=torch.float64), feats], 1)
    fold = torch.randperm(n, generator=generator) % 2
    fitted = torch.empty(n, theta.shape[1], dtype=torch.float64)
    for k in (0, 1):
        train, test = fold != k, fold == k
        a = design[train]
        gram = a.T @ a + ridge * len(a) * torch.eye(a.shape[1], dtype=torch.float64)
        coef = torch.linalg.solve(gram, a.T @ theta[train].double())
        fitted[test] = design[test] @ coef
    fitted = fitted.float()
    scale = (theta - fitted).std(0).clamp(min=1e-6)
    noise = torch.rand(theta.shape, generator=generator) * 2 - 1
    return fitted + width * scale * noise


def tarp_coverage(samples: Tensor, theta: Tensor, references: References = "box",
                  xs: Tensor | None = None, distance: Literal["l2", "l1"] = "l2",
                  normalize: bool = True, num_bins: int | None = None,
                  num_bootstrap: int = 100, seed: int = 0) -> TarpResult:
    """TARP from precomputed samples ``(n, N, D)`` and true parameters ``theta`` ``(N, D)``.

    Args:
        references: ``"box"`` (uniform in the normalized box of the test ``theta``; default),
            ``"regression"`` (``x``-dependent, see :func:`regression_references`; needs ``xs``),
            a tensor ``(N, D)`` in parameter space, or a function ``xs -> (N, D)``.
        xs: the observations ``(N, *x_shape)``, for ``x``-dependent references.
        distance: ``"l2"`` (Euclidean) or ``"l1"``.
        normalize: min–max scale every dimension by the test ``theta`` (recommended).
        num_bins: alpha grid size (default ``max(10, N // 10)``).
        num_bootstrap: bootstrap replicates of the ECP (test pairs resampled with replacement).
        seed: seeds references, tie-breaking and the bootstrap.
    """
    samples = torch.as_tensor(samples, dtype=torch.float32)
    theta = torch.as_tensor(theta, dtype=torch.float32)
    if samples.ndim != 3 or theta.ndim != 2 or samples.shape[1:] != theta.shape:
        raise ValueError(f"TARP needs samples (n, N, D) and theta (N, D) with matching N, D; got "
                         f"{tuple(samples.shape)} and {tuple(theta.shape)}.")
    if distance not in ("l2", "l1"):
        raise ValueError(f"distance must be 'l2' or 'l1', got {distance!r}.")
    gen = torch.Generator().manual_seed(derived_seed(seed, "tarp"))
    n, num, dim = samples.shape
    refs, kind = _references(references, theta, xs, gen)
    if normalize:
        lo, hi = theta.min(0).values, theta.max(0).values
        span = (hi - lo).clamp(min=1e-10)
        theta, samples = (theta - lo) / span, (samples - lo) / span
        refs = refs if kind == "box" else (refs - lo) / span
    elif kind == "box":  # "box" references live in the unit box; map it to the test range
        lo, hi = theta.min(0).values, theta.max(0).values
        refs = lo + refs * (hi - lo)
    p = 2 if distance == "l2" else 1
    d_samples = torch.linalg.vector_norm(samples - refs, ord=p, dim=-1)  # (n, N)
    d_true = torch.linalg.vector_norm(theta - refs, ord=p, dim=-1)  # (N,)
    less = (d_samples < d_true).sum(0)
    equal = (d_samples == d_true).sum(0)
    f = rank_to_unit(less, equal, n, gen)
    alpha, ecp = ecp_curve(f, num_bins)
    idx = torch.randint(0, num, (num_bootstrap, num), generator=gen)
    _, ecp_boot = ecp_curve(f[idx], len(alpha) - 1)
    return TarpResult(alpha=alpha, ecp=ecp, ecp_bootstrap=ecp_boot, coverage_values=f,
                      atc=area_to_curve(alpha, ecp), ks_pvalue=uniform_ks_pvalue(f),
                      max_deviation=float((ecp - alpha).abs().max()), references=kind)


@auto_threads
def run_tarp(posterior: Posterior, theta: Tensor, xs: Tensor, num_samples: int = 1000,
             references: References = "box", seed: int = 0, progress: bool | None = None,
             **options: Any) -> TarpResult:
    """Sample ``posterior`` for every ``xs`` ``(N, *x_shape)`` (batched) and run TARP.

    ``options`` go to :func:`tarp_coverage` (``distance``, ``normalize``, ``num_bins``,
    ``num_bootstrap``).
    """
    samples = posterior_samples(posterior, xs, num_samples, seed=seed, progress=progress)
    return tarp_coverage(samples, theta, references=references, xs=xs, seed=seed, **options)


def _references(references: References, theta: Tensor, xs: Tensor | None,
                gen: torch.Generator) -> tuple[Tensor, str]:
    num, dim = theta.shape
    if isinstance(references, str):
        if references == "box":
            return torch.rand(num, dim, generator=gen), "box"
        if references == "regression":
            if xs is None:
                raise ValueError("references='regression' needs the observations: pass xs=.")
            return regression_references(theta, xs, generator=gen), "regression"
        raise ValueError(f"references must be 'box', 'regression', a tensor (N, D) or a function "
                         f"of x; got {references!r}.")
    if callable(references):
        if xs is None:
            raise ValueError("A reference function needs the observations: pass xs=.")
        refs, kind = references(xs), "x-dependent (user function)"
    else:
        refs, kind = references, "user-supplied"
    refs = torch.as_tensor(refs, dtype=torch.float32)
    if refs.shape != (num, dim):
        raise ValueError(f"References must have shape (N, D) = {(num, dim)}, got "
                         f"{tuple(refs.shape)}.")
    return refs, kind
