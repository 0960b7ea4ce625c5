r"""A linear Gaussian toy with an analytic posterior, for tests and tutorials.

Prior :math:`\theta \sim N(0, s^2 I_D)`, simulator :math:`x = \theta + \sigma \epsilon`.
Posterior: :math:`N\left(\frac{s^2}{s^2+\sigma^2} x,\ \frac{s^2 \sigma^2}{s^2+\sigma^2} I\right)`;
for ``n`` iid observations replace :math:`x` by their mean and :math:`\sigma^2` by
:math:`\sigma^2/n`.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import MultivariateNormal

from sbi_core.priors import gaussian
from sbi_core.problem import Problem

__all__ = ["linear_gaussian", "linear_gaussian_posterior"]


def linear_gaussian_posterior(x_o: Tensor, prior_std: float = 1.0,
                              noise_std: float = 0.5) -> MultivariateNormal:
    """Analytic posterior given one observation ``(D,)`` or iid observations ``(n, D)``."""
    x_o = torch.as_tensor(x_o, dtype=torch.float32)
    if x_o.ndim == 1:
        x_o = x_o[None]
    n = x_o.shape[0]
    s2, n2 = prior_std**2, noise_std**2 / n
    mean = s2 / (s2 + n2) * x_o.mean(0)
    var = s2 * n2 / (s2 + n2)
    return MultivariateNormal(mean, var * torch.eye(x_o.shape[1]))


def linear_gaussian(dim: int = 2, prior_std: float = 1.0, noise_std: float = 0.5) -> Problem:
    """``D``-dimensional linear Gaussian problem with analytic reference posterior."""

    def simulator(theta: Tensor) -> Tensor:
        return theta + noise_std * torch.randn_like(theta)

    def reference(x_o: Tensor, num_samples: int, seed: int = 0) -> Tensor:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return linear_gaussian_posterior(x_o, prior_std, noise_std).sample((num_samples,))

    return Problem(
        gaussian(torch.zeros(dim), std=prior_std * torch.ones(dim)),
        simulator,
        name="linear_gaussian",
        x_shape=(dim,),
        reference_posterior=reference,
        description=f"x = theta + {noise_std} * noise, theta ~ N(0, {prior_std}^2 I_{dim}).",
    )
