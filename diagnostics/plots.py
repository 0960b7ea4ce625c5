"""Plots (matplotlib, headless): posterior pairplots."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

__all__ = ["pairplot"]


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig
