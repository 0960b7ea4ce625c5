r"""SIR epidemic model (Lueckmann et al. 2021, sbibm ``sir``).

Parameters: contact rate :math:`\beta \sim \mathrm{LogNormal}(\log 0.4, 0.5)` and recovery
rate :math:`\gamma \sim \mathrm{LogNormal}(\log 0.125, 0.2)`. Population :math:`N = 10^6`,
:math:`(S, I, R)(0) = (N - 1, 1, 0)`,

.. math:: \dot S = -\beta S I / N, \quad \dot I = \beta S I / N - \gamma I, \quad
          \dot R = \gamma I,

solved for 160 days with scipy (DOP853, all parameter sets stacked in one system,
``simulators.ode``). Data: at days 0, 17, 34, ..., 153 (10 values),
:math:`x_k \sim \mathrm{Binomial}(1000, I(t_k)/N)`.
Reference samples: exact binomial likelihood with differential-evolution MCMC
(``simulators.reference_mcmc``), cached on disk.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Binomial

from sbi_core.priors import independent
from sbi_core.problem import Problem
from simulators.ode import solve_batched
from simulators.reference_mcmc import cached_reference, de_mcmc

__all__ = ["sir", "infected_fraction", "simulate_sir", "sir_log_likelihood"]

POPULATION = 1_000_000.0
TOTAL_COUNT = 1000
TIMES = np.arange(0.0, 160.0, 17.0)  # days 0, 17, ..., 153


def _rhs(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    s, i = y[:, 0], y[:, 1]
    beta, gamma = p[:, 0], p[:, 1]
    infection = beta * s * i
    return np.stack([-infection, infection - gamma * i, gamma * i], 1)


def infected_fraction(theta: Tensor) -> Tensor:
    """``I(t_k)/N`` ``(N, 10)`` float64 for ``theta`` ``(N, 2)`` (NaN where the solve failed)."""
    y0 = np.array([1.0 - 1.0 / POPULATION, 1.0 / POPULATION, 0.0])
    sol = solve_batched(_rhs, y0, theta.detach().double().numpy(), TIMES, atol=1e-14)
    return torch.from_numpy(sol[:, 1, :])


def simulate_sir(theta: Tensor) -> Tensor:
    """``theta`` ``(N, 2)`` → infected counts out of 1000 at 10 times ``(N, 10)``."""
    p = infected_fraction(theta)
    ok = torch.isfinite(p).all(1)
    x = torch.full(p.shape, float("nan"), dtype=torch.float64)
    x[ok] = Binomial(TOTAL_COUNT, probs=p[ok].clamp(0.0, 1.0)).sample()
    return x.to(theta.dtype)


def sir_log_likelihood(theta: Tensor, x_o: Tensor) -> Tensor:
    """Exact ``log p(x_o | theta)`` ``(N,)``; ``-inf`` where the ODE solve failed."""
    p = infected_fraction(theta).clamp(1e-12, 1 - 1e-12)
    x = torch.as_tensor(x_o, dtype=torch.float64).round()
    ll = Binomial(TOTAL_COUNT, probs=torch.nan_to_num(p, nan=0.5)).log_prob(x.expand_as(p)).sum(1)
    return torch.where(torch.isfinite(p).all(1), ll, torch.full_like(ll, -math.inf))


def sir() -> Problem:
    """The ``sir`` benchmark problem (D = 2, x in R^10)."""
    prior = independent(("lognormal", {"loc": math.log(0.4), "scale": 0.5}),
                        ("lognormal", {"loc": math.log(0.125), "scale": 0.2}))

    def reference(x_o: Tensor, num_samples: int, seed: int = 0) -> Tensor:
        def run() -> Tensor:
            return de_mcmc(lambda t: sir_log_likelihood(t, x_o), prior, num_samples, seed,
                           num_chains=1000, num_init=20_000, warmup=150, thin=15)
        return cached_reference("sir", x_o, num_samples, seed, run)

    return Problem(
        prior,
        simulate_sir,
        param_names=["beta", "gamma"],
        name="sir",
        x_shape=(len(TIMES),),
        reference_posterior=reference,
        description="SIR epidemic (N = 1e6, 160 days); x = Binomial(1000, I/N) at 10 days.",
    )
