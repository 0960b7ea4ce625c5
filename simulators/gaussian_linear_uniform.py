r"""Gaussian linear uniform (Lueckmann et al. 2021, sbibm ``gaussian_linear_uniform``).

Prior :math:`\theta \sim U([-1, 1]^{10})`; simulator :math:`x \sim N(\theta, 0.1\, I_{10})`.
The posterior is :math:`N(x_o, 0.1\, I)` truncated to the box; reference samples are exact
(rejection of Gaussian draws that leave the box).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sbi_core.priors import box_uniform
from sbi_core.problem import Problem

__all__ = ["gaussian_linear_uniform", "truncated_gaussian_samples"]


def truncated_gaussian_samples(mean: Tensor, std: float, low: float, high: float,
                               num_samples: int, seed: int = 0,
                               max_draws: int = 200_000_000) -> Tensor:
    """Exact samples ``(num_samples, D)`` of ``N(mean, std^2 I)`` restricted to ``[low, high]^D``.

    Raises ``RuntimeError`` if the acceptance rate is so small that ``max_draws`` proposals
    do not suffice (an observation far outside what the prior can produce).
    """
    gen = torch.Generator().manual_seed(seed)
    mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
    out, have, drawn = [], 0, 0
    while have < num_samples:
        m = min(max(4 * (num_samples - have), 10_000), 2_000_000)
        z = mean + std * torch.randn(m, mean.shape[0], generator=gen)
        ok = ((z >= low) & (z <= high)).all(-1)
        out.append(z[ok])
        have += int(ok.sum())
        drawn += m
        if drawn > max_draws and have < num_samples:
            raise RuntimeError(
                f"Rejection sampling accepted only {have} of {drawn} draws: the observation is "
                "far outside what the prior can produce."
            )
    return torch.cat(out)[:num_samples]


def gaussian_linear_uniform(dim: int = 10, noise_var: float = 0.1) -> Problem:
    """The ``gaussian_linear_uniform`` benchmark problem (D = 10, x in R^10)."""
    noise_std = math.sqrt(noise_var)

    def simulator(theta: Tensor) -> Tensor:
        return theta + noise_std * torch.randn_like(theta)

    def reference(x_o: Tensor, num_samples: int, seed: int = 0) -> Tensor:
        return truncated_gaussian_samples(x_o, noise_std, -1.0, 1.0, num_samples, seed)

    return Problem(
        box_uniform(-1.0, 1.0, dim=dim),
        simulator,
        name="gaussian_linear_uniform",
        x_shape=(dim,),
        reference_posterior=reference,
        description=f"x ~ N(theta, {noise_var} I_{dim}), theta ~ U([-1, 1]^{dim}); posterior "
                    "is a Gaussian truncated to the box.",
    )
