"""How many proposals a round of rejection sampling draws (``DirectPosterior`` keeps the
draws inside the prior's support; docs/performance.md, "sampling").

The first round knows nothing about the acceptance rate and proposes exactly the number
still needed: with no leakage that is the only round, and otherwise it is the pilot that
measures the rate. Later rounds propose enough that the accepted count, a binomial draw,
falls short with probability ~0.1% (three standard deviations), with the rate lowered by
three standard errors of its estimate, instead of a fixed 20% oversampling; a short round
only costs one more (small) round, never a wrong sample: which draws are kept never depends
on how many are proposed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["proposal_count", "SIGMAS"]

SIGMAS = 3.0  # standard deviations of headroom, for the count and for the rate's estimate


def proposal_count(need: Tensor, accepted: Tensor, proposed: Tensor, floor: int = 64) -> int:
    """Proposals per observation for the next round, the most any observation needs.

    Args:
        need: ``(A,)`` samples still needed by each active observation (> 0).
        accepted: ``(A,)`` draws accepted so far.
        proposed: ``(A,)`` draws proposed so far (0 before the first round).
        floor: the fewest proposals of a round after the first (short rounds cost their
            fixed overhead).

    Returns:
        The number of proposals ``m`` (>= 1).
    """
    if int(proposed.max()) == 0:
        return max(1, int(need.max()))
    p = proposed.double().clamp(min=1.0)
    rate = (accepted.double() / p).clamp(min=1e-6)
    low = torch.maximum(rate - SIGMAS * (rate * (1.0 - rate) / p).sqrt(), rate / 2)
    n = need.double()
    m = n / low + SIGMAS * (n * (1.0 - low)).sqrt() / low
    return max(floor, math.ceil(float(m.max())))
