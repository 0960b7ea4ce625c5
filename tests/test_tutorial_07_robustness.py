"""Tutorial 07 (adversarial robustness) runs in fast mode and reaches its conclusion."""

import os
import runpy
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.filterwarnings("ignore:Reached max_epochs")


def test_tutorial_runs_in_fast_mode(monkeypatch, capsys):
    monkeypatch.setenv("SBI_CORE_FAST", "1")
    path = Path(__file__).parents[1] / "tutorials" / "07_adversarial_robustness.py"
    assert path.is_file()
    n = torch.get_num_threads()
    try:
        runpy.run_path(os.fspath(path), run_name="__main__")
    finally:
        torch.set_num_threads(n)
    out = capsys.readouterr().out
    assert "FIM reduces the attack KL" in out
