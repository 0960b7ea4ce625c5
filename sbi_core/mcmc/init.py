"""Initial states for MCMC chains, drawn from the prior.

- ``"sir"`` (default): sampling-importance-resampling. Draw ``num_candidates`` prior samples
  per observation, weight them by ``exp(potential - log prior)`` (the likelihood, i.e. the
  importance weight of the posterior against the prior) and resample one per chain, with
  replacement: chains start in each mode in proportion to its estimated mass, and not at
  low-weight draws in the tails, where a learned likelihood can have spurious local modes
  that trap chains (seen with NLE on SIR). Chains that start at the same point separate at
  their first transition (random momenta / slice positions).
- ``"best"``: the chains start at the candidates with the highest potential (no duplicates).
- ``"prior"``: plain prior draws.

With a ``proposal`` (e.g. an NPE posterior of the same observation) the candidates come
from it instead of the prior, and the SIR weights are ``exp(potential - log q)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Distribution

__all__ = ["initial_chains", "INIT_STRATEGIES"]

INIT_STRATEGIES = ("sir", "best", "prior")


def initial_chains(potential: Callable[[Tensor, Tensor], Tensor], prior: Distribution,
                   num_batches: int, num_chains: int, strategy: str = "sir",
                   num_candidates: int = 1000, chunk: int = 50_000,
                   proposal: Callable[[int], tuple[Tensor, Tensor]] | None = None) -> Tensor:
    """Starting points ``(B, C, D)`` in parameter space, all with finite potential.

    Args:
        potential: ``f(theta (M, D), index (M,)) -> (M,)`` with ``index`` the observation of
            each row (``0..B-1``).
        prior: proposal of the candidates.
        num_batches: ``B`` observations.
        num_chains: ``C`` chains per observation.
        strategy: one of ``"sir"``, ``"best"``, ``"prior"``.
        num_candidates: prior draws per observation (at least ``num_chains``).
        proposal: ``proposal(k) -> (theta (B, k, D), log_q (B, k))`` candidates to use
            instead of prior draws.
    """
    if strategy not in INIT_STRATEGIES:
        raise ValueError(f"Unknown init_strategy {strategy!r}; use one of {INIT_STRATEGIES}.")
    k = max(num_candidates, num_chains) if strategy != "prior" else num_chains
    if proposal is not None:
        cand_b, log_q = proposal(k)
        cand = cand_b.reshape(num_batches * k, -1)
    else:
        cand = prior.sample((num_batches * k,))  # (B*k, D)
        log_q = None
    index = torch.arange(num_batches).repeat_interleave(k)
    pot = torch.cat([potential(cand[i:i + chunk], index[i:i + chunk])
                     for i in range(0, cand.shape[0], chunk)])
    pot = torch.nan_to_num(pot, nan=-torch.inf, posinf=-torch.inf, neginf=-torch.inf).reshape(num_batches, k)
    cand = cand.reshape(num_batches, k, -1)
    finite = torch.isfinite(pot)
    bad = (~finite.any(1)).nonzero().flatten().tolist()
    if bad:
        raise ValueError(
            f"None of {k} prior draws has a finite potential for observation(s) {bad[:10]}, so "
            "MCMC cannot start. The observation may be impossible under the model (check it), "
            "or the estimator returns NaN/inf; raise init_num_candidates or retrain."
        )
    if strategy == "prior":
        order = torch.argsort(finite.float(), dim=1, descending=True, stable=True)[:, :num_chains]
    elif strategy == "best":
        order = torch.argsort(pot, dim=1, descending=True)[:, :num_chains]
    else:
        if log_q is None:
            log_q = prior.log_prob(cand.reshape(-1, cand.shape[-1])).reshape(num_batches, k)
        log_w = pot - log_q.reshape(num_batches, k)
        log_w = torch.where(finite, log_w, torch.full_like(log_w, -torch.inf))
        probs = torch.softmax(log_w, dim=1)
        order = torch.multinomial(probs, num_chains, replacement=True)
    return cand.gather(1, order[..., None].expand(-1, -1, cand.shape[-1]))
