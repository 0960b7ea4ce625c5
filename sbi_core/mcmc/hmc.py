r"""Hamiltonian Monte Carlo over many parallel chains, for differentiable log densities.

Each of the ``M`` chains has its own step size and diagonal inverse mass matrix. One
transition draws momenta :math:`p \sim N(0, M^{-1}{}^{-1})`, runs ``num_steps`` leapfrog steps
of :math:`H(z, p) = -f(z) + \tfrac12 p^\top M^{-1} p` (all chains in one batched gradient
call per step; the step size is jittered by up to ±20 % per transition so trajectories do
not lock into periodic orbits) and accepts with probability :math:`\min(1, e^{-\Delta H})`.

Warm-up (Hoffman & Gelman 2014; Stan's windowed scheme, simplified): the step size of every
chain is adapted by dual averaging towards ``target_accept``; halfway through warm-up the
inverse mass matrix is set to the regularized variance of the second quarter's draws of all
chains sampling the same observation, and dual averaging restarts. After warm-up each chain keeps its averaged
step size. Non-finite energies count as rejections; ``|ΔH| > 1000`` counts as a divergence.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["HMCState", "hmc_step", "hmc_log_density_and_grad"]

LogDensity = Callable[[Tensor, Tensor], Tensor]


def hmc_log_density_and_grad(log_density: LogDensity, z: Tensor, rows: Tensor
                             ) -> tuple[Tensor, Tensor]:
    """``f(z)`` ``(M,)`` and ``∇f(z)`` ``(M, D)``; non-finite values become ``-inf`` / 0."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        lp = log_density(z, rows)
        (grad,) = torch.autograd.grad(lp.sum(), z, allow_unused=True)
    if grad is None:
        raise ValueError("The potential does not depend on theta through differentiable torch "
                         "operations, so HMC cannot run; use method='slice'.")
    lp = torch.nan_to_num(lp.detach(), nan=-torch.inf, posinf=-torch.inf, neginf=-torch.inf)
    bad = ~torch.isfinite(lp)
    grad = torch.where(bad[:, None] | ~torch.isfinite(grad), torch.zeros_like(grad), grad)
    return lp, grad.detach()


class HMCState:
    """``M`` chains: positions ``z`` ``(M, D)``, log densities, gradients and adaptation state."""

    def __init__(self, z: Tensor, logp: Tensor, grad: Tensor, step_size: Tensor,
                 target_accept: float = 0.8):
        m, d = z.shape
        self.z, self.logp, self.grad = z.clone(), logp.clone(), grad.clone()
        self.inv_mass = torch.ones(m, d)
        self.target_accept = target_accept
        self.step_size = step_size.clone()
        self._restart_adaptation()
        self.warmup_draws: list[Tensor] = []
        self.num_evaluations = 0
        self.num_divergent = 0
        self.accept_sum = torch.zeros(m)
        self.num_transitions = 0

    def _restart_adaptation(self) -> None:
        self._mu = (10.0 * self.step_size).log()
        self._h_bar = torch.zeros_like(self.step_size)
        self._log_eps_bar = torch.zeros_like(self.step_size)
        self._t = 0

    def adapt(self, accept_prob: Tensor) -> None:
        """One dual-averaging update of every chain's step size."""
        self._t += 1
        t, t0, gamma, kappa = self._t, 10.0, 0.05, 0.75
        self._h_bar = (1 - 1 / (t + t0)) * self._h_bar + (self.target_accept - accept_prob) / (t + t0)
        log_eps = self._mu - math.sqrt(t) / gamma * self._h_bar
        eta = t ** (-kappa)
        self._log_eps_bar = eta * log_eps + (1 - eta) * self._log_eps_bar
        self.step_size = log_eps.exp()

    def set_mass_from_warmup(self, chains_per_group: int = 1) -> None:
        """Inverse mass = regularized variance of the stored warm-up draws, pooled over the
        ``chains_per_group`` consecutive chains that share a target (one observation)."""
        if len(self.warmup_draws) >= 4:
            draws = torch.stack(self.warmup_draws)  # (n, M, D)
            n, m, d = draws.shape
            grouped = draws.reshape(n, m // chains_per_group, chains_per_group, d)
            grouped = grouped.transpose(0, 1).reshape(m // chains_per_group, -1, d)
            count = grouped.shape[1]
            var = grouped.var(1, unbiased=True).repeat_interleave(chains_per_group, 0)
            self.inv_mass = (count / (count + 5.0)) * var + 1e-3 * (5.0 / (count + 5.0))
            step = self.step_size.reshape(-1, chains_per_group).median(1).values
            self.step_size = step.repeat_interleave(chains_per_group)
        self.warmup_draws = []
        self._restart_adaptation()

    def finish_warmup(self) -> None:
        if self._t > 0:
            self.step_size = self._log_eps_bar.exp()


def hmc_step(state: HMCState, log_density: LogDensity, num_steps: int = 10,
             adapt: bool = False) -> HMCState:
    """One HMC transition of all chains, in place (with dual averaging if ``adapt``)."""
    m, _ = state.z.shape
    rows = torch.arange(m)
    # a random trajectory length (step size jittered by up to ±20 %) avoids periodic orbits
    eps = (state.step_size * (0.8 + 0.4 * torch.rand(m)))[:, None]
    p0 = torch.randn_like(state.z) / state.inv_mass.sqrt()
    z, p, grad = state.z, p0 + 0.5 * eps * state.grad, state.grad
    lp = state.logp
    for i in range(num_steps):
        z = z + eps * state.inv_mass * p
        lp, grad = hmc_log_density_and_grad(log_density, z, rows)
        state.num_evaluations += m
        p = p + (eps if i < num_steps - 1 else 0.5 * eps) * grad
    h0 = -state.logp + 0.5 * (state.inv_mass * p0 ** 2).sum(-1)
    h1 = -lp + 0.5 * (state.inv_mass * p ** 2).sum(-1)
    delta = torch.nan_to_num(h1 - h0, nan=torch.inf)
    state.num_divergent += int((delta > 1000).sum())
    accept_prob = torch.exp(-delta).clamp(max=1.0)
    accept = torch.rand(m) < accept_prob
    state.z = torch.where(accept[:, None], z, state.z)
    state.logp = torch.where(accept, lp, state.logp)
    state.grad = torch.where(accept[:, None], grad, state.grad)
    state.accept_sum += accept_prob
    state.num_transitions += 1
    if adapt:
        state.adapt(accept_prob)
    return state
