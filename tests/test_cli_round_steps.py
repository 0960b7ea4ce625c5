"""`sbi-core run --round-steps` / `--final-steps`: TSNPE's step budgets (rounds before the last, last round)."""

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


def test_final_steps_bounds_the_last_round(tmp_path, capsys):
    full = _run(tmp_path, capsys, "--round-steps", "3")
    short = _run(tmp_path, capsys, "--round-steps", "3", "--final-steps", "4")
    assert short[0]["epochs"] == full[0]["epochs"]  # the rounds before the last are untouched
    assert short[1]["epochs"] < full[1]["epochs"]
    assert short[1]["epochs"] <= 4  # one minibatch per epoch at most: 4 steps, 4 epochs


@pytest.mark.parametrize("bad", ["0", "x"])
def test_bad_final_steps_is_a_clear_usage_error(tmp_path, capsys, bad):
    code = main(["run", "gaussian_linear", "--x", "x.csv", "--out", str(tmp_path / "m.pt"),
                 f"--final-steps={bad}"])
    assert code == 2
    assert "'auto', 'none' or a positive integer" in capsys.readouterr().err
