r"""Hamiltonian Monte Carlo over many parallel chains, with windowed warm-up adaptation.

``M = B * C`` chains (``C`` per observation, rows ordered ``(observation, chain)``) move
together: every leapfrog step is ONE batched gradient call of the log density for all chains
still integrating, so the cost of a transition is a handful of network passes whatever the
number of chains.

Each observation ``b`` has its own step size :math:`\epsilon_b` and inverse mass matrix
:math:`\Sigma_b = L_b L_b^\top` (dense, or diagonal when there are too few warm-up draws to
estimate a dense one). The sampler works with whitened momenta :math:`r \sim N(0, I)`
(:math:`p = L^{-\top} r`), so the leapfrog step is

.. math:: r \leftarrow r + \tfrac{\epsilon}{2} L^\top \nabla f(z), \quad
          z \leftarrow z + \epsilon L r, \quad r \leftarrow r + \tfrac{\epsilon}{2} L^\top \nabla f(z),

and the kinetic energy is :math:`\tfrac12 \lVert r \rVert^2`. The number of leapfrog steps of
a chain is ``ceil(u * trajectory_length / eps)`` with ``u ~ U(0.5, 1.5)`` drawn per chain
and transition (a random trajectory length avoids periodic orbits), capped at ``max_steps``;
with a well-adapted mass matrix the posterior has unit scale, and a trajectory of about
:math:`\pi/2` gives nearly independent successive draws of a Gaussian. A fixed
``num_steps`` can be given instead. Acceptance is Metropolis on the energy error; a
non-finite energy or :math:`\Delta H > 1000` is a divergence (rejected, and counted).

Warm-up (Hoffman & Gelman 2014; Stan's windowed scheme): the step size of each observation
is adapted by dual averaging of the acceptance probability averaged over its chains (far
less noisy than per-chain adaptation). Between an initial and a final step-size-only phase
(15 % of warm-up each), doubling windows collect draws; at the end of each window the inverse
mass matrix is set to the regularized covariance of the window's draws pooled over the chains
of the observation, the step size is rescaled to the new metric and dual averaging restarts.
After warm-up each observation keeps its averaged step size.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["HMCState", "hmc_step", "hmc_log_density_and_grad", "adaptation_windows"]

LogDensity = Callable[[Tensor, Tensor], Tensor]

#: energy error counted as a divergence
DIVERGENCE = 1000.0


def hmc_log_density_and_grad(log_density: LogDensity, z: Tensor, rows: Tensor
                             ) -> tuple[Tensor, Tensor]:
    """``f(z)`` ``(m,)`` and ``∇f(z)`` ``(m, D)``; non-finite values become ``-inf`` / 0.

    Raises:
        ValueError: the log density does not depend differentiably on ``z``.
    """
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        lp = log_density(z, rows)
        if not lp.requires_grad:
            raise ValueError("The potential is not differentiable in theta (it returns no "
                             "gradient), so HMC cannot run; use method='slice'.")
        (grad,) = torch.autograd.grad(lp.sum(), z, allow_unused=True)
    if grad is None:
        raise ValueError("The potential does not depend on theta through differentiable torch "
                         "operations, so HMC cannot run; use method='slice'.")
    lp = torch.nan_to_num(lp.detach(), nan=-torch.inf, posinf=-torch.inf, neginf=-torch.inf)
    bad = ~torch.isfinite(lp)
    grad = torch.where(bad[:, None] | ~torch.isfinite(grad), torch.zeros_like(grad), grad)
    return lp, grad.detach()


def adaptation_windows(warmup_steps: int) -> list[int]:
    """Warm-up steps after which the mass matrix is re-estimated (Stan-like doubling windows
    between a 15 % initial and a 15 % final step-size-only phase); none below 20 steps."""
    if warmup_steps < 20:
        return []
    start = int(0.15 * warmup_steps)
    end = warmup_steps - int(0.15 * warmup_steps)
    span = end - start
    ends = [start + span // 7, start + 3 * span // 7, end]  # windows 1 : 2 : 4
    return sorted(set(ends))


class HMCState:
    """``M = B * C`` chains: positions ``z`` ``(M, D)``, log densities, gradients, metric and
    dual-averaging state per observation.

    Args:
        z, logp, grad: initial positions ``(M, D)``, log densities ``(M,)``, gradients ``(M, D)``.
        num_groups: ``B`` observations (``M`` must be a multiple).
        scale: initial per-dimension scale ``(D,)`` or ``(B, D)`` (diagonal ``L``).
        target_accept: acceptance probability targeted by dual averaging.
        trajectory_length: mean integration time in whitened units.
        max_steps: cap on leapfrog steps per transition.
        num_steps: fixed leapfrog steps (overrides ``trajectory_length``).
    """

    def __init__(self, z: Tensor, logp: Tensor, grad: Tensor, num_groups: int, scale: Tensor,
                 target_accept: float = 0.8, trajectory_length: float = math.pi / 2,
                 max_steps: int = 10, num_steps: int | None = None):
        m, d = z.shape
        if m % num_groups:
            raise ValueError(f"{m} chains do not split into {num_groups} observations.")
        self.b, self.c, self.d = num_groups, m // num_groups, d
        self.z, self.logp, self.grad = z.clone(), logp.clone(), grad.clone()
        scale = scale.expand(num_groups, d) if scale.ndim == 1 else scale
        self.chol = torch.diag_embed(scale.clone().float())  # (B, D, D) lower triangular
        self.target_accept = target_accept
        self.trajectory_length = trajectory_length
        self.max_steps, self.num_steps = max_steps, num_steps
        self.step_size = self._initial_step_size()
        self._restart_adaptation()
        self.window_draws: list[Tensor] = []
        self.num_evaluations = 0
        self.num_divergent = 0
        self.accept_sum = torch.zeros(m)
        self.num_transitions = 0

    # ---------------------------------------------------------------- metric
    def _whitened_grad(self, grad: Tensor) -> Tensor:
        """``L^T g`` for rows ``(M, D)`` → ``(M, D)``."""
        g = grad.reshape(self.b, self.c, self.d)
        return torch.einsum("bji,bcj->bci", self.chol, g).reshape(-1, self.d)

    def _velocity(self, r: Tensor) -> Tensor:
        """``L r`` for whitened momenta ``(M, D)`` → ``(M, D)``."""
        return torch.einsum("bij,bcj->bci", self.chol, r.reshape(self.b, self.c, self.d)
                            ).reshape(-1, self.d)

    def _initial_step_size(self) -> Tensor:
        """A step size per observation from the local curvature: ``1 / sqrt(mean (L^T g)^2)``
        (the inverse scale the gradient implies), within ``[1e-3, 1]``."""
        g = self._whitened_grad(self.grad).reshape(self.b, self.c * self.d)
        rms = g.pow(2).mean(1).sqrt()
        eps = torch.where(rms > 0, 1.0 / rms.clamp(min=1e-12), torch.ones_like(rms))
        return eps.clamp(1e-3, 1.0)

    def _restart_adaptation(self) -> None:
        self._mu = (10.0 * self.step_size).log()
        self._h_bar = torch.zeros_like(self.step_size)
        self._log_eps_bar = torch.zeros_like(self.step_size)
        self._t = 0

    def adapt(self, accept_prob: Tensor) -> None:
        """One dual-averaging update of every observation's step size from the mean
        acceptance probability ``(M,)`` of its chains."""
        mean_accept = accept_prob.reshape(self.b, self.c).mean(1)
        self._t += 1
        t, t0, gamma, kappa = self._t, 10.0, 0.05, 0.75
        self._h_bar = (1 - 1 / (t + t0)) * self._h_bar + (self.target_accept - mean_accept) / (t + t0)
        log_eps = self._mu - math.sqrt(t) / gamma * self._h_bar
        eta = t ** (-kappa)
        self._log_eps_bar = eta * log_eps + (1 - eta) * self._log_eps_bar
        self.step_size = log_eps.exp()

    def collect(self) -> None:
        """Store the current positions as draws of the running adaptation window."""
        self.window_draws.append(self.z.clone())

    def set_metric_from_window(self) -> None:
        """Inverse mass = regularized covariance of the window's draws pooled over the chains
        of each observation (dense if there are at least ``10 D`` draws, else diagonal);
        the step size is rescaled to the new metric and dual averaging restarts."""
        if len(self.window_draws) >= 2:
            draws = torch.stack(self.window_draws)  # (n, M, D)
            n = draws.shape[0]
            x = draws.reshape(n, self.b, self.c, self.d).permute(1, 0, 2, 3)
            x = x.reshape(self.b, n * self.c, self.d).double()
            count = x.shape[1]
            xc = x - x.mean(1, keepdim=True)
            cov = xc.transpose(1, 2) @ xc / max(count - 1, 1)  # (B, D, D)
            shrink = count / (count + 5.0)
            eye = torch.eye(self.d, dtype=cov.dtype)
            if count < 10 * self.d:
                cov = torch.diag_embed(torch.diagonal(cov, dim1=1, dim2=2))
            cov = shrink * cov + 1e-3 * (1 - shrink) * eye
            chol, info = torch.linalg.cholesky_ex(cov)
            diag = torch.diag_embed(torch.diagonal(cov, dim1=1, dim2=2).sqrt())
            chol = torch.where((info > 0)[:, None, None], diag, chol).float()
            # same typical move in theta: rescale eps by the change of the metric's volume
            old = torch.diagonal(self.chol, dim1=1, dim2=2).log().mean(1)
            new = torch.diagonal(chol, dim1=1, dim2=2).log().mean(1)
            self.step_size = (self._log_eps_bar.exp() if self._t else self.step_size) \
                * (old - new).exp()
            self.step_size = self.step_size.clamp(1e-4, 2.0)
            self.chol = chol
        self.window_draws = []
        self._restart_adaptation()

    def finish_warmup(self) -> None:
        """Fix each observation's step size at its dual-averaged value."""
        if self._t > 0:
            self.step_size = self._log_eps_bar.exp()

    def chain_step_size(self) -> Tensor:
        """``(M,)`` step size of every chain."""
        return self.step_size.repeat_interleave(self.c)


