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


def _efun(z: Tensor) -> Tensor:
    """``z / (exp(z) - 1)``, continuous at 0 (the removable singularity is nudged away)."""
    z = torch.where(z.abs() < 1e-4, torch.full_like(z, 1e-4), z)
    return z / torch.expm1(z)


def _rates(v: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    u = v - V_T
    a_m = 0.32 * 4 * _efun(-(u - 13) / 4)
    b_m = 0.28 * 5 * _efun((u - 40) / 5)
    a_h = 0.128 * torch.exp(-(u - 17) / 18)
    b_h = 4 / (1 + torch.exp(-(u - 40) / 5))
    a_n = 0.032 * 5 * _efun(-(u - 15) / 5)
    b_n = 0.5 * torch.exp(-(u - 10) / 40)
    return a_m, b_m, a_h, b_h, a_n, b_n


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
    a_m, b_m, a_h, b_h, a_n, b_n = _rates(v)
    gates = torch.stack([a_m / (a_m + b_m), a_h / (a_h + b_h), a_n / (a_n + b_n)])  # (3, N)
    trace = torch.empty(n, steps)
    eps = torch.randn(steps, n) * (noise * dt**0.5)
    for i in range(steps):
        rates = torch.stack(_rates(v)).view(3, 2, n)  # (gate, alpha/beta, N)
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
