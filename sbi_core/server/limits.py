"""Bounds on the work of one request, and the HTTP 413 that reports a request beyond them.

The cost of a posterior request grows with the number of observations ``B``, the samples per
observation ``n``, the parameter rows of ``log_prob``, the MAP restarts and steps, and for
MCMC posteriors the number of chain transitions. :class:`Limits` holds the bounds (each one
configurable through :func:`sbi_core.server.create_app` and a ``sbi-core serve`` flag); the
``check_*`` helpers raise an HTTP 413 whose message names the limit, the flag that raises it
and what to ask for instead.

Work model (what each bound counts):

- ``max_observations``: ``B``, observations (or sets of iid observations) per request.
- ``max_samples``: ``n``, samples per observation.
- ``max_batch``: network rows per request: ``n * B`` samples; ``N * B`` theta rows of
  ``log_prob`` (times the iid trials, plus the draws that normalize a posterior that leaks
  out of a bounded prior, :func:`normalization_draws` per observation); ``(num_init + steps)
  * B`` for ``map`` (times the iid trials).
- ``max_mcmc_transitions``: for MCMC posteriors, ``steps * max(chains * B * trials, 100)``
  with ``steps = warmup_steps + max(ceil(n / chains), min_draws_per_chain) * thin * rounds``
  (``rounds``: ``max_thin`` when the ESS rule may add rounds) (a step of the chains has a fixed
  overhead, so each step counts at least 100 transitions).
- ``max_map_steps``: gradient steps of one MAP request.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import asdict, dataclass
from typing import Any

from fastapi import HTTPException

from sbi_core.mcmc import MCMCConfig
from sbi_core.posterior import DirectPosterior, Posterior

__all__ = ["Limits", "FLAGS", "check_count", "mcmc_transitions", "normalization_draws",
           "MIN_ROWS_PER_MCMC_STEP"]

#: Each MCMC step counts at least this many transitions (its fixed per-step overhead).
MIN_ROWS_PER_MCMC_STEP = 100

#: The ``sbi-core serve`` flag of each limit.
FLAGS = {
    "max_samples": "--max-samples",
    "max_batch": "--max-batch",
    "max_observations": "--max-observations",
    "max_map_steps": "--max-map-steps",
    "max_mcmc_transitions": "--max-mcmc-transitions",
    "max_concurrency": "--max-concurrency",
    "request_timeout": "--request-timeout",
    "queue_wait": "--queue-wait",
}


@dataclass(frozen=True)
class Limits:
    """Per-request bounds and the server's concurrency settings (see the module docstring).

    Attributes:
        max_samples: most samples per observation (``n``).
        max_batch: most network rows per request (``n * B`` samples, ``N * B`` theta rows,
            ``(num_init + steps) * B`` for MAP; see the module docstring).
        max_observations: most observations ``B`` per request.
        max_map_steps: most gradient steps of one MAP request.
        max_mcmc_transitions: most MCMC chain transitions per request.
        max_concurrency: posterior requests computed at once (worker threads).
        request_timeout: seconds one request may take, waiting for a worker included; a
            request over the budget answers 503.
        queue_wait: seconds a request waits for a free worker before answering 503 (busy).
    """

    max_samples: int = 100_000
    max_batch: int = 100_000
    max_observations: int = 1000
    max_map_steps: int = 1000
    max_mcmc_transitions: int = 200_000
    max_concurrency: int = 4
    request_timeout: float = 30.0
    queue_wait: float = 2.0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, int | float) or \
                    not math.isfinite(value) or value <= 0 or \
                    (name not in ("request_timeout", "queue_wait") and int(value) != value):
                kind = "a positive number of seconds" if name in ("request_timeout", "queue_wait") \
                    else "a positive integer"
                raise ValueError(f"{name} (serve flag {FLAGS[name]}) must be {kind}, "
                                 f"got {value!r}.")
            if name not in ("request_timeout", "queue_wait"):
                object.__setattr__(self, name, int(value))

    def to_dict(self) -> dict[str, Any]:
        """Plain values, as listed by ``GET /api/models``."""
        return asdict(self)


def check_count(limits: Limits, limit: str, what: str, count: int, hint: str = "") -> None:
    """HTTP 413 when ``count`` exceeds ``limits.<limit>`` (named ``what`` in the message;
    ``hint`` says what to ask for instead)."""
    allowed = getattr(limits, limit)
    if count > allowed:
        advice = hint or "Ask for less or split the request"
        raise HTTPException(413, f"{what} is {count:,}; this server allows at most {allowed:,} "
                                 f"per request ({limit}). {advice}, or start the server with a "
                                 f"larger {FLAGS[limit]} (create_app({limit}=...)).")


def mcmc_transitions(config: MCMCConfig, n: int, num_obs: int, trials: int) -> int:
    """Most chain transitions of sampling ``n`` per observation for ``num_obs`` observations
    of ``trials`` iid trials each: ``steps * max(chains * num_obs * trials, 100)``, with
    ``steps = warmup + max(ceil(n / chains), min_draws_per_chain) * thin * rounds`` where
    ``rounds`` is ``max_thin`` when the ESS rule may add sampling rounds (else 1): the worst
    case, so a request's bound holds whatever the chains' ESS turns out to be."""
    per_chain = max(math.ceil(n / config.num_chains), config.min_draws_per_chain)
    rounds = config.max_thin if config.ess_fraction is not None else 1
    steps = config.warmup_steps + per_chain * config.thin * rounds
    return steps * max(config.num_chains * num_obs * trials, MIN_ROWS_PER_MCMC_STEP)


def normalization_draws(posterior: Posterior) -> int:
    """Draws per observation that ``log_prob`` spends estimating the acceptance rate that
    normalizes a posterior leaking out of a bounded prior (0 when it needs none)."""
    if not isinstance(posterior, DirectPosterior):
        return 0
    if not posterior._bounded or posterior._samples_in_support:
        return 0
    return int(inspect.signature(posterior.acceptance_rate).parameters["num"].default)
