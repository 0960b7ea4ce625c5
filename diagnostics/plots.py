"""Plots (matplotlib, headless): posterior pairplots and calibration plots.

Calibration plots take plain arrays (or a report-card section dict), so a saved report
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
import torch
from torch import Tensor

__all__ = ["pairplot", "plot_coverage", "plot_sbc_ecdf", "plot_predictive",
           "plot_coverage_section", "plot_sbc_section", "plot_predictive_section",
           "plot_lc2st_pp", "plot_lc2st_section"]


def pairplot(samples: Tensor, param_names: list[str] | None = None,
             reference: Tensor | None = None, truth: Tensor | None = None,
             path: str | Path | None = None, title: str | None = None, max_points: int = 5000):
    """Marginal histograms on the diagonal and pairwise scatter below it.

    Args:
        samples: posterior samples ``(N, D)``.
        reference: optional reference samples ``(M, D)`` drawn in grey underneath.
        truth: optional true parameters ``(D,)`` marked in red.
        path: save the figure there (PNG) when given.

    Returns:
        The matplotlib figure.
    """
    plt = _pyplot()
    samples = torch.as_tensor(samples).detach().cpu()
    d = samples.shape[1]
    names = param_names or [f"theta_{i + 1}" for i in range(d)]
    size = min(2.2 * d, 14)
    fig, axes = plt.subplots(d, d, figsize=(size, size), squeeze=False)
    show = samples[:max_points]
    ref = reference[:max_points].cpu() if reference is not None else None
    for i in range(d):
        for j in range(d):
            ax = axes[i, j]
            if j > i:
                ax.axis("off")
                continue
            if i == j:
                if ref is not None:
                    ax.hist(ref[:, i].numpy(), bins=50, density=True, color="0.7", label="reference")
                ax.hist(show[:, i].numpy(), bins=50, density=True, histtype="step", color="C0",
                        lw=1.5, label="posterior")
                if truth is not None:
                    ax.axvline(float(truth[i]), color="C3")
                ax.set_yticks([])
            else:
                if ref is not None:
                    ax.scatter(ref[:, j], ref[:, i], s=1, color="0.7", alpha=0.3, rasterized=True)
                ax.scatter(show[:, j], show[:, i], s=1, color="C0", alpha=0.3, rasterized=True)
                if truth is not None:
                    ax.plot(float(truth[j]), float(truth[i]), "x", color="C3", ms=8)
            if i == d - 1:
                ax.set_xlabel(names[j])
            if j == 0 and i > 0:
                ax.set_ylabel(names[i])
    if ref is not None:
        axes[0, 0].legend(fontsize=7, loc="upper right")
    if title:
        fig.suptitle(title)
    return _finish(fig, path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(fig, path: str | Path | None):
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        _pyplot().close(fig)
    return fig


def plot_coverage(alpha: Sequence[float], ecp: Sequence[float], ecp_std: Sequence[float] | None = None,
                  title: str = "Expected coverage", path: str | Path | None = None):
    """``ECP(alpha)`` against the diagonal, with 1 and 2 bootstrap-std bands when given.

    Below the diagonal for ``alpha > 1/2``: over-confident; above: under-confident.
    """
    plt = _pyplot()
    a, e = np.asarray(alpha, dtype=float), np.asarray(ecp, dtype=float)
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.plot([0, 1], [0, 1], ls="--", color="k", lw=1, label="calibrated")
    if ecp_std is not None and np.any(np.asarray(ecp_std) > 0):
        s = np.asarray(ecp_std, dtype=float)
        for k, shade in ((2, 0.15), (1, 0.3)):
            ax.fill_between(a, np.clip(e - k * s, 0, 1), np.clip(e + k * s, 0, 1), color="C0",
                            alpha=shade, lw=0, label=f"{k} std (bootstrap)")
    ax.plot(a, e, color="C0", lw=2, label="ECP")
    ax.set_xlabel("credibility level alpha")
    ax.set_ylabel("expected coverage")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    return _finish(fig, path)


def plot_sbc_ecdf(ranks, param_names: list[str] | None = None, confidence: float = 0.95,
                  path: str | Path | None = None):
    """ECDF of normalized SBC ranks ``(N, D)`` minus the uniform CDF, one panel per parameter,
    with the simultaneous ``confidence`` band of a uniform ECDF (grey)."""
    from diagnostics.sbc import ecdf_band

    plt = _pyplot()
    r = np.asarray(ranks, dtype=float)
    n, d = r.shape
    names = param_names or [f"theta_{i + 1}" for i in range(d)]
    z, lower, upper = ecdf_band(n, confidence)
    cols = min(d, 4)
    rows = -(-d // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= d:
            ax.axis("off")
            continue
        ecdf = np.searchsorted(np.sort(r[:, i]), z, side="right") / n
        ax.fill_between(z, lower, upper, color="0.8", lw=0, label=f"{confidence:.0%} band")
        ax.axhline(0, color="k", lw=0.8)
        ax.plot(z, ecdf - z, color="C0", lw=1.5)
        ax.set_title(names[i], fontsize=9)
        ax.set_xlabel("normalized rank")
        if i % cols == 0:
            ax.set_ylabel("ECDF - uniform")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("SBC: rank ECDF difference", fontsize=10)
    return _finish(fig, path)


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
    """Plot a ``tarp`` / ``tarp_x`` / ``coverage`` report-card section."""
    data = section["data"]
    return plot_coverage(data["alpha"], data["ecp"], data.get("ecp_std"),
                         title=f"{section.get('title', '')} [{section['status']}]", path=path)


def plot_sbc_section(section: dict[str, Any], path: str | Path | None = None):
    """Plot an ``sbc`` report-card section."""
    data = section["data"]
    return plot_sbc_ecdf(data["ranks"], data.get("param_names"), path=path)


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
