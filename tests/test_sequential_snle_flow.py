"""SNLE's default likelihood flow (wave 9): the fused MAF with full passes in the last round,
recorded in the store; stores of the earlier default (the nflows MAF) resume only with
``flow="maf"``, and the refusal names that option."""

import json

import pytest
import torch

import sbi_core.sequential as seq
import simulators
from sbi_core.sequential import run_sequential

TINY = {"method": "snle", "sims_per_round": 100, "seed": 0, "progress": False,
        "max_epochs": 3, "hidden_features": 8, "num_transforms": 2,
        "mcmc": {"num_chains": 10}, "proposal_mcmc": {"warmup_steps": 5, "ess_fraction": None}}


def test_default_flow_is_the_fused_maf_with_a_full_last_round_and_is_recorded(tmp_path,
                                                                              monkeypatch):
    import sbi_core.training as training

    seen = []
    real_train = training._train

    def spy(estimator, theta, x, cfg, loss_fn):
        seen.append(getattr(theta, "epoch_rows", None))
        return real_train(estimator, theta, x, cfg, loss_fn)

    monkeypatch.setattr(training, "_train", spy)
    monkeypatch.setattr(seq, "MIN_EPOCH_ROWS", 10)  # so that 2 x 100 rows would be < a pass
    problem = simulators.get_problem("gaussian_linear", dim=2)
    x_o = problem.observation(1)
    store = tmp_path / "run.zarr"
    post, _ = run_sequential(problem, x_o, rounds=2, store=store, round_epoch_size=0.5, **TINY)
    assert seq.SNLE_FLOW == "fmaf"
    assert post.estimator.config["flow"] == "fmaf"
    assert type(post.estimator.density).__name__ == "FusedMAF"
    assert seen == [None, None]  # round 1 and the last round: full passes (maf: [None, 200])
    saved = json.loads((store / "_sequential" / "state.json").read_text())
    assert saved["settings"]["nle_flow"] == "fmaf"


def test_a_store_of_the_earlier_default_resumes_with_flow_maf_and_the_error_says_so(tmp_path):
    problem = simulators.get_problem("gaussian_linear", dim=2)
    x_o = problem.observation(1)
    store = tmp_path / "run.zarr"
    run_sequential(problem, x_o, rounds=1, store=store, flow="maf", **TINY)
    state = store / "_sequential" / "state.json"
    saved = json.loads(state.read_text())
    saved["settings"].pop("nle_flow")  # as written before the setting existed: nflows MAF
    saved["settings"]["fit_options"].pop("flow", None)  # ... without flow= (the old default)
    state.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=r"nle_flow: store has 'maf', this run has 'fmaf' "
                                         r"\(SNLE's flow: pass flow='maf' to resume\)"):
        run_sequential(problem, x_o, rounds=2, store=store, resume=True, **TINY)
    # what the message asks for: the same run with flow="maf" continues the store
    post, history = run_sequential(problem, x_o, rounds=2, store=store, resume=True,
                                   flow="maf", **TINY)
    assert len(history) == 2 and post.estimator.config["flow"] == "maf"
    whole, _ = run_sequential(problem, x_o, rounds=2, store=tmp_path / "whole.zarr",
                              flow="maf", **TINY)  # uninterrupted, same seeds
    for (name, a), (_, b) in zip(post.estimator.state_dict().items(),
                                 whole.estimator.state_dict().items()):
        assert torch.equal(a, b), name
