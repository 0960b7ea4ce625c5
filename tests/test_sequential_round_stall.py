"""TSNPE rounds train without the amortized preset's stall rule (``ROUND_STALL``):
the options reach every round's training, the user's own options win, they are recorded in
the store, and a store written before them is refused on resume with the difference named
(benchmarks/RESULTS.md, "Issue 17: TSNPE rounds without the stall rule")."""

from __future__ import annotations

import json

import pytest

import simulators
from sbi_core.sequential import ROUND_STALL, run_sequential

TINY = {"max_epochs": 6, "hidden_features": 16, "num_transforms": 2}


@pytest.fixture
def problem_and_obs():
    problem = simulators.get_problem("gaussian_linear", dim=2)
    return problem, problem.observation(1)


def _spy(monkeypatch):
    """Record the TrainConfig of every training run inside run_sequential."""
    import sbi_core.inference as inference
    import sbi_core.training as training

    seen = []
    real = training.train

    def spy(estimator, theta, x, config, *a, **kw):
        seen.append(config)
        return real(estimator, theta, x, config, *a, **kw)

    monkeypatch.setattr(training, "train", spy)
    monkeypatch.setattr(inference, "train", spy)  # round 1 trains through fit
    return seen


def test_rounds_train_without_the_stall_rule(problem_and_obs, monkeypatch, tmp_path):
    problem, x_o = problem_and_obs
    seen = _spy(monkeypatch)
    store = tmp_path / "run.zarr"
    run_sequential(problem, x_o, rounds=2, sims_per_round=200, seed=0, store=store,
                   progress=False, **TINY)
    assert len(seen) >= 2  # round 1 (fit) and round 2 (continued)
    assert all(c.overfit_rise is None and c.stall_decay == 0.1 for c in seen)
    state = json.loads((store / "_sequential" / "state.json").read_text())
    assert state["settings"]["round_stall"] == ROUND_STALL


def test_user_options_win_and_old_stores_are_refused(problem_and_obs, monkeypatch, tmp_path):
    problem, x_o = problem_and_obs
    seen = _spy(monkeypatch)
    store = tmp_path / "run.zarr"
    run_sequential(problem, x_o, rounds=1, sims_per_round=200, seed=0, store=store,
                   progress=False, overfit_rise=0.05, **TINY)
    assert all(c.overfit_rise == 0.05 and c.stall_decay == 0.1 for c in seen)
    state_file = store / "_sequential" / "state.json"
    state = json.loads(state_file.read_text())
    assert state["settings"]["round_stall"] == {"stall_decay": 0.1}
    # a store from before ROUND_STALL (no such setting): resuming it would train differently
    del state["settings"]["round_stall"]
    state_file.write_text(json.dumps(state))
    with pytest.raises(ValueError, match="round_stall"):
        run_sequential(problem, x_o, rounds=2, sims_per_round=200, seed=0, store=store,
                       resume=True, progress=False, overfit_rise=0.05, **TINY)


def test_snpe_c_keeps_the_preset(problem_and_obs, monkeypatch, tmp_path):
    """SNPE-C's rounds keep the NPE preset's stall rule (ROUND_STALL made them ~2.6x longer)."""
    problem, x_o = problem_and_obs
    seen = _spy(monkeypatch)
    store = tmp_path / "run.zarr"
    run_sequential(problem, x_o, method="snpe_c", rounds=1, sims_per_round=200, seed=0,
                   store=store, progress=False, **TINY)
    assert seen and all(c.overfit_rise == 0.05 and c.stall_decay == 0.0 for c in seen)
    state = json.loads((store / "_sequential" / "state.json").read_text())
    assert "round_stall" not in state["settings"]
