"""Posterior figures of a report card: pairplot, marginals, predictive time series.

:meth:`diagnostics.report.DiagnosisReport.plots` (and so ``sbi-core diagnose --out DIR``)
adds these to the per-check figures when the report still holds its posterior and test data.
The observation shown is the problem's observation 1 (with the reference posterior overlaid
when the problem has one), else the first test pair; its true parameters are marked.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from diagnostics.plots_posterior import marginal_plot, pairplot, predictive_plot
from diagnostics.testset import _range_check_off

__all__ = ["posterior_figures", "MAX_PAIRPLOT_SAMPLES", "MAX_PREDICTIVE_SIMULATIONS"]

#: Posterior (and reference) samples drawn for the pairplot and marginals.
MAX_PAIRPLOT_SAMPLES = 2000
#: Simulations from posterior samples for the predictive time-series plot.
MAX_PREDICTIVE_SIMULATIONS = 200
#: x with at least this many values (or 2-D x, channels x time) is plotted as a series.
MIN_SERIES_LENGTH = 8


def posterior_figures(ctx: Any) -> dict[str, Any]:
    """Figures ``{"pairplot", "marginals", "predictive_series"}`` for one observation.

    Args:
        ctx: the :class:`diagnostics.report.DiagnosisContext` of the run (posterior, problem,
            test pairs, seed).

    Returns:
        ``{file stem: figure}``; a figure that cannot be made is left out with a warning
        (the report card and the other figures are kept).
    """
    posterior, problem = ctx.posterior, ctx.problem
    names = ctx.param_names
    n = min(int(ctx.num_samples), MAX_PAIRPLOT_SAMPLES)
    reference = None
    single = getattr(posterior, "single_observation", None)  # ABC: answers one x_o only
    if single is not None:
        x_o, truth, where = torch.as_tensor(single), None, "its x_o"
    elif problem is not None:
        x_o, truth, where = problem.observation(1), problem.true_parameters(1), "observation 1"
        if problem.reference_posterior is not None:
            try:
                reference = torch.as_tensor(problem.reference_posterior(x_o, n, ctx.seed)).float()
            except Exception as err:
                warnings.warn(f"Reference posterior failed ({err}); plotting without it.",
                              stacklevel=2)
    elif ctx.xs is None or len(ctx.xs) == 0:
        return {}  # no problem and no test pairs (e.g. only the misspecification check ran)
    else:
        x_o, truth, where = ctx.xs[0], ctx.theta[0], "test pair 1"
    with _range_check_off(posterior):
        samples = posterior.sample((n,), x_o, seed=ctx.seed)
    label = (posterior.method or "posterior").upper()
    sets = {label: samples}
    figures: dict[str, Any] = {}
    title = f"{label} posterior, {where}" + (" (grey: reference)" if reference is not None else "")
    figures["pairplot"] = pairplot(sets, names, reference=reference, truth=truth, title=title)
    figures["marginals"] = marginal_plot(sets, names, reference=reference, truth=truth,
                                         title=title)
    x_o = torch.as_tensor(x_o)
    is_series = x_o.ndim == 2 or (x_o.ndim == 1 and x_o.numel() >= MIN_SERIES_LENGTH)
    if problem is not None and is_series:
        try:
            with torch.random.fork_rng():
                torch.manual_seed(ctx.seed)
                x_pred = problem.simulator(samples[:MAX_PREDICTIVE_SIMULATIONS])
            figures["predictive_series"] = predictive_plot(
                x_o, x_pred, xlabel="time step",
                title=f"Posterior predictive, {where} ({label})")
        except Exception as err:
            warnings.warn(f"Posterior predictive series plot skipped: {err}", stacklevel=2)
    return figures
