"""Calibration figures for papers: SBC rank histograms and coverage curves, with bands.

- :func:`sbc_rank_plot`: histogram of SBC ranks per parameter with the pointwise binomial
  band of a uniform histogram (``scipy.stats.binom``), as in Talts et al. (2018);
- :func:`coverage_plot` / :func:`tarp_plot`: expected coverage against the credibility
  level, one or several curves, with the binomial band of a calibrated posterior around the
  diagonal (given the number of test pairs) and bootstrap bands around a curve (given its
  standard deviations).

Each accepts ``ax`` / ``axes`` to draw into an existing figure, else makes its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from diagnostics.plots_export import finish, pyplot

__all__ = ["sbc_rank_plot", "coverage_plot", "tarp_plot", "rank_band", "coverage_band"]


def rank_band(num: int, num_bins: int, confidence: float = 0.99) -> tuple[float, float, float]:
    """``(lower, mean, upper)`` counts per bin of ``num`` uniform ranks in ``num_bins`` bins.

    Pointwise central binomial interval ``Binomial(num, 1/num_bins)`` at ``confidence``.
    """
    p = 1.0 / num_bins
    q = (1 - confidence) / 2
    return (float(stats.binom.ppf(q, num, p)), num * p, float(stats.binom.ppf(1 - q, num, p)))


def finish_panels(fig, axes, legend: bool, title: str | None, path: str | Path | None):
    """End a per-parameter panel figure. ``fig`` None: the panels were drawn into the
    caller's axes (legend inside the first one; returns that figure). Otherwise a legend
    below the panels, the title, and :func:`finish` (save to ``path`` or return ``fig``)."""
    if fig is None:
        if legend:
            axes[0].legend(fontsize=7, frameon=False, loc="best")
        return axes[0].figure
    if legend:
        below_panels_legend(fig, axes[0])
    if title:
        fig.suptitle(title, fontsize=10)
    return finish(fig, path)


def below_panels_legend(fig, ax, *more_axes) -> None:
    """One legend for the whole figure, centred under its panels (outside the data)."""
    handles, labels = ax.get_legend_handles_labels()
    for other in more_axes:
        h, lab = other.get_legend_handles_labels()
        handles, labels = handles + h, labels + lab
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=min(len(labels), 4), fontsize=7, frameon=False)


def coverage_band(alpha: np.ndarray, num: int, confidence: float = 0.95
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise band of the coverage of a calibrated posterior over ``num`` test pairs.

    The coverage at level ``alpha`` is then a ``Binomial(num, alpha) / num`` fraction.
    """
    q = (1 - confidence) / 2
    a = np.clip(np.asarray(alpha, dtype=float), 0, 1)
    return stats.binom.ppf(q, num, a) / num, stats.binom.ppf(1 - q, num, a) / num


def sbc_rank_plot(ranks: Any, num_bins: int | None = None, param_names: Sequence[str] | None = None,
                  confidence: float = 0.99, num_posterior_samples: int | None = None,
                  path: str | Path | None = None, axes: Sequence[Any] | None = None,
                  max_cols: int = 4, title: str | None = "SBC rank histograms",
                  legend: bool = True):
    """Histogram of SBC ranks per parameter with the binomial ``confidence`` band.

    Args:
        ranks: ``(N, D)`` ranks: normalized in ``[0, 1]`` (as :func:`diagnostics.sbc` returns
            them), or integer ranks ``0..L`` with ``num_posterior_samples=L``.
        num_bins: bins per histogram (default: about 20 ranks per bin, 5 to 30 bins).
        confidence: of the pointwise band (grey) a uniform histogram stays in.
        axes: optional ``D`` axes to draw into (no figure is made or saved then).
        legend: draw the legend (under the panels of an own figure, else in the first axes).

    Returns:
        The figure. Bars outside the band in a U shape: over-confident; a hump:
        under-confident; sloped: biased.
    """
    r = np.asarray(ranks.detach().cpu() if hasattr(ranks, "detach") else ranks, dtype=float)
    if r.ndim == 1:
        r = r[:, None]
    if r.ndim != 2 or len(r) < 2:
        raise ValueError(f"ranks must be (N, D) with N >= 2, got shape {r.shape}.")
    if np.nanmax(r) > 1.0:
        if num_posterior_samples is None:
            raise ValueError("These ranks are integers (max > 1): pass num_posterior_samples=L "
                             "(posterior samples per test pair) to normalize them.")
        r = (r + 0.5) / (num_posterior_samples + 1)  # centre of each of the L+1 rank cells
    n, d = r.shape
    bins = num_bins or int(np.clip(n // 20, 5, 30))
    lower, mean, upper = rank_band(n, bins, confidence)
    names = list(param_names or [f"theta_{i + 1}" for i in range(d)])
    fig = None
    if axes is None:
        plt = pyplot()
        cols = min(d, max_cols)
        rows = -(-d // cols)
        fig, grid = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.5 * rows), squeeze=False)
        axes = list(grid.flat)
        for ax in axes[d:]:
            ax.axis("off")
    edges = np.linspace(0, 1, bins + 1)
    for i in range(d):
        ax = axes[i]
        counts, _, _ = ax.hist(np.clip(r[:, i], 0, 1 - 1e-12), bins=edges, color="C0",
                               alpha=0.75, edgecolor="white", lw=0.5, label="ranks", zorder=1)
        # the band is drawn over the bars (translucent) so it shows where bars leave it
        ax.fill_between([0, 1], [lower] * 2, [upper] * 2, color="0.3", alpha=0.22, lw=0,
                        label=f"{confidence:.0%} band (uniform)", zorder=2)
        ax.axhline(mean, color="0.25", lw=0.8, zorder=3)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.15 * max(upper, float(np.max(counts))))
        ax.set_title(names[i], fontsize=9)
        ax.set_xlabel("normalized rank")
        if i == 0:
            ax.set_ylabel("count")
    return finish_panels(fig, axes, legend, title, path)


