r"""Gaussian linear (Lueckmann et al. 2021, sbibm ``gaussian_linear``).

Prior :math:`\theta \sim N(0, 0.1\, I_{10})`; simulator :math:`x \sim N(\theta, 0.1\, I_{10})`
(0.1 is the *variance* of prior and noise). The posterior is Gaussian:
:math:`N\left(\tfrac12 x_o,\ 0.05\, I\right)` (conjugate update, sampled exactly).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import MultivariateNormal

from sbi_core.priors import gaussian
from sbi_core.problem import Problem

__all__ = ["gaussian_linear", "gaussian_linear_posterior"]


def gaussian_linear_posterior(x_o: Tensor, prior_var: float = 0.1,
                              noise_var: float = 0.1) -> MultivariateNormal:
    """Analytic posterior given ``x_o`` ``(D,)`` (or iid observations ``(n, D)``)."""
    x_o = torch.as_tensor(x_o, dtype=torch.float64)
    if x_o.ndim == 1:
        x_o = x_o[None]
    n, d = x_o.shape
    precision = 1.0 / prior_var + n / noise_var
    mean = (x_o.sum(0) / noise_var) / precision
    return MultivariateNormal(mean, torch.eye(d, dtype=torch.float64) / precision)


def gaussian_linear(dim: int = 10, prior_var: float = 0.1, noise_var: float = 0.1) -> Problem:
    """The ``gaussian_linear`` benchmark problem (D = 10, x in R^10)."""
    noise_std = math.sqrt(noise_var)

    def simulator(theta: Tensor) -> Tensor:
        return theta + noise_std * torch.randn_like(theta)

    def noise_simulator(theta: Tensor, u: Tensor) -> Tensor:  # the same model, inputs exposed
        z = torch.special.ndtri(u.clamp(1e-12, 1 - 1e-12)).to(theta.dtype)
        return theta + noise_std * z

    def reference(x_o: Tensor, num_samples: int, seed: int = 0) -> Tensor:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            post = gaussian_linear_posterior(x_o, prior_var, noise_var)
            return post.sample((num_samples,)).float()

    return Problem(
        gaussian(torch.zeros(dim), std=math.sqrt(prior_var) * torch.ones(dim)),
        simulator,
        noise_simulator=noise_simulator,
        noise_dim=dim,
        name="gaussian_linear",
        x_shape=(dim,),
        reference_posterior=reference,
        description=f"x ~ N(theta, {noise_var} I_{dim}), theta ~ N(0, {prior_var} I_{dim}); "
                    "analytic Gaussian posterior.",
    )
