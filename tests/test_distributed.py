"""Data-parallel training: a 2-process gloo run under torchrun takes the same steps as one
process (its losses match within float tolerance), and rank 0 saves the model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sbi_core.simulation import simulate
from sbi_core.training import TrainConfig, train
from simulators import get_problem

ROOT = Path(__file__).resolve().parents[1]
TRAIN_ARGS = ["--flow", "mdn", "--max-epochs", "3", "--batch-size", "64", "--quiet",
              "--learning-rate", "0.002"]


def test_two_process_gloo_ddp_matches_single_process(tmp_path, capsys):
    problem = get_problem("linear_gaussian")
    sims = simulate(problem, 640, seed=0, chunk_size=320, progress=False)
    sims.save(tmp_path / "sims.pt")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "sbi_core.cli.main", "train", "--sims", str(tmp_path / "sims.pt"),
         "--out", str(tmp_path / "ddp.pt"), "--ddp", *TRAIN_ARGS],
        env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    lines = [ln for ln in ddp.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1  # only rank 0 reports and saves
    got = json.loads(lines[0])
    assert (tmp_path / "ddp.pt").exists()
    from sbi_core.cli.main import main

    assert main(["train", "--sims", str(tmp_path / "sims.pt"), "--out", str(tmp_path / "one.pt"),
                 *TRAIN_ARGS]) == 0
    ref = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert got["epochs"] == ref["epochs"] == 3
    assert got["final_train_loss"] == pytest.approx(ref["final_train_loss"], rel=1e-3, abs=1e-3)
    assert got["best_validation_loss"] == pytest.approx(ref["best_validation_loss"], rel=1e-3,
                                                        abs=1e-3)


def test_distributed_without_torchrun_is_a_clear_error():
    problem = get_problem("linear_gaussian")
    theta, x = simulate(problem, 64, seed=0, progress=False).training_data()
    from estimators.npe import build_npe

    est = build_npe(theta, x, problem.prior, flow="mdn")
    with pytest.raises(ValueError, match="torchrun"):
        train(est, theta, x, TrainConfig(distributed=True, max_epochs=1, progress=False))
