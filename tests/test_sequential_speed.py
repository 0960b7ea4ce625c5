"""The last TSNPE round anneals over a step budget (``final_steps``) instead of the preset's
full cosine schedule (sbi_core/sequential.py; issue 17 wall time against sbi)."""

import json
import math
import warnings

import pytest
import torch
from test_sequential import kill_after_round

import sbi_core.sequential as seq
import simulators
from sbi_core.sequential import _budget_epochs, final_step_budget, run_sequential

SMALL = {"hidden_features": 16, "num_transforms": 2, "batch_size": 20, "max_epochs": 60}


def _spy(monkeypatch) -> list[dict]:
    """Record each training run's epoch cap, schedule, epochs run and why it stopped."""
    import sbi_core.training as training

    seen: list[dict] = []
    real = training._train

    def spy(estimator, theta, x, cfg, loss_fn):
        hist = real(estimator, theta, x, cfg, loss_fn)
        seen.append({"max_epochs": cfg.max_epochs, "schedule": cfg.lr_schedule,
                     "epochs": len(hist.train_loss), "num_train": hist.num_train,
                     "stopped": hist.stopped})
        return hist

    monkeypatch.setattr(training, "_train", spy)
    return seen


def _problem():
    problem = simulators.get_problem("gaussian_linear", dim=2)
    return problem, problem.observation(1)


def test_final_step_budget_scales_with_the_simulations():
    assert final_step_budget("auto", 10_000) == round(seq.FINAL_STEPS_PER_SIM * 10_000)
    assert final_step_budget("auto", 20_000) == 2 * final_step_budget("auto", 10_000)
    assert final_step_budget("auto", seq.FINAL_MIN_SIMULATIONS) == max(
        seq.FINAL_MIN_STEPS, round(seq.FINAL_STEPS_PER_SIM * seq.FINAL_MIN_SIMULATIONS))
    assert final_step_budget("auto", 2000) == 1000 and final_step_budget("auto", 5000) == 1250
    # below FINAL_MIN_SIMULATIONS the preset's early stopping decides the last round
    assert final_step_budget("auto", seq.FINAL_MIN_SIMULATIONS - 1) is None
    assert final_step_budget("auto", 1000) is None
    assert final_step_budget(None, 10_000) is None and final_step_budget(50, 10) == 50


def test_last_round_anneals_over_the_whole_budget(monkeypatch):
    """final_steps=40 on 3 rounds of 100 (about 270 training rows in the last round, batches
    of 20: 13 steps per epoch): the last round runs exactly the budget's 4 epochs, the cosine
    schedule shortened to them, without the "Reached max_epochs" warning; the earlier rounds
    keep their own budget (round_steps)."""
    seen = _spy(monkeypatch)
    problem, x_o = _problem()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, history = run_sequential(problem, x_o, rounds=3, sims_per_round=100, seed=0,
                                    progress=False, round_steps=8, final_steps=40,
                                    round_patience=3, **SMALL)
    assert not [w for w in caught if "Reached max_epochs" in str(w.message)]
    assert len(seen) == 3 and all(s["schedule"] == "cosine" for s in seen)
    assert [s["max_epochs"] for s in seen[:2]] == \
        [_budget_epochs(8, s["num_train"], 20, 60) for s in seen[:2]]
    last = seen[2]
    per_epoch = last["num_train"] // 20
    assert last["max_epochs"] == _budget_epochs(40, last["num_train"], 20, 60) == \
        math.ceil(40 / per_epoch)
    # the whole shortened schedule runs (no early stop before the learning rate reaches 0)
    assert last["epochs"] == last["max_epochs"] and last["stopped"] == "max_epochs"
    assert history[-1].epochs == last["epochs"]


def test_auto_budget_only_for_cosine_schedules_and_none_keeps_the_preset(monkeypatch):
    seen = _spy(monkeypatch)
    problem, x_o = _problem()
    common = dict(rounds=2, sims_per_round=100, seed=0, progress=False, round_steps=8,
                  round_patience=3, **SMALL)
    run_sequential(problem, x_o, **common)        # 200 simulations: below the auto minimum
    assert seen[1]["schedule"] == "cosine" and seen[1]["max_epochs"] == 60
    seen.clear()
    monkeypatch.setattr(seq, "FINAL_MIN_SIMULATIONS", 200)
    monkeypatch.setattr(seq, "FINAL_MIN_STEPS", 30)
    run_sequential(problem, x_o, **common)                       # accurate preset: cosine
    budget = _budget_epochs(final_step_budget("auto", 200), seen[1]["num_train"], 20, 60)
    assert seen[1]["schedule"] == "cosine" and seen[1]["max_epochs"] == budget < 60
    assert seen[1]["epochs"] == budget                           # the whole schedule runs
    seen.clear()
    run_sequential(problem, x_o, preset="fast", stop_after_epochs=3, **common)  # plateau
    assert seen[1]["schedule"] == "plateau" and seen[1]["max_epochs"] == 60
    seen.clear()
    run_sequential(problem, x_o, final_steps=None, **common)
    assert seen[1]["max_epochs"] == 60
    seen.clear()
    run_sequential(problem, x_o, method="snle", rounds=2, sims_per_round=100, seed=0,
                   progress=False, mcmc={"num_chains": 10}, stop_after_epochs=3, **SMALL)
    assert [s["max_epochs"] for s in seen] == [60, 60]           # SNLE: no budget
    for bad in (0, 2.5, True, "fast"):
        with pytest.raises(ValueError, match="final_steps"):
            run_sequential(problem, x_o, rounds=2, sims_per_round=100, progress=False,
                           final_steps=bad)


def _run(problem, x_o, store, **kw):
    return run_sequential(problem, x_o, rounds=3, sims_per_round=100, seed=3, store=store,
                          chunk_size=50, progress=False, round_steps=24, **SMALL, **kw)


def test_store_made_before_final_steps_resumes_with_the_default(tmp_path):
    """A store whose state has no "final_steps" (written before the option) resumes, and the
    result is the same posterior as an uninterrupted run with the default; a store made
    with another final_steps is refused, naming it."""
    problem, x_o = _problem()
    full, _ = _run(problem, x_o, tmp_path / "full.zarr")

    store = tmp_path / "old.zarr"
    kill_after_round(_run, 1, problem, x_o, store)
    state_file = store / "_sequential" / "state.json"
    state = json.loads(state_file.read_text())
    assert state["settings"]["final_steps"] == "auto"
    del state["settings"]["final_steps"]          # as written before the option existed
    state_file.write_text(json.dumps(state))
    resumed, history = _run(problem, x_o, store, resume=True)
    assert [h.total_simulations for h in history] == [100, 200, 300]
    sa, sb = full.estimator.state_dict(), resumed.estimator.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)

    store = tmp_path / "other.zarr"
    kill_after_round(_run, 1, problem, x_o, store, final_steps=7)
    with pytest.raises(ValueError, match="final_steps: store has 7"):
        _run(problem, x_o, store, resume=True)
