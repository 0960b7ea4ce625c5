"""The score-based iid tutorial runs end to end in fast mode."""

import os
import runpy
from pathlib import Path


def test_tutorial_04_runs(tmp_path, monkeypatch):
    script = Path(__file__).resolve().parents[1] / "tutorials" / "04_score_based_iid.py"
    monkeypatch.setenv("SBI_CORE_FAST", "1")
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(script), run_name="__main__")
    assert not (tmp_path / "npse_linear_gaussian.pt").exists()
    assert os.environ["SBI_CORE_FAST"] == "1"
