"""`sbi-core demo`: progress bar while training, report card saved with the model, pairplot
with the reference overlaid in every panel; `sbi-core --version`; shell completion."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import diagnostics.plots
from sbi_core.cli.main import main

ROOT = Path(__file__).resolve().parents[1]


TRUTH_RED = (0.84, 0.15, 0.16)  # "C3", the truth marker: not a sample set


def panel_colour_sets(ax) -> set[frozenset]:
    """One signature per drawn sample set in a panel: the RGB colours of each collection
    (scatter, contours), patch (histogram bars) and line (KDE, step), truth marker left out."""
    import matplotlib.colors as mcolors

    def rgbs(colours) -> frozenset:
        arr = np.atleast_2d(mcolors.to_rgba_array(colours)) if len(colours) else np.zeros((0, 4))
        return frozenset(tuple(np.round(c[:3], 2)) for c in arr if c[3] > 0) - {TRUTH_RED}

    sigs = []
    for coll in ax.collections:
        sigs.append(rgbs(list(coll.get_facecolor()) + list(coll.get_edgecolor())))
    for patch in ax.patches:
        sigs.append(rgbs([patch.get_facecolor(), patch.get_edgecolor()]))
    for line in ax.lines:
        sigs.append(rgbs([line.get_color()]))
    return {s for s in sigs if s}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    figures = []
    original = diagnostics.plots.pairplot

    def spy(*args, **kwargs):
        fig = original(*args, **kwargs)
        figures.append((fig, args, kwargs))
        return fig

    mp = pytest.MonkeyPatch()
    mp.setattr(diagnostics.plots, "pairplot", spy)
    mp.setenv("SBI_CORE_PROGRESS", "1")  # the bar as on a terminal
    import io
    import sys
    err, stdout = io.StringIO(), io.StringIO()
    mp.setattr(sys, "stderr", err)
    mp.setattr(sys, "stdout", stdout)
    try:
        rc = main(["demo", "--out", str(out), "--num-simulations", "400", "--num-samples", "400",
                   "--max-seconds", "2", "--report-num", "20", "--report-samples", "50"])
    finally:
        mp.undo()
    return rc, out, err.getvalue(), stdout.getvalue(), figures


def test_demo_shows_training_progress(demo_run):
    rc, _, err, _, _ = demo_run
    assert rc == 0
    frames = err.replace("\r", "\n")
    assert "training: epoch" in frames
    assert "val=" in frames and "best=" in frames  # epoch counter and validation loss


def test_demo_saves_the_report_card_with_the_model(demo_run):
    from sbi_core import load

    rc, out, _, stdout, _ = demo_run
    summary = json.loads(stdout.strip().splitlines()[-1])
    card = load(out / "model.pt").diagnostics["report_card"]
    assert summary["report_card"] == card["status"] in ("pass", "warn", "fail")
    assert {"tarp", "sbc", "coverage"} <= set(card["sections"])
    assert card["meta"]["num_test_pairs"] == 20 and card["meta"]["num_samples"] == 50
    assert json.loads((out / "report.json").read_text())["status"] == card["status"]
    assert "Report card (npe, 20 test pairs x 50 samples)" in stdout


def test_demo_pairplot_overlays_reference_in_every_panel(demo_run):
    rc, out, _, _, figures = demo_run
    assert (out / "pairplot.png").stat().st_size > 10_000
    assert len(figures) == 1
    fig, args, kwargs = figures[0]
    samples = args[0]
    reference = kwargs["reference"]
    assert reference is not None and reference.shape == samples.shape == (400, 2)
    assert not torch.equal(reference, samples)
    grid = np.array(fig.axes[:4]).reshape(2, 2)
    lower = grid[1, 0]  # the one 2-D panel of a 2-parameter problem
    sigs = panel_colour_sets(lower)
    assert len(lower.collections) >= 2 and len(sigs) >= 2, \
        "the 2-D panel must draw the posterior and the reference in different colours"
    for i in range(2):  # 1-D panels: both sets drawn (histogram bars / KDE lines)
        assert len(panel_colour_sets(grid[i, i])) >= 2


def test_panel_check_tells_one_set_from_two():
    truth = torch.zeros(2)
    fig = diagnostics.plots.pairplot(torch.randn(300, 2), ["a", "b"], truth=truth)
    fig2 = diagnostics.plots.pairplot(torch.randn(300, 2), ["a", "b"], truth=truth,
                                      reference=torch.randn(300, 2) + 1)
    for i, j in ((1, 0), (0, 0), (1, 1)):
        one = panel_colour_sets(np.array(fig.axes[:4]).reshape(2, 2)[i, j])
        two = panel_colour_sets(np.array(fig2.axes[:4]).reshape(2, 2)[i, j])
        assert len(one) == 1 and len(two) >= 2


def test_version_matches_the_package(capsys):
    import sbi_core

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    printed = capsys.readouterr().out.strip()
    assert printed == f"sbi-core {sbi_core.__version__}"
    # pyproject's [project] version (regex: tomllib is Python >= 3.11 only)
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert printed == f"sbi-core {version.group(1)}"


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_script_lists_commands_and_options(shell, capsys):
    assert main(["completion", shell]) == 0
    script = capsys.readouterr().out
    for word in ("demo", "train", "sample", "completion", "--log-dir", "--num-simulations"):
        assert word in script
    if shell == "zsh":
        assert script.startswith("#compdef sbi-core")


def test_completion_rejects_unknown_shell(capsys):
    assert main(["completion", "tcsh"]) == 2
    assert "invalid choice: 'tcsh'" in capsys.readouterr().err


def test_bash_completion_completes_subcommands_and_options(tmp_path, capsys):
    assert main(["completion", "bash"]) == 0
    script = tmp_path / "sbi-core.bash"
    script.write_text(capsys.readouterr().out)
    probe = (f"source {script}; "
             "COMP_WORDS=(sbi-core tr); COMP_CWORD=1; _shtab_sbi_core; echo \"${COMPREPLY[@]}\"; "
             "COMP_WORDS=(sbi-core train --log-d); COMP_CWORD=2; _shtab_sbi_core; "
             "echo \"${COMPREPLY[@]}\"")
    lines = subprocess.run(["bash", "-c", probe], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    assert lines == ["train", "--log-dir"]