def hmc_step(state: HMCState, log_density: LogDensity, adapt: bool = False) -> HMCState:
    """One HMC transition of all chains, in place (with dual averaging if ``adapt``)."""
    m, d = state.z.shape
    rows = torch.arange(m)
    eps = state.chain_step_size() * (0.9 + 0.2 * torch.rand(m))
    if state.num_steps is not None:
        steps = torch.full((m,), state.num_steps)
    else:
        u = 0.5 + torch.rand(m)
        steps = torch.ceil(u * state.trajectory_length / eps).clamp(1, state.max_steps).long()
    r0 = torch.randn(m, d)
    z, lp, grad = state.z.clone(), state.logp.clone(), state.grad.clone()
    r = r0 + 0.5 * eps[:, None] * state._whitened_grad(grad)
    alive = torch.ones(m, dtype=torch.bool)  # not yet diverged
    for i in range(int(steps.max())):
        active = alive & (steps > i)
        idx = rows[active]
        if idx.numel() == 0:
            break
        z[idx] = z[idx] + eps[idx, None] * state._velocity(r)[idx]
        lp_i, grad_i = hmc_log_density_and_grad(log_density, z[idx], idx)
        state.num_evaluations += int(idx.numel())
        lp[idx], grad[idx] = lp_i, grad_i
        last = (steps[idx] == i + 1)[:, None]
        wg = state._whitened_grad(grad)[idx]
        r[idx] = r[idx] + torch.where(last, 0.5, 1.0) * eps[idx, None] * wg
        alive[idx] = torch.isfinite(lp_i)
    h0 = -state.logp + 0.5 * (r0 ** 2).sum(-1)
    h1 = -lp + 0.5 * (r ** 2).sum(-1)
    delta = torch.nan_to_num(h1 - h0, nan=torch.inf, neginf=torch.inf)
    divergent = ~alive | (delta > DIVERGENCE)
    state.num_divergent += int(divergent.sum())
    accept_prob = torch.exp(-delta).clamp(max=1.0)
    accept_prob = torch.where(divergent, torch.zeros_like(accept_prob), accept_prob)
    accept = torch.rand(m) < accept_prob
    state.z = torch.where(accept[:, None], z, state.z)
    state.logp = torch.where(accept, lp, state.logp)
    state.grad = torch.where(accept[:, None], grad, state.grad)
    state.accept_sum += accept_prob
    state.num_transitions += 1
    if adapt:
        state.adapt(accept_prob)
    return state
