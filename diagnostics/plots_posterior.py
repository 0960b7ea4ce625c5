"""Posterior figures for papers: pairplot, marginals, posterior predictive time series.

Every function takes one sample set ``(N, D)`` or several as a dict ``{label: (N, D)}`` and
overlays all of them in every panel (e.g. NPE, NLE and the reference posterior), so
methods can be compared at a glance:

- :func:`pairplot`: 1-D densities on the diagonal, 2-D highest-density regions (KDE
  contours, or 2-D histograms) below it, the true parameters marked;
- :func:`marginal_plot`: one panel per parameter with every set's 1-D density;
- :func:`predictive_plot`: the observed series against the posterior predictive median and
  its 50% / 90% bands.

All return the matplotlib figure; ``path`` saves it (see :func:`diagnostics.plots.save_figure`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from diagnostics.plots_export import finish, pyplot

__all__ = ["pairplot", "marginal_plot", "predictive_plot", "hpd_thresholds", "sample_sets"]

#: Colour of a set labelled "reference" (drawn underneath the others).
REFERENCE_COLOR = "0.45"
_KDE_POINTS = 3000  # KDEs are fit on at most this many points per set (speed; smooth anyway)
#: KDE bandwidth as a multiple of Scott's rule (right for Gaussian-like posteriors; pass
#: ``bandwidth=0.5`` for thin or multi-modal ones such as two moons' crescents).
DEFAULT_BANDWIDTH = 1.0


def _array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=float)


def sample_sets(samples: Any, reference: Any = None) -> dict[str, np.ndarray]:
    """Normalize ``samples`` (array ``(N, D)`` or dict of them) to ``{label: (N, D)}``.

    ``reference`` (optional ``(M, D)``) is put first under the label ``"reference"``.
    """
    sets: dict[str, np.ndarray] = {}
    if reference is not None:
        sets["reference"] = _array(reference)
    if isinstance(samples, Mapping):
        for label, s in samples.items():
            sets[str(label)] = _array(s)
    else:
        sets["posterior"] = _array(samples)
    if not sets:
        raise ValueError("No samples to plot: pass an (N, D) array or {label: (N, D)} dict.")
    dims = {s.shape[1] if s.ndim == 2 else None for s in sets.values()}
    if len(dims) != 1 or None in dims:
        shapes = {k: tuple(v.shape) for k, v in sets.items()}
        raise ValueError(f"Every sample set must be (N, D) with the same D; got {shapes}. "
                         "Reshape them to (num_samples, num_parameters).")
    for label, s in sets.items():
        finite = np.isfinite(s).all(axis=1)
        if not finite.all():
            sets[label] = s[finite]
        if len(sets[label]) < 2:
            raise ValueError(f"Sample set {label!r} has fewer than 2 finite samples.")
    return sets


def _colors(labels: Sequence[str]) -> dict[str, str]:
    colors, k = {}, 0
    for label in labels:
        if label == "reference":
            colors[label] = REFERENCE_COLOR
        else:
            colors[label] = f"C{k % 10}"
            k += 1
    return colors


def _limits(sets: dict[str, np.ndarray], truth: np.ndarray | None,
            bandwidth: float | None = None) -> np.ndarray:
    """Per-dimension plot range ``(D, 2)``: 0.5-99.5% quantiles of all sets, padded by 5%,
    and (for KDEs of relative ``bandwidth``) by 3 kernel widths so no density is cut off."""
    lo = np.min([np.quantile(s, 0.005, axis=0) for s in sets.values()], axis=0)
    hi = np.max([np.quantile(s, 0.995, axis=0) for s in sets.values()], axis=0)
    if truth is not None:
        lo, hi = np.minimum(lo, truth), np.maximum(hi, truth)
    pad = 0.05 * np.maximum(hi - lo, 1e-12)
    if bandwidth is not None:  # 1-D Scott's factor n^(-1/5) times the spread of each set
        kernel = np.max([s.std(axis=0) * min(len(s), _KDE_POINTS) ** -0.2 * bandwidth
                         for s in sets.values()], axis=0)
        pad = np.maximum(pad, 3 * kernel)
    lo, hi = lo - pad, hi + pad
    same = hi - lo < 1e-9
    lo[same], hi[same] = lo[same] - 0.5, hi[same] + 0.5
    return np.stack([lo, hi], axis=1)


def _thin(s: np.ndarray, n: int) -> np.ndarray:
    if len(s) <= n:
        return s
    idx = np.random.default_rng(0).choice(len(s), n, replace=False)
    return s[idx]


def _kde(points: np.ndarray, bandwidth: float) -> stats.gaussian_kde | None:
    """A Gaussian KDE of ``points`` ``(n, k)`` with ``bandwidth`` times Scott's factor, or
    None when the points are degenerate."""
    try:
        kde = stats.gaussian_kde(_thin(points, _KDE_POINTS).T)
        kde.set_bandwidth(kde.scotts_factor() * bandwidth)
        return kde
    except (np.linalg.LinAlgError, ValueError):
        return None


def hpd_thresholds(density: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """Density values whose super-level sets hold ``levels`` of the mass of a gridded density.

    Returns thresholds in increasing order (the largest region, e.g. 90%, comes first).
    """
    flat = np.sort(density.ravel())[::-1]
    mass = np.cumsum(flat)
    mass /= mass[-1]
    thr = [flat[min(np.searchsorted(mass, lv), len(flat) - 1)] for lv in levels]
    return np.sort(np.asarray(thr))


def _density_1d(ax, s: np.ndarray, lim: np.ndarray, kind: str, color: str, label: str,
                bins: int, bandwidth: float = 1.0) -> None:
    if kind == "hist":
        ax.hist(s, bins=np.linspace(lim[0], lim[1], bins + 1), density=True, histtype="step",
                color=color, lw=1.4, label=label)
        return
    grid = np.linspace(lim[0], lim[1], 256)
    kde = _kde(s[:, None], bandwidth)
    dens = kde(grid) if kde is not None else np.zeros_like(grid)
    if label == "reference":
        ax.fill_between(grid, dens, color=color, alpha=0.25, lw=0)
    ax.plot(grid, dens, color=color, lw=1.4, label=label)


def _density_2d(ax, s: np.ndarray, xlim: np.ndarray, ylim: np.ndarray, kind: str, color: str,
                label: str, levels: Sequence[float], bins: int, grid_size: int,
                bandwidth: float = 1.0):
    """Draw the HPD regions of ``s`` ``(n, 2)`` (columns x, y); returns the artist."""
    from matplotlib.colors import LinearSegmentedColormap, to_rgba

    if kind == "hist":
        h, xe, ye = np.histogram2d(s[:, 0], s[:, 1], bins=max(8, bins // 2),
                                   range=[xlim, ylim])
        rgba = to_rgba(color)
        cmap = LinearSegmentedColormap.from_list(f"alpha_{label}", [(*rgba[:3], 0.0),
                                                                    (*rgba[:3], 0.85)])
        h = np.ma.masked_equal(h, 0)
        mesh = ax.pcolormesh(xe, ye, h.T, cmap=cmap, rasterized=True)
        mesh.set_gid(label)
        return mesh
    gx = np.linspace(xlim[0], xlim[1], grid_size)
    gy = np.linspace(ylim[0], ylim[1], grid_size)
    xx, yy = np.meshgrid(gx, gy)
    kde = _kde(s, bandwidth)
    if kde is None:
        return None
    dens = kde(np.stack([xx.ravel(), yy.ravel()])).reshape(xx.shape)  # one batched call
    thr = hpd_thresholds(dens, levels)
    if not np.all(np.diff(thr) > 0):  # flat density on the grid: nothing sensible to draw
        return None
    widths = np.linspace(0.9, 1.6, len(thr))
    if label == "reference":
        ax.contourf(xx, yy, dens, levels=[thr[0], dens.max() * 1.0001], colors=[color],
                    alpha=0.2)
    cs = ax.contour(xx, yy, dens, levels=thr, colors=[color], linewidths=widths)
    cs.set_gid(label)
    return cs


def pairplot(samples: Any, param_names: Sequence[str] | None = None, reference: Any = None,
             truth: Any = None, path: str | Path | None = None, title: str | None = None,
             max_points: int = 5000, kind: str = "kde", names: Sequence[str] | None = None,
             levels: Sequence[float] = (0.5, 0.9), bins: int = 40, grid_size: int = 80,
             limits: Any = None, bandwidth: float = DEFAULT_BANDWIDTH):
    """Corner plot of one or several posteriors, all overlaid in every panel.

    Diagonal: each set's 1-D KDE (``kind="kde"``) or histogram (``kind="hist"``). Below it:
    each set's 2-D highest-density regions at ``levels`` (KDE contours evaluated on a
    ``grid_size`` grid in one batched call; line width grows with the level) or its 2-D
    histogram in the set's colour. A set labelled ``"reference"`` is grey and filled.

    Args:
        samples: ``(N, D)`` samples (tensor or array) or ``{label: (N_k, D)}`` to overlay.
        param_names: axis labels (``names`` is an alias); default ``theta_1..theta_D``.
        reference: optional reference samples ``(M, D)``, added as the set ``"reference"``.
        truth: optional true parameters ``(D,)``, marked in red.
        path: save there (``a.png`` one file; a path without suffix: PNG and PDF).
        max_points: at most this many samples per set are used.
        kind: ``"kde"`` or ``"hist"``.
        levels: probability mass of the highlighted regions (KDE contours).
        limits: optional ``(D, 2)`` axis ranges (default: 0.5-99.5% quantiles of all sets,
            widened so that no KDE is cut off).
        bandwidth: KDE bandwidth as a multiple of Scott's rule (smaller: finer detail, e.g.
            thin or multi-modal posteriors; larger: smoother).

    Returns:
        The figure; ``fig.axes`` is the ``D x D`` grid in row order.
    """
    if kind not in ("kde", "hist"):
        raise ValueError(f"kind must be 'kde' or 'hist', got {kind!r}.")
    sets = {k: _thin(v, max_points) for k, v in sample_sets(samples, reference).items()}
    d = next(iter(sets.values())).shape[1]
    labels = list(param_names or names or [f"theta_{i + 1}" for i in range(d)])
    if len(labels) != d:
        raise ValueError(f"{len(labels)} parameter names for {d} parameters.")
    t = None if truth is None else _array(truth).reshape(-1)
    if t is not None and t.shape[0] != d:
        raise ValueError(f"truth has {t.shape[0]} values; the samples have D={d}.")
    lims = _array(limits) if limits is not None else _limits(
        sets, t, bandwidth if kind == "kde" else None)
    colors = _colors(list(sets))
    plt = pyplot()
    size = min(2.1 * d + 0.6, 16)
    fig, axes = plt.subplots(d, d, figsize=(size, size), squeeze=False)
    for i in range(d):
        for j in range(d):
            ax = axes[i, j]
            if j > i:
                ax.axis("off")
                continue
            if i == j:
                for label, s in sets.items():
                    _density_1d(ax, s[:, i], lims[i], kind, colors[label], label, bins,
                                bandwidth)
                if t is not None:
                    ax.axvline(t[i], color="C3", lw=1.2, label="truth")
                ax.set_yticks([])
                ax.set_ylim(bottom=0)
                ax.set_xlim(*lims[i])
                for side in ("top", "right", "left"):
                    ax.spines[side].set_visible(False)
            else:
                for label, s in sets.items():
                    _density_2d(ax, s[:, [j, i]], lims[j], lims[i], kind, colors[label], label,
                                levels, bins, grid_size, bandwidth)
                if t is not None:
                    ax.plot(t[j], t[i], marker="+", color="C3", ms=10, mew=1.8, ls="none",
                            label="truth")
                ax.set_xlim(*lims[j])
                ax.set_ylim(*lims[i])
            if i == d - 1:
                ax.set_xlabel(labels[j])
            else:
                ax.tick_params(labelbottom=False)
            if j == 0 and i > 0:
                ax.set_ylabel(labels[i])
            elif j > 0 and i != j:
                ax.tick_params(labelleft=False)
    handles = [plt.Line2D([], [], color=colors[k], lw=2, label=k) for k in sets]
    if t is not None:
        handles.append(plt.Line2D([], [], color="C3", marker="+", ms=10, mew=1.8, ls="none",
                                  label="truth"))
    if len(handles) > 1 or d == 1:
        anchor = axes[0, -1] if d > 1 else axes[0, 0]
        anchor.legend(handles=handles, loc="upper right", fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    return finish(fig, path)


def marginal_plot(samples: Any, param_names: Sequence[str] | None = None, reference: Any = None,
                  truth: Any = None, path: str | Path | None = None, kind: str = "kde",
                  bins: int = 40, max_cols: int = 4, title: str | None = None,
                  max_points: int = 20000, bandwidth: float = DEFAULT_BANDWIDTH):
    """One panel per parameter with every sample set's 1-D density overlaid.

    Args:
        samples: ``(N, D)`` or ``{label: (N_k, D)}``; ``reference`` adds a grey set.
        truth: optional ``(D,)``, a red vertical line.
        kind: ``"kde"`` or ``"hist"``.
        bandwidth: KDE bandwidth as a multiple of Scott's rule.

    Returns:
        The figure (unused grid cells are switched off).
    """
    if kind not in ("kde", "hist"):
        raise ValueError(f"kind must be 'kde' or 'hist', got {kind!r}.")
    sets = {k: _thin(v, max_points) for k, v in sample_sets(samples, reference).items()}
    d = next(iter(sets.values())).shape[1]
    labels = list(param_names or [f"theta_{i + 1}" for i in range(d)])
    t = None if truth is None else _array(truth).reshape(-1)
    lims = _limits(sets, t, bandwidth if kind == "kde" else None)
    colors = _colors(list(sets))
    cols = min(d, max_cols)
    rows = -(-d // cols)
    plt = pyplot()
    fig, axes = plt.subplots(rows, cols, figsize=(2.9 * cols, 2.3 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= d:
            ax.axis("off")
            continue
        for label, s in sets.items():
            _density_1d(ax, s[:, i], lims[i], kind, colors[label], label, bins, bandwidth)
        if t is not None:
            ax.axvline(t[i], color="C3", lw=1.2, label="truth")
        ax.set_xlim(*lims[i])
        ax.set_ylim(bottom=0)
        ax.set_yticks([])
        ax.set_xlabel(labels[i])
        for side in ("top", "right", "left"):
            ax.spines[side].set_visible(False)
    axes.flat[0].legend(fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    return finish(fig, path)


def predictive_plot(x_obs: Any, x_pred: Any, t: Any = None, path: str | Path | None = None,
                    channel_names: Sequence[str] | None = None, bands: Sequence[float] = (0.5, 0.9),
                    xlabel: str = "time", title: str | None = "Posterior predictive",
                    max_cols: int = 2):
    """Observed time series against the posterior predictive: median and central bands.

    Args:
        x_obs: the observation ``(T,)`` or ``(C, T)`` (C channels).
        x_pred: simulations from posterior samples ``(n, T)`` or ``(n, C, T)``; NaN/inf rows
            are dropped.
        t: time points ``(T,)`` (default ``0..T-1``).
        bands: central probability of each shaded band (widest lightest).

    Returns:
        The figure, one panel per channel.
    """
    obs, pred = _array(x_obs), _array(x_pred)
    if obs.ndim == 1:
        obs, pred = obs[None], pred.reshape(pred.shape[0], 1, -1)
    if obs.ndim != 2 or pred.ndim != 3 or pred.shape[1:] != obs.shape:
        raise ValueError(f"x_obs must be (T,) or (C, T) and x_pred (n, T) or (n, C, T) with "
                         f"the same T and C; got {tuple(_array(x_obs).shape)} and "
                         f"{tuple(_array(x_pred).shape)}.")
    pred = pred[np.isfinite(pred).all(axis=(1, 2))]
    if len(pred) < 2:
        raise ValueError("Fewer than 2 finite predictive simulations; simulate more posterior "
                         "samples (failed simulations are dropped).")
    c, n_t = obs.shape
    time = np.arange(n_t) if t is None else _array(t).reshape(-1)
    if time.shape[0] != n_t:
        raise ValueError(f"t has {time.shape[0]} points; the series have T={n_t}.")
    names = list(channel_names or ([f"x_{k + 1}" for k in range(c)] if c > 1 else ["x"]))
    cols = min(c, max_cols)
    rows = -(-c // cols)
    plt = pyplot()
    fig, axes = plt.subplots(rows, cols, figsize=(5.0 * cols, 2.9 * rows), squeeze=False)
    widest = sorted(bands, reverse=True)
    for k, ax in enumerate(axes.flat):
        if k >= c:
            ax.axis("off")
            continue
        series = pred[:, k]
        for j, b in enumerate(widest):
            lo, hi = np.quantile(series, [(1 - b) / 2, (1 + b) / 2], axis=0)
            ax.fill_between(time, lo, hi, color="C0", alpha=0.18 + 0.17 * j, lw=0,
                            label=f"{b:.0%} predictive")
        ax.plot(time, np.median(series, axis=0), color="C0", lw=1.6, label="predictive median")
        ax.plot(time, obs[k], color="k", lw=1.0, marker="o", ms=2.5, label="observation")
        ax.set_ylabel(names[k])
        ax.set_xlabel(xlabel)
        ax.set_xlim(time[0], time[-1])
    axes.flat[0].legend(fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    return finish(fig, path)