def coverage_plot(alpha: Any, ecp: Any, num: int | None = None, ecp_std: Any = None,
                  confidence: float = 0.95, title: str = "Expected coverage",
                  xlabel: str = "credibility level", path: str | Path | None = None,
                  ax: Any = None, label: str = "posterior"):
    """Expected coverage ``ECP(alpha)`` against ``alpha``, with bands.

    Args:
        alpha: credibility levels ``(K,)``.
        ecp: coverage ``(K,)``, or ``{label: (K,)}`` to overlay several estimators.
        num: number of test pairs; draws the ``confidence`` band of a calibrated posterior
            (binomial) around the diagonal.
        ecp_std: bootstrap std of ``ecp`` ``(K,)`` (single curve): 1 and 2 std bands.
        ax: draw into this axes (no figure is made or saved then).

    Returns:
        The figure. A curve below the diagonal: over-confident; above: under-confident.
    """
    a = np.asarray(alpha, dtype=float)
    curves = {str(k): np.asarray(v, dtype=float) for k, v in ecp.items()} \
        if isinstance(ecp, Mapping) else {label: np.asarray(ecp, dtype=float)}
    for k, e in curves.items():
        if e.shape != a.shape:
            raise ValueError(f"Curve {k!r} has {e.shape[0] if e.ndim else 0} values for "
                             f"{a.shape[0]} levels alpha.")
    own = ax is None
    if own:
        fig, ax = pyplot().subplots(figsize=(4.2, 4.2))
    else:
        fig = ax.figure
    grid = np.linspace(0, 1, 201)
    if num:
        lo, hi = coverage_band(grid, int(num), confidence)
        ax.fill_between(grid, lo, hi, color="0.85", lw=0,
                        label=f"{confidence:.0%} band, calibrated (n={int(num)})")
    ax.plot([0, 1], [0, 1], ls="--", color="k", lw=1, label="ideal")
    if ecp_std is not None and len(curves) == 1:
        s = np.asarray(ecp_std, dtype=float)
        e = next(iter(curves.values()))
        if np.any(s > 0):
            for k, shade in ((2, 0.15), (1, 0.3)):
                ax.fill_between(a, np.clip(e - k * s, 0, 1), np.clip(e + k * s, 0, 1),
                                color="C0", alpha=shade, lw=0, label=f"{k} std (bootstrap)")
    for k, (name, e) in enumerate(curves.items()):
        ax.plot(a, e, color=f"C{k % 10}", lw=2, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("expected coverage")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left", frameon=False)
    return finish(fig, path) if own else fig


def tarp_plot(alpha: Any, ecp: Any, num: int | None = None, ecp_std: Any = None,
              confidence: float = 0.95, title: str = "TARP expected coverage",
              path: str | Path | None = None, ax: Any = None, label: str = "posterior"):
    """TARP coverage curve (Lemos et al. 2023); :func:`coverage_plot` with TARP labels.

    ``alpha``, ``ecp``, ``ecp_std`` as in :class:`diagnostics.tarp.TARPResult`.
    """
    return coverage_plot(alpha, ecp, num=num, ecp_std=ecp_std, confidence=confidence,
                         title=title, xlabel="credibility level (TARP)", path=path, ax=ax,
                         label=label)
