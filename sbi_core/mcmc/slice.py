"""Vectorized coordinate-wise slice sampling (Neal 2003) over many parallel chains.

All ``M`` chains move together: each update of coordinate ``d`` draws a slice height
``log y = f(z) - Exp(1)`` per chain, steps an interval of width ``w`` out until both ends
are below the slice, then shrinks it until a uniform proposal lands inside the slice.
Every stage evaluates the log density of all still-active chains in ONE batched call;
there is no Python loop over chains. Widths ``w`` (per chain and coordinate) are tuned
during warm-up to the running mean of three times the distance moved (for a Gaussian the
mean move is about a third of the slice width).

Slice sampling needs no gradients and no step-size tuning, and is exact (every move is
accepted), which makes it the robust default for learned potentials.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["SliceState", "slice_step"]

#: log density of rows ``z`` ``(m, D)`` belonging to chains ``rows`` ``(m,)`` → ``(m,)``.
LogDensity = Callable[[Tensor, Tensor], Tensor]


class SliceState:
    """State of ``M`` chains: position ``z`` ``(M, D)``, log density ``logp`` ``(M,)``, widths.

    Args:
        z: initial positions ``(M, D)``.
        logp: their log densities ``(M,)`` (finite).
        width: initial interval widths ``(M, D)``.
    """

    def __init__(self, z: Tensor, logp: Tensor, width: Tensor):
        self.z, self.logp, self.width = z.clone(), logp.clone(), width.clone()
        self.num_tuned = 0
        self.num_evaluations = 0


def _eval(log_density: LogDensity, z: Tensor, rows: Tensor, state: SliceState) -> Tensor:
    state.num_evaluations += int(rows.numel())
    lp = log_density(z, rows)
    return torch.nan_to_num(lp, nan=-torch.inf, posinf=-torch.inf, neginf=-torch.inf)


def slice_step(state: SliceState, log_density: LogDensity, tune: bool = False,
               max_step_out: int = 50, max_shrink: int = 100) -> SliceState:
    """One sweep over all coordinates (in random order) for all chains, in place.

    Args:
        state: chains to move.
        log_density: ``f(z (m, D), rows (m,)) -> (m,)``; ``rows`` index the chains being
            evaluated, so a potential can look up each chain's observation.
        tune: adapt the widths (warm-up only; tuning during sampling breaks detailed balance).
        max_step_out: cap on step-out expansions per side.
        max_shrink: cap on shrinkage proposals; a chain that has not found a point by then
            stays where it is (a valid, if lazy, move).
    """
    m, dim = state.z.shape
    all_rows = torch.arange(m)
    for d in torch.randperm(dim).tolist():
        w = state.width[:, d]
        x0 = state.z[:, d].clone()
        log_y = state.logp - torch.empty(m).exponential_()
        left = x0 - w * torch.rand(m)
        right = left + w
        # step out both ends in one batched evaluation per round
        grow_l = torch.ones(m, dtype=torch.bool)
        grow_r = torch.ones(m, dtype=torch.bool)
        for _ in range(max_step_out):
            idx_l, idx_r = all_rows[grow_l], all_rows[grow_r]
            if idx_l.numel() + idx_r.numel() == 0:
                break
            rows = torch.cat([idx_l, idx_r])
            pts = state.z[rows].clone()
            pts[:, d] = torch.cat([left[idx_l], right[idx_r]])
            lp = _eval(log_density, pts, rows, state)
            above_l, above_r = lp[: idx_l.numel()] > log_y[idx_l], lp[idx_l.numel():] > log_y[idx_r]
            left[idx_l[above_l]] -= w[idx_l[above_l]]
            right[idx_r[above_r]] += w[idx_r[above_r]]
            grow_l[idx_l[~above_l]] = False
            grow_r[idx_r[~above_r]] = False
        # shrink until a proposal lands inside the slice
        active = torch.ones(m, dtype=torch.bool)
        for _ in range(max_shrink):
            rows = all_rows[active]
            if rows.numel() == 0:
                break
            prop = left[rows] + torch.rand(rows.numel()) * (right[rows] - left[rows])
            pts = state.z[rows].clone()
            pts[:, d] = prop
            lp = _eval(log_density, pts, rows, state)
            ok = lp > log_y[rows]
            acc = rows[ok]
            state.z[acc, d] = prop[ok]
            state.logp[acc] = lp[ok]
            active[acc] = False
            rej, prop_rej = rows[~ok], prop[~ok]
            below = prop_rej < x0[rej]
            left[rej[below]] = prop_rej[below]
            right[rej[~below]] = prop_rej[~below]
        if tune:  # a move is about a third of the slice width: aim w at the slice width
            n = state.num_tuned
            moved = 3.0 * (state.z[:, d] - x0).abs()
            state.width[:, d] = ((n * w + moved) / (n + 1)).clamp(min=1e-6)
    if tune:
        state.num_tuned += 1
    return state
