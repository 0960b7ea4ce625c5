r"""Two moons (Greenberg et al. 2019; sbibm spec, Lueckmann et al. 2021).

Prior: :math:`\theta \sim U([-1, 1]^2)`.
Simulator: :math:`a \sim U(-\pi/2, \pi/2)`, :math:`r \sim N(0.1, 0.01^2)`,
:math:`p = (r\cos a + 0.25,\ r \sin a)`,
:math:`x = p + \left(-|\theta_1 + \theta_2| / \sqrt 2,\ (-\theta_1 + \theta_2) / \sqrt 2\right)`.

The posterior is bimodal (crescent-shaped). Reference samples are exact: draw
:math:`p`, invert the piecewise-linear map for a random branch of the absolute value
(both branches have unit Jacobian), and reject draws outside the prior box.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sbi_core.priors import box_uniform
from sbi_core.problem import Problem

__all__ = ["two_moons", "simulate_two_moons", "simulate_two_moons_noise", "two_moons_reference"]


def _noise(n: int, generator: torch.Generator | None = None) -> Tensor:
    a = (torch.rand(n, generator=generator) - 0.5) * math.pi
    r = 0.1 + 0.01 * torch.randn(n, generator=generator)
    return torch.stack([r * torch.cos(a) + 0.25, r * torch.sin(a)], dim=-1)


def simulate_two_moons(theta: Tensor) -> Tensor:
    """``theta`` ``(N, 2)`` → ``x`` ``(N, 2)``."""
    p = _noise(theta.shape[0]).to(theta)
    shift = torch.stack([-(theta[:, 0] + theta[:, 1]).abs(), -theta[:, 0] + theta[:, 1]],
                        dim=-1) / math.sqrt(2.0)
    return p + shift


def simulate_two_moons_noise(theta: Tensor, u: Tensor) -> Tensor:
    """The same model with its random inputs exposed: ``u`` ``(N, 2)`` uniform gives the
    angle ``a`` and, through the normal quantile, the radius ``r``."""
    a = (u[:, 0].to(theta.dtype) - 0.5) * math.pi
    r = 0.1 + 0.01 * torch.special.ndtri(u[:, 1].clamp(1e-12, 1 - 1e-12)).to(theta.dtype)
    p = torch.stack([r * torch.cos(a) + 0.25, r * torch.sin(a)], dim=-1)
    shift = torch.stack([-(theta[:, 0] + theta[:, 1]).abs(), -theta[:, 0] + theta[:, 1]],
                        dim=-1) / math.sqrt(2.0)
    return p + shift


def two_moons_reference(x_o: Tensor, num_samples: int, seed: int = 0) -> Tensor:
    """Exact posterior samples ``(num_samples, 2)`` given ``x_o`` ``(2,)``."""
    gen = torch.Generator().manual_seed(seed)
    x_o = torch.as_tensor(x_o, dtype=torch.float32).reshape(2)
    out: list[Tensor] = []
    have = 0
    for _ in range(1000):
        m = max(4 * (num_samples - have), 1000)
        z = x_o - _noise(m, gen)
        s = -math.sqrt(2.0) * z[:, 0]  # |theta1 + theta2|
        sign = torch.where(torch.rand(m, generator=gen) < 0.5, -1.0, 1.0)
        s = sign * s
        d = math.sqrt(2.0) * z[:, 1]  # theta2 - theta1
        theta = torch.stack([(s - d) / 2, (s + d) / 2], dim=-1)
        ok = (z[:, 0] <= 0) & (theta.abs() <= 1).all(-1)
        out.append(theta[ok])
        have += int(ok.sum())
        if have >= num_samples:
            return torch.cat(out)[:num_samples]
    raise RuntimeError("Reference sampling for two_moons did not finish: x_o is implausible.")


def two_moons() -> Problem:
    """The two moons benchmark problem (D=2, x in R^2)."""
    return Problem(
        box_uniform([-1.0, -1.0], [1.0, 1.0]),
        simulate_two_moons,
        noise_simulator=simulate_two_moons_noise,
        noise_dim=2,
        param_names=["theta_1", "theta_2"],
        name="two_moons",
        x_shape=(2,),
        reference_posterior=two_moons_reference,
        description="Two moons: bimodal crescent posterior (Greenberg et al. 2019).",
    )
