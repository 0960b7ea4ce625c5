"""End to end: an NPE trained on the linear Gaussian passes the report card; the card is
saved with the model, re-plotted, produced by the CLI, and extensible by new checks.

Thresholds: every section must be ``pass`` or ``warn`` (none ``fail``) for the trained
NPE, with the report-card rules (uniformity p-value >= 1e-3; C2ST vs the analytic
posterior <= 0.8; <= 25% atypical observations in the predictive check).
"""

from __future__ import annotations

import json

import pytest
import torch

from diagnostics import diagnose, register_check
from diagnostics.report import CHECKS, REPORT_KEY, DiagnosisReport
from sbi_core import fit, load, save, simulate
from sbi_core.cli.main import main
from simulators import get_problem


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small networks: one thread is as fast, and far faster on a shared, loaded machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    torch.manual_seed(0)
    problem = get_problem("linear_gaussian")
    sims = simulate(problem, 2000, seed=0, progress=False)
    # A small mixture-density NPE converges (early stopping, ~58 epochs, ~3 s of CPU) on
    # this Gaussian problem. An epoch cap, not a time cap, keeps the result machine-independent.
    posterior = fit(problem, sims, seed=0, flow="mdn", num_components=2, hidden_features=32,
                    learning_rate=3e-3, batch_size=256, max_epochs=100, progress=False)
    assert posterior.history["stopped"] == "converged"
    path = tmp_path_factory.mktemp("model") / "lg.pt"
    save(posterior, path)
    return problem, posterior, path


def test_trained_npe_passes_the_report_card(trained, tmp_path):
    problem, posterior, path = trained
    report = diagnose(posterior, problem=problem, num=200, num_samples=500, progress=False,
                      num_reference_observations=1)
    assert set(report.sections) == {"tarp", "tarp_x", "sbc", "coverage", "reference",
                                    "predictive"}
    for name, sec in report.sections.items():
        assert sec["status"] in ("pass", "warn"), (name, sec["why"])
        assert sec["why"]
    assert report.status in ("pass", "warn")
    assert report.sections["reference"]["metrics"]["c2st"][0] <= 0.8
    text = report.summary()
    assert "TARP" in text and "SBC" in text and report.status.upper() in text

    card = report.to_dict()
    json.dumps(card)  # plain values only
    figures = report.plots(tmp_path / "figs")
    # one figure per check plus the posterior figures, each as PNG and PDF
    assert {p.name for p in figures} == {f"{stem}.{fmt}" for fmt in ("png", "pdf") for stem in (
        "tarp", "tarp_x", "sbc", "coverage", "predictive", "pairplot", "marginals")}
    assert all(p.stat().st_size > 1000 for p in figures)

    report.save(tmp_path / "with_card.pt")
    loaded = load(tmp_path / "with_card.pt")
    assert loaded.diagnostics[REPORT_KEY]["status"] == report.status
    again = DiagnosisReport.from_dict(loaded.diagnostics[REPORT_KEY], loaded)
    assert again.plots(tmp_path / "replot")


def test_wrong_posterior_fails_predictive_and_reference(trained):
    problem, posterior, _ = trained

    class Shifted(type(posterior)):
        def _sample_batched(self, n, xs, **kwargs):
            return super()._sample_batched(n, xs, **kwargs) + 1.5

    bad = Shifted(posterior.estimator, posterior.prior, posterior.problem_spec)
    report = diagnose(bad, problem=problem, num=100, num_samples=200, progress=False,
                      checks=["sbc", "predictive"])
    assert report.sections["sbc"]["status"] == "fail"
    assert report.sections["predictive"]["status"] == "fail"
    assert report.status == "fail"


def test_cli_diagnose_writes_json_figures_and_card(trained, tmp_path, capsys):
    _, posterior, path = trained
    model = tmp_path / "m.pt"
    save(posterior, model)
    out = tmp_path / "diag"
    rc = main(["diagnose", str(model), "--num", "100", "--samples", "200", "--checks",
               "tarp,sbc,coverage,predictive", "--out", str(out), "--save", "--quiet"])
    printed = capsys.readouterr().out
    assert rc == 0
    assert "Report card" in printed and ("[PASS]" in printed or "[WARN]" in printed)
    card = json.loads((out / "report.json").read_text())
    assert set(card["sections"]) == {"tarp", "sbc", "coverage", "predictive"}
    assert (out / "tarp.png").exists() and (out / "sbc.png").exists()
    assert load(model).diagnostics[REPORT_KEY]["status"] == card["status"]


def test_cli_diagnose_with_held_out_simulation_file(trained, tmp_path, capsys):
    problem, _, path = trained
    sims = simulate(problem, 120, seed=7, progress=False)
    sims.x[:3] = float("nan")
    sims.valid[:3] = False
    sims_file = sims.save(tmp_path / "held_out.pt")
    with pytest.warns(UserWarning, match="Dropping 3 of 120"):
        rc = main(["diagnose", str(path), "--sims", str(sims_file), "--samples", "200",
                   "--checks", "tarp,sbc", "--out", str(tmp_path / "d"), "--quiet"])
    assert rc == 0
    card = json.loads((tmp_path / "d" / "report.json").read_text())
    assert card["meta"]["num_test_pairs"] == 117
    assert card["meta"]["test_data"] == "held-out simulations"


def test_cli_diagnose_errors_are_clear(tmp_path, capsys):
    rc = main(["diagnose", str(tmp_path / "missing.pt")])
    assert rc == 2 and "No model file" in capsys.readouterr().err


def test_new_checks_plug_into_the_report(trained):
    problem, posterior, _ = trained

    def width(ctx):
        std = float(ctx.samples.std(0).mean())
        return {"status": "warn" if std > 10 else "pass", "why": f"mean posterior std {std:.3f}",
                "metrics": {"std": std}}

    register_check("width", width, title="Posterior width", default=False)
    try:
        report = diagnose(posterior, problem=problem, num=50, num_samples=100, progress=False,
                          checks=["tarp", "width"])
        assert report.sections["width"]["status"] == "pass"
        assert report.sections["width"]["title"] == "Posterior width"
        assert "Posterior width" in report.summary()
    finally:
        CHECKS.pop("width")


def test_crashing_check_is_reported_as_fail_not_hidden(trained):
    problem, posterior, _ = trained

    def broken(ctx):
        raise RuntimeError("boom")

    register_check("broken", broken, default=False)
    try:
        report = diagnose(posterior, problem=problem, num=50, num_samples=100, progress=False,
                          checks=["broken"])
    finally:
        CHECKS.pop("broken")
    assert report.sections["broken"]["status"] == "fail"
    assert "boom" in report.sections["broken"]["why"]
