"""Draw the example figures of docs/plots.md into docs/img/plots/ (seconds, no training).

Synthetic, seeded samples stand in for trained posteriors so the figures show each plot's
features: several sample sets overlaid, true parameters, bands. Run
``python docs/make_plot_examples.py`` after changing a plot function and commit the PNGs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "docs"))

from make_tutorial_figures import shrink  # noqa: E402

from diagnostics.plots import (  # noqa: E402
    coverage_plot,
    marginal_plot,
    pairplot,
    predictive_plot,
    sbc_rank_plot,
)

DEST = ROOT / "docs" / "img" / "plots"


def main() -> int:
    import tempfile

    rng = np.random.default_rng(0)
    cov = [[0.3, 0.2, 0.0], [0.2, 0.3, 0.0], [0.0, 0.0, 0.15]]
    ref = rng.multivariate_normal([1.0, 0.5, -0.2], cov, 4000)
    npe = rng.multivariate_normal([1.05, 0.5, -0.2], np.multiply(cov, 1.1), 4000)
    nle = rng.multivariate_normal([1.2, 0.4, -0.2], np.diag([0.3, 0.3, 0.3]), 4000)
    names = ["gain", "offset", "log_noise"]
    truth = [1.0, 0.45, -0.25]
    sets = {"NPE": npe, "NLE": nle}
    alpha = np.linspace(0, 1, 51)
    ranks = np.stack([rng.random(300), rng.beta(0.7, 0.7, 300), rng.beta(1.3, 1.0, 300)], 1)
    t = np.linspace(0, 10, 50)
    amp = rng.normal(1.0, 0.15, (400, 1))
    pred = amp * np.sin(t) * np.exp(-0.1 * t) + rng.normal(0, 0.08, (400, 50))
    obs = np.sin(t) * np.exp(-0.1 * t) + rng.normal(0, 0.08, 50)
    figures = {
        "pairplot_kde": pairplot(sets, names, reference=ref, truth=truth,
                                 title="NPE and NLE against the reference posterior"),
        "pairplot_hist": pairplot({"NPE": npe}, names, truth=truth, kind="hist"),
        "marginals": marginal_plot(sets, names, reference=ref, truth=truth),
        "sbc_ranks": sbc_rank_plot(ranks, param_names=names),
        "coverage": coverage_plot(alpha, {"NPE": alpha ** 0.97, "over-confident": alpha ** 1.6},
                                  num=300),
        "predictive": predictive_plot(obs, pred, t=t),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, fig in figures.items():
            png = Path(tmp) / f"{name}.png"
            fig.savefig(png, dpi=110, bbox_inches="tight")
            size = shrink(png, DEST / png.name)
            print(f"{(DEST / png.name).relative_to(ROOT)}: {size / 1000:.0f} kB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
