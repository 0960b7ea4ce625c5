"""Sequential inference: several rounds of simulate → fit, focused on one observation ``x_o``.

Methods (``run_sequential(..., method=...)``):

- ``"tsnpe"`` (truncated sequential NPE, Deistler et al. 2022): round ``r`` trains NPE (the
  previous round's estimator, continued) on *all* simulations so far with the plain NPE loss; the next round's proposal is the
  prior truncated to the posterior's highest-probability region (HPR)
  ``{θ : log q(θ | x_o) > τ}``, ``τ`` the ``epsilon``-quantile (default 1e-4) of
  ``log q`` on the posterior's own samples. The truncated prior is sampled by rejection
  from the prior, or, when the region keeps less than ``min_prior_acceptance`` of the prior
  mass, from a box around the HPR (uniform candidates accepted with probability
  ``∝ prior density``, then the HPR test). The result stays an ordinary amortized NPE
  inside the region, valid as long as no round cut off true posterior mass.
- ``"snpe_c"`` (APT, Greenberg et al. 2019): proposals from the current posterior; later
  rounds retrain on all rounds' simulations with the atomic loss
  (``estimators.apt.train_apt``), or, with ``flow="mdn"``, with the exact non-atomic loss
  (``estimators.apt_mdn.apt_mdn_round_loss``; the strong choice at small budgets).
- ``"snle"`` / ``"snre"``: proposals from the current MCMC posterior; the likelihood (ratio)
  estimator is refit on all rounds' simulations (their losses stay valid under any
  proposal).

Resumability: with ``store="run.zarr"`` every round's simulations go into the zarr store
chunk by chunk as they are made (:func:`sbi_core.simulation.simulate` with given θ), and a
small state in ``run.zarr/_sequential/`` (JSON written atomically, each finished round's
posterior as a model file, each round's proposal θ as ``.npy``) records where the run is.
``resume=True`` skips the finished rounds, simulates only uncommitted chunks, and gives the
same posterior as an uninterrupted run: proposals are drawn from seeds derived from
``(seed, round)`` and training is seeded.

The final posterior records ``problem_spec["sequential"]`` (method, ``x_o``, the training x's
scale, the truncation) so that ``sample`` warns when asked about an x far from ``x_o``
(:func:`check_observation`).
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
import types
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sbi_core.atomic import atomic_write
from sbi_core.display import shown
from sbi_core.posterior import Posterior, seeded
from sbi_core.priors import prior_log_prob, support_bounds
from sbi_core.problem import Problem
from sbi_core.progress import show_progress
from sbi_core.training import _TensorBatches

__all__ = ["run_sequential", "round_step_budget", "final_step_budget", "SequentialResult",
           "RoundRecord", "TruncationRegion", "sample_truncated_prior", "check_observation",
           "far_observation_message", "SEQUENTIAL_METHODS"]

#: sequential method -> the registered method whose estimator it trains.
SEQUENTIAL_METHODS = {"tsnpe": "npe", "snpe_c": "npe", "snle": "nle", "snre": "nre"}
#: default x tolerance of :func:`check_observation` in training-x standard deviations.
X_TOLERANCE = 4.0
_STATE = "_sequential"
#: early-stopping patience (epochs) of the continued rounds of tsnpe / snle / snre
#: (``round_patience``); round 1 keeps the method's (the accurate NPE preset: 40). A continued
#: round starts from the previous round's weights (benchmarks/RESULTS.md, issue 17 curves).
ROUND_PATIENCE = 20
#: continued rounds before the last draw ``max(MIN_EPOCH_ROWS, round_epoch_size *
#: sims_per_round)`` of all rounds' training rows per epoch (``round_epoch_size``); the last
#: round takes full passes. Below this many rows an epoch is a full pass (small budgets).
MIN_EPOCH_ROWS = 2000
#: MCMC settings for SNLE / SNRE proposals (``proposal_mcmc``): any proposal keeps their losses
#: valid, so the proposal draws skip the ESS-driven extra thinning and use a shorter warm-up
#: than the final posterior's sampling.
PROPOSAL_MCMC: dict[str, Any] = {"warmup_steps": 50, "ess_fraction": None}
#: TSNPE trains every round without the amortized preset's stall rule
#: (``overfit_rise`` off, and a stall runs a compressed final decay, ``stall_decay`` 0.1, as
#: before that rule): in rounds on a few thousand simulations the rule ended training early.
#: The consolidated grid (benchmarks/RESULTS.md, "Issue 17: the consolidated grid") found
#: TSNPE's cells 0.01-0.06 C2ST worse after the rule was merged (two_moons 5 x 400, seed 0:
#: 0.628, 0.568 without it); measured in "Issue 17: TSNPE rounds without the stall rule".
#: Options given by the user win. Not for SNPE-C: its atomic rounds ran 2.6x longer with it
#: (two_moons 1,000, observation 1: 27 vs 11 CPU s, C2ST 0.598 vs 0.671; one run).
ROUND_STALL: dict[str, Any] = {"overfit_rise": None, "stall_decay": 0.1}
#: TSNPE, ``round_steps="auto"``: each round before the last (round 1 included) trains at most
#: ``max(ROUND_STEPS, ROUND_STEPS_PER_SIM * sims_per_round)`` optimizer steps. Those rounds
#: only have to give a truncation region that contains the posterior: a roughly trained,
#: somewhat too broad posterior is safe (it spends more of the next round's simulations
#: outside the posterior), and the last round trains on all simulations to convergence. A
#: flat 300 steps cost accuracy at 5 x 2,000 (broader regions: 12-17% instead of 4-5% of the
#: prior kept after round 1); 1,000 steps there cost less (benchmarks/RESULTS.md, "Issue 17: TSNPE
#: rounds on a step budget").
ROUND_STEPS = 300
ROUND_STEPS_PER_SIM = 0.5
#: TSNPE, ``final_steps="auto"``: from ``FINAL_MIN_SIMULATIONS`` total simulations on, the
#: last round (warm-started from the previous round's network) anneals its cosine
#: learning-rate schedule over ``max(FINAL_MIN_STEPS, FINAL_STEPS_PER_SIM * total
#: simulations)`` optimizer steps (1,000 at 2,000, 1,250 at 5,000, 2,500 at 10,000) and runs
#: it to its end, instead of the amortized preset's full schedule (300 epochs at 10,000
#: simulations: ~9,300 steps on two_moons, 70% of the run's time). Applies only when the
#: round's schedule is cosine (the fmaf ``accurate`` preset). Paired on two_moons (seed 0,
#: observations 1-3) at 10,000: 0.2 / 0.25 / 0.3 steps per simulation gave C2ST 0.545 /
#: 0.542 / 0.540, the full schedule 0.549. At 2,000 the last round's length buys accuracy:
#: 500 steps cost gaussian_mixture 0.09 C2ST, 1,000 steps 0.016 (0.593 -> 0.609, CPU -35%;
#: two_moons 0.573 -> 0.578); at 1,000 (3 steps per epoch) the preset's early stopping stays.
#: A step cap that keeps the stall rule shortens the final decay to 10% of the cap and cost
#: gaussian_mixture 10,000 0.03 (benchmarks/RESULTS.md, "Issue 17: the last TSNPE round on a
#: step budget").
FINAL_STEPS_PER_SIM = 0.25
#: TSNPE, ``region_temperature="auto"``: a round's truncation region is the HPR of its
#: posterior tempered by ``T = max(1, sqrt(REGION_SIMULATIONS / n))``, ``n`` the simulations
#: it was trained on (:func:`region_temperature_for`). A posterior built on a few hundred
#: simulations is often too narrow or misplaced, and its plain 1e-4 HPR then cuts the true
#: posterior (sir at 5 x 200: rounds kept as little as 11% of the reference posterior's
#: draws); later rounds cannot recover mass no round simulates (benchmarks/RESULTS.md, "Issue
#: 17: a conservative truncation region at small budgets").
REGION_SIMULATIONS = 1000
FINAL_MIN_STEPS = 1000
FINAL_MIN_SIMULATIONS = 2000
#: settings recorded in a store's state that only change the last round: a store written
#: before one of them existed resumes with the new default (its finished rounds are the same).
_LAST_ROUND_SETTINGS = ("final_steps", "final_epoch_size")
#: settings of the proposals not yet drawn: a store written before they existed resumes with
#: the new default for its remaining rounds (its finished rounds and drawn proposals stay).
_REGION_SETTINGS = ("region_temperature", "region_union")
#: ``final_epoch_size="auto"``: rows per epoch of the last round (as a multiple of
#: ``sims_per_round``) per method other than SNLE; a method not listed takes full passes.
FINAL_EPOCH_SIZE: dict[str, float] = {}
#: SNLE's ``final_epoch_size="auto"`` per likelihood flow; flows not listed (the default fused
#: MAF) take full passes. The nflows MAF: on slcp 5 x 2,000 (seed 0, observation 1;
#: benchmarks/RESULTS.md, "Issue 17: SNLE's wall time on slcp at 10,000") full passes C2ST
#: 0.669, 37.0 CPU s; 2.0 (4,000 rows): 0.680, 27.6 s; 1.0: 0.702 (observation 2: 0.681 full,
#: 0.730 at 1.0). The fused MAF: on slcp 5 x 1,000 (seeds 0-4 x observations 1-3, paired) full
#: passes gave C2ST ~0.025 lower than 2.0 at ~15% more CPU (benchmarks/RESULTS.md, "Issue 17:
#: SNLE's default flow, the fused MAF with a full last round").
SNLE_FINAL_EPOCH_SIZE: dict[str, float] = {"maf": 2.0}
#: SNLE's proposal MCMC (``proposal_mcmc=None``): the warm-up of :data:`PROPOSAL_MCMC` halved
#: (with ``SNLE_FINAL_EPOCH_SIZE`` and the nflows MAF: C2ST 0.671, 24.2 CPU s on the slcp run above).
SNLE_PROPOSAL_MCMC: dict[str, Any] = {"warmup_steps": 25, "ess_fraction": None}

#: MCMC defaults of SNLE's posteriors (every round's proposals and the final posterior, saved
#: with it; ``mcmc=`` overrides them): chains start by SIR from one pool of 1,000 prior draws
#: per chain. One shared pool of 1,000 (the MCMC default) has an effective sample size of
#: about 1 on a sharp posterior, so all chains started in one or two of slcp's four modes;
#: the proposals then trained the likelihood on those modes only (benchmarks/RESULTS.md,
#: "Issue 17: slcp at 10,000 over observations and seeds").
SNLE_MCMC: dict[str, Any] = {"init_strategy": "sir_chains", "init_num_candidates": 100_000}
#: SNLE's likelihood flow when ``flow=`` is not given, recorded in a store's settings as
#: ``nle_flow`` (stores without it were written with ``"maf"``, the default until wave 9; they
#: resume with ``flow="maf"``, and the settings check says so). The fused MAF
#: (``estimators.fast_maf``) is the nflows MAF's architecture (MADE with tanh units, softplus
#: scales, a tanh context layer per transform, the same initialization family) with fixed
#: variable orders instead of random permutation layers, at ~55% of its CPU per run. With a
#: full last round (:data:`SNLE_FINAL_EPOCH_SIZE`), paired against the nflows MAF with epochs
#: of 2 x sims_per_round rows (the earlier default) on slcp 5 x 1,000, seeds 0-4 x observations
#: 1-3, its C2ST was lower on average at ~1.5x less CPU; on two_moons see benchmarks/RESULTS.md,
#: "Issue 17: SNLE's default flow, the fused MAF with a full last round".
SNLE_FLOW = "fmaf"
_APT_FIXED_SPLIT = True  # False: the pre-fix random split per round (benchmarks only)


# ---------------------------------------------------------------------------- truncation
@dataclass
class TruncationRegion:
    """The HPR ``{θ : log_prob(θ) > threshold}`` of one round's posterior at ``x_o``.

    ``log_prob``: ``(N, D) -> (N,)``, the posterior's (unnormalized is fine) log density.
    """

    log_prob: Callable[[Tensor], Tensor]
    threshold: float
    #: further regions whose union with this one is the region (``region_union``)
    union: list[TruncationRegion] = field(default_factory=list)

    @classmethod
    def from_samples(cls, log_prob: Callable[[Tensor], Tensor], samples: Tensor,
                     epsilon: float = 1e-4, temperature: float = 1.0) -> TruncationRegion:
        """Threshold at the ``epsilon``-quantile ``τ`` of ``log_prob`` on the posterior's own
        ``samples`` ``(N, D)``: the region keeps a fraction ``1 - epsilon`` of its mass.

        ``temperature`` ``T >= 1`` widens it to the ``epsilon``-HPR of the tempered posterior
        ``q^(1/T)`` for a Gaussian ``q``: threshold ``m - T (m - τ)``, ``m`` the largest
        ``log_prob`` of the samples (a Gaussian's HPR at level ``c`` below its mode is the
        ellipsoid of squared radius ``2c``; tempering multiplies the covariance by ``T``).
        ``T = 1`` is the plain HPR."""
        if not 0.0 <= epsilon < 1.0:
            raise ValueError(f"epsilon must be in [0, 1), got {epsilon}; the default 1e-4 keeps "
                             "99.99% of the posterior mass.")
        if not (math.isfinite(temperature) and temperature >= 1.0):
            raise ValueError(f"temperature must be a finite number >= 1 (1: the plain HPR), got "
                             f"{temperature}.")
        lp = _batched(log_prob, samples)
        lp = lp[torch.isfinite(lp)]
        if lp.numel() == 0:
            raise ValueError("The posterior's log density is not finite at any of its own "
                             "samples; the round's estimator is broken (train longer).")
        k = int(math.floor(epsilon * lp.numel()))
        tau = float(torch.sort(lp).values[k])
        if temperature > 1.0:
            top = float(lp.max())
            tau = top - temperature * (top - tau)
        return cls(log_prob, tau)

    def contains(self, theta: Tensor) -> Tensor:
        """``(N,)`` bool: θ ``(N, D)`` inside the region (or any region of ``union``)."""
        inside = _batched(self.log_prob, theta) >= self.threshold
        for other in self.union:
            inside = inside | other.contains(theta)
        return inside


def _batched(fn: Callable[[Tensor], Tensor], theta: Tensor, size: int = 50_000) -> Tensor:
    return torch.cat([fn(theta[i:i + size]) for i in range(0, len(theta), size)]) \
        if len(theta) else torch.empty(0)


@dataclass
class TruncationSample:
    theta: Tensor              # (n, D)
    prior_mass: float          # estimated fraction of the base (prior) mass kept
    sampler: str               # "prior" (rejection), "box" or "restricted"
    acceptance: float          # acceptance of the sampler used
    box: tuple[list[float], list[float]] | None = None


def sample_truncated_prior(prior: Any, region: TruncationRegion, n: int, hpr_samples: Tensor,
                           min_prior_acceptance: float = 0.01, probe: int = 20_000,
                           max_candidates: int = 20_000_000,
                           base_sample: Callable[[int], Tensor] | None = None
                           ) -> TruncationSample:
    """``n`` draws from ``prior`` restricted to ``region`` (seed torch before calling).

    First ``probe`` prior draws estimate the kept prior mass. If it is at least
    ``min_prior_acceptance``, rejection from the prior (exact). Else candidates are drawn
    uniformly in a box around ``hpr_samples`` ``(M, D)`` (their range widened by 25% per side,
    clipped to the support) and accepted with probability ``p(θ) / (2 max p)`` over a probe of
    the box, then by the HPR test: exact as long as the box holds the region and the prior
    density on the box stays below twice the probe's maximum (true for smooth priors).
    ``base_sample(m)`` replaces prior draws (e.g. a restricted prior); then only rejection.
    """
    draw = base_sample or (lambda m: prior.sample((m,)).float())
    cand = draw(probe)
    inside = region.contains(cand)
    mass = float(inside.float().mean())
    if base_sample is not None or mass >= min_prior_acceptance:
        kind = "restricted" if base_sample is not None else "prior"
        theta, acc = _rejection(n, draw, region.contains, max_candidates, first=cand[inside],
                                first_count=probe, what=kind)
        return TruncationSample(theta, max(mass, acc), kind, acc)
    low, high = support_bounds(prior)
    s = hpr_samples[region.contains(hpr_samples)]
    if len(s) == 0:
        s = hpr_samples
    lo, hi = s.min(0).values, s.max(0).values
    width = (hi - lo).clamp(min=1e-6)
    lo = torch.maximum(lo - 0.25 * width, low.to(lo))
    hi = torch.minimum(hi + 0.25 * width, high.to(hi))
    volume = float(torch.prod(hi - lo, dtype=torch.float64))

    def uniform(m: int) -> Tensor:
        return lo + (hi - lo) * torch.rand(m, len(lo))

    u = uniform(probe)
    lp_u = prior_log_prob(prior, u)
    log_env = float(lp_u.max()) + math.log(2.0)
    in_u = region.contains(u)
    box_mass = volume * float((lp_u.exp() * in_u).mean())

    def accept(theta: Tensor) -> Tensor:
        lp = prior_log_prob(prior, theta)
        if bool((lp > log_env).any()):
            raise ValueError("The prior density inside the truncation box exceeds the sampler's "
                             "envelope; pass min_prior_acceptance=0 to sample the truncated "
                             "prior by plain rejection from the prior.")
        keep = torch.rand(len(theta)).log() < lp - log_env
        return keep & region.contains(theta)

    theta, acc = _rejection(n, uniform, accept, max_candidates, what="box")
    return TruncationSample(theta, min(1.0, box_mass) if box_mass > 0 else mass, "box", acc,
                            (lo.tolist(), hi.tolist()))


def _rejection(n: int, draw: Callable[[int], Tensor], keep: Callable[[Tensor], Tensor],
               max_candidates: int, first: Tensor | None = None, first_count: int = 0,
               what: str = "prior") -> tuple[Tensor, float]:
    parts = [first] if first is not None and len(first) else []
    got = sum(len(p) for p in parts)
    tried, accepted = first_count, got
    while got < n:
        rate = max(accepted / tried, 1e-4) if tried else 0.1
        m = int(min(500_000, max(1000, 1.2 * (n - got) / rate)))
        if tried + m > max_candidates:
            raise ValueError(
                f"Sampling the truncated prior ({what}) accepted only {accepted:,} of "
                f"{tried:,} candidates; the truncation region holds almost no prior mass. "
                "Increase epsilon, check that x_o resembles the simulations, or use "
                "method='snpe_c'.")
        cand = draw(m)
        ok = keep(cand)
        tried, accepted = tried + m, accepted + int(ok.sum())
        parts.append(cand[ok])
        got += int(ok.sum())
    return torch.cat(parts)[:n], accepted / max(tried, 1)


# ---------------------------------------------------------------------------- observation check
def far_observation_message(record: dict[str, Any], x: Tensor,
                            tolerance: float | None = None) -> str | None:
    """The warning for ``x`` (``(B, *x_shape)`` or iid sets) lying far from the observation a
    sequential posterior was trained for (``record = problem_spec["sequential"]``): more than
    ``tolerance`` (default ``record["x_tolerance"]`` or 4) training-x standard deviations in
    any dimension; None when every row is near ``x_o``."""
    x_o = torch.as_tensor(record.get("x_o") or [], dtype=torch.float32).reshape(-1)
    scale = torch.as_tensor(record.get("x_scale") or [], dtype=torch.float32).reshape(-1)
    if x_o.numel() == 0 or scale.numel() != x_o.numel() or x.numel() % x_o.numel():
        return None
    tol = float(tolerance if tolerance is not None else record.get("x_tolerance", X_TOLERANCE))
    rows = x.reshape(-1, x_o.numel()).float().cpu()
    z = ((rows - x_o) / scale.clamp(min=1e-12)).abs().amax(-1)
    if not bool((z > tol).any()):
        return None
    far = (z > tol).nonzero().flatten().tolist()
    where = "the truncation region of x_o" if record.get("method") == "tsnpe" else "x_o"
    return (f"This posterior was trained by sequential {record.get('method')} for one "
            f"observation x_o and is valid only near it ({where}); {len(far)} observation "
            f"row(s) (first: {far[0]}) lie up to {float(z.max()):.1f} training-x standard "
            f"deviations from x_o (tolerance {tol:g}). Its samples there are not the "
            "posterior: train an amortized posterior (`sbi-core train`) or rerun "
            "`sbi-core run` for this x.")


def check_observation(record: dict[str, Any], x: Tensor, tolerance: float | None = None) -> None:
    """Warn (:class:`UserWarning`) with :func:`far_observation_message` when ``x`` lies far
    from the observation a sequential posterior was trained for."""
    message = far_observation_message(record, x, tolerance)
    if message is not None:
        warnings.warn(message, UserWarning, stacklevel=5)


# ---------------------------------------------------------------------------- records
@dataclass
class RoundRecord:
    """What one round did (plain values; ``SequentialResult.history`` is a list of these)."""

    round: int
    num_simulations: int          # this round
    total_simulations: int        # all rounds so far
    num_invalid: int              # this round
    proposal: str                 # "prior", "truncated prior (prior|box|restricted)", "posterior"
    acceptance: float | None      # acceptance of the proposal sampler
    prior_mass: float | None      # fraction of prior mass in this round's proposal region
    validation_loss: float | None
    epochs: int | None
    simulate_seconds: float
    train_seconds: float
    seconds: float
    truncation_threshold: float | None = None
    box: list | None = None
    reference_inside: float | None = None  # fraction of reference samples in the region
    region_temperature: float | None = None  # TSNPE: the region's temperature (1: plain HPR)
    region_union: bool | None = None  # TSNPE: united with the previous round's region

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SequentialResult:
    """``posterior`` (the last round's) and ``history`` (one :class:`RoundRecord` per round).

    Unpacks as ``posterior, history = run_sequential(...)``.
    """

    posterior: Posterior
    history: list[RoundRecord] = field(default_factory=list)

    def __iter__(self) -> Iterator[Any]:
        yield self.posterior
        yield self.history

    def table(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self.history]


def _round_seed(seed: int, r: int, purpose: int) -> int:
    """A seed derived from ``(seed, round, purpose)`` (0: proposal, 1: training, 2: sims)."""
    return int(np.random.SeedSequence([int(seed) % 2**32, r, purpose]).generate_state(1)[0])


def _default_chunk(n: int) -> int:
    return max(d for d in range(1, min(n, 1000) + 1) if n % d == 0)


# ---------------------------------------------------------------------------- state on disk
class _RunState:
    """``STORE/_sequential/``: ``state.json``, ``round-RR.pt``, ``theta-RR.npy``."""

    def __init__(self, store: Path | None, settings: dict[str, Any]):
        self.store = store
        self.dir = None if store is None else store / _STATE
        self.settings = settings
        self.rounds: list[dict[str, Any]] = []
        self.pending: dict[str, Any] = {}  # the proposal drawn for the round in progress

    def load(self, resume: bool) -> None:
        if self.store is None:
            if resume:
                raise ValueError("resume=True needs the store of the interrupted run "
                                 "(store='run.zarr'; CLI: --store run.zarr --resume).")
            return
        exists = (self.store / "zarr.json").exists() or (self.dir and self.dir.exists())
        if exists and not resume:
            raise ValueError(f"{self.store} already exists. Pass resume=True (CLI: --resume) to "
                             "continue that run, or choose a new store path.")
        state_file = self.dir / "state.json"
        if not state_file.exists():
            return
        state = json.loads(state_file.read_text())
        saved = state.get("settings", {})
        if isinstance(saved.get("fit_options"), dict):  # stores that recorded callbacks
            saved = {**saved, "fit_options": {k: v for k, v in saved["fit_options"].items()
                                              if k not in _UNRECORDED_OPTIONS}}
        if saved.get("method") == "snle":  # stores from before SNLE_FLOW used the nflows MAF
            saved.setdefault("nle_flow", "maf")
        if saved.get("method") == "tsnpe":  # stores from before ROUND_STALL
            saved.setdefault("round_stall", None)
        if saved.get("method") == "snle":  # the flow is compared as nle_flow (given or the
            # default of its time), so a store of the earlier default resumes with flow="maf"
            saved = {**saved, "fit_options": _without_flow(saved.get("fit_options"))}
        mine = self.settings if self.settings.get("method") != "snle" else \
            {**self.settings, "fit_options": _without_flow(self.settings.get("fit_options"))}
        diff = {k: (saved.get(k), v) for k, v in mine.items()
                if k != "rounds" and saved.get(k) != v
                and not (k in _LAST_ROUND_SETTINGS + _REGION_SETTINGS and k not in saved)}
        if diff:
            detail = "; ".join(f"{k}: store has {a!r}, this run has {b!r}"
                               for k, (a, b) in diff.items())
            if "nle_flow" in diff:  # SNLE_FLOW changed to "fmaf" in wave 9: name the option
                detail += f" (SNLE's flow: pass flow={diff['nle_flow'][0]!r} to resume)"
            raise ValueError(f"Cannot resume {self.store}: {detail}. Resume with the original "
                             "settings (more rounds are fine) or use a new store.")
        self.rounds = list(state.get("rounds", []))
        self.pending = dict(state.get("pending") or {})

    def save(self) -> None:
        if self.dir is None:
            return
        self.dir.mkdir(exist_ok=True)
        with atomic_write(self.dir / "state.json") as tmp:
            tmp.write_text(json.dumps({"settings": self.settings, "rounds": self.rounds,
                                       "pending": self.pending},
                                      indent=1))

    def path(self, kind: str, r: int) -> Path | None:
        if self.dir is None:
            return None
        return self.dir / (f"round-{r:02d}.pt" if kind == "model" else f"theta-{r:02d}.npy")

    def save_theta(self, r: int, theta: Tensor) -> None:
        p = self.path("theta", r)
        if p is None or not self.store.exists():
            return
        self.dir.mkdir(exist_ok=True)
        with atomic_write(p) as tmp, open(tmp, "wb") as fh:
            np.save(fh, theta.numpy())
        self.save()  # records the pending proposal's description with it

    def load_theta(self, r: int) -> Tensor | None:
        p = self.path("theta", r)
        if p is None or not p.exists():
            return None
        return torch.from_numpy(np.load(p, allow_pickle=False))


# ---------------------------------------------------------------------------- the driver
def run_sequential(problem: Problem, x_o: Tensor, method: str = "tsnpe", rounds: int = 5,
                   sims_per_round: int = 1000, seed: int = 0,
                   store: str | os.PathLike | None = None, resume: bool = False, *,
                   epsilon: float = 1e-4, num_threshold_samples: int = 20_000,
                   min_prior_acceptance: float = 0.01, restrict: bool = False,
                   num_atoms: int = 10, apt_loss: str = "auto", warm_start: bool = True,
                   warm_lr_factor: float = 1.0, round_epoch_size: float | None = 1.0,
                   round_patience: int | None = ROUND_PATIENCE,
                   round_steps: int | str | None = "auto",
                   final_steps: int | str | None = "auto",
                   region_temperature: float | str | None = "auto",
                   region_union: bool | str = False,
                   final_epoch_size: float | str | None = "auto",
                   proposal_mcmc: dict[str, Any] | None = None, workers: int = 1,
                   chunk_size: int | None = None,
                   timeout: float | None = None, progress: bool | None = None,
                   on_round: Callable[[RoundRecord], None] | None = None,
                   reference_samples: Tensor | None = None,
                   **fit_options: Any) -> SequentialResult:
    """Run ``rounds`` rounds of ``sims_per_round`` simulations focused on ``x_o``.

    Args:
        problem: the :class:`Problem` (prior + simulator).
        x_o: the observation ``x_shape``.
        method: ``"tsnpe"`` (default), ``"snpe_c"``, ``"snle"`` or ``"snre"`` (module docstring;
            docs/sequential.md has a guide).
        rounds, sims_per_round: the budget is ``rounds * sims_per_round`` simulations.
        seed: fixes everything (proposals, simulations, training).
        store: zarr store path; each round's simulations are committed chunk by chunk.
        resume: continue the run in ``store`` where it stopped (same result).
        epsilon: TSNPE: posterior mass outside the truncation region (quantile of the
            posterior's log density on its ``num_threshold_samples`` own samples).
        min_prior_acceptance: TSNPE: below this kept prior fraction, sample in a box around
            the region instead of by rejection from the prior.
        restrict: also learn where the simulator fails (``estimators.restriction``) and
            propose only where it is predicted to succeed (tsnpe, snpe_c).
        num_atoms: SNPE-C's atomic loss.
        apt_loss: SNPE-C's loss in rounds after the first. ``"mdn"``: the exact non-atomic
            loss on all rounds' rows (``estimators.apt_mdn.apt_mdn_round_loss``: plain NPE
            loss on prior rows, the proposal posterior's density on later rows; needs
            ``flow="mdn"`` and a Gaussian or box prior); ``"atomic"``: the atomic loss on all
            rows with atoms from the pooled minibatch (as sbi); ``"atomic_proposal"``: the
            plain NPE loss on round-1 rows and atoms from the row's own round otherwise
            (``estimators.apt.apt_round_loss``); ``"auto"`` (default): ``"mdn"`` where it
            applies, else ``"atomic"``. At small budgets ``flow="mdn"`` is the strong choice
            (docs/sequential.md, "SNPE-C at small budgets").
        warm_start: rounds after the first continue training the previous round's estimator
            on all simulations (default, as sbi does; its z-scoring stays that of round 1);
            ``False`` trains a fresh estimator each round (SNPE-C with
            ``apt_loss="atomic"`` always continues: atomic-only training from scratch leaks).
        warm_lr_factor: continued rounds train with ``warm_lr_factor`` times the learning
            rate (default 1: unchanged). A fresh Adam optimizer's first steps move every weight by
            about the learning rate whatever the gradient's size; from converged weights at
            1e-3 one step raised two_moons' APT loss from 0.56 to 6.5 nats (NLL: -1.73 to
            4.26), and early stopping then kept a barely recovered model. At 1e-4 the loss
            decreases from the first step. 0.1 is the candidate default; its effect on
            C2ST over whole runs is not yet measured (docs/apt_and_restriction.md).
        round_epoch_size: tsnpe / snle / snre, continued rounds before the last: each epoch
            trains on ``max(MIN_EPOCH_ROWS, round_epoch_size * sims_per_round)`` rows drawn
            at random from all rounds' training rows instead of a full pass (default 1;
            ``None``: full passes). Round 1 takes full passes; the last round: ``final_epoch_size``.
        round_patience: tsnpe / snle / snre: early-stopping patience (epochs) of the
            continued rounds (default 20; round 1 keeps the method's; ``None``: the method's;
            an explicit ``stop_after_epochs`` applies to every round).
        round_steps: tsnpe: each round before the last (round 1 included) stops after about
            this many optimizer steps (whole epochs; early stopping may end it sooner); the
            last round trains to convergence. ``"auto"`` (default): ``max(ROUND_STEPS,
            ROUND_STEPS_PER_SIM * sims_per_round)`` (300 steps up to 600 simulations per round,
            1,000 at 2,000). ``None``: no step budget (every round to early stopping).
        final_steps: tsnpe: the last round (more than one round) anneals its cosine
            learning-rate schedule over about this many optimizer steps (whole epochs) from
            the previous round's network, instead of the preset's full schedule; the best
            validation weights are kept. ``"auto"`` (default): ``max(FINAL_MIN_STEPS,
            FINAL_STEPS_PER_SIM * rounds * sims_per_round)`` (1,000 steps at 2,000
            simulations, 1,250 at 5,000, 2,500 at 10,000; the whole shortened schedule runs)
            from ``FINAL_MIN_SIMULATIONS`` (2,000) total simulations on (below, the preset's
            early stopping), applied only when the
            round's schedule is cosine (the default fmaf ``accurate`` preset); an integer applies to any schedule (a plateau schedule then
            stops at the budget); ``None``: the preset's schedule, to convergence. Stores made
            before this option resume with the default.
        region_temperature: tsnpe: the truncation region of a round is the
            ``epsilon``-HPR of its posterior tempered by this ``T >= 1`` (threshold
            ``m - T (m - τ)``, ``m`` the largest log density of its samples, ``τ`` the plain
            threshold; :meth:`TruncationRegion.from_samples`): a wider region while the
            posterior rests on few simulations. ``"auto"`` (default): ``max(1,
            sqrt(REGION_SIMULATIONS / n))`` for a posterior trained on ``n`` simulations (2.2
            after 200, 1.6 after 400, 1 from 1,000); a number: that ``T`` in every round;
            ``None``: the plain HPR (``T = 1``). A store made before this option (and
            ``region_union``) resumes with the setting given, for its remaining rounds.
        region_union: tsnpe: the region of a round is the union of its posterior's region and
            the previous round's posterior's region (both with their temperature), a
            two-member ensemble of consecutive posteriors: a round whose posterior jumps away
            from the previous one does not cut what the previous one kept. ``"auto"``: while
            the round's posterior rests on fewer than ``REGION_SIMULATIONS`` simulations;
            ``True``: every round; ``False`` (default): never. It keeps the reference
            posterior inside the regions more often at 1,000-2,000 simulations but costs
            accuracy there (sir 1,000: C2ST 0.919 vs 0.884 with the tempered region alone;
            benchmarks/RESULTS.md, "Issue 17: a conservative truncation region at small
            budgets").
        final_epoch_size: tsnpe / snle / snre, the last round (warm-started, more than one
            round): rows per epoch as ``round_epoch_size`` (a float) or full passes
            (``None``). ``"auto"`` (default): full passes, except SNLE with the nflows
            MAF (``flow="maf"``; :data:`SNLE_FINAL_EPOCH_SIZE`): 2.0, i.e.
            ``2 * sims_per_round`` rows, at least ``MIN_EPOCH_ROWS``. Stores made before this option resume with the default.
        proposal_mcmc: snle / snre: MCMC options of the proposal draws (default
            ``PROPOSAL_MCMC``: 50 warm-up steps, no ESS-driven thinning; snle:
            ``SNLE_PROPOSAL_MCMC``, 25 warm-up steps); the final
            posterior keeps its own ``mcmc`` settings (SNLE's default ``SNLE_MCMC``: chains
            initialized by SIR from one pool of prior draws per chain, ``init_strategy=
            "sir_chains"``, so they spread over separated modes; ``mcmc=`` overrides it).
        workers, chunk_size, timeout: simulation engine options (``chunk_size`` defaults to
            the largest divisor of ``sims_per_round`` up to 1000, so rounds fill whole chunks).
        progress: one progress line per round (``None``: on a terminal).
        on_round: called with each finished :class:`RoundRecord`.
        reference_samples: optional samples ``(M, D)`` of the true posterior at ``x_o``
            (benchmarks, tests): TSNPE records in each round the fraction of them inside the
            truncation region (``reference_inside``; should stay about ``1 - epsilon``).
        **fit_options: training and estimator options passed to :func:`sbi_core.fit`. SNLE
            without ``flow=`` uses ``SNLE_FLOW`` (the fused MAF ``"fmaf"``, about 1.5x less CPU
            per run on slcp than the nflows MAF ``flow="maf"``, see ``SNLE_FLOW``).

    Returns:
        :class:`SequentialResult` ``(posterior, history)``.
    """
    from sbi_core.inference import check_parameters_have_a_density, fit
    from sbi_core.simulation import simulate

    method = method.lower()
    if method not in SEQUENTIAL_METHODS:
        raise ValueError(f"Unknown sequential method {method!r}; choose one of "
                         f"{', '.join(SEQUENTIAL_METHODS)} (docs/sequential.md compares them).")
    check_parameters_have_a_density(problem, method)
    for name, v in (("rounds", rounds), ("sims_per_round", sims_per_round)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}.")
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"epsilon must be in [0, 1), got {epsilon}; the default 1e-4 keeps "
                         "99.99% of each round's posterior mass inside the truncation.")
    if not 0.0 <= min_prior_acceptance <= 1.0:
        raise ValueError(f"min_prior_acceptance must be in [0, 1], got {min_prior_acceptance}.")
    if num_threshold_samples < 100:
        raise ValueError(f"num_threshold_samples must be >= 100, got {num_threshold_samples}; "
                         "the threshold is a quantile of that many posterior samples.")
    if not 0.0 < warm_lr_factor <= 1.0:
        raise ValueError(f"warm_lr_factor must be in (0, 1], got {warm_lr_factor}; 1 continues "
                         "at the full learning rate.")
    apt_loss = _resolve_apt_loss(apt_loss, method, problem, fit_options)
    if round_epoch_size is not None and not (
            isinstance(round_epoch_size, (int, float)) and not isinstance(round_epoch_size, bool)
            and 0 < round_epoch_size < math.inf):
        raise ValueError(f"round_epoch_size must be a finite positive number of rounds' worth of rows "
                         f"per epoch (default 1) or None for full passes, got "
                         f"{round_epoch_size!r}.")
    if round_patience is not None and (isinstance(round_patience, bool)
                                       or not isinstance(round_patience, int)
                                       or round_patience < 1):
        raise ValueError(f"round_patience must be a positive integer (epochs) or None for the "
                         f"method's default, got {round_patience!r}.")
    _check_steps("round_steps", round_steps, "of each TSNPE round before the last",
                 "no step budget")
    _check_steps("final_steps", final_steps, "of the last TSNPE round",
                 "the preset's full schedule")
    if not (region_temperature is None or region_temperature == "auto" or (
            isinstance(region_temperature, (int, float)) and not isinstance(region_temperature, bool)
            and math.isfinite(region_temperature) and region_temperature >= 1)):
        raise ValueError(f"region_temperature must be a number >= 1 (1: the plain HPR), 'auto' "
                         f"(the default: wider regions while the posterior rests on few "
                         f"simulations) or None, got {region_temperature!r}.")
    if region_union not in (True, False, "auto"):
        raise ValueError(f"region_union must be True, False (the default) or 'auto' (union "
                         f"with the previous round's region while the posterior rests on few "
                         f"simulations), got {region_union!r}.")
    steps = round_step_budget(round_steps, sims_per_round)
    last_steps = final_step_budget(final_steps, rounds * sims_per_round)
    if restrict and method not in ("tsnpe", "snpe_c"):
        raise ValueError(f"restrict=True applies to tsnpe and snpe_c, not {method!r}: "
                         "NLE/NRE need the invalid simulations' factor P(valid | θ) (see "
                         "docs/sequential.md); drop restrict or use method='tsnpe' (CLI: "
                         "drop --restrict or use --method tsnpe).")
    train_apt = _optional("estimators.apt", "train_apt", "method='snpe_c'") \
        if method == "snpe_c" else None
    fit_restriction = _optional("estimators.restriction", "fit_restriction", "restrict=True") \
        if restrict else None
    x_o = _check_x_o(problem, x_o)
    if fit_options.get("device") is not None:  # before any simulation is spent on it
        from sbi_core.training import training_device

        training_device(fit_options["device"])
    chunk = chunk_size or _default_chunk(sims_per_round)
    if sims_per_round % chunk:
        raise ValueError(f"chunk_size={chunk} must divide sims_per_round={sims_per_round} so "
                         "that every round fills whole chunks of the store.")
    base_method = SEQUENTIAL_METHODS[method]
    round_opts = _round_options(method, fit_options, round_epoch_size, round_patience,
                                sims_per_round)
    final_opts = _final_options(method, fit_options, final_epoch_size, round_opts,
                                round_patience, sims_per_round,
                                fit_options.get("flow", SNLE_FLOW))
    default_mcmc = SNLE_PROPOSAL_MCMC if method == "snle" else PROPOSAL_MCMC
    mcmc_opts = dict(default_mcmc if proposal_mcmc is None else proposal_mcmc) \
        if method in ("snle", "snre") else {}
    settings = {"method": method, "seed": int(seed), "sims_per_round": int(sims_per_round),
                "x_o": x_o.reshape(-1).tolist(), "epsilon": float(epsilon),
                "chunk_size": int(chunk), "restrict": bool(restrict), "problem": problem.name,
                "warm_start": bool(warm_start), "warm_lr_factor": float(warm_lr_factor),
                "round_epoch_size": round_epoch_size, "round_patience": round_patience,
                "proposal_mcmc": _plain_options(mcmc_opts),
                "round_steps": steps if method == "tsnpe" else None,
                "final_steps": final_steps if method == "tsnpe" else None,
                "region_temperature": region_temperature if method == "tsnpe" else None,
                "region_union": region_union if method == "tsnpe" else None,
                "final_epoch_size": final_epoch_size,
                "fit_options": _plain_options(fit_options)}
    if method == "snpe_c" and apt_loss != "atomic":  # stores of earlier versions: "atomic"
        settings["apt_loss"] = apt_loss
    if method == "tsnpe":  # code defaults, not user settings (recorded for resume)
        stall = {k: v for k, v in ROUND_STALL.items() if k not in fit_options}
        fit_options.update(stall)
        settings["round_stall"] = _plain_options(stall)
    if method == "snle":  # code defaults like PROPOSAL_MCMC's, not user settings
        fit_options["mcmc"] = {**SNLE_MCMC, **(fit_options.get("mcmc") or {})}
        fit_options.setdefault("flow", SNLE_FLOW)
        settings["nle_flow"] = fit_options["flow"]
    state = _RunState(Path(store) if store is not None else None, settings)
    state.load(resume)
    verbose = show_progress(progress)
    fit_options.setdefault("progress", False)

    history: list[RoundRecord] = []
    posterior: Posterior | None = None
    restricted = None
    thetas: list[Tensor] = []
    proposals: dict[int, Any] = {}  # apt_loss="mdn": round r's proposal under id r - 1
    all_sims = None
    older: Posterior | None = None  # TSNPE region_union: the previous round's posterior, frozen
    for r in range(1, rounds + 1):
        t_round = time.perf_counter()
        if apt_loss == "mdn" and posterior is not None:
            from estimators.apt_mdn import mdn_proposal

            proposals[r - 1] = mdn_proposal(posterior.estimator, x_o)
        done = state.rounds[r - 1] if r <= len(state.rounds) else None
        model_file = state.path("model", r)
        if done is not None and model_file is not None and model_file.exists():
            # finished before an interruption: reuse its posterior and θ
            from sbi_core.serialization import load

            older = posterior
            posterior = load(model_file, prior=problem.prior,
                             embedding=_user_embedding(fit_options.get("embedding")))
            thetas.append(_stored_theta(state.store, r, sims_per_round))
            history.append(RoundRecord(**done))
            _report(history[-1], rounds, verbose, resumed=True)
            continue
        if fit_restriction is not None and restricted is None and r > 1:  # resumed run
            prev = _stored_sims(state.store, (r - 1) * sims_per_round)
            restricted = fit_restriction(problem.prior, prev.theta, prev.valid,
                                         seed=_round_seed(seed, r - 1, 3))

        # ---- proposal: drawn from (seed, round), or read back when it was drawn before a kill
        pseed = _round_seed(seed, r, 0)
        theta_r = state.load_theta(r)
        pending = state.pending if state.pending.get("round") == r else None
        if theta_r is None or pending is None:
            with seeded(pseed):
                theta_r, info = _propose(problem, posterior, x_o, method, sims_per_round,
                                         epsilon, num_threshold_samples, min_prior_acceptance,
                                         restricted, pseed, reference_samples, mcmc_opts,
                                         region_temperature_for(region_temperature,
                                                                (r - 1) * sims_per_round),
                                         _previous_region(older, x_o, history, region_union,
                                                          (r - 1) * sims_per_round))
            theta_r = theta_r.float().contiguous()
            state.pending = {"round": r, **info}
            state.save_theta(r, theta_r)
        else:
            info = {k: v for k, v in pending.items() if k != "round"}
        thetas.append(theta_r)

        # ---- simulate (all rounds' θ; in a store only the uncommitted chunks run)
        t0 = time.perf_counter()
        if store is not None:
            all_sims = simulate(problem, theta=torch.cat(thetas), seed=seed, store=store,
                                resume=True, chunk_size=chunk, workers=workers,
                                timeout=timeout, progress=False)
            state.save_theta(r, theta_r)  # round 1: the store exists only now
        else:
            new = simulate(problem, theta=theta_r, seed=_round_seed(seed, r, 2),
                           chunk_size=chunk, workers=workers, timeout=timeout, progress=False)
            all_sims = new if all_sims is None else _concat(all_sims, new)
        sim_seconds = time.perf_counter() - t0
        n_invalid = int((~all_sims.valid[-sims_per_round:]).sum())
        if n_invalid == sims_per_round:
            _round_failed(r, all_sims if store is not None else new, state.store, chunk,
                          sims_per_round)

        # ---- train on all rounds
        t1 = time.perf_counter()
        if method == "tsnpe" and posterior is not None and r < rounds and _union_applies(
                region_union, r * sims_per_round):
            older = copy.deepcopy(posterior)  # warm-started training changes it in place
        else:
            older = None
        with warnings.catch_warnings():
            if r > 1 and n_invalid == 0:  # said in an earlier round; the count is in progress
                warnings.filterwarnings("ignore", message="Excluding .* invalid simulations")
            # a Ctrl-C during training ends the run below, not just this round's training
            warnings.filterwarnings("ignore", message="Training interrupted")
            posterior = _train_round(problem, all_sims, method, base_method, r, posterior,
                                     _round_seed(seed, r, 1), train_apt, num_atoms, fit_options,
                                     fit, warm_start, sims_per_round, seed, warm_lr_factor,
                                     apt_loss, proposals,
                                     round_opts if r < rounds else final_opts,
                                     _round_budget(method, r, rounds, steps, last_steps),
                                     last=r == rounds, cosine_only=final_steps == "auto")
        train_seconds = time.perf_counter() - t1
        if (posterior.history or {}).get("stopped") == "interrupted":
            # the training loop keeps its best weights on Ctrl-C (right for `fit`), but a round
            # trained part-way must not be recorded as finished nor feed the next proposal:
            # stop the run; with a store, resume retrains this round from its start
            if store is None:
                kept = "nothing is kept (no store)"
            else:
                done_rounds = _rounds_text(r - 1) + " and " if r > 1 else ""
                kept = (f"{done_rounds}the simulations are kept in {store}; resume=True "
                        f"retrains round {r} (same result as an uninterrupted run)")
            raise KeyboardInterrupt(f"interrupted while training round {r}; {kept}.")
        if fit_restriction is not None:
            restricted = fit_restriction(problem.prior, all_sims.theta, all_sims.valid,
                                         seed=_round_seed(seed, r, 3))
        h = posterior.history
        rec = RoundRecord(
            round=r, num_simulations=len(theta_r), total_simulations=len(all_sims),
            num_invalid=n_invalid, proposal=info.get("proposal", "prior"),
            acceptance=info.get("acceptance"), prior_mass=info.get("prior_mass"),
            validation_loss=h.get("best_validation_loss"), epochs=h.get("epochs"),
            simulate_seconds=round(sim_seconds, 3), train_seconds=round(train_seconds, 3),
            seconds=round(time.perf_counter() - t_round, 3),
            truncation_threshold=info.get("truncation_threshold"), box=info.get("box"),
            reference_inside=info.get("reference_inside"),
            region_temperature=info.get("region_temperature"),
            region_union=info.get("region_union"))
        history.append(rec)
        if store is not None:
            from sbi_core.serialization import save

            save(posterior, model_file)
            state.rounds = state.rounds[:r - 1] + [rec.to_dict()]
            state.pending = {}
            state.save()
        _report(rec, rounds, verbose)
        if on_round is not None:
            on_round(rec)

    assert posterior is not None
    last_x = (all_sims if all_sims is not None else
              _stored_sims(state.store, rounds * sims_per_round)).x[-sims_per_round:]
    last_valid = (all_sims if all_sims is not None else
                  _stored_sims(state.store, rounds * sims_per_round)).valid[-sims_per_round:]
    _attach_record(posterior, method, x_o, history, last_x[last_valid] if bool(last_valid.any())
                   else last_x, epsilon, rounds)
    return SequentialResult(posterior, history)


def _rounds_text(n: int) -> str:
    """``"round 1"`` or ``"rounds 1-n"``."""
    return "round 1" if n == 1 else f"rounds 1-{n}"


def _round_failed(r: int, sims: Any, store: Path | None, chunk: int,
                  sims_per_round: int) -> None:
    """Every simulation of round ``r`` failed (``sims``: the store's rows, or without a store
    this round's): stop rather than spend the remaining rounds
    on a simulator that looks broken (a crashed licence server, a missing input file). In a
    store the round's chunks are uncommitted first, so that a resume after the fix simulates
    them again instead of keeping them as failures (the round's proposal θ stay recorded:
    the same θ are simulated)."""
    if store is not None:
        from sbi_core.stores import SimulationStore

        st = SimulationStore(store)
        first = (r - 1) * sims_per_round // chunk
        for i in range(first, first + sims_per_round // chunk):
            st.uncommit(i)
        verb = "is" if r == 2 else "are"
        kept = (f"{_rounds_text(r - 1)} {verb} kept in {store} and round {r}'s chunks were "
                "uncommitted: fix the simulator and rerun with resume=True (CLI: --resume) to "
                f"simulate round {r} again" if r > 1 else
                f"round 1's chunks in {store} were uncommitted: fix the simulator and rerun with "
                "resume=True (CLI: --resume)")
    else:
        kept = ("nothing is kept (no store; store='run.zarr', CLI --store run.zarr, keeps "
                "finished rounds across such failures)")
    raise ValueError(
        f"Every simulation of round {r} ({sims_per_round} of {sims_per_round}) failed; first "
        f"error: {shown(str(sims.first_error or 'NaN/inf'), 300)}. The simulator looks broken "
        f"rather than failing in part of the prior; {kept}. If it fails only where this "
        "round's proposal put θ, pass restrict=True (CLI: --restrict) to learn where it fails.")


def _stored_sims(store: Path, n: int) -> Any:
    """The first ``n`` rows of a (partly) written store as a SimulationSet."""
    from sbi_core.simulation_set import SimulationSet
    from sbi_core.stores import SimulationStore

    st = SimulationStore(store)
    theta, x, valid = st.read_rows(0, n)
    return SimulationSet(torch.from_numpy(theta), torch.from_numpy(x),
                         torch.from_numpy(valid), st.provenance())


def _stored_theta(store: Path, r: int, n: int) -> Tensor:
    from sbi_core.stores import SimulationStore

    return torch.from_numpy(SimulationStore(store).read_rows((r - 1) * n, r * n)[0])


def _optional(module: str, attr: str, what: str) -> Callable[..., Any]:
    import importlib

    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        raise ValueError(f"{what} is not available in this installation ({module}.{attr} is "
                         "missing); use method='tsnpe', 'snle' or 'snre' without "
                         "restrict.") from None


def _check_x_o(problem: Problem, x_o: Any) -> Tensor:
    x = torch.as_tensor(np.asarray(x_o, dtype=np.float32) if not isinstance(x_o, Tensor)
                        else x_o.detach(), dtype=torch.float32)
    shape = tuple(problem.x_shape or ())
    if tuple(x.shape) != shape:
        if x.numel() == math.prod(shape) and (x.ndim == 0 or x.shape[0] == 1):  # 0.3, [[...]]
            x = x.reshape(shape)
        else:
            raise ValueError(f"x_o has shape {tuple(x.shape)}; problem {problem.name!r} "
                             f"simulates x of shape {shape}. Pass one observation.")
    if not torch.isfinite(x).all():
        raise ValueError("x_o contains NaN or inf; pass a finite observation.")
    return x


def _without_flow(options: dict[str, Any] | None) -> dict[str, Any] | None:
    """Recorded ``fit_options`` less ``flow`` (SNLE records its flow as ``nle_flow``)."""
    return options if options is None else {k: v for k, v in options.items() if k != "flow"}


#: ``fit_options`` that do not change the result, so a resume need not repeat them:
#: ``callbacks`` only observe training (a logger's repr held a memory address, which made
#: every store of a run with ``callbacks=[...]`` refuse to resume).
_UNRECORDED_OPTIONS = ("progress", "callbacks")


def _plain_options(options: dict[str, Any]) -> dict[str, Any]:
    """``fit_options`` as recorded in a store's settings (compared on resume): plain values as
    they are, others by a text that is the same in every process (a function by its name,
    an ``--embedding`` factory by the option given, never a repr holding a memory address)."""
    out = {}
    for k, v in sorted(options.items()):
        if k in _UNRECORDED_OPTIONS:
            continue
        out[k] = v if isinstance(v, (int, float, str, bool, type(None))) else _plain_value(v)
    return out


def _user_embedding(embedding: Any) -> Any:
    """The ``embedding`` option when it is the user's own network (module, class or factory,
    which :func:`~sbi_core.serialization.load` needs again), None for a built-in (name/spec)."""
    return None if embedding is None or isinstance(embedding, (str, dict)) else embedding


def _plain_value(value: Any) -> str:
    spec = getattr(value, "cli_spec", None)  # resolve_embedding's factory for --embedding
    if isinstance(spec, str):
        return f"--embedding {spec}"
    name = getattr(value, "__qualname__", "<")
    if isinstance(value, types.FunctionType) and "<" not in name:  # a top-level function; a
        return f"{value.__module__}.{name}"  # lambda or local one keeps its repr (not resumable)
    return repr(value)  # classes, modules, dicts: as recorded before


def _propose(problem: Problem, posterior: Posterior | None, x_o: Tensor, method: str, n: int,
             epsilon: float, num_threshold: int, min_prior_acceptance: float,
             restricted: Any, pseed: int, reference: Tensor | None = None,
             mcmc: dict[str, Any] | None = None, temperature: float = 1.0,
             previous: TruncationRegion | None = None) -> tuple[Tensor, dict[str, Any]]:
    """Round ``r``'s θ ``(n, D)`` and what the proposal was (torch already seeded)."""
    base = None if restricted is None else (lambda m: restricted.sample((m,)).float())
    if posterior is None:
        theta = base(n) if base is not None else problem.prior.sample((n,)).float()
        return theta, {"proposal": "prior" if base is None else "restricted prior",
                       "acceptance": None if base is None else
                       _float(getattr(restricted, "acceptance", None)),
                       "prior_mass": 1.0 if base is None else
                       _float(getattr(restricted, "acceptance", None))}
    with _proposal_range_check(posterior, x_o):
        return _propose_from(problem, posterior, x_o, method, n, epsilon, num_threshold,
                             min_prior_acceptance, restricted, pseed, base, reference, mcmc,
                             temperature, previous)


@contextmanager
def _proposal_range_check(posterior: Posterior, x_o: Tensor) -> Iterator[None]:
    """While a round's posterior builds the next proposal, an x_o outside the range of the
    simulations so far is a warning, not an error: early rounds often simulate nothing near
    x_o (their x come from the prior), and the next rounds exist to simulate closer to it.
    The returned posterior keeps its own ``range_check``."""
    from sbi_core.posterior import ObservationError

    if not hasattr(posterior, "range_check"):  # a posterior-like object without the check
        yield
        return
    old = posterior.range_check
    if old == "error":
        try:
            posterior._check_range(x_o)
        except ObservationError as err:
            warnings.warn(
                f"{err} While building the next round's proposal this is expected when the "
                "simulations so far lie away from x_o: the proposal extrapolates there, and the "
                "next rounds simulate closer to x_o. If the final posterior still reports it, x_o "
                "is outside what the simulator produces under this prior (check the simulator, "
                "the prior or the observation).", UserWarning, stacklevel=5)
    posterior.range_check = "off"
    try:
        yield
    finally:
        posterior.range_check = old


def _propose_from(problem: Problem, posterior: Posterior, x_o: Tensor, method: str, n: int,
                  epsilon: float, num_threshold: int, min_prior_acceptance: float,
                  restricted: Any, pseed: int, base: Callable[[int], Tensor] | None,
                  reference: Tensor | None, mcmc: dict[str, Any] | None,
                  temperature: float = 1.0, previous: TruncationRegion | None = None
                  ) -> tuple[Tensor, dict[str, Any]]:
    """Round ``r``'s θ from the current ``posterior`` (see :func:`_propose`)."""
    if method == "tsnpe":
        samples = posterior.sample((num_threshold,), x=x_o, max_seconds=None)
        region = _region_of(posterior, x_o, samples, epsilon, temperature)
        if previous is not None:
            region.union = [previous]
        out = sample_truncated_prior(problem.prior, region, n, samples,
                                     min_prior_acceptance=min_prior_acceptance, base_sample=base)
        mass = out.prior_mass
        if restricted is not None:
            mass *= _float(getattr(restricted, "acceptance", None)) or 1.0
        return out.theta, {"proposal": f"truncated prior ({out.sampler})",
                           "acceptance": out.acceptance, "prior_mass": mass,
                           "truncation_threshold": region.threshold,
                           "region_temperature": float(temperature),
                           "region_union": previous is not None,
                           "box": None if out.box is None else [out.box[0], out.box[1]],
                           "reference_inside": None if reference is None else
                           float(region.contains(torch.as_tensor(reference).float())
                                 .float().mean())}
    theta, leak = _sample_proposal(posterior, x_o, method, n, pseed, mcmc)
    acc = None
    if restricted is not None:  # keep proposals where the simulator is predicted to work
        ok = torch.isfinite(restricted.log_prob(theta))
        acc = float(ok.float().mean())
        kept = [theta[ok]]
        k = 1
        while sum(len(t) for t in kept) < n and k < 50:
            more = posterior.sample((n,), x=x_o, max_seconds=None, seed=pseed + k)
            kept.append(more[torch.isfinite(restricted.log_prob(more))])
            k += 1
        theta = torch.cat(kept)
        if len(theta) < n:
            raise ValueError("The restriction rejects almost all posterior samples; the "
                             "posterior lies where the simulator fails.")
        theta = theta[:n]
    info = {"proposal": "posterior", "acceptance": acc, "prior_mass": None}
    if leak:
        info["leakage"] = leak
    return theta, info


#: Lowest in-support fraction an SNPE-C proposal is still sampled from (by rejection).
LEAKY_MIN_ACCEPTANCE = 1e-6


def _sample_proposal(posterior: Posterior, x_o: Tensor, method: str, n: int, pseed: int,
                     mcmc: dict[str, Any] | None) -> tuple[Tensor, str | None]:
    """``n`` draws of the current posterior at ``x_o`` inside the prior support. An SNPE-C
    posterior can leak almost all its mass outside the prior (a known APT failure, e.g. slcp
    with a MAF): its proposal is then still sampled by rejection down to
    :data:`LEAKY_MIN_ACCEPTANCE` (slower) with a warning, instead of ending the run."""
    from sbi_core.budget import SamplingError

    try:
        return posterior.sample((n,), x=x_o, max_seconds=None, seed=pseed, **(mcmc or {})), None
    except SamplingError as err:
        if method != "snpe_c" or not hasattr(posterior, "min_acceptance"):
            raise
        reason = str(err)
        old = posterior.min_acceptance
        posterior.min_acceptance = LEAKY_MIN_ACCEPTANCE
        try:
            theta = posterior.sample((n,), x=x_o, max_seconds=None, seed=pseed)
        finally:
            posterior.min_acceptance = old
    msg = (f"SNPE-C proposal: {reason} The round's proposal was sampled anyway by rejection "
           "(slow). APT posteriors can leak mass outside the prior; method='tsnpe' or "
           "flow='mdn' (non-atomic SNPE-C) avoid this.")
    warnings.warn(msg, stacklevel=4)
    return theta, msg


def _resolve_apt_loss(apt_loss: str, method: str, problem: Problem,
                      fit_options: dict[str, Any]) -> str:
    """The concrete SNPE-C loss for ``apt_loss`` (see :func:`run_sequential`)."""
    choices = ("auto", "mdn", "atomic", "atomic_proposal")
    if apt_loss not in choices:
        raise ValueError(f"apt_loss must be one of {', '.join(choices)}; got {apt_loss!r}.")
    if method != "snpe_c":
        return apt_loss
    from estimators.apt_mdn import supports_apt_mdn

    mdn_ok = supports_apt_mdn(fit_options, problem.prior)
    if apt_loss == "mdn" and not mdn_ok:
        raise ValueError("apt_loss='mdn' (the non-atomic SNPE-C loss) needs flow='mdn' without "
                         "theta_transform and a Gaussian or box-uniform prior; pass flow='mdn' "
                         "or use apt_loss='atomic'.")
    if apt_loss == "auto":
        return "mdn" if mdn_ok else "atomic"
    return apt_loss


def _round_options(method: str, fit_options: dict[str, Any], epoch_size: float | None,
                   patience: int | None, sims_per_round: int) -> dict[str, Any]:
    """Training settings of the continued rounds of tsnpe / snle / snre (SNPE-C keeps its
    own): ``stop_after_epochs`` unless ``fit_options`` sets it, and ``epoch_rows`` (rows drawn
    per epoch; at least :data:`MIN_EPOCH_ROWS`, so small rounds still take full passes)."""
    if method == "snpe_c":
        return {}
    out: dict[str, Any] = {}
    if patience is not None and "stop_after_epochs" not in fit_options:
        out["stop_after_epochs"] = int(patience)
    if epoch_size is not None:
        out["epoch_rows"] = max(MIN_EPOCH_ROWS, int(round(epoch_size * sims_per_round)))
    return out


def _final_options(method: str, fit_options: dict[str, Any], final_epoch_size: Any,
                   round_opts: dict[str, Any], patience: int | None,
                   sims_per_round: int, flow: str | None = None) -> dict[str, Any]:
    """Training settings of the last round: ``round_opts`` with the rows per epoch of
    ``final_epoch_size`` (see :func:`run_sequential`; ``flow``: SNLE's likelihood flow, which
    ``"auto"`` depends on)."""
    if final_epoch_size == "auto":
        final_epoch_size = SNLE_FINAL_EPOCH_SIZE.get(flow or SNLE_FLOW) if method == "snle" \
            else FINAL_EPOCH_SIZE.get(method)
    if final_epoch_size is not None and (isinstance(final_epoch_size, (str, bool))
                                         or not 0 < final_epoch_size < math.inf):
        raise ValueError(f"final_epoch_size must be 'auto', None (full passes) or a positive "
                         f"number (rows per epoch as a fraction of sims_per_round), got "
                         f"{final_epoch_size!r}.")
    out = {k: v for k, v in round_opts.items() if k != "epoch_rows"}
    if final_epoch_size is not None and method != "snpe_c":
        out.update({k: v for k, v in _round_options(method, fit_options, final_epoch_size,
                                                      patience, sims_per_round).items()
                    if k == "epoch_rows"})
    return out


def _float(v: Any) -> float | None:
    return None if v is None else float(v)


def _region_of(posterior: Posterior, x_o: Tensor, samples: Tensor,
               epsilon: float, temperature: float = 1.0) -> TruncationRegion:
    """The (tempered) HPR of an NPE ``posterior`` at ``x_o`` from its ``samples`` ``(N, D)``."""

    def log_q(theta: Tensor) -> Tensor:
        return posterior.log_prob(theta, x=x_o, normalize=False)

    return TruncationRegion.from_samples(log_q, samples, epsilon, temperature)


def _union_applies(region_union: bool | str, num_simulations: int) -> bool:
    """Whether a TSNPE region built from a posterior trained on ``num_simulations``
    simulations is united with the previous round's (``run_sequential(region_union=)``)."""
    if region_union == "auto":
        return num_simulations < REGION_SIMULATIONS
    return bool(region_union)


def _previous_region(older: Posterior | None, x_o: Tensor, history: list[RoundRecord],
                     region_union: bool | str, num_simulations: int
                     ) -> TruncationRegion | None:
    """The previous round's region for ``region_union``: the frozen posterior ``older`` of
    round ``r - 2`` ... at the threshold recorded when it built round ``r - 1``'s proposal."""
    if older is None or not history or history[-1].truncation_threshold is None \
            or not _union_applies(region_union, num_simulations):
        return None

    if hasattr(older, "range_check"):
        older.range_check = "off"  # as for the current posterior (_proposal_range_check)

    def log_q(theta: Tensor) -> Tensor:
        return older.log_prob(theta, x=x_o, normalize=False)

    return TruncationRegion(log_q, float(history[-1].truncation_threshold))


def region_temperature_for(region_temperature: float | str | None,
                           num_simulations: int) -> float:
    """The truncation region's temperature (:meth:`TruncationRegion.from_samples`) of a
    round whose posterior was trained on ``num_simulations`` simulations:
    ``"auto"`` -> ``max(1, sqrt(REGION_SIMULATIONS / num_simulations))`` (2.2 after 200
    simulations, 1.6 after 400, 1 from 1,000 on); a number: that temperature; ``None``: 1."""
    if region_temperature is None:
        return 1.0
    if region_temperature == "auto":
        return max(1.0, math.sqrt(REGION_SIMULATIONS / max(int(num_simulations), 1)))
    return float(region_temperature)


def _train_round(problem: Problem, sims: Any, method: str, base_method: str, r: int,
                 previous: Posterior | None, tseed: int, train_apt: Any, num_atoms: int,
                 fit_options: dict[str, Any], fit: Callable[..., Posterior],
                 warm_start: bool = False, sims_per_round: int = 1,
                 run_seed: int = 0, warm_lr_factor: float = 1.0,
                 apt_loss: str = "atomic", proposals: dict[int, Any] | None = None,
                 round_opts: dict[str, Any] | None = None,
                 step_budget: int | None = None, last: bool = False,
                 cosine_only: bool = False) -> Posterior:
    """Train round ``r`` on all simulations ``sims``. ``step_budget``: stop after about this
    many optimizer steps (TSNPE rounds; early stopping may end it sooner); a cosine schedule
    is shortened to anneal over the budget, and in the ``last`` round it runs to its end.
    ``cosine_only``: the last round's budget applies only to a cosine schedule
    (``final_steps="auto"``)."""
    opts = dict(round_opts or {})
    epoch_rows = opts.pop("epoch_rows", None)
    if r == 1 or not (method == "snpe_c" or warm_start):  # round 1: the method's own settings
        if step_budget is None or last:  # a last round trained afresh needs its full schedule
            return fit(problem, sims, method=base_method, seed=tseed, **fit_options)
        from sbi_core.methods import get_method
        from sbi_core.training import split_options

        config, _ = split_options({**get_method(base_method).training_defaults(fit_options),
                                   **fit_options})
        n = int(sims.valid.sum())
        n_train = n - int(round(config.validation_fraction * n))
        epochs = _budget_epochs(step_budget, n_train, config.batch_size, config.max_epochs)
        with _quiet_max_epochs():
            return fit(problem, sims, method=base_method, seed=tseed,
                       **{**fit_options, "max_epochs": epochs})
    from sbi_core.methods import get_method
    from sbi_core.training import split_options, train

    m = get_method(base_method)
    theta, x = sims.training_data()
    config, est_options = split_options({**m.training_defaults(fit_options), **fit_options,
                                         "seed": tseed})
    config = replace(config, **opts)
    torch.manual_seed(tseed)
    per_proposal = method == "snpe_c" and apt_loss in ("atomic_proposal", "mdn")
    if per_proposal and not warm_start:
        # a fresh estimator (z-scored on all rounds) trained from scratch: the prior rows'
        # NPE loss anchors it, so it does not leak as a fresh atomic-only estimator does
        est_options.pop("detector", None)
        estimator = m.build(theta, x, problem.prior, **est_options)
    else:
        config = replace(config, learning_rate=config.learning_rate * warm_lr_factor)
        estimator = previous.estimator
    # each round's validation rows stay validation rows: rows the estimator trained on in
    # earlier rounds would make the validation loss optimistic and stop on the wrong epoch
    batches = (_ProposalBatches if per_proposal else _RoundBatches)(
        sims, sims_per_round, config.validation_fraction, run_seed, config.device)
    batches.epoch_rows = epoch_rows
    if method != "snpe_c":  # warm start: continue the previous round's estimator, plain loss
        cosine = config.lr_schedule == "cosine"
        if last and cosine_only and not cosine:
            step_budget = None
        if step_budget is not None:
            rows = batches.num_train if not epoch_rows else min(epoch_rows, batches.num_train)
            config = replace(config, max_epochs=_budget_epochs(step_budget, rows,
                                                               config.batch_size,
                                                               config.max_epochs))
            if last and cosine:
                # the last round runs its whole shortened schedule: a stall would compress the
                # rest of the decay into 10% of the (already short) schedule
                # (gaussian_mixture 5 x 2,000, observation 1: C2ST 0.612 vs 0.581)
                config = replace(config, stop_after_epochs=config.max_epochs + 1)
        with _quiet_max_epochs() if step_budget is not None else nullcontext():
            hist = train(estimator, batches, None, config, loss_fn=m.loss_fn)
        return m.make_posterior(estimator, problem.prior, problem.spec(), hist.to_dict(),
                                **dict(getattr(previous, "config", {}) or {}))
    # The atomic loss needs no proposal density (the atoms cancel it), hence None.
    if apt_loss == "mdn":
        from estimators.apt_mdn import apt_mdn_round_loss

        hist = train(estimator, batches, None, config,
                     loss_fn=apt_mdn_round_loss(problem.prior, proposals or {}))
    elif per_proposal:
        hist = train_apt(estimator, theta, x, problem.prior, None, config, num_atoms=num_atoms,
                         batches=batches, per_proposal=True)
    else:
        hist = train_apt(estimator, theta, x, problem.prior, None, config, num_atoms=num_atoms,
                         batches=batches if _APT_FIXED_SPLIT else None)
    return m.make_posterior(estimator, problem.prior, problem.spec(), hist.to_dict())


def _round_budget(method: str, r: int, rounds: int, steps: int | None,
                  last_steps: int | None) -> int | None:
    """The step budget of TSNPE round ``r``: ``steps`` before the last round, ``last_steps``
    in the last (none for a single round: that is amortized NPE)."""
    if method != "tsnpe":
        return None
    if r < rounds:
        return steps
    return last_steps if rounds > 1 else None


def final_step_budget(final_steps: int | str | None, total_simulations: int) -> int | None:
    """Optimizer steps of the last TSNPE round for ``run_sequential(final_steps=)``:
    ``"auto"`` -> ``max(FINAL_MIN_STEPS, FINAL_STEPS_PER_SIM * total_simulations)`` from
    ``FINAL_MIN_SIMULATIONS`` total simulations on, else ``None`` (the preset's schedule with
    early stopping)."""
    if final_steps == "auto":
        if total_simulations < FINAL_MIN_SIMULATIONS:
            return None
        return max(FINAL_MIN_STEPS, int(round(FINAL_STEPS_PER_SIM * total_simulations)))
    return None if final_steps is None else int(round(final_steps))


def _check_steps(name: str, value: Any, what: str, none_means: str) -> None:
    """``round_steps`` / ``final_steps``: a positive integer, ``"auto"`` or None."""
    if value is None or value == "auto":
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer (optimizer steps {what}), 'auto' "
                         f"(the default) or None for {none_means}, got {value!r}.")


