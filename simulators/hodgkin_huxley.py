r"""Hodgkin-Huxley neuron with standard summary statistics (a scientific example).

Single-compartment model of Pospischil et al. (2008), as used by Gonçalves et al. (2020):

.. math:: C \dot V = -\bar g_{Na} m^3 h (V - E_{Na}) - \bar g_K n^4 (V - E_K)
          - g_L (V - E_L) + I(t) + \sigma \xi(t),

with gating variables :math:`x \in \{m, h, n\}`, :math:`\dot x = \alpha_x(V)(1 - x) -
\beta_x(V) x` (Pospischil rate functions, :math:`V_T = -60` mV). The input is a step current
of ``current`` µA/cm² from 10 ms to 110 ms; a 120 ms trace is integrated with exponential
Euler for the gates and Euler-Maruyama for the voltage (dt = 0.025 ms), vectorized across all
parameter sets (one torch operation per time step for the whole batch).

Parameters :math:`\theta = (\bar g_{Na}, \bar g_K)` in mS/cm², prior
:math:`U([0.5, 80] \times [10^{-4}, 15])`. Summary statistics ``x`` (8 values): spike count,
resting potential mean and standard deviation (first 10 ms), mean, standard deviation,
skewness and kurtosis of the voltage during the stimulus, and its autocorrelation at 1 ms lag.
No reference posterior exists; see ``tutorials/02b_hodgkin_huxley.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sbi_core.priors import box_uniform
from sbi_core.problem import Problem

__all__ = ["hodgkin_huxley", "simulate_voltage", "summary_statistics", "STAT_NAMES"]

E_NA, E_K, E_L, G_L, C_M, V_T = 53.0, -107.0, -70.0, 0.1, 1.0, -60.0
DT, DURATION, STIM_ON, STIM_OFF = 0.025, 120.0, 10.0, 110.0
STAT_NAMES = ["spike_count", "rest_mean", "rest_std", "mean", "std", "skewness", "kurtosis",
              "autocorr_1ms"]


# The six rate functions (alpha_m, beta_m, alpha_h, beta_h, alpha_n, beta_n) of
# u = V - V_T all have the form A * g(z) with z = S * u + C and g one of
# z / (exp(z) - 1) (kind 0), exp(z) (kind 1) or 1 / (1 + exp(z)) (kind 2); evaluating them
# as one (6, N) tensor keeps the per-time-step cost to a few torch operations.
_A = torch.tensor([1.28, 1.4, 0.128, 4.0, 0.16, 0.5])[:, None]
_S = torch.tensor([-1 / 4, 1 / 5, -1 / 18, -1 / 5, -1 / 5, -1 / 40])[:, None]
_C = torch.tensor([13 / 4, -8.0, 17 / 18, 8.0, 3.0, 0.25])[:, None]
_EFUN = torch.tensor([True, True, False, False, True, False])[:, None]
_LOGISTIC = torch.tensor([False, False, False, True, False, False])[:, None]


def _rates(v: Tensor) -> Tensor:
    """Rates ``(3, 2, N)``: (gate m/h/n, alpha/beta) at voltages ``v`` ``(N,)`` (1/ms)."""
    z = torch.addcmul(_C, _S, (v - V_T)[None])
    z = torch.where(_EFUN & (z.abs() < 1e-4), torch.full_like(z, 1e-4), z)  # removable 0/0
    e = torch.exp(z)
    g = torch.where(_EFUN, z / (e - 1), torch.where(_LOGISTIC, 1 / (1 + e), e))
    return (_A * g).view(3, 2, -1)


def simulate_voltage(theta: Tensor, current: float = 4.0, noise: float = 0.1,
                     dt: float = DT, duration: float = DURATION) -> Tensor:
    """Voltage traces ``(N, T)`` in mV for ``theta = (g_Na, g_K)`` ``(N, 2)``.

    ``noise`` is the standard deviation of the voltage noise in mV per sqrt(ms); uses the
    global torch random state.
    """
    n = theta.shape[0]
    g_na, g_k = theta[:, 0].float(), theta[:, 1].float()
    steps = int(round(duration / dt))
    v = torch.full((n,), E_L)
    rates = _rates(v)
    gates = rates[:, 0] / rates.sum(1)  # (3, N) steady state at rest
    trace = torch.empty(n, steps)
    eps = torch.randn(steps, n) * (noise * dt**0.5)
    for i in range(steps):
        rates = _rates(v)  # (gate, alpha/beta, N)
        total = rates.sum(1)
        inf = rates[:, 0] / total
        gates = inf + (gates - inf) * torch.exp(-dt * total)  # exponential Euler
        m, h, k = gates
        i_ion = g_na * m**3 * h * (v - E_NA) + g_k * k**4 * (v - E_K) + G_L * (v - E_L)
        i_in = current if STIM_ON <= i * dt < STIM_OFF else 0.0
        v = v + dt * (i_in - i_ion) / C_M + eps[i]
        trace[:, i] = v
    return trace


def summary_statistics(trace: Tensor, dt: float = DT) -> Tensor:
    """The 8 statistics of :data:`STAT_NAMES` ``(N, 8)`` from voltage traces ``(N, T)``."""
    rest = trace[:, : int(STIM_ON / dt)]
    stim = trace[:, int(STIM_ON / dt): int(STIM_OFF / dt)].double()
    above = trace > -10.0
    spikes = (above[:, 1:] & ~above[:, :-1]).sum(1).float()
    mean = stim.mean(1, keepdim=True)
    c = stim - mean
    var = (c**2).mean(1)
    std = var.sqrt().clamp(min=1e-6)
    skew = (c**3).mean(1) / std**3
    kurt = (c**4).mean(1) / std**4
    lag = int(round(1.0 / dt))
    auto = (c[:, lag:] * c[:, :-lag]).mean(1) / var.clamp(min=1e-12)
    return torch.stack([spikes, rest.mean(1), rest.std(1), mean[:, 0].float(), std.float(),
                        skew.float(), kurt.float(), auto.float()], 1)


def hodgkin_huxley(current: float = 4.0, noise: float = 0.1, dt: float = DT,
                   chunk: int = 2000) -> Problem:
    """Hodgkin-Huxley problem: ``theta = (g_Na, g_K)`` → 8 summary statistics.

    ``dt`` (ms) trades accuracy for speed (0.05 is fine for quick experiments and tests).
    """

    def simulator(theta: Tensor) -> Tensor:
        parts = [summary_statistics(simulate_voltage(theta[i:i + chunk], current, noise, dt),
                                    dt)
                 for i in range(0, theta.shape[0], chunk)]
        return torch.cat(parts).to(theta.dtype)

    return Problem(
        box_uniform([0.5, 1e-4], [80.0, 15.0]),
        simulator,
        param_names=["g_Na", "g_K"],
        name="hodgkin_huxley",
        x_shape=(len(STAT_NAMES),),
        description="Hodgkin-Huxley neuron (Pospischil et al. 2008) under a step current; x = "
                    "8 summary statistics of the voltage trace.",
    )
