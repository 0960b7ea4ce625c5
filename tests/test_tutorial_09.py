"""Tutorial 09 (interactive serving) runs end to end in fast mode and does not block."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_tutorial_09_runs_fast_and_returns():
    env = {**os.environ, "SBI_CORE_FAST": "1", "MPLBACKEND": "Agg",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, str(ROOT / "tutorials" / "09_interactive.py")],
                         env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "1000 samples in" in out.stdout
    assert "422 The observation contains NaN or inf" in out.stdout
    assert "Explorer(http://127.0.0.1:" in out.stdout