def round_step_budget(round_steps: int | str | None, sims_per_round: int) -> int | None:
    """Optimizer steps of a TSNPE round before the last for ``run_sequential(round_steps=)``:
    ``"auto"`` -> ``max(ROUND_STEPS, ROUND_STEPS_PER_SIM * sims_per_round)``."""
    if round_steps == "auto":
        return max(ROUND_STEPS, int(round(ROUND_STEPS_PER_SIM * sims_per_round)))
    return None if round_steps is None else int(round_steps)


def _budget_epochs(steps: int, rows: int, batch_size: int, max_epochs: int) -> int:
    """Epochs of ``rows`` training rows (``max(rows // batch_size, 1)`` steps each, as the
    batch sources cut them) that make about ``steps`` optimizer steps, at most ``max_epochs``."""
    per_epoch = max(rows // max(min(batch_size, rows), 1), 1)
    return max(1, min(int(max_epochs), math.ceil(steps / per_epoch)))


@contextmanager
def _quiet_max_epochs() -> Iterator[None]:
    """Reaching the step budget is the intended end of a round before the last, not a
    training problem: hide the training loop's "Reached max_epochs" warning there."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Reached max_epochs")
        yield


class _RoundBatches(_TensorBatches):  # validation() comes from the base
    """All rounds' valid simulations as a :class:`~sbi_core.training.BatchSource` whose
    validation split is fixed per round: round ``k``'s rows are split by a permutation seeded
    from ``k`` alone, so a row once used for validation is never trained on later."""

    def __init__(self, sims: Any, per_round: int, fraction: float, seed: int, device: str):
        rows = torch.arange(len(sims))
        valid = sims.valid.bool()
        val_rows, train_rows = [], []
        for k in range(-(-len(sims) // per_round)):
            mine = rows[k * per_round:(k + 1) * per_round]
            mine = mine[valid[mine]]
            # round 1: the same permutation as round 1's fit (seeded with the round's training
            # seed), so round 1's validation rows were never trained on either
            g = torch.Generator().manual_seed(_round_seed(seed, 1, 1) if k == 0
                                              else _round_seed(seed, k + 1, 4))
            mine = mine[torch.randperm(len(mine), generator=g)]
            n_val = int(round(fraction * len(mine)))
            val_rows.append(mine[:n_val])
            train_rows.append(mine[n_val:])
        va, tr = torch.cat(val_rows), torch.cat(train_rows)
        if fraction > 0 and (len(va) < 1 or len(tr) < 2):
            raise ValueError(f"{len(va) + len(tr)} valid simulations are too few to train on.")
        dev = torch.device(device)
        theta, x = sims.theta.float(), sims.x.float()
        self.theta_tr, self.x_tr = theta[tr].to(dev), x[tr].to(dev)
        self.theta_va, self.x_va = theta[va].to(dev), x[va].to(dev)
        self.num_train, self.num_validation = len(tr), len(va)
        self.device = dev
        self.rows_tr, self.rows_va = tr, va
        self.epoch_rows: int | None = None

    def epoch(self, generator: torch.Generator, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        n = self.num_train if not self.epoch_rows else min(self.epoch_rows, self.num_train)
        order = torch.randperm(self.num_train, generator=generator).to(self.device)[:n]
        for b in range(max(n // batch_size, 1)):
            idx = order[b * batch_size:(b + 1) * batch_size]
            yield self.theta_tr[idx], self.x_tr[idx]


class _ProposalBatches(_RoundBatches):
    """:class:`_RoundBatches` (same split) whose minibatches each hold one round's rows, θ
    carrying the round's proposal id as a last column (0: round 1, the prior): the input of
    ``estimators.apt.apt_round_loss`` (plain NPE loss on prior rows, atoms from the row's own
    proposal otherwise)."""

    def __init__(self, sims: Any, per_round: int, fraction: float, seed: int, device: str):
        super().__init__(sims, per_round, fraction, seed, device)
        self.group_tr = self.rows_tr // per_round
        self.group_va = self.rows_va // per_round
        self.theta_tr = torch.cat([self.theta_tr, self.group_tr[:, None].to(self.theta_tr)], 1)
        self.theta_va = torch.cat([self.theta_va, self.group_va[:, None].to(self.theta_va)], 1)

    def epoch(self, generator: torch.Generator, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        batches: list[Tensor] = []
        for k in torch.unique(self.group_tr).tolist():
            idx = (self.group_tr == k).nonzero().flatten()
            idx = idx[torch.randperm(len(idx), generator=generator)]
            batches += list(torch.tensor_split(idx, max(len(idx) // batch_size, 1)))
        for b in torch.randperm(len(batches), generator=generator).tolist():
            idx = batches[b].to(self.device)
            yield self.theta_tr[idx], self.x_tr[idx]

    def validation(self) -> Iterator[tuple[Tensor, Tensor]]:
        for k in torch.unique(self.group_va).tolist():
            idx = (self.group_va == k).nonzero().flatten().to(self.device)
            yield self.theta_va[idx], self.x_va[idx]


def _concat(a: Any, b: Any) -> Any:
    from sbi_core.simulation_set import SimulationSet

    prov = dict(a.provenance)
    prov["num_simulations"] = len(a) + len(b)
    prov["num_invalid"] = int(a.num_invalid + b.num_invalid)
    return SimulationSet(torch.cat([a.theta, b.theta]), torch.cat([a.x, b.x]),
                         torch.cat([a.valid, b.valid]), prov)


def _attach_record(posterior: Posterior, method: str, x_o: Tensor, history: list[RoundRecord],
                   last_x: Tensor, epsilon: float, rounds: int) -> None:
    flat = last_x.reshape(len(last_x), -1).double()
    scale = flat.std(0) if len(flat) > 1 else flat.abs().mean(0)
    scale = torch.where(torch.isfinite(scale) & (scale > 0), scale, torch.ones_like(scale))
    last = history[-1]
    truncation = None
    if method == "tsnpe":
        truncation = {"epsilon": float(epsilon),
                      "prior_mass_per_round": [h.prior_mass for h in history],
                      "log_prob_threshold_per_round": [h.truncation_threshold
                                                       for h in history],
                      "last_box": history[-1].box,
                      "note": "valid for observations whose posterior lies inside the last "
                              "round's truncation region"}
    posterior.problem_spec = {**dict(posterior.problem_spec or {}), "sequential": {
        "method": method, "x_o": x_o.reshape(-1).tolist(), "x_shape": list(x_o.shape),
        "x_scale": scale.tolist(), "x_tolerance": X_TOLERANCE, "rounds": int(rounds),
        "total_simulations": int(last.total_simulations), "truncation": truncation}}
    posterior.history = {**dict(posterior.history or {}),
                         "sequential_rounds": [h.to_dict() for h in history]}


def _report(rec: RoundRecord, rounds: int, verbose: bool, resumed: bool = False) -> None:
    if not verbose:
        return
    parts = [f"[sbi-core] round {rec.round}/{rounds}" + (" (resumed: already done)" if resumed
                                                          else ""),
             f"{rec.num_simulations} sims ({rec.total_simulations} total, "
             f"{rec.num_invalid} invalid)", f"proposal {rec.proposal}"]
    if rec.prior_mass is not None:
        parts.append(f"prior mass kept {rec.prior_mass:.3g}")
    if rec.acceptance is not None:
        parts.append(f"acceptance {rec.acceptance:.3g}")
    if rec.validation_loss is not None:
        parts.append(f"val loss {rec.validation_loss:.3f}")
    parts.append(f"{rec.seconds:.1f} s")
    print(", ".join(parts), file=sys.stderr, flush=True)
