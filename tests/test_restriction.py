"""Restriction estimator: learn where the simulator fails, sample from the restricted prior."""

import io
import math

import pytest
import torch

from estimators.restriction import RestrictedPrior, fit_restriction
from sbi_core import Problem, simulate
from sbi_core.budget import SamplingError, SamplingTimeoutError
from sbi_core.priors import box_uniform, support_bounds

# Box prior theta_1 in [-1, 1], theta_2 in [0, 1]; the simulator fails for theta_1 > 0.5, so
# the valid region holds exactly 0.75 of the prior mass.
PRIOR = box_uniform([-1.0, 0.0], [1.0, 1.0])
TRUE_KEPT = 0.75
FAST = {"batch_size": 256, "learning_rate": 3e-3, "epochs": 150, "num_acceptance": 50_000}


def _simulator(theta):
    x = theta + 0.1 * torch.randn_like(theta)
    x[theta[:, 0] > 0.5] = float("nan")
    return x


@pytest.fixture(scope="module")
def problem():
    return Problem(PRIOR, _simulator, name="fails_right")


@pytest.fixture(scope="module")
def restricted(problem):
    pilot = simulate(problem, 1500, seed=0, progress=False)
    assert 0.15 < pilot.num_invalid / len(pilot) < 0.35  # the pilot does see failures
    return RestrictedPrior.from_sims(PRIOR, pilot, seed=0, **FAST)


def test_learns_failure_region_and_restricted_sims_are_valid(problem, restricted):
    # Before round 1: pilot -> restrict -> simulate from the restricted prior.
    theta = restricted.sample((2000,))
    assert theta.shape == (2000, 2)
    assert bool(restricted.accepts(theta).all())
    sims = simulate(problem, theta=theta, seed=1, progress=False)
    invalid = sims.num_invalid / len(sims)
    assert invalid < 0.05, invalid
    # Kept prior mass close to the true 0.75 (default threshold: <= 1% false negatives).
    assert abs(restricted.acceptance - TRUE_KEPT) < 0.05, restricted.acceptance
    assert restricted.info["kept_valid"] >= 0.99 - 1e-6
    assert restricted.info["kept_invalid"] < 0.1
    # Samples cover the whole valid region (not only its center).
    assert float(theta[:, 0].min()) < -0.9 and float(theta[:, 0].max()) > 0.4


def test_log_prob_normalized_by_acceptance(restricted):
    theta = torch.tensor([[-0.5, 0.5], [0.9, 0.5], [3.0, 0.5]])
    lp = restricted.log_prob(theta)
    expected = PRIOR.log_prob(theta[:1]) - math.log(restricted.acceptance)
    assert torch.allclose(lp[:1], expected)
    assert lp[1] == -math.inf and lp[2] == -math.inf  # failure region, outside the support
    # Normalized: the Monte Carlo integral over the box (area 2) is ~1.
    grid = PRIOR.sample((200_000,))
    integral = float(torch.exp(restricted.log_prob(grid)).mean() * 2.0)
    assert abs(integral - 1.0) < 0.02, integral
    assert restricted.event_shape == (2,)
    lo, hi = support_bounds(restricted)
    assert torch.equal(lo, torch.tensor([-1.0, 0.0])) and torch.equal(hi, torch.ones(2))


def test_state_round_trip_without_pickling(restricted):
    buf = io.BytesIO()
    torch.save(restricted.state(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    again = RestrictedPrior.from_state(PRIOR, state)
    theta = PRIOR.sample((500,))
    assert torch.equal(again.valid_probability(theta), restricted.valid_probability(theta))
    assert again.threshold == restricted.threshold and again.acceptance == restricted.acceptance
    torch.manual_seed(3)
    a = restricted.sample((100,))
    torch.manual_seed(3)
    b = again.sample((100,))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="D=2"):
        RestrictedPrior.from_state(box_uniform([0.0], [1.0]), state)


def test_threshold_monotone_in_allowed_false_negatives(problem):
    pilot = simulate(problem, 600, seed=5, progress=False)
    strict = fit_restriction(PRIOR, pilot.theta, pilot.valid, allowed_false_negatives=0.0, **FAST)
    loose = fit_restriction(PRIOR, pilot.theta, pilot.valid, allowed_false_negatives=0.2, **FAST)
    assert strict.threshold <= loose.threshold
    assert strict.acceptance >= loose.acceptance
    assert strict.info["kept_valid"] == 1.0
    assert loose.info["kept_valid"] >= 0.8 - 1e-6


def test_collapse_and_budget_raise_clear_errors():
    prior = box_uniform([0.0, 0.0], [1.0, 1.0])
    theta = prior.sample((400,))
    valid = theta[:, 0] > 0.9995  # almost nothing valid (maybe none at all in the pilot)
    valid[0] = True
    theta[0] = torch.tensor([0.9999, 0.5])
    r = fit_restriction(prior, theta, valid, epochs=30, num_acceptance=20_000,
                        threshold=0.9, min_acceptance=0.01)
    assert r.acceptance < 0.01
    with pytest.raises(SamplingError, match="keeps only"):
        r.sample((100,))
    # A wall-clock budget ends a sampler that cannot finish in time.
    r.min_acceptance = 0.0
    with pytest.raises(SamplingTimeoutError, match="max_seconds"):
        r.sample((10_000_000,), max_seconds=0.05)


def test_bad_input_named():
    theta = PRIOR.sample((50,))
    with pytest.raises(ValueError, match="All 50 simulations are invalid"):
        fit_restriction(PRIOR, theta, torch.zeros(50, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"shape \(50,\)"):
        fit_restriction(PRIOR, theta, torch.ones(49, dtype=torch.bool))
    with pytest.raises(ValueError, match="threshold"):
        fit_restriction(PRIOR, theta, torch.ones(50, dtype=torch.bool), threshold=1.5)
    with pytest.raises(TypeError, match="Unknown fit_restriction option 'hiden'"):
        fit_restriction(PRIOR, theta, torch.ones(50, dtype=torch.bool), hiden=3)
    with pytest.warns(UserWarning, match="All 50 simulations are valid"):
        r = fit_restriction(PRIOR, theta, torch.ones(50, dtype=torch.bool), num_acceptance=1000)
    assert r.acceptance == 1.0
