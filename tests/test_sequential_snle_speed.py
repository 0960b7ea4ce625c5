"""The last round's rows per epoch (``final_epoch_size``, issue 17 wall time of SNLE on
slcp): ``"auto"`` gives SNLE with the nflows MAF epochs of ``2 * sims_per_round`` rows
(``SNLE_FINAL_EPOCH_SIZE``), SNLE with the fused MAF (the default flow since wave 9) and the
other methods full passes; a number draws that many times ``sims_per_round`` rows."""

import pytest

import sbi_core.sequential as seq
import simulators
from sbi_core.sequential import _final_options, _round_options, run_sequential

TINY = {"max_epochs": 8, "hidden_features": 16, "num_transforms": 2}


def test_final_options_auto_per_method_numbers_and_none():
    opts = _round_options("snle", {}, 1.0, 20, 2000)
    assert _final_options("snle", {}, "auto", opts, 20, 2000, "maf") == {
        "stop_after_epochs": 20, "epoch_rows": 4000}
    # the fused MAF (SNLE's default flow since wave 9): full passes in the last round
    assert _final_options("snle", {}, "auto", opts, 20, 2000, "fmaf") == {"stop_after_epochs": 20}
    assert _final_options("snle", {}, "auto", opts, 20, 2000) == {"stop_after_epochs": 20}
    for method in ("tsnpe", "snre"):
        assert _final_options(method, {}, "auto", _round_options(method, {}, 1.0, 20, 2000),
                              20, 2000) == {"stop_after_epochs": 20}
    assert _final_options("snle", {}, None, opts, 20, 2000) == {"stop_after_epochs": 20}
    assert _final_options("snle", {}, 1.0, opts, 20, 2000) == opts
    assert _final_options("tsnpe", {}, 2.5, opts, 20, 2000)["epoch_rows"] == 5000
    assert _final_options("snpe_c", {}, 2.5, {}, 20, 2000) == {}
    # small rounds: at least MIN_EPOCH_ROWS rows (full passes while the data are fewer)
    assert _final_options("snle", {}, "auto", {}, 20, 200, "maf")["epoch_rows"] == \
        seq.MIN_EPOCH_ROWS


def test_last_round_epoch_rows_in_an_snle_run_and_bad_values_are_clear_errors(monkeypatch):
    import sbi_core.training as training

    seen = []
    real_train = training._train

    def spy(estimator, theta, x, cfg, loss_fn):
        seen.append(getattr(theta, "epoch_rows", None))
        return real_train(estimator, theta, x, cfg, loss_fn)

    monkeypatch.setattr(training, "_train", spy)
    monkeypatch.setattr(seq, "MIN_EPOCH_ROWS", 10)
    problem = simulators.get_problem("gaussian_linear", dim=2)
    x_o = problem.observation(1)
    common = {"method": "snle", "flow": "maf", "rounds": 2, "sims_per_round": 100, "seed": 0,
              "progress": False, "round_epoch_size": 0.5, "mcmc": {"num_chains": 10},
              "proposal_mcmc": {"warmup_steps": 5, "ess_fraction": None}, **TINY}
    run_sequential(problem, x_o, **common)
    assert seen == [None, 200]  # round 1 full passes; the last round 2 * 100 rows per epoch
    seen.clear()
    run_sequential(problem, x_o, final_epoch_size=0.3, **common)
    assert seen == [None, 30]
    seen.clear()
    run_sequential(problem, x_o, final_epoch_size=None, **common)
    assert seen == [None, None]
    for bad in (0, -1.0, float("nan"), float("inf"), "fast", True):
        with pytest.raises(ValueError, match="final_epoch_size"):
            run_sequential(problem, x_o, rounds=2, sims_per_round=100, progress=False,
                           final_epoch_size=bad)
