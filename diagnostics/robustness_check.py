"""The report card's ``robustness`` section (opt-in: ``checks=[..., "robustness"]``).

Runs :func:`diagnostics.robustness.robustness_report` on the first
``robustness_num_observations`` (default 50) test pairs of the card. Options read from
``diagnose(..., **options)``: ``robustness_eps`` (default ``[0.1, 0.5, 1.0, 2.0]``),
``robustness_norm`` (``"l2"``), ``robustness_steps`` (PGD iterations, default per norm),
``robustness_num_observations``. Posteriors without differentiable sampling (not NPE) are
skipped. Not a default check because attacks cost many gradient steps per observation.
"""

from __future__ import annotations

from typing import Any

from diagnostics.report import DiagnosisContext, register_check
from diagnostics.robustness import robustness_report

__all__ = ["robustness_check"]


def robustness_check(ctx: DiagnosisContext) -> dict[str, Any]:
    """Section ``{"status", "why", "metrics", "data"}`` from the robustness report."""
    from diagnostics.attacks import attackable_estimator

    try:
        attackable_estimator(ctx.posterior)
    except ValueError as err:
        raise NotImplementedError(str(err)) from err
    opts = ctx.options
    n = int(opts.get("robustness_num_observations", 50))
    problem = ctx.problem
    report = robustness_report(
        ctx.posterior, ctx.xs[:n], ctx.theta[:n],
        eps=opts.get("robustness_eps", (0.1, 0.5, 1.0, 2.0)),
        norm=opts.get("robustness_norm", "l2"), steps=opts.get("robustness_steps"),
        simulator=problem.simulator if problem is not None else None, seed=ctx.seed)
    metrics = {f"kl_mean_eps_{r['eps']:g}": r["attack"]["mean"] for r in report["results"]}
    metrics.update({f"kl_q95_eps_{r['eps']:g}": r["attack"]["q95"] for r in report["results"]})
    metrics.update({f"noise_kl_mean_eps_{r['eps']:g}": r["noise"]["mean"]
                    for r in report["results"]})
    return {"status": report["status"], "why": report["reason"], "metrics": metrics,
            "data": report}


register_check("robustness", robustness_check, None, "Adversarial robustness (PGD attacks)",
               default=False)
