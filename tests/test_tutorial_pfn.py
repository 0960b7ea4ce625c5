"""The PFN tutorial runs end to end in fast mode."""

import os
import runpy
from pathlib import Path

TUTORIAL = Path(__file__).resolve().parents[1] / "tutorials" / "05_pfn.py"


def test_pfn_tutorial_runs_in_fast_mode(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SBI_CORE_FAST", "1")
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(TUTORIAL), run_name="__main__")
    out = capsys.readouterr().out
    assert "n=50" in out and "reloaded log_prob" in out
    assert not os.path.exists(tmp_path / "pfn_tutorial.pt")
