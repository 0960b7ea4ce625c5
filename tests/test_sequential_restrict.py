"""run_sequential(restrict=True) end to end: the simulator fails for θ₁ > 0.5; after round 1
the learned restriction keeps later rounds' simulations (almost) all valid."""

import torch

from sbi_core import Problem
from sbi_core.priors import box_uniform
from sbi_core.sequential import run_sequential

PRIOR = box_uniform([-1.0, -1.0], [1.0, 1.0])


def _fails_right(theta: torch.Tensor) -> torch.Tensor:
    """x = θ + 0.3·noise; NaN (a failed simulation) wherever θ₁ > 0.5 (25% of the prior)."""
    x = theta + 0.3 * torch.randn_like(theta)
    x[theta[:, 0] > 0.5] = float("nan")
    return x


def test_restriction_learns_failure_region_and_later_rounds_are_valid():
    problem = Problem(PRIOR, _fails_right, name="fails_right")
    # x_o at the edge of the failure region: the posterior at x_o straddles θ₁ = 0.5, so the
    # truncation alone would propose many θ where the simulator fails
    x_o = torch.tensor([0.45, 0.0])
    posterior, history = run_sequential(
        problem, x_o, method="tsnpe", rounds=2, sims_per_round=400, seed=0, restrict=True,
        progress=False, max_epochs=30, hidden_features=16, num_transforms=2)
    invalid = [h.num_invalid / h.num_simulations for h in history]
    print("invalid fraction per round", invalid, "prior mass kept",
          [h.prior_mass for h in history])
    assert 0.15 < invalid[0] < 0.35  # round 1 from the prior sees the failure region
    assert all(f < 0.05 for f in invalid[1:]), invalid
    assert history[1].proposal == "truncated prior (restricted)"
    assert 0.6 < history[1].prior_mass < 0.8  # restriction (~0.75) x truncation
