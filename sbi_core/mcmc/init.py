"""Initial states for MCMC chains, drawn from the prior.

- ``"sir"`` (default): sampling-importance-resampling. Draw ``num_candidates`` prior samples
  per observation, weight them by ``exp(potential - log prior)`` (the likelihood, i.e. the
  importance weight of the posterior against the prior) and resample one per chain, with
  replacement: chains start in each mode in proportion to its estimated mass, and not at
  low-weight draws in the tails, where a learned likelihood can have spurious local modes
  that trap chains (seen with NLE on SIR). Chains that start at the same point separate at
  their first transition (random momenta / slice positions).
- ``"sir_chains"``: SIR per chain. The candidates are split into one pool per chain and each
  chain resamples its start from its own pool. With one shared pool a sharp posterior gives
  the weights an effective sample size of about 1, so every chain starts at the same draw
  and, on a multimodal posterior, in the same mode (chains rarely cross between modes): the
  modes' weights in the samples are then chance. With independent pools each chain's start
  is its own approximate posterior draw, so the chains spread over the modes in proportion
  to their mass (slcp with SNLE: benchmarks/RESULTS.md, "Issue 17: slcp at 10,000 ...").
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

INIT_STRATEGIES = ("sir", "sir_chains", "best", "prior")


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
        num_candidates: prior draws per observation (at least ``num_chains``; with
            ``"sir_chains"`` split into ``num_chains`` pools of ``num_candidates //
            num_chains``).
        proposal: ``proposal(k) -> (theta (B, k, D), log_q (B, k))`` candidates to use
            instead of prior draws.
    """
    if strategy not in INIT_STRATEGIES:
        raise ValueError(f"Unknown init_strategy {strategy!r}; use one of {INIT_STRATEGIES}.")
    pool = max(1, num_candidates // num_chains)
    if strategy == "sir_chains":
        k = pool * num_chains
    else:
        k = max(num_candidates, num_chains) if strategy != "prior" else num_chains
    if proposal is not None:
        cand_b, log_q = proposal(k)
        cand = cand_b.reshape(num_batches * k, -1)
    else:
        cand = prior.sample((num_batches * k,)).float()  # (B*k, D); a float64 prior too
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
    elif strategy == "sir_chains":
        if log_q is None:
            log_q = prior.log_prob(cand.reshape(-1, cand.shape[-1])).reshape(num_batches, k)
        log_w = torch.where(finite, pot - log_q.reshape(num_batches, k),
                            torch.full_like(pot, -torch.inf))
        log_w = log_w.reshape(num_batches, num_chains, pool)
        empty = ~torch.isfinite(log_w).any(2)  # a pool without a finite draw: any finite one
        if bool(empty.any()):
            spare = torch.multinomial(finite.float(), num_chains, replacement=True)
            spare = spare.reshape(num_batches, num_chains)
        log_w = torch.where(empty[..., None], torch.zeros_like(log_w), log_w)
        pick = torch.multinomial(torch.softmax(log_w.reshape(-1, pool), dim=1), 1)
        order = pick.reshape(num_batches, num_chains) + pool * torch.arange(num_chains)
        if bool(empty.any()):
            order = torch.where(empty, spare, order)
    else:
        if log_q is None:
            log_q = prior.log_prob(cand.reshape(-1, cand.shape[-1])).reshape(num_batches, k)
        log_w = pot - log_q.reshape(num_batches, k)
        log_w = torch.where(finite, log_w, torch.full_like(log_w, -torch.inf))
        probs = torch.softmax(log_w, dim=1)
        order = torch.multinomial(probs, num_chains, replacement=True)
    return cand.gather(1, order[..., None].expand(-1, -1, cand.shape[-1]))
