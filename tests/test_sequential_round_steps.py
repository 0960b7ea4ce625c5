"""TSNPE rounds before the last train on a step budget (``round_steps``), the last round to
convergence (sbi_core/sequential.py; issue 17 wall time)."""

import warnings

import pytest

import sbi_core.sequential as seq
import simulators
from sbi_core.sequential import _budget_epochs, round_step_budget, run_sequential

SMALL = {"hidden_features": 16, "num_transforms": 2, "batch_size": 20}


def _spy(monkeypatch) -> list[dict]:
    """Record each training run's epoch cap, steps taken and why it stopped."""
    import sbi_core.training as training

    seen: list[dict] = []
    real = training._train

    def spy(estimator, theta, x, cfg, loss_fn):
        hist = real(estimator, theta, x, cfg, loss_fn)
        rows = hist.num_train if not getattr(theta, "epoch_rows", None) else \
            min(theta.epoch_rows, hist.num_train)
        per_epoch = max(rows // min(cfg.batch_size, rows), 1)
        seen.append({"max_epochs": cfg.max_epochs, "per_epoch": per_epoch,
                     "steps": len(hist.train_loss) * per_epoch, "stopped": hist.stopped})
        return hist

    monkeypatch.setattr(training, "_train", spy)
    return seen


def test_budget_epochs_rounds_steps_up_to_whole_epochs():
    assert _budget_epochs(300, 360, 256, 2000) == 300       # one 256-row batch per epoch
    assert _budget_epochs(300, 1800, 256, 2000) == 43       # 7 batches per epoch
    assert _budget_epochs(12, 90, 20, 2000) == 3            # 4 batches per epoch
    assert _budget_epochs(300, 10, 256, 2000) == 300        # fewer rows than a batch
    assert _budget_epochs(10_000, 1800, 256, 50) == 50      # never beyond max_epochs


def test_auto_budget_grows_with_the_round_size():
    assert round_step_budget("auto", 200) == round_step_budget("auto", 400) == seq.ROUND_STEPS
    assert round_step_budget("auto", 1000) == 500
    assert round_step_budget("auto", 2000) == 1000
    assert round_step_budget(12, 2000) == 12 and round_step_budget(None, 2000) is None


def test_rounds_before_the_last_stop_at_the_step_budget_last_round_converges(monkeypatch):
    """3 TSNPE rounds of 100 (90 training rows in round 1, batches of 20): rounds 1 and 2 take
    at most round_steps plus one epoch of steps and stop at the budget without the
    "Reached max_epochs" warning; with final_steps=None the last round has no budget and stops
    by early stopping (its default budget: tests/test_sequential_speed.py)."""
    seen = _spy(monkeypatch)
    problem = simulators.get_problem("gaussian_linear", dim=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, history = run_sequential(problem, problem.observation(1), rounds=3,
                                    sims_per_round=100, seed=0, progress=False,
                                    round_steps=12, round_patience=3, min_delta=0.01,
                                    final_steps=None, **SMALL)
    assert not [w for w in caught if "Reached max_epochs" in str(w.message)]
    assert len(seen) == 3
    for s in seen[:2]:
        assert s["max_epochs"] == -(-12 // s["per_epoch"])
        assert 12 <= s["steps"] < 12 + s["per_epoch"] or s["stopped"] == "converged"
    assert seen[0]["stopped"] == seen[1]["stopped"] == "max_epochs"  # 12 steps: not converged
    assert seen[2]["max_epochs"] == 2000 and seen[2]["stopped"] == "converged"
    assert seen[2]["steps"] > 12
    assert [h.epochs for h in history[:2]] == [s["max_epochs"] for s in seen[:2]]


def test_round_steps_none_and_other_methods_keep_full_training(monkeypatch):
    seen = _spy(monkeypatch)
    problem = simulators.get_problem("gaussian_linear", dim=2)
    x_o = problem.observation(1)
    run_sequential(problem, x_o, rounds=2, sims_per_round=100, seed=0, progress=False,
                   round_steps=None, final_steps=None, stop_after_epochs=3, **SMALL)
    assert [s["max_epochs"] for s in seen] == [2000, 2000]
    seen.clear()
    run_sequential(problem, x_o, method="snle", rounds=2, sims_per_round=100, seed=0,
                   progress=False, mcmc={"num_chains": 10}, stop_after_epochs=3, **SMALL)
    assert [s["max_epochs"] for s in seen] == [2000, 2000]  # SNLE: no step budget
    for bad in (0, 2.5, True, "fast"):
        with pytest.raises(ValueError, match="round_steps"):
            run_sequential(problem, x_o, rounds=2, sims_per_round=100, progress=False,
                           round_steps=bad)
    assert seq.ROUND_STEPS >= 1
