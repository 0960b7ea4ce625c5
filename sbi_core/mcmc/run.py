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
from sbi_core.mcmc.hmc import HMCState, hmc_log_density_and_grad, hmc_step
from sbi_core.mcmc.init import INIT_STRATEGIES, initial_chains
from sbi_core.mcmc.slice import SliceState, slice_step
from sbi_core.priors import unconstrained_transform
from sbi_core.progress import progress_bar

__all__ = ["MCMCConfig", "MCMCResult", "run_mcmc", "MCMC_METHODS"]

MCMC_METHODS = ("slice", "hmc")

#: ``potential(theta (M, D), index (M,)) -> (M,)``: unnormalized log posterior of each row,
#: ``index`` naming the observation the row belongs to (``0..B-1``).
Potential = Callable[[Tensor, Tensor], Tensor]


@dataclass
class MCMCConfig:
    """Settings of :func:`run_mcmc` (plain values, saved with MCMC posteriors).

    Attributes:
        method: ``"slice"`` (vectorized slice sampling, default, no gradients needed) or
            ``"hmc"`` (Hamiltonian Monte Carlo, needs a differentiable potential).
        num_chains: parallel chains per observation.
        warmup_steps: transitions per chain discarded while tuning widths / step sizes.
        thin: keep every ``thin``-th transition after warm-up.
        init_strategy: ``"sir"`` (default), ``"best"`` or ``"prior"`` (see ``mcmc.init``).
        init_num_candidates: prior draws per observation for the initialization.
        hmc_num_steps: leapfrog steps per HMC transition.
        target_accept: HMC acceptance rate targeted by step-size adaptation.
        progress: show a tqdm progress bar (``None``: only on a terminal, see
            :mod:`sbi_core.progress`).
        warn_rhat: warn when the largest R-hat exceeds this value (``None``: never).
    """

    method: str = "slice"
    num_chains: int = 20
    warmup_steps: int = 100
    thin: int = 1
    init_strategy: str = "sir"
    init_num_candidates: int = 1000
    hmc_num_steps: int = 10
    target_accept: float = 0.8
    progress: bool | None = None
    warn_rhat: float | None = 1.1

    def __post_init__(self) -> None:
        if self.method not in MCMC_METHODS:
            raise ValueError(f"Unknown MCMC method {self.method!r}; use one of {MCMC_METHODS}.")
        if self.init_strategy not in INIT_STRATEGIES:
            raise ValueError(f"Unknown init_strategy {self.init_strategy!r}; use one of "
                             f"{INIT_STRATEGIES}.")
        for name in ("num_chains", "thin", "hmc_num_steps", "init_num_candidates"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}.")
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

    def summary(self) -> dict[str, Any]:
        """Plain-value summary (max R-hat, min ESS, rates) for logs and reports."""
        return {"method": self.method, "max_rhat": _nanmax(self.rhat), "min_ess": _nanmin(self.ess),
                "acceptance_rate": self.acceptance_rate, "num_divergent": self.num_divergent,
                "num_evaluations": self.num_evaluations, "seconds": round(self.seconds, 3)}


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
             **options: Any) -> MCMCResult:
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

    Returns:
        :class:`MCMCResult` with ``samples`` ``(num_samples, B, D)``, R-hat and ESS.
    """
    cfg = MCMCConfig.from_options({**(config or MCMCConfig()).to_dict(), **options})
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}.")
    start = time.perf_counter()
    budget = Budget.of(max_seconds, "MCMC", MCMC_BUDGET_ADVICE)
    task = f"MCMC ({cfg.method}, {num_batches * cfg.num_chains} chains)"
    transform = unconstrained_transform(prior)
    c, b = cfg.num_chains, num_batches

    def log_density(z: Tensor, rows: Tensor) -> Tensor:
        theta = transform(z)
        lp = potential(theta, rows // c) + transform.log_abs_det_jacobian(z, theta)
        return lp

    with torch.no_grad():
        theta0 = initial_chains(potential, prior, b, c, cfg.init_strategy,
                                cfg.init_num_candidates)
    z = transform.inv(theta0.reshape(b * c, -1))  # rows ordered (observation, chain)
    z = torch.nan_to_num(z, nan=0.0, posinf=20.0, neginf=-20.0)
    dim = z.shape[1]
    rows = torch.arange(b * c)
    per_chain = math.ceil(num_samples / c)
    total = cfg.warmup_steps + per_chain * cfg.thin
    scale = _initial_scale(prior, transform, b, c)
    kept: list[Tensor] = []
    budget.check("initializing the chains", task=task, advice=MCMC_BUDGET_ADVICE)

    def check(step: int) -> None:
        done = step + 1
        budget.check(f"{done} of {total} transitions done ({cfg.warmup_steps} warm-up, "
                     f"{max(done - cfg.warmup_steps, 0) // cfg.thin * c:,} of "
                     f"{num_samples:,} samples per observation kept)", task=task,
                     advice=MCMC_BUDGET_ADVICE)

    bar = progress_bar(total=total, progress=cfg.progress, desc=task, unit="step")
    try:
        if cfg.method == "slice":
            with torch.no_grad():
                state = SliceState(z, log_density(z, rows), scale)
                for step in range(total):
                    slice_step(state, log_density, tune=step < cfg.warmup_steps)
                    _keep(kept, state.z, step, cfg)
                    bar.update(1)
                    if step + 1 < total:
                        check(step)
            evaluations, acceptance, divergent = state.num_evaluations, 1.0, 0
        else:
            lp, grad = hmc_log_density_and_grad(log_density, z, rows)
            state_h = HMCState(z, lp, grad, 0.1 * scale.mean(-1), cfg.target_accept)
            half, quarter = cfg.warmup_steps // 2, cfg.warmup_steps // 4
            for step in range(total):
                warm = step < cfg.warmup_steps
                if step == cfg.warmup_steps:
                    state_h.finish_warmup()
                    state_h.accept_sum.zero_()
                    state_h.num_transitions, state_h.num_divergent = 0, 0
                hmc_step(state_h, log_density, cfg.hmc_num_steps, adapt=warm)
                if warm and quarter <= step < half:
                    state_h.warmup_draws.append(state_h.z.clone())
                if warm and step == half - 1 and cfg.warmup_steps >= 20:
                    state_h.set_mass_from_warmup(c)
                _keep(kept, state_h.z, step, cfg)
                bar.update(1)
                if step + 1 < total:
                    check(step)
            evaluations = state_h.num_evaluations
            acceptance = float(state_h.accept_sum.mean()) / max(state_h.num_transitions, 1)
            divergent = state_h.num_divergent
    finally:
        bar.close()
    with torch.no_grad():
        zs = torch.stack(kept)  # (S, B*C, D)
        s = zs.shape[0]
        thetas = transform(zs.reshape(-1, dim)).reshape(s, b, c, dim)
    chains = thetas.permute(2, 0, 1, 3).contiguous()  # (C, S, B, D)
    samples = thetas.permute(0, 2, 1, 3).reshape(s * c, b, dim)[:num_samples]
    result = MCMCResult(
        samples=samples, chains=chains, rhat=split_rhat(chains), ess=effective_sample_size(chains),
        method=cfg.method, acceptance_rate=acceptance, num_divergent=divergent,
        num_evaluations=evaluations, seconds=time.perf_counter() - start, config=cfg.to_dict())
    _warn(result, cfg)
    return result


def _keep(kept: list[Tensor], z: Tensor, step: int, cfg: MCMCConfig) -> None:
    after = step - cfg.warmup_steps
    if after >= 0 and (after + 1) % cfg.thin == 0:
        kept.append(z.clone())


def _initial_scale(prior: Distribution, transform: Any, b: int, c: int) -> Tensor:
    """Per-dimension std of prior draws in unconstrained space, as widths / step sizes."""
    with torch.no_grad():
        z = transform.inv(prior.sample((2000,)))
        z = z[torch.isfinite(z).all(-1)]
        std = z.std(0) if z.shape[0] > 1 else torch.ones(z.shape[-1])
    std = torch.nan_to_num(std, nan=1.0).clamp(min=1e-3)
    return std.expand(b * c, -1).clone()


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
