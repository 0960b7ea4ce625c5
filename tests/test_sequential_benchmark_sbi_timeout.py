"""benchmarks/sequential_vs_sbi.py ``run_sbi``: an sbi worker that does not finish within
``--sbi-timeout`` is killed and gives an error row naming the option, so one hanging cell
(sbi's SNPE-C rejection-sampling a leaking posterior on slcp ran > 7 min) does not stop the
grid. sbi is never imported: a stand-in "python" that only sleeps."""

from __future__ import annotations

import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import sequential_vs_sbi  # noqa: E402


def test_hanging_sbi_worker_is_killed_and_reported(tmp_path: Path) -> None:
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nexec sleep 30\n")
    fake.chmod(0o755)
    start = time.perf_counter()
    res = sequential_vs_sbi.run_sbi(str(fake), "two_moons", 1, 0, 1000, 5, "sbi_snpe_c",
                                    100, timeout=0.5)
    assert time.perf_counter() - start < 10
    assert "samples" not in res
    assert "--sbi-timeout 0.5 s" in res["error"]


def test_failing_sbi_worker_still_reports_its_stderr(tmp_path: Path) -> None:
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'boom: no sbi here' >&2\nexit 3\n")
    fake.chmod(0o755)
    res = sequential_vs_sbi.run_sbi(str(fake), "two_moons", 1, 0, 1000, 5, "sbi_snpe_c",
                                    100, timeout=30)
    assert res == {"error": "boom: no sbi here"}
