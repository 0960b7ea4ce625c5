"""Publication plots: every function draws the expected panels and overlays (checked on the
matplotlib artists, not on file sizes), bands match their binomial definitions, PNG + PDF
export is atomic, and ``sbi-core diagnose --out`` writes every figure in both formats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.collections import PolyCollection, QuadMesh
from matplotlib.contour import ContourSet
from matplotlib.patches import Rectangle
from scipy import stats

from diagnostics.plots import (
    coverage_plot,
    marginal_plot,
    pairplot,
    plot_sbc_section,
    predictive_plot,
    save_figure,
    sbc_rank_plot,
    tarp_plot,
)
from diagnostics.plots_posterior import hpd_thresholds
from diagnostics.report import DiagnosisReport


@pytest.fixture(autouse=True)
def close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def _gauss(n, mean, cov, seed):
    return np.random.default_rng(seed).multivariate_normal(mean, cov, n)


@pytest.fixture(scope="module")
def three_sets():
    cov = [[1.0, 0.6, 0.0], [0.6, 1.0, 0.0], [0.0, 0.0, 0.5]]
    return (_gauss(1500, [0, 0, 0], cov, 0), _gauss(1500, [0.5, 0, 0], np.eye(3), 1),
            _gauss(1500, [0, 0.2, 0], cov, 2))


def _labels(ax):
    return [line.get_label() for line in ax.lines]


def test_pairplot_kde_overlays_every_set_in_every_panel(three_sets):
    npe, nle, ref = three_sets
    truth = [0.1, 0.2, -0.1]
    fig = pairplot({"NPE": npe, "NLE": nle}, ["a", "b", "c"], reference=ref, truth=truth)
    axes = np.array(fig.axes).reshape(3, 3)
    for i in range(3):
        for j in range(3):
            ax = axes[i, j]
            if j > i:
                assert not ax.axison  # upper triangle is empty
            elif i == j:
                assert _labels(ax) == ["reference", "NPE", "NLE", "truth"]
                assert ax.lines[-1].get_xdata()[0] == pytest.approx(truth[i])
            else:
                contours = [c for c in ax.collections if isinstance(c, ContourSet)]
                lines = {c.get_gid(): c for c in contours if c.get_gid()}
                assert set(lines) == {"reference", "NPE", "NLE"}
                assert all(len(c.levels) == 2 for c in lines.values())  # 50% and 90% HPD
                marker = [ln for ln in ax.lines if ln.get_label() == "truth"][0]
                assert (marker.get_xdata()[0], marker.get_ydata()[0]) == pytest.approx(
                    (truth[j], truth[i]))
    assert [a.get_xlabel() for a in axes[-1]] == ["a", "b", "c"]
    legend = axes[0, 2].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["reference", "NPE", "NLE", "truth"]


def test_hpd_thresholds_match_the_gaussian_regions():
    """For a 2-D standard normal the p-HPD region is r^2 <= -2 log(1 - p), where the density
    is (1 - p) / (2 pi). Tolerance 3% (grid discretization, 400 x 400 grid on [-6, 6])."""
    g = np.linspace(-6, 6, 400)
    xx, yy = np.meshgrid(g, g)
    dens = np.exp(-(xx ** 2 + yy ** 2) / 2) / (2 * np.pi)
    thr = hpd_thresholds(dens, (0.5, 0.9))
    expected = np.array([0.1, 0.5]) / (2 * np.pi)  # 90% first (lower density), then 50%
    assert thr == pytest.approx(expected, rel=0.03)


def test_pairplot_hist_draws_a_2d_histogram_per_set(three_sets):
    npe, nle, _ = three_sets
    fig = pairplot({"NPE": npe, "NLE": nle}, names=["a", "b", "c"], kind="hist", bins=20)
    axes = np.array(fig.axes).reshape(3, 3)
    meshes = [c.get_gid() for c in axes[2, 0].collections if isinstance(c, QuadMesh)]
    assert meshes == ["NPE", "NLE"]
    # diagonal: one step histogram per set (20 bins each)
    steps = [p for p in axes[1, 1].patches if p.get_label() in ("NPE", "NLE")]
    assert sorted(p.get_label() for p in steps) == ["NLE", "NPE"]


def test_pairplot_keeps_the_old_signature_and_single_file(tmp_path, three_sets):
    npe, _, ref = three_sets
    path = tmp_path / "pair.png"
    fig = pairplot(torch.as_tensor(npe[:, :2]), ["x", "y"], reference=torch.as_tensor(ref[:, :2]),
                   truth=torch.zeros(2), path=path, title="old call")
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pair.png"]
    assert fig._suptitle.get_text() == "old call"
    with pytest.raises(ValueError, match="same D"):
        pairplot({"a": npe, "b": npe[:, :2]})
    with pytest.raises(ValueError, match="kind"):
        pairplot(npe, kind="scatter")


def test_marginal_plot_one_panel_per_parameter(three_sets):
    npe, nle, ref = three_sets
    five = {"NPE": np.hstack([npe, nle[:, :2]]), "NLE": np.hstack([nle, npe[:, :2]])}
    fig = marginal_plot(five, truth=np.arange(5) * 0.1, max_cols=4)
    assert len(fig.axes) == 8
    visible = [ax for ax in fig.axes if ax.axison]
    assert len(visible) == 5
    for k, ax in enumerate(visible):
        assert _labels(ax) == ["NPE", "NLE", "truth"]
        assert ax.get_xlabel() == f"theta_{k + 1}"
        assert ax.lines[-1].get_xdata()[0] == pytest.approx(0.1 * k)


def test_sbc_rank_histogram_with_binomial_band():
    rng = np.random.default_rng(0)
    ranks = np.stack([rng.random(200), rng.beta(0.5, 0.5, 200)], axis=1)
    fig = sbc_rank_plot(ranks, num_bins=10, param_names=["mu", "sigma"], confidence=0.99)
    lo, hi = stats.binom.ppf([0.005, 0.995], 200, 0.1)
    for k, ax in enumerate(fig.axes):
        bars = [p for p in ax.patches if isinstance(p, Rectangle)]
        assert len(bars) == 10
        assert sum(b.get_height() for b in bars) == 200
        counts = np.histogram(ranks[:, k], bins=np.linspace(0, 1, 11))[0]
        assert [b.get_height() for b in bars] == pytest.approx(counts)
        band = [c for c in ax.collections if isinstance(c, PolyCollection)][0]
        ys = band.get_paths()[0].vertices[:, 1]
        assert (ys.min(), ys.max()) == pytest.approx((lo, hi))
        assert ax.get_title() == ["mu", "sigma"][k]
    # the U-shaped (over-confident) ranks leave the band at the ends
    heights = [b.get_height() for b in fig.axes[1].patches if isinstance(b, Rectangle)]
    assert heights[0] > hi and heights[-1] > hi


def test_sbc_rank_plot_needs_the_sample_count_for_integer_ranks():
    with pytest.raises(ValueError, match="num_posterior_samples"):
        sbc_rank_plot(np.array([[3.0], [10.0], [99.0]]))
    fig = sbc_rank_plot(np.array([[0.0], [50.0], [100.0], [25.0]]), num_bins=4,
                        num_posterior_samples=100)
    heights = [p.get_height() for p in fig.axes[0].patches if isinstance(p, Rectangle)]
    assert heights == [1, 1, 1, 1]


def test_sbc_section_has_histograms_and_ecdf_rows():
    ranks = np.random.default_rng(1).random((100, 3))
    fig = plot_sbc_section({"status": "pass", "data": {"ranks": ranks.tolist(),
                                                       "param_names": ["a", "b", "c"]}})
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["a", "b", "c", "a", "b", "c"]
    assert all(ax.get_ylabel() in ("", "count") for ax in fig.axes[:3])
    assert fig.axes[3].get_ylabel() == "ECDF - uniform"


def test_coverage_plot_overlays_curves_with_the_binomial_band():
    alpha = np.linspace(0, 1, 21)
    fig = coverage_plot(alpha, {"NPE": alpha, "too narrow": alpha ** 2}, num=100)
    ax = fig.axes[0]
    assert _labels(ax) == ["ideal", "NPE", "too narrow"]
    assert ax.lines[2].get_ydata() == pytest.approx(alpha ** 2)
    band = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(band) == 1
    v = band[0].get_paths()[0].vertices
    at_half = v[np.isclose(v[:, 0], 0.5)][:, 1]
    assert (at_half.min(), at_half.max()) == pytest.approx(
        tuple(stats.binom.ppf([0.025, 0.975], 100, 0.5) / 100))


def test_tarp_plot_bootstrap_and_calibration_bands():
    alpha = np.linspace(0, 1, 11)
    fig = tarp_plot(alpha, alpha, num=50, ecp_std=np.full(11, 0.02))
    ax = fig.axes[0]
    fills = [c.get_label() for c in ax.collections if isinstance(c, PolyCollection)]
    assert fills == ["95% band, calibrated (n=50)", "2 std (bootstrap)", "1 std (bootstrap)"]
    assert "TARP" in ax.get_xlabel()
    with pytest.raises(ValueError, match="levels"):
        coverage_plot(alpha, alpha[:5])


def test_predictive_plot_median_bands_and_observation():
    rng = np.random.default_rng(0)
    t = np.linspace(0, 5, 30)
    pred = np.sin(t) + rng.normal(0, 0.2, (400, 2, 30))
    obs = np.stack([np.sin(t), np.cos(t)])
    pred[0] = np.nan  # a failed simulation is dropped
    fig = predictive_plot(obs, pred, t=t, channel_names=["S", "I"])
    axes = [ax for ax in fig.axes if ax.axison]
    assert len(axes) == 2
    for k, ax in enumerate(axes):
        bands = [c.get_label() for c in ax.collections if isinstance(c, PolyCollection)]
        assert bands == ["90% predictive", "50% predictive"]
        median = [ln for ln in ax.lines if ln.get_label() == "predictive median"][0]
        assert median.get_ydata() == pytest.approx(np.median(pred[1:, k], axis=0))
        observed = [ln for ln in ax.lines if ln.get_label() == "observation"][0]
        assert observed.get_ydata() == pytest.approx(obs[k])
        assert ax.get_ylabel() == ["S", "I"][k]
    with pytest.raises(ValueError, match="same T"):
        predictive_plot(obs, pred[:, :, :10])


def test_save_figure_writes_png_and_pdf_atomically(tmp_path):
    fig = coverage_plot(np.linspace(0, 1, 5), np.linspace(0, 1, 5))
    paths = save_figure(fig, tmp_path / "cov")
    assert [p.name for p in paths] == ["cov.png", "cov.pdf"]
    assert paths[0].read_bytes()[:4] == b"\x89PNG" and paths[1].read_bytes()[:4] == b"%PDF"

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    before = paths[0].read_bytes()
    fig.savefig = broken
    with pytest.raises(RuntimeError, match="disk full"):
        save_figure(fig, tmp_path / "cov")
    assert paths[0].read_bytes() == before  # old file intact, no temporary left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cov.pdf", "cov.png"]
    with pytest.raises(ValueError, match="format"):
        save_figure(fig, tmp_path / "x", formats=["docx"])


def test_saved_report_card_replots_as_png_and_pdf(tmp_path):
    alpha = np.linspace(0, 1, 11).tolist()
    ranks = np.random.default_rng(0).random((60, 2)).tolist()
    card = {"status": "pass", "meta": {"num_test_pairs": 60}, "sections": {
        "tarp": {"status": "pass", "why": "", "title": "TARP", "data": {
            "alpha": alpha, "ecp": alpha, "ecp_std": [0.01] * 11}},
        "sbc": {"status": "pass", "why": "", "data": {"ranks": ranks,
                                                       "param_names": ["a", "b"]}},
        "reference": {"status": "pass", "why": "", "data": {}}}}
    paths = DiagnosisReport.from_dict(card).plots(tmp_path)
    assert sorted(p.name for p in paths) == ["sbc.pdf", "sbc.png", "tarp.pdf", "tarp.png"]


PROBLEM_FILE = '''
import torch
from sbi_core import Problem
from sbi_core.priors import box_uniform

T = torch.linspace(0, 3, 12)

def simulator(theta):
    return theta[:, :1] * torch.sin(T) + theta[:, 1:] + 0.1 * torch.randn(len(theta), len(T))

def series():
    return Problem(box_uniform([0.5, -1.0], [2.0, 1.0]), simulator, ["amplitude", "offset"],
                   name="series", x_shape=(12,))
'''


def test_cli_diagnose_out_writes_every_figure_as_png_and_pdf(tmp_path, capsys):
    """A time-series problem: the check figures, the pairplot, the marginals and the
    predictive time series all land in --out as PNG and PDF."""
    from sbi_core import fit, save, simulate
    from sbi_core.cli.main import main
    from sbi_core.resolve import resolve_problem

    src = tmp_path / "series_problem.py"
    src.write_text(PROBLEM_FILE)
    problem = resolve_problem(f"{src}:series")
    torch.manual_seed(0)
    sims = simulate(problem, 400, seed=0, progress=False)
    posterior = fit(problem, sims, seed=0, flow="mdn", num_components=1, hidden_features=16,
                    max_epochs=5, progress=False)
    model = save(posterior, tmp_path / "m.pt")
    out = tmp_path / "diag"
    rc = main(["diagnose", str(model), "--problem", f"{src}:series", "--num", "40",
               "--samples", "100", "--checks", "tarp,sbc,coverage", "--out", str(out),
               "--quiet"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    stems = ["tarp", "sbc", "coverage", "pairplot", "marginals", "predictive_series"]
    expected = {f"{s}.{f}" for s in stems for f in ("png", "pdf")}
    assert {Path(f).name for f in printed["figures"]} == expected
    for name in expected:
        head = (out / name).read_bytes()[:4]
        assert head == (b"\x89PNG" if name.endswith("png") else b"%PDF"), name
