r"""Samplers and ODE densities for score / vector-field models, batched over any leading shape.

A *score function* is ``score_fn(z (..., D), t: float) -> (..., D)``, the score
:math:`\nabla_z \log p_t(z)` of the diffused target under a :class:`~estimators.sde.Schedule`.
Every sampler starts from ``z`` at ``schedule.t_max`` and returns ``z`` near ``t_min``:

- :func:`euler_maruyama`: the reverse SDE
  :math:`dz = [f z - g^2 s]\,dt + g\,d\bar W`, ending with a Tweedie denoising step.
- :func:`predictor_corrector`: Euler--Maruyama predictor and Langevin corrector steps whose
  size follows the signal-to-noise rule of Song et al. (2021).
- :func:`ddim`: DDIM / ancestral sampling; ``eta=1`` samples the Gaussian reverse transition of
  the forward process given the denoised estimate, ``eta=0`` is deterministic.
- :func:`probability_flow`: the probability-flow ODE, solved by Heun's method in the variables
  :math:`y = z/m_t`, :math:`\lambda = \sigma_t/m_t` in which it reads
  :math:`dy/d\lambda = \hat\varepsilon = -\sigma_t s` (well conditioned for every schedule,
  including flow matching).

:func:`ode_log_prob` integrates a velocity field and its divergence (exact trace for small
``D``, Hutchinson's estimator otherwise) to evaluate :math:`\log p_{t_{lo}}(z)`.

:func:`monitored` wraps a score function so that every evaluation first checks a
wall-clock :class:`~sbi_core.budget.Budget` (and ticks an optional progress bar): all
samplers evaluate the score at least once per step, so every one of them, and any other
loop over a score function (annealed Langevin, precision estimates), stops within one
step of its budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from estimators.sde import Schedule
from sbi_core.budget import Budget

__all__ = ["monitored",
           "time_grid", "euler_maruyama", "predictor_corrector", "ddim", "probability_flow",
           "ode_log_prob", "divergence", "ScoreFn", "VelocityFn"]

ScoreFn = Callable[[Tensor, float], Tensor]
VelocityFn = Callable[[Tensor, float], Tensor]


def monitored(score_fn: ScoreFn, budget: Budget, task: str = "Score sampling",
              bar: Any = None) -> ScoreFn:
    """``score_fn`` that first checks ``budget`` (reporting the diffusion time reached and the
    evaluations done) and updates ``bar`` (a tqdm bar or None) on every call."""
    calls = 0
    first_t: float | None = None

    def fn(z: Tensor, t: float) -> Tensor:
        nonlocal calls, first_t
        first_t = t if first_t is None else first_t
        budget.check(f"reached diffusion time t={t:.3g} (started at t={first_t:.3g}, ends near "
                     f"0) after {calls} score evaluations on {z.shape[0]:,} samples", task=task)
        calls += 1
        if bar is not None:
            bar.update(1)
        return score_fn(z, t)

    return fn


def time_grid(schedule: Schedule, steps: int, rho: float = 7.0) -> list[float]:
    """``steps + 1`` decreasing times from ``t_max`` to ``t_min``.

    Spaced like Karras et al. (2022): uniform in ``lambda^(1/rho)`` where
    ``lambda = sigma_t / m_t`` is the noise-to-signal ratio, so that steps concentrate at low
    noise where narrow posteriors (e.g. of many iid observations) are resolved. The times are
    found by bisection, which works for every schedule.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}.")

    def lam(t: Tensor) -> Tensor:
        return schedule.std(t) / schedule.mean_scale(t)

    lo_t, hi_t = torch.tensor(schedule.t_min, dtype=torch.float64), \
        torch.tensor(schedule.t_max, dtype=torch.float64)
    lam_lo, lam_hi = float(lam(lo_t)), float(lam(hi_t))
    frac = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    target = (lam_hi ** (1 / rho) + frac * (lam_lo ** (1 / rho) - lam_hi ** (1 / rho))) ** rho
    a = torch.full_like(target, schedule.t_min)
    b = torch.full_like(target, schedule.t_max)
    for _ in range(60):
        mid = 0.5 * (a + b)
        above = lam(mid) > target
        b = torch.where(above, mid, b)
        a = torch.where(above, a, mid)
    ts = (0.5 * (a + b)).tolist()
    ts[0], ts[-1] = schedule.t_max, schedule.t_min
    return ts


