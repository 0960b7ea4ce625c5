"""`sbi-core run --round-steps`: TSNPE's step budget for the rounds before the last."""

from __future__ import annotations

import json

import numpy as np
import pytest

import simulators
from sbi_core.cli.main import main


def _run(tmp_path, capsys, *extra: str) -> list[dict]:
    problem = simulators.get_problem("gaussian_linear")
    xfile, model = tmp_path / "x.csv", tmp_path / "m.pt"
    np.savetxt(xfile, problem.observation(1).numpy()[None], delimiter=",")
    assert main(["run", "gaussian_linear", "--x", str(xfile), "--method", "tsnpe",
                 "--rounds", "2", "--sims-per-round", "200", "--max-epochs", "40",
                 "--out", str(model), "--quiet", "--force", *extra]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rounds"]


def test_round_steps_bounds_the_rounds_before_the_last(tmp_path, capsys):
    # 200 simulations: 180 training rows, one minibatch per epoch, so 3 steps = 3 epochs
    rounds = _run(tmp_path, capsys, "--round-steps", "3")
    assert rounds[0]["epochs"] <= 3
    assert rounds[1]["epochs"] > 3  # the last round has no budget


def test_round_steps_none_trains_round_one_without_a_budget(tmp_path, capsys):
    rounds = _run(tmp_path, capsys, "--round-steps", "none")
    assert rounds[0]["epochs"] > 3


@pytest.mark.parametrize("bad", ["0", "-2", "many"])
def test_bad_round_steps_is_a_clear_usage_error(tmp_path, capsys, bad):
    code = main(["run", "gaussian_linear", "--x", "x.csv", "--out", str(tmp_path / "m.pt"),
                 f"--round-steps={bad}"])
    assert code == 2
    assert "'auto', 'none' or a positive integer" in capsys.readouterr().err
