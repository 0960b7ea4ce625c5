"""Each tutorial runs as a plain script in fast mode."""


import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Tutorials with a dedicated test file (tests/test_tutorial_<NN>*.py) are run there, with
# extra assertions; every other tutorial is run here.
_DEDICATED = {p.name.split("_")[2][:2] for p in (ROOT / "tests").glob("test_tutorial_*.py")}
TUTORIALS = sorted(p for p in (ROOT / "tutorials").glob("*.py") if p.name[:2] not in _DEDICATED)


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.name for p in TUTORIALS])
def test_tutorial_runs_in_fast_mode(path, tmp_path):
    env = {**os.environ, "SBI_CORE_FAST": "1", "MPLBACKEND": "Agg",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, str(path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
