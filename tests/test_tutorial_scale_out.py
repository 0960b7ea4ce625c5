"""The scale-out tutorial runs end to end in fast mode."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_tutorial_08_runs_fast():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SBI_CORE_FAST": "1", "MPLBACKEND": "Agg"}
    out = subprocess.run([sys.executable, str(ROOT / "tutorials" / "08_scale_out.py")], env=env,
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resumed: 600 simulations" in out.stdout
    assert "after the 'crash': 3 of 6 chunks committed" in out.stdout
    assert "resumed store identical to an uninterrupted run: True" in out.stdout
