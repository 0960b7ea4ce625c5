"""TSNPE's conservative truncation region while a round's posterior rests on few simulations:
the tempered HPR (``region_temperature``) and the union with the previous round's region
(``region_union``) (sbi_core/sequential.py; issue 17, "the truncation must contain the true
posterior")."""

import math

import pytest
import torch
from test_sequential import kill_after_round

import sbi_core.sequential as seq
import simulators
from sbi_core.sequential import TruncationRegion, region_temperature_for, run_sequential

SMALL = {"hidden_features": 16, "num_transforms": 2, "batch_size": 20}


def _gaussian_log_prob(scale: float, center: float = 0.0):
    def log_prob(theta: torch.Tensor) -> torch.Tensor:
        return -0.5 * (((theta - center) / scale) ** 2).sum(-1)
    return log_prob


def test_tempered_region_keeps_the_truth_an_overconfident_posterior_cuts():
    """True posterior N(0, I) in 2-D; the round's posterior q = N(0, 0.5^2 I) is twice too
    narrow. q's plain 1e-4 HPR (squared radius 0.25 * 18.4 = 4.6) keeps about 90% of the
    true posterior; tempered at T = sqrt(5) (the auto temperature after 200 simulations,
    squared radius 10.3) it keeps about 99.4%. A calibrated q keeps 99.99% either way."""
    g = torch.Generator().manual_seed(0)
    truth = torch.randn(200_000, 2, generator=g)
    q_samples = 0.5 * torch.randn(20_000, 2, generator=g)
    plain = TruncationRegion.from_samples(_gaussian_log_prob(0.5), q_samples, 1e-4)
    warm = TruncationRegion.from_samples(_gaussian_log_prob(0.5), q_samples, 1e-4,
                                         temperature=region_temperature_for("auto", 200))
    kept_plain = float(plain.contains(truth).float().mean())
    kept_warm = float(warm.contains(truth).float().mean())
    assert 0.87 < kept_plain < 0.93          # analytic: 1 - exp(-4.6 / 2) = 0.90
    assert kept_warm > 0.99                  # analytic: 1 - exp(-10.3 / 2) = 0.994
    calibrated = TruncationRegion.from_samples(_gaussian_log_prob(1.0), truth[:20_000], 1e-4)
    assert float(calibrated.contains(truth).float().mean()) > 0.999
    same = TruncationRegion.from_samples(_gaussian_log_prob(0.5), q_samples, 1e-4, 1.0)
    assert same.threshold == plain.threshold


def test_region_union_contains_either_member():
    a = TruncationRegion(_gaussian_log_prob(0.1, center=-1.0), -2.0)
    b = TruncationRegion(_gaussian_log_prob(0.1, center=1.0), -2.0)
    theta = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]])
    assert a.contains(theta).tolist() == [True, False, False]
    a.union = [b]
    assert a.contains(theta).tolist() == [True, True, False]


def test_auto_temperature_and_union_apply_only_below_the_simulation_scale():
    assert region_temperature_for("auto", 200) == pytest.approx(math.sqrt(5))
    assert region_temperature_for("auto", 400) == pytest.approx(math.sqrt(2.5))
    assert region_temperature_for("auto", seq.REGION_SIMULATIONS) == 1.0
    assert region_temperature_for("auto", 10_000) == 1.0
    assert region_temperature_for(None, 200) == 1.0 and region_temperature_for(3, 200) == 3.0
    assert seq._union_applies("auto", 800) and not seq._union_applies("auto", 1000)
    assert seq._union_applies(True, 10_000) and not seq._union_applies(False, 10)
    with pytest.raises(ValueError, match="temperature must be"):
        TruncationRegion.from_samples(_gaussian_log_prob(1.0), torch.zeros(10, 2), 1e-4, 0.5)


def test_run_sequential_records_the_region_and_rejects_bad_options():
    """Rounds of 100 simulations: round 2's region is tempered by sqrt(1000 / 100); round 3's
    (posterior on 200 simulations) by sqrt(5) and united with round 2's posterior's region
    (``region_union="auto"``; the default is no union)."""
    problem = simulators.get_problem("gaussian_linear", dim=2)
    x_o = problem.observation(1)
    _, history = run_sequential(problem, x_o, rounds=3, sims_per_round=100, seed=0,
                                progress=False, round_steps=20, stop_after_epochs=3,
                                region_union="auto", **SMALL)
    assert history[0].region_temperature is None
    assert history[1].region_temperature == pytest.approx(math.sqrt(10))
    assert history[2].region_temperature == pytest.approx(math.sqrt(5))
    assert [h.region_union for h in history] == [None, False, True]
    for bad in (0.5, "wide", float("nan"), True):
        with pytest.raises(ValueError, match="region_temperature"):
            run_sequential(problem, x_o, rounds=2, sims_per_round=100, progress=False,
                           region_temperature=bad)
    with pytest.raises(ValueError, match="region_union"):
        run_sequential(problem, x_o, rounds=2, sims_per_round=100, progress=False,
                       region_union="yes")


def test_resume_after_the_union_member_was_saved_gives_the_identical_posterior(tmp_path):
    """Killed after round 2: round 3's region unites round 2's posterior's region with round
    1's (reloaded from the store at the threshold recorded in round 2's history); the resumed
    run's proposal and posterior equal the uninterrupted run's."""
    problem = simulators.get_problem("gaussian_linear", dim=2)
    x_o = problem.observation(2)
    kw = {"rounds": 3, "sims_per_round": 100, "seed": 3, "progress": False, "round_steps": 20,
          "stop_after_epochs": 3, "max_epochs": 30, "region_union": "auto", **SMALL}
    full, full_hist = run_sequential(problem, x_o, store=tmp_path / "full.zarr", **kw)
    assert full_hist[2].region_union is True

    kill_after_round(run_sequential, 2, problem, x_o, store=tmp_path / "a.zarr", **kw)
    resumed, hist = run_sequential(problem, x_o, store=tmp_path / "a.zarr", resume=True, **kw)
    assert [h.region_union for h in hist] == [None, False, True]  # the member was reloaded
    assert hist[2].prior_mass == full_hist[2].prior_mass
    assert hist[2].truncation_threshold == full_hist[2].truncation_threshold
    a, b = full.estimator.state_dict(), resumed.estimator.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_default_region_is_tempered_without_union():
    import inspect

    params = inspect.signature(run_sequential).parameters
    assert params["region_temperature"].default == "auto"
    assert params["region_union"].default is False
