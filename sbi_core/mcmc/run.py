"""``run_mcmc``: sample any potential inside a prior's support with parallel chains.

The chains live in the unconstrained space ``z`` given by
:func:`sbi_core.priors.unconstrained_transform` (``theta = T(z)``), where the log density
is ``potential(T(z)) + log|det dT/dz|``. Every state is therefore inside the prior's
support, for any prior (box, Gaussian, products with positive or bounded components).

Example::

    prior = box_uniform([-3, -3], [3, 3])
    def potential(theta, index):            # (M, D), (M,) -> (M,)
        return -0.5 * (theta ** 2).sum(-1)
    result = run_mcmc(potential, prior, num_samples=1000, config=MCMCConfig(seed=0))
    result.samples      # (1000, 1, 2)
    result.rhat         # (1, 2), should be < 1.05
    result.ess          # (1, 2)
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution

from sbi_core.budget import Budget
from sbi_core.mcmc.diagnostics import effective_sample_size, split_rhat
from sbi_core.mcmc.hmc import HMCState, adaptation_windows, hmc_log_density_and_grad, hmc_step
from sbi_core.mcmc.init import INIT_STRATEGIES, initial_chains
from sbi_core.mcmc.slice import SliceState, slice_step
from sbi_core.priors import _support, unconstrained_transform
from sbi_core.progress import progress_bar

__all__ = ["MCMCConfig", "MCMCResult", "run_mcmc", "MCMC_METHODS"]

MCMC_METHODS = ("auto", "hmc", "slice")

#: ``potential(theta (M, D), index (M,)) -> (M,)``: unnormalized log posterior of each row,
#: ``index`` naming the observation the row belongs to (``0..B-1``).
Potential = Callable[[Tensor, Tensor], Tensor]

#: ``proposal(k) -> (theta (B, k, D), log_q (B, k))``: initialization candidates per observation.
Proposal = Callable[[int], tuple[Tensor, Tensor]]


@dataclass
class MCMCConfig:
    """Settings of :func:`run_mcmc` (plain values, saved with MCMC posteriors).

    Attributes:
        method: ``"auto"`` (default: HMC when the potential is differentiable in a
            continuous theta, else slice), ``"hmc"`` (Hamiltonian Monte Carlo with step-size
            and dense mass-matrix adaptation) or ``"slice"`` (vectorized slice sampling, no
            gradients needed).
        num_chains: parallel chains per observation (all moved in one batched call).
        warmup_steps: transitions per chain discarded while tuning widths / step sizes and
            the mass matrix.
        thin: keep every ``thin``-th transition after warm-up (the minimum thinning; ESS may
            raise it, see ``ess_fraction``).
        ess_fraction: when the kept draws' smallest ESS is below ``ess_fraction *
            num_samples``, sampling continues for another round of the same length and the
            draws are thinned evenly, up to ``max_thin`` rounds (``None``: fixed ``thin``).
        max_thin: most rounds (thinning factor) the ESS rule may use.
        min_draws_per_chain: each chain keeps at least this many draws (more than
            ``num_samples / num_chains`` for small requests; split R-hat and ESS need 4, 10 make
            them less noisy); the returned samples are spread evenly over all kept draws.
        init_strategy: ``"sir"`` (default, resampling with replacement), ``"sir_chains"`` (SIR
            from one pool of candidates per chain: chains spread over separated modes),
            ``"best"`` or
            ``"prior"`` (see ``mcmc.init``).
        init_num_candidates: prior (or proposal) draws per observation for the initialization.
        hmc_num_steps: fixed leapfrog steps per HMC transition (``None``: from
            ``hmc_trajectory_length`` and the adapted step size).
        hmc_trajectory_length: mean integration time of a transition in units of the adapted
            posterior scale (pi/2: about independent draws of a Gaussian).
        hmc_max_steps: cap on leapfrog steps per transition.
        target_accept: HMC acceptance rate targeted by step-size adaptation.
        progress: show a tqdm progress bar (``None``: only on a terminal, see
            :mod:`sbi_core.progress`).
        warn_rhat: warn when the largest R-hat exceeds this value (``None``: never).
    """

    method: str = "auto"
    num_chains: int = 100
    warmup_steps: int = 100
    thin: int = 1
    ess_fraction: float | None = 0.5
    max_thin: int = 4
    min_draws_per_chain: int = 10
    init_strategy: str = "sir"
    init_num_candidates: int = 1000
    hmc_num_steps: int | None = None
    hmc_trajectory_length: float = math.pi / 2
    hmc_max_steps: int = 10
    target_accept: float = 0.8
    progress: bool | None = None
    warn_rhat: float | None = 1.05

    def __post_init__(self) -> None:
        if self.method not in MCMC_METHODS:
            raise ValueError(f"Unknown MCMC method {self.method!r}; use one of {MCMC_METHODS}.")
        if self.init_strategy not in INIT_STRATEGIES:
            raise ValueError(f"Unknown init_strategy {self.init_strategy!r}; use one of "
                             f"{INIT_STRATEGIES}.")
        for name in ("num_chains", "thin", "hmc_num_steps", "init_num_candidates", "max_thin",
                     "min_draws_per_chain",
                     "hmc_max_steps"):
            if getattr(self, name) is not None and int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}.")
        if self.ess_fraction is not None and not self.ess_fraction > 0:
            raise ValueError(f"ess_fraction must be positive (or None), got {self.ess_fraction}.")
        if not self.hmc_trajectory_length > 0:
            raise ValueError("hmc_trajectory_length must be positive, got "
                             f"{self.hmc_trajectory_length}.")
        if not 0.0 < self.target_accept < 1.0:
            raise ValueError(f"target_accept must lie in (0, 1), got {self.target_accept}.")

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> MCMCConfig:
        """Build from a dict, with a clear error for unknown keys."""
        names = {f.name for f in fields(cls)}
        unknown = set(options) - names
        if unknown:
            raise TypeError(f"Unknown MCMC options {sorted(unknown)}; valid: {sorted(names)}.")
        return cls(**options)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MCMCResult:
    """Samples and diagnostics of one :func:`run_mcmc` call.

    Attributes:
        samples: ``(num_samples, B, D)`` draws in parameter space.
        chains: ``(C, S, B, D)`` the kept draws of every chain (``S`` per chain).
        rhat: ``(B, D)`` split R-hat per observation and parameter.
        ess: ``(B, D)`` effective sample size of all chains together.
        acceptance_rate: mean HMC acceptance probability (1.0 for slice sampling).
        num_divergent: HMC divergences after warm-up.
        num_evaluations: potential evaluations (rows) in total.
        seconds: wall time.
        thin: thinning used (``config["thin"]`` times the rounds the ESS rule asked for).
        num_chains: chains per observation.
    """

    samples: Tensor
    chains: Tensor
    rhat: Tensor
    ess: Tensor
    method: str
    acceptance_rate: float = 1.0
    num_divergent: int = 0
    num_evaluations: int = 0
    seconds: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)
    thin: int = 1
    num_chains: int = 0

    def summary(self) -> dict[str, Any]:
        """Plain-value summary (max R-hat, min ESS, rates) for logs and reports."""
        return {"method": self.method, "max_rhat": _nanmax(self.rhat), "min_ess": _nanmin(self.ess),
                "acceptance_rate": self.acceptance_rate, "num_divergent": self.num_divergent,
                "num_evaluations": self.num_evaluations, "seconds": round(self.seconds, 3),
                "num_chains": self.num_chains, "thin": self.thin}


def _nanmax(t: Tensor) -> float | None:
    t = t[~torch.isnan(t)]
    return float(t.max()) if t.numel() else None


def _nanmin(t: Tensor) -> float | None:
    t = t[~torch.isnan(t)]
    return float(t.min()) if t.numel() else None


#: Advice appended to the error when MCMC runs out of its wall-clock budget.
MCMC_BUDGET_ADVICE = ("Use fewer num_chains or warmup_steps, ask for fewer samples, prefer "
                      "method='slice' when HMC diverges, or check that the observation resembles "
                      "the training simulations (a potential far from its training range is slow "
                      "and unreliable).")


def run_mcmc(potential: Potential, prior: Distribution, num_samples: int, num_batches: int = 1,
             config: MCMCConfig | None = None, max_seconds: float | Budget | None = None,
             proposal: Proposal | None = None, **options: Any) -> MCMCResult:
    """Draw ``num_samples`` per observation from ``exp(potential)`` restricted to the support.

    Args:
        potential: ``f(theta (M, D), index (M,)) -> (M,)``, the unnormalized log posterior
            (log prior included) of each row; ``index`` is the row's observation
            ``0..num_batches-1``. May return ``-inf``; must be differentiable for HMC.
        prior: gives the support (chains never leave it) and the initialization draws.
        num_samples: draws returned per observation.
        num_batches: ``B``, the number of observations sampled at once.
        config: :class:`MCMCConfig`; keyword ``options`` override its fields.
        max_seconds: wall-clock budget (seconds or a running :class:`~sbi_core.budget.Budget`;
            ``None``: no limit), checked after every transition; past it a
            :class:`~sbi_core.budget.SamplingTimeoutError` says how many steps were done.
        proposal: initialization candidates instead of prior draws (e.g. an NPE posterior):
            ``proposal(k) -> (theta (B, k, D), log_q (B, k))``.

    Returns:
        :class:`MCMCResult` with ``samples`` ``(num_samples, B, D)``, R-hat and ESS.
    """
    cfg = MCMCConfig.from_options({**(config or MCMCConfig()).to_dict(), **options})
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}.")
    start = time.perf_counter()
    budget = Budget.of(max_seconds, "MCMC", MCMC_BUDGET_ADVICE)
    prior = _float32_prior(prior)
    transform = unconstrained_transform(prior)
    c, b = cfg.num_chains, num_batches

    def log_density(z: Tensor, rows: Tensor) -> Tensor:
        theta = transform(z)
        lp = potential(theta, rows // c) + transform.log_abs_det_jacobian(z, theta)
        return lp.to(z.dtype)  # a float64 prior's log_prob must not turn the chains float64

    with torch.no_grad():
        theta0 = initial_chains(potential, prior, b, c, cfg.init_strategy,
                                cfg.init_num_candidates, proposal=proposal)
    z = transform.inv(theta0.reshape(b * c, -1))  # rows ordered (observation, chain)
    z = torch.nan_to_num(z, nan=0.0, posinf=20.0, neginf=-20.0)
    dim = z.shape[1]
    rows = torch.arange(b * c)
    scale = _initial_scale(prior, transform)
    method, first = _resolve_method(cfg.method, prior, log_density, z, rows)
    task = f"MCMC ({method}, {b * c} chains)"
    per_chain = max(math.ceil(num_samples / c), cfg.min_draws_per_chain)
    rounds_max = cfg.max_thin if cfg.ess_fraction is not None else 1
    total = cfg.warmup_steps + per_chain * cfg.thin
    done = [0]
    budget.check("initializing the chains", task=task, advice=MCMC_BUDGET_ADVICE)

    def check() -> None:
        kept = max(done[0] - cfg.warmup_steps, 0) // cfg.thin * c
        budget.check(f"{done[0]} of {total} transitions done ({cfg.warmup_steps} warm-up, "
                     f"{min(kept, num_samples):,} of {num_samples:,} samples per observation "
                     "kept)", task=task, advice=MCMC_BUDGET_ADVICE)

    bar = progress_bar(total=total, progress=cfg.progress, desc=task, unit="step")
    try:
        if method == "slice":
            with torch.no_grad():
                state = SliceState(z, log_density(z, rows), scale.expand(b * c, -1).clone())

                def step(tune: bool) -> Tensor:
                    slice_step(state, log_density, tune=tune)
                    return state.z
                for _ in range(cfg.warmup_steps):
                    _advance(step(True), done, bar, check)
                kept, rounds = _sample_rounds(step, per_chain, cfg, rounds_max, b, c, done, bar,
                                              check, num_samples)
            evaluations, acceptance, divergent = state.num_evaluations, 1.0, 0
        else:
            lp, grad = first if first is not None else hmc_log_density_and_grad(
                log_density, z, rows)
            state_h = HMCState(z, lp, grad, b, scale, cfg.target_accept,
                               cfg.hmc_trajectory_length, cfg.hmc_max_steps, cfg.hmc_num_steps)
            state_h.num_evaluations += b * c
            windows = adaptation_windows(cfg.warmup_steps)
            window_start = int(0.15 * cfg.warmup_steps)
            for i in range(cfg.warmup_steps):
                hmc_step(state_h, log_density, adapt=True)
                if windows and window_start <= i < windows[-1]:
                    state_h.collect()
                if i + 1 in windows:
                    state_h.set_metric_from_window()
                _advance(state_h.z, done, bar, check)
            state_h.finish_warmup()
            state_h.accept_sum.zero_()
            state_h.num_transitions, state_h.num_divergent = 0, 0

            def step_h(tune: bool) -> Tensor:
                hmc_step(state_h, log_density)
                return state_h.z
            kept, rounds = _sample_rounds(step_h, per_chain, cfg, rounds_max, b, c, done, bar,
                                          check, num_samples)
            evaluations = state_h.num_evaluations
            acceptance = float(state_h.accept_sum.mean()) / max(state_h.num_transitions, 1)
            divergent = state_h.num_divergent
    finally:
        bar.close()
    with torch.no_grad():
        zs = _thinned(kept, rounds)  # (S, B*C, D)
        s = zs.shape[0]
        thetas = transform(zs.reshape(-1, dim)).reshape(s, b, c, dim)
    chains = thetas.permute(2, 0, 1, 3).contiguous()  # (C, S, B, D)
    samples = thetas.permute(0, 2, 1, 3).reshape(s * c, b, dim)
    if s * c > num_samples:  # evenly over the kept draws, all chains alike
        samples = samples[torch.linspace(0, s * c - 1, num_samples).round().long()]
    result = MCMCResult(
        samples=samples, chains=chains, rhat=split_rhat(chains), ess=effective_sample_size(chains),
        method=method, acceptance_rate=acceptance, num_divergent=divergent,
        num_evaluations=evaluations, seconds=time.perf_counter() - start, config=cfg.to_dict(),
        thin=cfg.thin * rounds, num_chains=c)
    _warn(result, cfg)
    return result


class _Float32Prior(Distribution):
    """A prior whose draws are float64 (built from float64 tensors, or your own class
    returning numpy's float64), seen in float32 like everything else MCMC computes."""

    arg_constraints: dict = {}

    def __init__(self, prior: Distribution):
        self.prior = prior
        super().__init__(prior.batch_shape, prior.event_shape, validate_args=False)

    @property
    def support(self) -> Any:
        return self.prior.support

    def sample(self, sample_shape: torch.Size | tuple = ()) -> Tensor:
        return self.prior.sample(sample_shape).float()

    def log_prob(self, value: Tensor) -> Tensor:
        return self.prior.log_prob(value).float()


def _float32_prior(prior: Distribution) -> Distribution:
    """``prior``, or a float32 view of it when its draws are another dtype (the probe draw
    leaves torch's and numpy's global random state as they were)."""
    import numpy as np

    state = np.random.get_state()
    with torch.random.fork_rng():
        dtype = prior.sample((1,)).dtype
    np.random.set_state(state)
    if dtype == torch.float32:
        return prior
    return _Float32Prior(prior)


def _resolve_method(method: str, prior: Distribution, log_density: Callable[[Tensor, Tensor], Tensor],
                    z: Tensor, rows: Tensor) -> tuple[str, tuple[Tensor, Tensor] | None]:
    """``"auto"`` → ``"hmc"`` when theta is continuous and the log density has finite
    gradients at the starting points, else ``"slice"``; also returns those gradients."""
    if method == "slice":
        return method, None
    support = _support(prior)  # None when the prior's class defines no support
    if method == "auto" and support is not None and getattr(support, "is_discrete", False):
        return "slice", None
    try:
        lp, grad = hmc_log_density_and_grad(log_density, z, rows)
    except (ValueError, RuntimeError, NotImplementedError):
        if method == "hmc":
            raise
        return "slice", None
    usable = bool(torch.isfinite(lp).any()) and bool(grad.abs().sum() > 0)
    if method == "auto" and not usable:
        return "slice", None
    return "hmc", (lp, grad)


def _advance(z: Tensor, done: list[int], bar: Any, check: Callable[[], None]) -> None:
    done[0] += 1
    bar.update(1)
    check()


def _sample_rounds(step: Callable[[bool], Tensor], per_chain: int, cfg: MCMCConfig,
                   rounds_max: int, b: int, c: int, done: list[int], bar: Any,
                   check: Callable[[], None], num_samples: int) -> tuple[list[Tensor], int]:
    """Rounds of ``per_chain * thin`` transitions until the kept draws reach the ESS target
    (or ``rounds_max``); returns all kept states and the number of rounds."""
    kept: list[Tensor] = []
    rounds = 0
    while True:
        rounds += 1
        for i in range(per_chain * cfg.thin):
            z = step(False)
            if (i + 1) % cfg.thin == 0:
                kept.append(z.clone())
            _advance(z, done, bar, check)
        if rounds >= rounds_max or cfg.ess_fraction is None:
            return kept, rounds
        zs = torch.stack(kept)  # (S, B*C, D)
        chains = zs.reshape(zs.shape[0], b, c, -1).permute(2, 0, 1, 3)
        ess = effective_sample_size(chains)
        if not bool((ess < cfg.ess_fraction * num_samples).any()):
            return kept, rounds
        bar.total = (bar.total or 0) + per_chain * cfg.thin
        bar.refresh()


def _thinned(kept: list[Tensor], rounds: int) -> Tensor:
    """Every ``rounds``-th of the kept states ``(S, M, D)``, ending at the last."""
    zs = torch.stack(kept)
    return zs[rounds - 1::rounds] if rounds > 1 else zs


def _initial_scale(prior: Distribution, transform: Any) -> Tensor:
    """Per-dimension std of prior draws in unconstrained space, as widths / step sizes."""
    with torch.no_grad():
        z = transform.inv(prior.sample((2000,)))
        z = z[torch.isfinite(z).all(-1)]
        std = z.std(0) if z.shape[0] > 1 else torch.ones(z.shape[-1])
    return torch.nan_to_num(std, nan=1.0).clamp(min=1e-3)


def _warn(result: MCMCResult, cfg: MCMCConfig) -> None:
    worst = _nanmax(result.rhat)
    if cfg.warn_rhat is not None and worst is not None and worst > cfg.warn_rhat:
        warnings.warn(
            f"MCMC chains have not mixed: max R-hat {worst:.3f} > {cfg.warn_rhat}. The samples "
            "may miss or misweight parts of the posterior. Increase warmup_steps or num_chains, "
            "or check the potential for separated modes.", stacklevel=3)
    if result.num_divergent:
        warnings.warn(
            f"{result.num_divergent} HMC transitions diverged after warm-up; the samples may be "
            "biased. Use method='slice' or raise target_accept.", stacklevel=3)
