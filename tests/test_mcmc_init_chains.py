"""MCMC init ``"sir_chains"``: one SIR pool per chain spreads chains over separated modes
(issue 17: SNLE on slcp, whose four modes a shared SIR pool seeded unevenly)."""

from __future__ import annotations

import pytest
import torch

from sbi_core.mcmc import MCMCConfig, initial_chains
from sbi_core.priors import box_uniform

PRIOR = box_uniform(-3.0, 3.0, dim=2)
MODES = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])


def two_modes(theta: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Two equal, sharp (sd 0.01) modes at (+1, 0) and (-1, 0): ``(M, 2) -> (M,)``."""
    d2 = ((theta[:, None, :] - MODES[None]) ** 2).sum(-1)
    return torch.logsumexp(-0.5 * d2 / 0.01**2, dim=1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sir_chains_spreads_chains_over_equal_modes(seed: int) -> None:
    torch.manual_seed(seed)
    shared = initial_chains(two_modes, PRIOR, 1, 100, "sir", num_candidates=1000)
    torch.manual_seed(seed)
    pooled = initial_chains(two_modes, PRIOR, 1, 100, "sir_chains", num_candidates=100_000)
    assert pooled.shape == shared.shape == (1, 100, 2)
    frac_pooled = float((pooled[0, :, 0] > 0).float().mean())
    frac_shared = float((shared[0, :, 0] > 0).float().mean())
    # each mode holds half the mass: 100 independent starts land 35-65% on each side
    assert 0.35 <= frac_pooled <= 0.65, frac_pooled
    # one shared pool has an effective sample size of about 1: one side takes (nearly) all
    assert abs(frac_shared - 0.5) > 0.3, frac_shared
    # every start is near a mode (a posterior draw, not a prior draw)
    assert float(torch.cdist(pooled[0], MODES).min(1).values.max()) < 0.5


def test_sir_chains_is_a_valid_setting_and_survives_empty_pools() -> None:
    assert MCMCConfig.from_options({"init_strategy": "sir_chains"}).init_strategy == "sir_chains"

    def only_right(theta: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        lp = -((theta - 2.5) ** 2).sum(1)
        return torch.where(theta[:, 0] > 2.9, lp, torch.full_like(lp, -torch.inf))

    torch.manual_seed(0)  # ~1.7% of draws finite: most pools of 10 have none
    start = initial_chains(only_right, PRIOR, 2, 50, "sir_chains", num_candidates=500)
    assert start.shape == (2, 50, 2) and bool((start[..., 0] > 2.9).all())
