"""benchmarks/sequential_vs_sbi.py: a final posterior whose x_o lies outside the range of its
training simulations (sir observation 3 at 1,000 simulations) is sampled and flagged in the
row, instead of ending the whole grid with an ObservationError. sbi is never imported."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import sequential_vs_sbi  # noqa: E402


def test_x_o_outside_the_training_range_is_sampled_and_flagged() -> None:
    import simulators

    problem = simulators.get_problem("gaussian_linear", dim=2)
    small = {"hidden_features": 8, "num_transforms": 1, "max_epochs": 3}
    far = torch.full((2,), 1e3)
    res = sequential_vs_sbi.run_ours(problem, far, "npe", 200, 1, 0, 10, None, small)
    assert res["x_o_outside_training_range"] is True
    assert res["samples"].shape == (10, 2)
    near = problem.observation(1)
    res = sequential_vs_sbi.run_ours(problem, near, "npe", 200, 1, 0, 10, None, small)
    assert res["x_o_outside_training_range"] is False
