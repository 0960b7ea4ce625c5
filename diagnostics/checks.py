"""Built-in report-card checks, registered in run order on import.

=================  ==========================================================  =============
name               what                                                        needs
=================  ==========================================================  =============
``tarp``           TARP, references uniform in the normalized box              samples
``tarp_x``         TARP, ``x``-dependent references (catches posterior=prior)  samples
``sbc``            SBC rank uniformity (KS, chi2) and DAP vs prior             samples
``coverage``       HPD expected coverage from ``log_prob`` ranks               ``log_prob``
``reference``      C2ST and MMD vs the reference posterior on observations     problem ref.
``predictive``     posterior predictive checks                                 simulator
=================  ==========================================================  =============

Each returns a section dict (see :mod:`diagnostics.report`). Options read from
``ctx.options``: ``tarp_references`` (function ``xs -> (N, D)`` for ``tarp_x``),
``num_reference_observations`` (3), ``num_predictive_observations`` (20),
``num_predictive_samples`` (100).
"""

from __future__ import annotations

from typing import Any

import torch

from diagnostics import plots
from diagnostics.c2st import c2st
from diagnostics.coverage import expected_coverage
from diagnostics.mmd import mmd_test
from diagnostics.predictive import predictive_check
from diagnostics.report import DiagnosisContext, register_check
from diagnostics.sbc import sbc
from diagnostics.tarp import tarp_coverage
from diagnostics.testset import _range_check_off

__all__ = ["tarp_check", "tarp_x_check", "sbc_check", "coverage_check", "reference_check",
           "predictive_check_section", "C2ST_PASS", "C2ST_WARN"]

#: Reference comparison: C2ST accuracy up to C2ST_PASS passes, up to C2ST_WARN warns.
C2ST_PASS = 0.65
C2ST_WARN = 0.8


def _section(status_why: tuple[str, str], metrics: dict[str, Any],
             data: dict[str, Any] | None = None) -> dict[str, Any]:
    status, why = status_why
    return {"status": status, "why": why, "metrics": metrics, "data": data or {}}


def tarp_check(ctx: DiagnosisContext) -> dict[str, Any]:
    res = tarp_coverage(ctx.samples, ctx.theta, references="box", seed=ctx.seed)
    d = res.to_dict()
    return _section(res.verdict(), {k: d[k] for k in ("atc", "ks_pvalue", "max_deviation")},
                    {k: d[k] for k in ("alpha", "ecp", "ecp_std", "references")})


def tarp_x_check(ctx: DiagnosisContext) -> dict[str, Any]:
    refs = ctx.options.get("tarp_references", "regression")
    res = tarp_coverage(ctx.samples, ctx.theta, references=refs, xs=ctx.xs, seed=ctx.seed + 1)
    d = res.to_dict()
    return _section(res.verdict(), {k: d[k] for k in ("atc", "ks_pvalue", "max_deviation")},
                    {k: d[k] for k in ("alpha", "ecp", "ecp_std", "references")})


def sbc_check(ctx: DiagnosisContext) -> dict[str, Any]:
    res = sbc(ctx.samples, ctx.theta, seed=ctx.seed)
    return _section(res.verdict(ctx.param_names), res.to_dict(),
                    {"ranks": res.ranks.tolist(), "param_names": ctx.param_names})


def coverage_check(ctx: DiagnosisContext) -> dict[str, Any]:
    res = expected_coverage(ctx.posterior, ctx.samples, ctx.theta, ctx.xs, seed=ctx.seed,
                            progress=ctx.progress)
    d = res.to_dict()
    extra = "" if ctx.posterior.normalized_log_prob else " (unnormalized log_prob: ranks only)"
    status, why = res.verdict()
    return _section((status, why + extra),
                    {k: d[k] for k in ("atc", "ks_pvalue", "max_deviation")},
                    {"alpha": d["alpha"], "ecp": d["ecp"]})


def reference_check(ctx: DiagnosisContext) -> dict[str, Any]:
    problem = ctx.problem
    if problem is None or problem.reference_posterior is None:
        return {"status": "skip", "why": "no problem with a reference posterior was given."}
    k_max = int(ctx.options.get("num_reference_observations", 3))
    n = min(ctx.num_samples, 1000)
    c2sts, mmds, mmd_ps = [], [], []
    with _range_check_off(ctx.posterior):
        for k in range(1, k_max + 1):
            x_o = problem.observation(k)
            q = ctx.posterior.sample((n,), x_o, seed=ctx.seed + k)
            p = torch.as_tensor(problem.reference_posterior(x_o, n, ctx.seed + k)).float()
            c2sts.append(c2st(p, q, seed=ctx.seed))
            stat, pval = mmd_test(p, q, seed=ctx.seed, max_samples=500)
            mmds.append(stat)
            mmd_ps.append(pval)
    worst = max(c2sts)
    detail = (f"C2ST vs reference on observations 1..{k_max}: "
              f"{', '.join(f'{c:.3f}' for c in c2sts)} (0.5 ideal; pass <= {C2ST_PASS}, "
              f"warn <= {C2ST_WARN}); MMD^2 {', '.join(f'{m:.4f}' for m in mmds)}")
    if worst > C2ST_WARN:
        status, why = "fail", f"Posterior differs clearly from the reference; {detail}."
    elif worst > C2ST_PASS:
        status, why = "warn", f"Posterior differs somewhat from the reference; {detail}."
    else:
        status, why = "pass", f"Posterior matches the reference; {detail}."
    return {"status": status, "why": why,
            "metrics": {"c2st": c2sts, "mmd2": mmds, "mmd_pvalues": mmd_ps}, "data": {}}


def predictive_check_section(ctx: DiagnosisContext) -> dict[str, Any]:
    if ctx.problem is None:
        return {"status": "skip", "why": "no problem (simulator) was given."}
    m_obs = min(int(ctx.options.get("num_predictive_observations", 20)), ctx.xs.shape[0])
    m = min(int(ctx.options.get("num_predictive_samples", 100)), ctx.num_samples)
    res = predictive_check(ctx.problem, ctx.samples[:m, :m_obs], ctx.xs[:m_obs], seed=ctx.seed)
    d = res.to_dict()
    return _section(res.verdict(), {"fraction_atypical": d["fraction_atypical"],
                                    "scale": d["scale"], "num_invalid": d["num_invalid"],
                                    "median_distance": float(res.distance_quantiles[:, 1].median())},
                    {"pvalues": d["pvalues"], "distance_quantiles": d["distance_quantiles"],
                     "scale": d["scale"]})


register_check("tarp", tarp_check, plots.plot_coverage_section,
               "TARP (box references)")
register_check("tarp_x", tarp_x_check, plots.plot_coverage_section,
               "TARP (x-dependent references)")
register_check("sbc", sbc_check, plots.plot_sbc_section, "SBC ranks")
register_check("coverage", coverage_check, plots.plot_coverage_section, "HPD expected coverage")
register_check("reference", reference_check, None, "Reference posterior (C2ST, MMD)")
register_check("predictive", predictive_check_section, plots.plot_predictive_section,
               "Posterior predictive")
