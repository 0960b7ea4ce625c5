"""Each tutorial runs as a plain script in fast mode."""


import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Tutorials named in a dedicated test file (tests/test_tutorial_*.py) are run there, with
# extra assertions; every other tutorial is run here.
_DEDICATED_TEXT = "".join(p.read_text() for p in (ROOT / "tests").glob("test_tutorial_*.py"))
TUTORIALS = sorted(p for p in (ROOT / "tutorials").glob("*.py") if p.name not in _DEDICATED_TEXT)


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.name for p in TUTORIALS])
def test_tutorial_runs_in_fast_mode(path, tmp_path):
    env = {**os.environ, "SBI_CORE_FAST": "1", "MPLBACKEND": "Agg",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, str(path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
