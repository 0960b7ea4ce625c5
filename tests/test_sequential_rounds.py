"""Round training of sequential inference (sbi_core/sequential.py): epochs drawn from all
rounds, the continued rounds' patience, cheaper MCMC proposals for SNLE (issue 17 speed)."""

import pytest
import torch

import sbi_core.sequential as seq
import simulators
from sbi_core.sequential import _round_options, _RoundBatches, run_sequential
from sbi_core.simulation_set import SimulationSet

TINY = {"max_epochs": 8, "hidden_features": 16, "num_transforms": 2}


def _sims(n: int) -> SimulationSet:
    theta = torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 2)
    return SimulationSet(theta, theta + 1.0, torch.ones(n, dtype=torch.bool), {})


def test_epoch_rows_draw_a_random_subset_of_all_rounds_each_epoch():
    """3 rounds of 100 rows (90 train each): an epoch of 100 rows is 4 batches of 25 distinct
    training rows; over 20 epochs rows of every round are drawn; without epoch_rows an epoch
    is a full pass (10 batches)."""
    batches = _RoundBatches(_sims(300), 100, 0.1, seed=0, device="cpu")
    gen = torch.Generator().manual_seed(0)
    full = list(batches.epoch(gen, 25))
    assert len(full) == 270 // 25
    batches.epoch_rows = 100
    rounds_seen = set()
    train_rows = {float(t) for t in batches.theta_tr[:, 0]}
    for _ in range(20):
        epoch = list(batches.epoch(gen, 25))
        assert len(epoch) == 4
        rows = torch.cat([t for t, _ in epoch])[:, 0]
        assert len(set(rows.tolist())) == 100  # no row twice in one epoch
        assert set(rows.tolist()) <= train_rows  # never a validation row
        rounds_seen |= {int(r) // 100 for r in rows.tolist()}
    assert rounds_seen == {0, 1, 2}


def test_round_options_defaults_user_overrides_and_snpe_c_untouched():
    assert _round_options("tsnpe", {}, 1.0, 20, 2000) == {"stop_after_epochs": 20,
                                                           "epoch_rows": 2000}
    # small rounds: at least MIN_EPOCH_ROWS per epoch (full passes while the data are fewer)
    assert _round_options("snle", {}, 1.0, 20, 200)["epoch_rows"] == seq.MIN_EPOCH_ROWS
    assert _round_options("tsnpe", {}, 2.5, 20, 2000)["epoch_rows"] == 5000
    # an explicit stop_after_epochs wins; None switches each setting off
    assert _round_options("tsnpe", {"stop_after_epochs": 7}, None, 20, 2000) == {}
    assert _round_options("snre", {}, None, None, 2000) == {}
    assert _round_options("snpe_c", {}, 1.0, 20, 2000) == {}


def test_continued_rounds_use_round_patience_and_epoch_rows_last_round_full(monkeypatch):
    """Round 1 trains with the accurate preset's patience (40) on full passes; round 2 (not
    the last) with round_patience and epochs of round_epoch_size * sims_per_round rows; the
    last round with round_patience on full passes."""
    import sbi_core.training as training

    seen = []
    real_train = training._train

    def spy(estimator, theta, x, cfg, loss_fn):
        seen.append((cfg.stop_after_epochs, getattr(theta, "epoch_rows", None)))
        return real_train(estimator, theta, x, cfg, loss_fn)

    monkeypatch.setattr(training, "_train", spy)
    monkeypatch.setattr(seq, "MIN_EPOCH_ROWS", 10)
    problem = simulators.get_problem("gaussian_linear", dim=2)
    run_sequential(problem, problem.observation(1), rounds=3, sims_per_round=100, seed=0,
                   progress=False, round_epoch_size=0.5, round_patience=6, **TINY)
    assert seen == [(40, None), (6, 50), (6, None)]
    seen.clear()
    run_sequential(problem, problem.observation(1), rounds=2, sims_per_round=100, seed=0,
                   progress=False, stop_after_epochs=3, **TINY)
    assert seen == [(3, None), (3, None)]


def test_snle_proposals_use_proposal_mcmc_and_bad_values_are_clear_errors(monkeypatch):
    from sbi_core.mcmc_posterior import MCMCPosterior

    calls = []
    real = MCMCPosterior.sample

    def spy(self, *args, **kwargs):
        calls.append({k: kwargs.get(k, "-") for k in ("warmup_steps", "ess_fraction")})
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MCMCPosterior, "sample", spy)
    problem = simulators.get_problem("gaussian_linear", dim=2)
    x_o = problem.observation(1)
    run_sequential(problem, x_o, method="snle", rounds=2, sims_per_round=100, seed=0,
                   progress=False, mcmc={"num_chains": 10}, **TINY)
    # SNLE's own proposal default (25 warm-up steps; SNRE keeps PROPOSAL_MCMC's 50)
    assert calls == [seq.SNLE_PROPOSAL_MCMC] == [{"warmup_steps": 25, "ess_fraction": None}]
    calls.clear()
    run_sequential(problem, x_o, method="snle", rounds=2, sims_per_round=100, seed=0,
                   progress=False, mcmc={"num_chains": 10}, proposal_mcmc={"warmup_steps": 7},
                   **TINY)
    assert calls == [{"warmup_steps": 7, "ess_fraction": "-"}]
    for bad in ({"round_epoch_size": 0}, {"round_epoch_size": float("inf")}, {"round_epoch_size": True},
                {"round_patience": 0}, {"round_patience": 2.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            run_sequential(problem, x_o, rounds=2, sims_per_round=100, progress=False, **bad)
