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


def test_final_steps_bounds_the_last_round(tmp_path, capsys):
    full = _run(tmp_path, capsys, "--round-steps", "3")
    short = _run(tmp_path, capsys, "--round-steps", "3", "--final-steps", "4")
    assert short[0]["epochs"] == full[0]["epochs"]  # the rounds before the last are untouched
    assert short[1]["epochs"] < full[1]["epochs"]
    assert short[1]["epochs"] <= 4  # one minibatch per epoch at most: 4 steps, 4 epochs


def test_region_options_reach_the_rounds(tmp_path, capsys):
    # round 2's proposal is the region of round 1's posterior, trained on 200 simulations:
    # 'auto' tempers it by sqrt(1000 / 200); 'none' keeps the plain region. Round 3's region
    # (400 simulations) is united with round 2's under --region-union on.
    auto = _run(tmp_path, capsys, "--rounds", "3", "--round-steps", "3", "--final-steps", "3")
    plain = _run(tmp_path, capsys, "--rounds", "3", "--round-steps", "3", "--final-steps", "3",
                 "--region-temperature", "none", "--region-union", "on")
    assert auto[1]["region_temperature"] == pytest.approx(5 ** 0.5, rel=1e-6)
    assert auto[2]["region_temperature"] == pytest.approx(2.5 ** 0.5, rel=1e-6)
    assert auto[2]["region_union"] is False
    assert plain[1]["region_temperature"] == pytest.approx(1.0)
    assert plain[2]["region_union"] is True


_STEPS = "'auto', 'none' or a positive integer"


@pytest.mark.parametrize("flag, bad, message", [
    ("--round-steps", "0", _STEPS), ("--round-steps", "-2", _STEPS),
    ("--round-steps", "many", _STEPS), ("--final-steps", "0", _STEPS),
    ("--final-steps", "x", _STEPS),
    ("--region-temperature", "0.5", "'auto', 'none' or a number >= 1"),
    ("--region-temperature", "x", "'auto', 'none' or a number >= 1"),
    ("--region-temperature", "nan", "'auto', 'none' or a number >= 1"),
])
def test_bad_budget_or_region_option_is_a_clear_usage_error(tmp_path, capsys, flag, bad, message):
    code = main(["run", "gaussian_linear", "--x", "x.csv", "--out", str(tmp_path / "m.pt"),
                 f"{flag}={bad}"])
    assert code == 2
    assert message in capsys.readouterr().err
