"""The posterior work of each endpoint, bounded by :class:`~sbi_core.server.limits.Limits`.

These functions run in the server's worker threads (``workers.py``). Each checks the request
against the limits before computing anything (HTTP 413 naming the limit and its flag), takes
the random-number lock (``rng_lock.py``: exclusive for seeded calls, which reset torch's
global generator, shared for unseeded ones, none for a ``log_prob`` that draws no random
numbers), and works through the observations in batches, checking the request's time budget
between batches (HTTP 503 once it is used up). A seeded request waits for the unseeded ones
in flight, at most until its time budget ends.

Batches hold at most :data:`CHUNK_ROWS` network rows (:data:`CHUNK_MCMC_TRANSITIONS` chain
transitions for MCMC), a fixed size independent of the server's limits, so a seeded request
gives the same answer on every server; a request within one batch also gives exactly what
``posterior.sample_batched(..., seed=seed)`` gives in Python.

MCMC posteriors return their diagnostics (R-hat, ESS per observation and parameter) and a
list of warnings when the chains have not mixed, so that a 200 is never silently wrong.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from fastapi import HTTPException
from torch import Tensor

from sbi_core.budget import SamplingTimeoutError
from sbi_core.mcmc import MCMCConfig, MCMCResult
from sbi_core.mcmc_posterior import MCMCPosterior
from sbi_core.posterior import DirectPosterior, Posterior, SamplingError, seeded
from sbi_core.sequential import far_observation_message
from sbi_core.server.limits import Limits, check_count, mcmc_transitions, normalization_draws
from sbi_core.server.rng_lock import RNGLock
from sbi_core.server.schemas import InputError, to_tensor
from sbi_core.server.workers import Deadline

__all__ = ["Job", "Draws", "is_light", "CHUNK_ROWS", "CHUNK_MCMC_TRANSITIONS", "RHAT_WARN"]

T = TypeVar("T")

#: Network rows per batch (of observations, and of samples or theta rows when one
#: observation has more): sample, summary, log_prob, map.
CHUNK_ROWS = 10_000
#: MCMC chain transitions per batch of observations.
CHUNK_MCMC_TRANSITIONS = 50_000
#: R-hat above which the chains count as not mixed (when the model sets no ``warn_rhat``).
RHAT_WARN = 1.1
#: Warn when the smallest ESS is below this fraction of the samples per observation.
ESS_WARN_FRACTION = 0.1


@dataclass
class Draws:
    """Samples ``(n, B, D)`` of one request with the MCMC diagnostics and warnings."""

    samples: Tensor
    mcmc: dict[str, Any] | None
    warnings: list[str]


@dataclass
class Job:
    """One request's posterior, limits, random-number lock and time budget."""

    post: Posterior
    limits: Limits
    lock: RNGLock
    deadline: Deadline
    max_values: int
    #: warnings about the request's observations (e.g. far from a sequential posterior's
    #: x_o), returned with the samples
    notes: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ inputs
    def observations(self, x: Any, xs: Any) -> tuple[Tensor, bool, int]:
        """Checked observations ``(B, *x_shape)`` (or iid sets ``(B, n, *x_shape)``), whether
        the request gave ``xs``, and the iid trials per observation."""
        post = self.post
        if (x is None) == (xs is None):
            raise HTTPException(422, "Give exactly one of 'x' (one observation of shape "
                                     f"{list(post.x_shape)}) or 'xs' (several, shape "
                                     f"(B, *{list(post.x_shape)})).")
        batched = xs is not None
        if batched:  # count before reading the values
            check_count(self.limits, "max_observations", "the number of observations (B)",
                        len(xs))
        try:
            value = to_tensor(xs if batched else x, "xs" if batched else "x", self.max_values)
        except InputError as err:
            raise HTTPException(422, str(err)) from err
        if batched and value.ndim == 0:
            raise HTTPException(422, "'xs' must be a list of observations.")
        try:
            checked = post._check_x(value, batched=batched)
        except ValueError as err:
            raise HTTPException(422, http_words(str(err))) from err
        trials = checked.shape[1] if post.is_iid_batch(checked, post.x_shape) else 1
        record = (post.problem_spec or {}).get("sequential")
        if record:  # trained for one x_o: say so in the response, not only in the server log
            message = far_observation_message(record, checked)
            if message is not None:
                self.notes.append(message)
        return checked, batched, trials

    def misspecification(self, xs: Tensor, batched: bool) -> dict[str, Any] | None:
        """The detector's p-values and verdict for checked observations ``xs`` (one
        observation: numbers; ``xs`` given: lists of ``B``), or None without a detector
        (docs/trust.md)."""
        det = getattr(self.post, "detector", None)
        if det is None:
            return None
        with torch.no_grad():
            if self.post.is_iid_batch(xs, self.post.x_shape):
                parts = [det.test_iid_set(s) for s in xs]
                res = type(parts[0])(torch.cat([r.density_p for r in parts]),
                                     torch.cat([r.mmd_p for r in parts]), parts[0].alpha,
                                     parts[0].set_size, parts[0].both)
            else:
                res = det.test(xs)
        return res.to_dict() if batched else res.to_dict(0)

    def check_n(self, n: int, what: str = "n (samples per observation)") -> None:
        if n < 1:
            raise HTTPException(422, f"{what} is {n}; ask for at least 1.")
        check_count(self.limits, "max_samples", what, n)

    def mcmc_config(self, options: dict[str, Any] | None) -> MCMCConfig | None:
        """The MCMC settings of this request (the model's, overridden by ``options``), or
        None for a posterior that samples directly."""
        if not isinstance(self.post, MCMCPosterior):
            if options:
                raise HTTPException(422, f"'mcmc' options were given, but this model "
                                         f"({self.post.method}) samples directly, without MCMC; "
                                         "remove 'mcmc' from the request.")
            return None
        merged = {**self.post.mcmc_config.to_dict(), **(options or {}), "progress": False}
        try:
            return MCMCConfig.from_options(merged)
        except (TypeError, ValueError) as err:
            raise HTTPException(422, f"Bad 'mcmc' options: {err}") from err

    # ------------------------------------------------------------------ work
    def locked(self, exclusive: bool, seed: int | None, fn: Callable[[], T]) -> T:
        """``fn()`` holding the random-number lock (within the time budget), seeded by ``seed``;
        posterior errors become 422."""
        try:
            with self.lock.hold(exclusive, timeout=max(self.deadline.remaining(), 0.0)), \
                    seeded(seed):
                return fn()
        except (TimeoutError, SamplingTimeoutError) as err:
            raise self.deadline.exceeded() from err
        except (ValueError, SamplingError) as err:  # ObservationError is a ValueError
            raise HTTPException(422, http_words(str(err))) from err

    def unlocked(self, fn: Callable[[], T]) -> T:
        """``fn()`` without the random-number lock (for work that draws no random numbers);
        posterior errors become 422."""
        try:
            return fn()
        except SamplingTimeoutError as err:
            raise self.deadline.exceeded() from err
        except (ValueError, SamplingError) as err:
            raise HTTPException(422, http_words(str(err))) from err

    def draw(self, xs: Tensor, trials: int, n: int, seed: int | None,
             mcmc_options: dict[str, Any] | None) -> Draws:
        """``n`` samples for each of the ``B`` observations ``xs`` → ``(n, B, D)``."""
        self.check_n(n)
        b = xs.shape[0]
        check_count(self.limits, "max_batch", "n * number of observations", n * b)
        cfg = self.mcmc_config(mcmc_options)
        if cfg is None:  # iid draws: batches of observations, and of samples when n is large
            step = min(n, CHUNK_ROWS)
            size = max(1, CHUNK_ROWS // n)
            options: dict[str, Any] = {}
        else:  # chains: all n samples of an observation come from one run
            check_count(self.limits, "max_mcmc_transitions",
                        "the MCMC work (chain transitions: steps * max(num_chains * observations "
                        "* iid trials, 100), steps = warmup_steps + ceil(n / num_chains) * thin)",
                        mcmc_transitions(cfg, n, b, trials),
                        hint="Ask for fewer samples or observations, or fewer chains or "
                             "warm-up steps ('mcmc' options)")
            step = n
            size = max(1, CHUNK_MCMC_TRANSITIONS // mcmc_transitions(cfg, n, 1, trials))
            options = cfg.to_dict()

        def work() -> tuple[Tensor, list[MCMCResult]]:
            out = torch.empty(n, b, self.post.dim)
            runs: list[MCMCResult] = []
            for i in range(0, b, size):
                for k in range(0, n, step):
                    self.deadline.check()
                    m = min(step, n - k)
                    out[k:k + m, i:i + size] = self.post.sample_batched(
                        (m,), xs[i:i + size], _checked=True,
                        max_seconds=self.deadline.sampler_seconds(), **options)
                    if cfg is not None:
                        run = self.post.last_mcmc_in_this_thread()  # type: ignore[attr-defined]
                        if run is not None:
                            runs.append(run)
            return out, runs

        samples, runs = self.locked(seed is not None, seed, work)
        if cfg is None:
            return Draws(samples, None, list(self.notes))
        mcmc, warns = mcmc_report(runs, cfg, n)
        return Draws(samples, mcmc, self.notes + warns)

    def log_prob(self, theta: Tensor, xs: Tensor, trials: int) -> Tensor:
        """Log density ``(N, B)`` of ``theta`` ``(N, B, D)``, in batches of observations (and of
        theta rows, for posteriors that need no normalization draws)."""
        n, b = theta.shape[:2]
        extra = normalization_draws(self.post)
        hint = (f"This posterior's log_prob also draws {extra:,} samples per observation to "
                "normalize for its mass outside the prior; send fewer observations") if extra \
            else ""
        check_count(self.limits, "max_batch", "the log_prob work (theta rows * observations"
                    + (" * iid trials" if trials > 1 else "")
                    + (" + normalization draws" if extra else "") + ")",
                    (n * trials + extra) * b, hint=hint)
        step = n if extra else max(1, min(n, CHUNK_ROWS // trials))  # each call normalizes anew
        size = max(1, CHUNK_ROWS // (step * trials + extra))

        def work() -> Tensor:
            out = torch.empty(n, b)
            for i in range(0, b, size):
                for k in range(0, n, step):
                    self.deadline.check()
                    out[k:k + step, i:i + size] = self.post.log_prob_batched(
                        theta[k:k + step, i:i + size], xs[i:i + size], _checked=True)
            return out

        if extra or not isinstance(self.post, MCMCPosterior | DirectPosterior):
            return self.locked(True, None, work)  # the estimate may reseed torch's generator
        return self.unlocked(work)  # no random numbers: runs beside seeded requests

    def map(self, xs: Tensor, trials: int, num_init: int, steps: int,
            seed: int | None) -> Tensor:
        """MAP estimates ``(B, D)``, in batches of observations."""
        b = xs.shape[0]
        check_count(self.limits, "max_map_steps", "steps (MAP gradient steps)", steps)
        per_obs = (num_init + steps) * trials
        check_count(self.limits, "max_batch", "the MAP work ((num_init + steps) * observations"
                    + (" * iid trials" if trials > 1 else "") + ")", per_obs * b)
        size = max(1, CHUNK_ROWS // per_obs)

        def work() -> Tensor:
            parts = []
            for i in range(0, b, size):
                self.deadline.check()
                parts.append(self.post.map_batched(xs[i:i + size], num_init=num_init,
                                                   steps=steps, seed=seed,
                                                   max_seconds=self.deadline.sampler_seconds()))
            return torch.cat(parts, dim=0)

        return self.locked(seed is not None, None, work)


def _depth(value: Any) -> int:
    depth = 0
    while isinstance(value, list) and value:
        depth, value = depth + 1, value[0]
    return depth


def is_light(post: Posterior, kind: str, req: Any, n: int | None = None) -> bool:
    """Whether a request is small enough (at most one batch of work) for the light lane of
    workers, judged from the sizes of its JSON lists without reading their values.

    Args:
        post: the requested posterior.
        kind: ``"sample"`` / ``"summary"`` (give ``n``), ``"log_prob"`` or ``"map"``.
        req: the request body (with ``x`` / ``xs`` and the endpoint's fields).
        n: samples per observation of a sample or summary request.
    """
    k = len(post.x_shape)
    iid = post.supports_iid
    if req.xs is not None:
        b = len(req.xs) if isinstance(req.xs, list) else 1
        trials = len(req.xs[0]) if iid and b and _depth(req.xs) == k + 2 else 1
    else:
        b = 1
        trials = len(req.x) if iid and isinstance(req.x, list) and _depth(req.x) == k + 1 else 1
    b, trials = max(b, 1), max(trials, 1)
    if kind in ("sample", "summary"):
        n = max(int(n or 1), 1)
        if isinstance(post, MCMCPosterior):
            options = req.mcmc.options() if getattr(req, "mcmc", None) else {}
            try:
                cfg = MCMCConfig.from_options({**post.mcmc_config.to_dict(), **options})
            except (TypeError, ValueError):
                return True  # answered with a 422 right away
            return mcmc_transitions(cfg, n, b, trials) <= CHUNK_MCMC_TRANSITIONS
        return n * b <= CHUNK_ROWS
    if kind == "log_prob":
        rows = len(req.theta) if isinstance(req.theta, list) else 1
        extra = normalization_draws(post)
        return rows * (b if req.xs is not None else 1) * trials + extra * b <= CHUNK_ROWS + extra
    if kind == "map":
        return (int(req.num_init or 1000) + int(req.steps)) * b * trials <= CHUNK_ROWS
    raise ValueError(f"unknown request kind {kind!r}")


def mcmc_report(runs: list[MCMCResult], cfg: MCMCConfig, n: int) -> tuple[dict[str, Any],
                                                                          list[str]]:
    """Diagnostics of the MCMC runs of one request (one run per batch of observations) and
    the warnings a user must see: chains not mixed, too few draws to tell, low ESS, HMC
    divergences."""
    rhat = torch.cat([r.rhat for r in runs]) if runs else torch.full((0,), math.nan)
    ess = torch.cat([r.ess for r in runs]) if runs else torch.full((0,), math.nan)
    finite_r, finite_e = rhat[torch.isfinite(rhat)], ess[torch.isfinite(ess)]
    max_rhat = float(finite_r.max()) if finite_r.numel() else None
    min_ess = float(finite_e.min()) if finite_e.numel() else None
    divergent = sum(r.num_divergent for r in runs)
    evaluations = sum(r.num_evaluations for r in runs)
    report = {
        "method": cfg.method, "num_chains": cfg.num_chains, "warmup_steps": cfg.warmup_steps,
        "thin": cfg.thin, "max_rhat": max_rhat, "min_ess": min_ess, "rhat": rhat, "ess": ess,
        "acceptance_rate": (sum(r.acceptance_rate * r.num_evaluations for r in runs)
                            / evaluations) if evaluations else None,
        "num_divergent": divergent, "seconds": sum(r.seconds for r in runs),
    }
    threshold = cfg.warn_rhat if cfg.warn_rhat is not None else RHAT_WARN
    warns: list[str] = []
    per_chain = math.ceil(n / cfg.num_chains) if cfg.num_chains else 0
    if max_rhat is None:
        warns.append(f"The chains could not be checked: each of the {cfg.num_chains} chains "
                     f"kept {per_chain} draw(s), and R-hat and ESS need at least 4. Ask for at "
                     f"least n = {4 * cfg.num_chains} samples (4 * num_chains), or fewer chains "
                     "('mcmc': {'num_chains': ...}), before trusting these samples.")
    elif max_rhat > threshold:
        warns.append(f"The MCMC chains have not mixed: max R-hat {max_rhat:.3g} > {threshold:g}. "
                     "The samples may miss or misweight parts of the posterior. Ask again with "
                     "more warm-up steps or chains ('mcmc': {'warmup_steps': ..., "
                     "'num_chains': ...}), or check the model for separated modes.")
    if min_ess is not None and min_ess < ESS_WARN_FRACTION * n:
        warns.append(f"Low effective sample size: the {n} samples per observation are worth "
                     f"only about {min_ess:.0f} independent draws (min ESS). Ask for more "
                     "samples, more chains or thinning ('mcmc': {'thin': ...}).")
    if divergent:
        warns.append(f"{divergent} HMC transitions diverged after warm-up; the samples may be "
                     "biased. Use 'mcmc': {'method': 'slice'} or a model trained longer.")
    return report, warns


def http_words(message: str) -> str:
    """A posterior's error message with its Python fix in the words of this API.

    "use sample_batched with shape (B, *x_shape)" means, in a request, the field ``xs``.
    """
    return re.sub(r"For several observations at once use sample_batched with shape "
                  r"\(B, \*(\(.*?\))\)\.",
                  r"For several observations at once send them as 'xs' (a list of B "
                  r"observations of shape \1) instead of 'x'.", message)
