"""The benchmark and Hodgkin-Huxley tutorials run as plain scripts in fast mode."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script,outputs", [
    ("02_benchmark_problems.py", ["two_moons_reference.png"]),
    ("02b_hodgkin_huxley.py", ["hh_traces.png", "hh_posterior.png"]),
])
def test_tutorial_runs_fast(tmp_path, script, outputs):
    env = {**os.environ, "SBI_CORE_FAST": "1", "SBI_CORE_TUTORIAL_OUT": str(tmp_path),
           "SBI_CORE_CACHE": str(tmp_path / "cache"), "MPLBACKEND": "Agg",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, str(ROOT / "tutorials" / script)], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in outputs:
        assert (tmp_path / name).is_file()
    if script.startswith("02_"):
        assert "'c2st'" in result.stdout
    else:
        assert "predictive" in result.stdout
