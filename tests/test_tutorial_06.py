"""The diagnostics tutorial runs end to end in fast mode."""

import os
import runpy
from pathlib import Path

TUTORIAL = Path(__file__).resolve().parents[1] / "tutorials" / "06_diagnostics.py"


def test_tutorial_06_runs_in_fast_mode(tmp_path, monkeypatch, capsys):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # small networks; avoids oversubscription on shared machines
    monkeypatch.setenv("SBI_CORE_FAST", "1")
    monkeypatch.setenv("SBI_CORE_TUTORIAL_OUT", str(tmp_path))
    try:
        runpy.run_path(str(TUTORIAL), run_name="__main__")
    finally:
        torch.set_num_threads(before)
    out = capsys.readouterr().out
    assert "Report card" in out
    assert "references=regression: FAIL" in out  # posterior = prior caught
    assert "references=box       : PASS" in out  # ... and missed without x-dependence
    assert (tmp_path / "model.pt").exists() and (tmp_path / "report" / "tarp.png").exists()
    assert os.environ["SBI_CORE_FAST"] == "1"