def _f(schedule: Schedule, fn: str, t: float) -> float:
    return float(getattr(schedule, fn)(torch.tensor(t)))


def euler_maruyama(score_fn: ScoreFn, schedule: Schedule, z: Tensor, steps: int = 500,
                   denoise: bool = True) -> Tensor:
    """Reverse-SDE samples ``(..., D)`` from initial noise ``z`` ``(..., D)`` at ``t_max``."""
    ts = time_grid(schedule, steps)
    for t, t_next in zip(ts[:-1], ts[1:]):
        dt = t - t_next
        f, g2 = _f(schedule, "drift_scale", t), _f(schedule, "diffusion_sq", t)
        z = z - (f * z - g2 * score_fn(z, t)) * dt + math.sqrt(g2 * dt) * torch.randn_like(z)
    return _tweedie(score_fn, schedule, z, ts[-1]) if denoise else z


def _tweedie(score_fn: ScoreFn, schedule: Schedule, z: Tensor, t: float) -> Tensor:
    """``E[z_0 | z_t] = (z_t + sigma_t^2 s) / m_t``."""
    m, sd = _f(schedule, "mean_scale", t), _f(schedule, "std", t)
    return (z + sd**2 * score_fn(z, t)) / m


def predictor_corrector(score_fn: ScoreFn, schedule: Schedule, z: Tensor, steps: int = 500,
                        corrector_steps: int = 1, snr: float = 0.1,
                        denoise: bool = True) -> Tensor:
    """Euler--Maruyama predictor with ``corrector_steps`` Langevin corrections per level.

    The Langevin step is ``2 (snr ||noise|| / ||score||)^2`` with norms averaged over the
    samples of each observation (Song et al. 2021).
    """
    ts = time_grid(schedule, steps)
    for t, t_next in zip(ts[:-1], ts[1:]):
        for _ in range(corrector_steps):
            s = score_fn(z, t)
            noise = torch.randn_like(z)
            # norms averaged over the samples (dim 0), per observation, as in Song et al.
            ratio = noise.norm(dim=-1, keepdim=True).mean(0, keepdim=True) / \
                s.norm(dim=-1, keepdim=True).mean(0, keepdim=True).clamp(min=1e-12)
            step = 2.0 * (snr * ratio) ** 2
            z = z + step * s + torch.sqrt(2.0 * step) * noise
        dt = t - t_next
        f, g2 = _f(schedule, "drift_scale", t), _f(schedule, "diffusion_sq", t)
        z = z - (f * z - g2 * score_fn(z, t)) * dt + math.sqrt(g2 * dt) * torch.randn_like(z)
    return _tweedie(score_fn, schedule, z, ts[-1]) if denoise else z


def ddim(score_fn: ScoreFn, schedule: Schedule, z: Tensor, steps: int = 500,
         eta: float = 1.0) -> Tensor:
    """DDIM steps ``t -> t'``: ``z' = m' z0_hat + sqrt(sigma'^2 - c^2) eps_hat + c noise``.

    ``c^2 = eta^2 sigma'^2 (sigma^2 - (m/m')^2 sigma'^2) / sigma^2`` is the variance of the
    forward process' reverse transition given ``z0_hat`` (ancestral sampling for ``eta=1``).
    """
    ts = time_grid(schedule, steps)
    for t, t_next in zip(ts[:-1], ts[1:]):
        m, sd = _f(schedule, "mean_scale", t), _f(schedule, "std", t)
        m2, sd2 = _f(schedule, "mean_scale", t_next), _f(schedule, "std", t_next)
        eps = -sd * score_fn(z, t)
        z0 = (z - sd * eps) / m
        c2 = eta**2 * sd2**2 * max(sd**2 - (m / m2) ** 2 * sd2**2, 0.0) / sd**2
        z = m2 * z0 + math.sqrt(max(sd2**2 - c2, 0.0)) * eps
        if c2 > 0:
            z = z + math.sqrt(c2) * torch.randn_like(z)
    return z


