r"""Lotka-Volterra predator-prey model (Lueckmann et al. 2021, sbibm ``lotka_volterra``).

Parameters :math:`(\alpha, \beta, \gamma, \delta)`, each log-normal with location
:math:`(-0.125, -3, -0.125, -3)` and scale 0.5. Prey :math:`u` and predators :math:`v` start
at :math:`(30, 1)` and follow

.. math:: \dot u = \alpha u - \beta u v, \qquad \dot v = -\gamma v + \delta u v

for 20 time units (scipy DOP853, all parameter sets stacked, ``simulators.ode``). Data: at
times 0, 2.1, ..., 18.9 (10 values per species),
:math:`x \sim \mathrm{LogNormal}(\log \mathrm{clip}(u, 10^{-10}, 10^4), 0.1)`, laid out as
``(u(t_1..t_10), v(t_1..t_10))`` (20 values).
Reference samples: exact log-normal likelihood with differential-evolution MCMC
(``simulators.reference_mcmc``), cached on disk.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from sbi_core.priors import independent
from sbi_core.problem import OBSERVATION_SEED_BASE, Problem
from simulators.ode import solve_batched
from simulators.reference_mcmc import cached_reference, de_mcmc

__all__ = ["lotka_volterra", "populations", "simulate_lotka_volterra",
           "lotka_volterra_log_likelihood"]

TIMES = np.arange(0, 200, 21) * 0.1  # 0, 2.1, ..., 18.9
NOISE = 0.1


#: Observation k uses seed OBSERVATION_SEED_BASE + OBSERVATION_OFFSETS[k - 1]: the first ten
#: offsets whose draw has noise-free populations within [0.01, 1000] at all observation times, as the SBI benchmark also skips degenerate draws.
OBSERVATION_OFFSETS = [3, 4, 5, 6, 9, 10, 12, 13, 15, 16]


def _rhs(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    u, v = y[:, 0], y[:, 1]
    alpha, beta, gamma, delta = p.T
    return np.stack([alpha * u - beta * u * v, -gamma * v + delta * u * v], 1)


def populations(theta: Tensor) -> Tensor:
    """Noise-free ``(u(t_k), v(t_k))`` flattened ``(N, 20)`` float64 (NaN where the solve failed)."""
    sol = solve_batched(_rhs, np.array([30.0, 1.0]), theta.detach().double().numpy(), TIMES,
                        atol=1e-10)
    return torch.from_numpy(sol.reshape(sol.shape[0], -1))


def simulate_lotka_volterra(theta: Tensor) -> Tensor:
    """``theta`` ``(N, 4)`` → noisy populations ``(N, 20)``."""
    mu = populations(theta).clamp(1e-10, 1e4).log()
    return (mu + NOISE * torch.randn_like(mu)).exp().to(theta.dtype)


def lotka_volterra_log_likelihood(theta: Tensor, x_o: Tensor) -> Tensor:
    """Exact ``log p(x_o | theta)`` ``(N,)``; ``-inf`` where the ODE solve failed."""
    mu = populations(theta).clamp(1e-10, 1e4).log()
    logx = torch.as_tensor(x_o, dtype=torch.float64).log()
    ll = (-0.5 * ((logx - mu) / NOISE) ** 2 - logx - math.log(NOISE)
          - 0.5 * math.log(2 * math.pi)).sum(1)
    return torch.where(torch.isfinite(ll), ll, torch.full_like(ll, -math.inf))


def lotka_volterra() -> Problem:
    """The ``lotka_volterra`` benchmark problem (D = 4, x in R^20)."""
    prior = independent(*[("lognormal", {"loc": loc, "scale": 0.5})
                          for loc in (-0.125, -3.0, -0.125, -3.0)])

    def reference(x_o: Tensor, num_samples: int, seed: int = 0) -> Tensor:
        def run() -> Tensor:
            return de_mcmc(lambda t: lotka_volterra_log_likelihood(t, x_o), prior, num_samples,
                           seed, num_chains=1000, num_init=20_000, warmup=200, thin=15)
        return cached_reference("lotka_volterra", x_o, num_samples, seed, run)

    return Problem(
        prior,
        simulate_lotka_volterra,
        param_names=["alpha", "beta", "gamma", "delta"],
        name="lotka_volterra",
        x_shape=(2 * len(TIMES),),
        reference_posterior=reference,
        observation_seeds=[OBSERVATION_SEED_BASE + k for k in OBSERVATION_OFFSETS],
        description="Lotka-Volterra predator-prey ODE; x = log-normal noisy prey and predator "
                    "counts at 10 times.",
    )
