"""Plots (matplotlib, headless): posterior and calibration figures, PNG and PDF export.

Publication figures (every panel overlays several posteriors and/or a reference):

- :func:`pairplot`, :func:`marginal_plot`, :func:`predictive_plot` (time series), in
  :mod:`diagnostics.plots_posterior`;
- :func:`sbc_rank_plot`, :func:`coverage_plot`, :func:`tarp_plot` with confidence bands, in
  :mod:`diagnostics.plots_calibration`;
- :func:`save_figure`: write a figure as PNG and PDF, atomically.

Report-card plots take plain arrays (or a report-card section dict), so a saved report
card can be re-plotted without the model:

- :func:`plot_coverage`: expected coverage ``ECP(alpha)`` vs ``alpha`` (TARP, HPD) with bands;
- :func:`plot_sbc_ecdf`: ECDF difference of SBC ranks with simultaneous 95% bands;
- :func:`plot_predictive`: posterior predictive p-values and distances;
- :func:`plot_lc2st_pp`: L-C2ST PP-plot at the observation(s) with the null band.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diagnostics.plots_calibration import (
    below_panels_legend,
    coverage_plot,
    finish_panels,
    sbc_rank_plot,
    tarp_plot,
)
from diagnostics.plots_export import FIGURE_FORMATS, save_figure
from diagnostics.plots_export import finish as _finish
from diagnostics.plots_export import pyplot as _pyplot
from diagnostics.plots_posterior import marginal_plot, pairplot, predictive_plot

__all__ = ["pairplot", "marginal_plot", "predictive_plot", "sbc_rank_plot", "coverage_plot",
           "tarp_plot", "save_figure", "FIGURE_FORMATS", "plot_coverage", "plot_sbc_ecdf",
           "plot_predictive", "plot_coverage_section", "plot_sbc_section",
           "plot_predictive_section", "plot_lc2st_pp", "plot_lc2st_section"]


def plot_coverage(alpha: Sequence[float], ecp: Sequence[float], ecp_std: Sequence[float] | None = None,
                  title: str = "Expected coverage", path: str | Path | None = None,
                  num: int | None = None):
    """``ECP(alpha)`` against the diagonal, with 1 and 2 bootstrap-std bands when given
    (and the binomial band of a calibrated posterior given ``num`` test pairs); see
    :func:`coverage_plot`.

    Below the diagonal for ``alpha > 1/2``: over-confident; above: under-confident.
    """
    return coverage_plot(alpha, ecp, num=num, ecp_std=ecp_std, title=title, path=path,
                         label="ECP")


def plot_sbc_ecdf(ranks, param_names: list[str] | None = None, confidence: float = 0.95,
                  path: str | Path | None = None, axes: Sequence[Any] | None = None,
                  legend: bool = True):
    """ECDF of normalized SBC ranks ``(N, D)`` minus the uniform CDF, one panel per parameter,
    with the simultaneous ``confidence`` band of a uniform ECDF (grey).

    ``axes``: optional ``D`` axes to draw into (no figure is made or saved then).
    """
    from diagnostics.sbc import ecdf_band

    r = np.asarray(ranks, dtype=float)
    n, d = r.shape
    names = param_names or [f"theta_{i + 1}" for i in range(d)]
    z, lower, upper = ecdf_band(n, confidence)
    fig = None
    cols = min(d, 4)
    if axes is None:
        rows = -(-d // cols)
        fig, grid = _pyplot().subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows),
                                       squeeze=False)
        axes = list(grid.flat)
        for ax in axes[d:]:
            ax.axis("off")
    for i in range(d):
        ax = axes[i]
        ecdf = np.searchsorted(np.sort(r[:, i]), z, side="right") / n
        ax.fill_between(z, lower, upper, color="0.85", lw=0,
                        label=f"{confidence:.0%} simultaneous band")
        ax.axhline(0, color="k", lw=0.8)
        ax.plot(z, ecdf - z, color="C0", lw=1.5, label="ranks")
        ax.set_xlim(0, 1)
        ax.set_title(names[i], fontsize=9)
        ax.set_xlabel("normalized rank")
        if i % cols == 0:
            ax.set_ylabel("ECDF - uniform")
    return finish_panels(fig, axes, legend, "SBC: rank ECDF difference", path)


def plot_predictive(pvalues: Sequence[float], distance_quantiles, scale: float | None = None,
                    path: str | Path | None = None):
    """Posterior predictive: p-value histogram, and per observation the 5-50-95% quantiles of
    ``||x_rep - x_o||`` (standardized units), with the typical distance between observations."""
    plt = _pyplot()
    p = np.asarray(pvalues, dtype=float)
    q = np.asarray(distance_quantiles, dtype=float)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3.4))
    ax1.hist(p, bins=np.linspace(0, 1, 11), color="C0", edgecolor="w")
    ax1.axvline(0.05, color="C3", lw=1, label="p = 0.05")
    ax1.set_xlabel("predictive p-value")
    ax1.set_ylabel("observations")
    ax1.legend(fontsize=7)
    idx = np.arange(len(q))
    ax2.errorbar(idx, q[:, 1], yerr=[q[:, 1] - q[:, 0], q[:, 2] - q[:, 1]], fmt="o", ms=3,
                 color="C0", label="replicates to x_o (5-50-95%)")
    if scale is not None and np.isfinite(scale):
        ax2.axhline(scale, color="0.5", ls="--", lw=1, label="between observations")
    ax2.set_xlabel("observation")
    ax2.set_ylabel("distance (standardized)")
    ax2.legend(fontsize=7)
    fig.suptitle("Posterior predictive check", fontsize=10)
    return _finish(fig, path)


def plot_coverage_section(section: dict[str, Any], path: str | Path | None = None):
    """Plot a ``tarp`` / ``tarp_x`` / ``coverage`` report-card section.

    With ``section["num_test_pairs"]`` (added by :meth:`DiagnosisReport.plots`) the binomial
    band of a calibrated posterior is drawn around the diagonal.
    """
    data = section["data"]
    title = f"{section.get('title', '')} [{section['status']}]"
    return coverage_plot(data["alpha"], data["ecp"], num=section.get("num_test_pairs"),
                         ecp_std=data.get("ecp_std"), title=title, path=path)


def plot_sbc_section(section: dict[str, Any], path: str | Path | None = None,
                     max_cols: int = 5):
    """Plot an ``sbc`` report-card section: rank histograms with their binomial band (top
    row) and the rank ECDF difference with its simultaneous band (bottom row), per parameter."""
    data = section["data"]
    r = np.asarray(data["ranks"], dtype=float)
    d = r.shape[1]
    names = data.get("param_names")
    cols = min(d, max_cols)
    blocks = -(-d // cols)
    fig, grid = _pyplot().subplots(2 * blocks, cols, figsize=(2.9 * cols, 4.6 * blocks),
                                   squeeze=False)
    hist_axes = [grid[2 * (i // cols), i % cols] for i in range(d)]
    ecdf_axes = [grid[2 * (i // cols) + 1, i % cols] for i in range(d)]
    for ax in grid.flat:
        if ax not in hist_axes and ax not in ecdf_axes:
            ax.axis("off")
    sbc_rank_plot(r, param_names=names, axes=hist_axes, legend=False)
    plot_sbc_ecdf(r, names, axes=ecdf_axes, legend=False)
    for ax, what in ((hist_axes[0], "histogram"), (ecdf_axes[0], "ECDF")):
        for artist in (*ax.patches[:1], *ax.collections, *ax.lines[-1:]):
            if artist.get_label() == "ranks":
                artist.set_label(f"ranks ({what})")
    status = f" [{section['status']}]" if "status" in section else ""
    fig.suptitle(f"SBC ranks ({len(r)} test pairs){status}", fontsize=10)
    fig = _finish(fig, None)
    below_panels_legend(fig, hist_axes[0], ecdf_axes[0])
    return _finish(fig, path)


def plot_predictive_section(section: dict[str, Any], path: str | Path | None = None):
    """Plot a ``predictive`` report-card section."""
    data = section["data"]
    return plot_predictive(data["pvalues"], data["distance_quantiles"], data.get("scale"), path)


def plot_lc2st_pp(alpha: Sequence[float], pp: Sequence[Sequence[float]],
                  null_low: Sequence[Sequence[float]], null_high: Sequence[Sequence[float]],
                  labels: Sequence[str] | None = None, title: str = "L-C2ST PP-plot",
                  path: str | Path | None = None):
    """L-C2ST PP-plot at one or more observations: the ECDF of the classifier's predicted
    probabilities at ``x_o`` (one curve per observation) with the 95% band of the null
    classifiers (grey). Under the null the probabilities cluster at 1/2; a curve outside
    its band means the posterior differs from the true one at that observation."""
    plt = _pyplot()
    a = np.asarray(alpha, dtype=float)
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    for i, (curve, lo, hi) in enumerate(zip(pp, null_low, null_high)):
        ax.fill_between(a, np.asarray(lo, dtype=float), np.asarray(hi, dtype=float),
                        color="0.5", alpha=0.2, lw=0, label="95% null band" if i == 0 else None)
        ax.plot(a, np.asarray(curve, dtype=float), color=f"C{i % 10}", lw=2,
                label=labels[i] if labels else f"x_o {i + 1}")
    ax.plot([0, 1], [0, 1], ls="--", color="k", lw=1)
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("fraction of evaluation points below")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    return _finish(fig, path)


def plot_lc2st_section(section: dict[str, Any], path: str | Path | None = None):
    """Plot an ``lc2st`` report-card section."""
    data = section["data"]
    return plot_lc2st_pp(data["alpha"], data["pp"], data["null_low"], data["null_high"],
                         labels=[f"x_o {i + 1} (p={p:.3f})"
                                 for i, p in enumerate(section["metrics"]["p_values"])],
                         title=f"{section.get('title', '')} [{section['status']}]", path=path)