def probability_flow(score_fn: ScoreFn, schedule: Schedule, z: Tensor,
                     steps: int = 100) -> Tensor:
    """Probability-flow ODE by Heun's method in ``(y = z/m, lambda = sigma/m)``."""
    ts = time_grid(schedule, steps)
    lam = [_f(schedule, "std", t) / _f(schedule, "mean_scale", t) for t in ts]
    ms = [_f(schedule, "mean_scale", t) for t in ts]
    y = z / ms[0]

    def eps(y_: Tensor, k: int) -> Tensor:
        return -_f(schedule, "std", ts[k]) * score_fn(ms[k] * y_, ts[k])

    for k in range(steps):
        d1 = eps(y, k)
        y_euler = y + (lam[k + 1] - lam[k]) * d1
        if k + 1 < steps:
            y = y + 0.5 * (lam[k + 1] - lam[k]) * (d1 + eps(y_euler, k + 1))
        else:
            y = y_euler
    return ms[-1] * y


def divergence(velocity_fn: VelocityFn, z: Tensor, t: float, probe: Tensor | None
               ) -> tuple[Tensor, Tensor]:
    """Velocity ``(..., D)`` and its divergence ``(...)``: exact when ``probe`` is None, else
    Hutchinson's ``probe^T (dv/dz) probe``."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        v = velocity_fn(z, t)
        if probe is None:
            div = torch.zeros(z.shape[:-1], dtype=z.dtype, device=z.device)
            for i in range(z.shape[-1]):
                g = torch.autograd.grad(v[..., i].sum(), z, retain_graph=i + 1 < z.shape[-1])[0]
                div = div + g[..., i]
        else:
            g = torch.autograd.grad((v * probe).sum(), z)[0]
            div = (g * probe).sum(-1)
    return v.detach(), div.detach()


def ode_log_prob(velocity_fn: VelocityFn, z: Tensor, t_lo: float, t_hi: float, base_var: float,
                 steps: int = 50, exact_trace: bool = True) -> Tensor:
    r"""``log p_{t_lo}(z)`` ``(...)`` for ``z`` ``(..., D)`` by RK4 from ``t_lo`` to ``t_hi``.

    Uses :math:`\log p_{lo}(z_{lo}) = \log N(z_{hi}; 0, \mathrm{base\_var}\, I)
    + \int_{lo}^{hi} \nabla\cdot v\,dt`. With ``exact_trace=False`` one Rademacher probe per
    sample (fixed along the trajectory) gives Hutchinson's unbiased trace estimate.
    """
    probe = None if exact_trace else torch.randint(0, 2, z.shape, device=z.device).to(z) * 2 - 1
    h = (t_hi - t_lo) / steps
    acc = torch.zeros(z.shape[:-1], dtype=z.dtype, device=z.device)
    t = t_lo
    for _ in range(steps):
        k1, d1 = divergence(velocity_fn, z, t, probe)
        k2, d2 = divergence(velocity_fn, z + 0.5 * h * k1, t + 0.5 * h, probe)
        k3, d3 = divergence(velocity_fn, z + 0.5 * h * k2, t + 0.5 * h, probe)
        k4, d4 = divergence(velocity_fn, z + h * k3, t + h, probe)
        z = z + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
        acc = acc + h / 6.0 * (d1 + 2 * d2 + 2 * d3 + d4)
        t = t + h
    d = z.shape[-1]
    base = -0.5 * (z**2).sum(-1) / base_var - 0.5 * d * math.log(2 * math.pi * base_var)
    return base + acc
