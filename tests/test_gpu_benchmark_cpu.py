"""benchmarks/gpu_npe_vs_sbi.py: sbi-core's half runs on a CPU at a tiny scale (issue 18,
item 8: the GPU code path stays tested where no GPU is available). sbi is never imported."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import gpu_npe_vs_sbi  # noqa: E402


def test_ours_runs_on_cpu_at_tiny_scale(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    rows = gpu_npe_vs_sbi.main(["--device", "cpu", "--libs", "sbi_core", "--tasks", "two_moons",
                                "--num-sims", "600", "--max-epochs", "2", "--observations", "1",
                                "--num-samples", "200", "--json", str(out)])
    assert len(rows) == 1 and "sbi" not in rows[0]
    ours = rows[0]["sbi_core"]
    assert ours["epochs"] == 2  # --max-epochs reached the worker
    assert ours["train_seconds"] > 0 and ours["seconds_per_epoch"] > 0
    assert 0.5 <= ours["c2st_mean"] <= 1.0 and len(ours["c2st"]) == 1
    assert ours["peak_gpu_mb"] == 0.0 and ours["peak_mb"] > 0
    assert json.loads(out.read_text())[0]["sbi_core"]["epochs"] == 2


def test_cuda_without_gpu_or_missing_sbi_is_a_clear_error(capsys) -> None:
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            gpu_npe_vs_sbi.parse_args(["--device", "cuda"])
        assert "no CUDA GPU" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gpu_npe_vs_sbi.parse_args(["--device", "cpu", "--sbi-python", "/nonexistent/python"])
    assert "--libs sbi_core" in capsys.readouterr().err
