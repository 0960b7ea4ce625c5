"""Test helper: an NPE-like posterior with the exact (or a deliberately wrong) Gaussian
density of the linear Gaussian toy, wrapped as a :class:`DirectPosterior`.

Prior ``N(0, I)``, ``x = theta + 0.5 eps`` (``simulators.linear_gaussian``): the posterior
given one ``x`` is ``N(0.8 x, 0.2 I)``. ``shift`` moves the mean and ``scale`` multiplies the
standard deviation; ``local=True`` applies them only where ``x_1 > 0`` (a posterior that
is wrong in one region of observation space). ``to_base`` is the flow-like map to ``N(0, I)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from sbi_core.posterior import DirectPosterior
from sbi_core.priors import gaussian

GAIN, VAR = 0.8, 0.2


class GaussianEstimator(nn.Module):
    def __init__(self, dim: int = 2, shift: float = 0.0, scale: float = 1.0, local: bool = False):
        super().__init__()
        self.dim, self.shift, self.scale, self.local = dim, shift, scale, local
        self.register_buffer("x_min", torch.full((dim,), -100.0))
        self.register_buffer("x_max", torch.full((dim,), 100.0))

    def _mean_std(self, x: Tensor) -> tuple[Tensor, Tensor]:
        on = (x[:, :1] > 0).float() if self.local else torch.ones_like(x[:, :1])
        mean = GAIN * x + on * self.shift
        std = math.sqrt(VAR) * (1.0 + on * (self.scale - 1.0))
        return mean, std.expand_as(x)

    def to_base(self, theta: Tensor, x: Tensor) -> Tensor:
        mean, std = self._mean_std(x)
        return (theta - mean) / std

    def log_prob(self, theta: Tensor, x: Tensor) -> Tensor:
        mean, std = self._mean_std(x)
        return torch.distributions.Normal(mean, std).log_prob(theta).sum(-1)

    def sample(self, n: int, x: Tensor) -> Tensor:
        mean, std = self._mean_std(x)  # (B, D)
        return mean + std * torch.randn(n, *mean.shape)


def gaussian_posterior(dim: int = 2, shift: float = 0.0, scale: float = 1.0,
                       local: bool = False) -> DirectPosterior:
    """Exact posterior (defaults) or a deliberately miscalibrated one, as a DirectPosterior."""
    prior = gaussian(torch.zeros(dim), std=torch.ones(dim))
    spec = {"param_names": [f"theta_{i + 1}" for i in range(dim)], "x_shape": [dim],
            "prior": prior.spec, "source": "linear_gaussian"}
    post = DirectPosterior(GaussianEstimator(dim, shift, scale, local), prior, spec)
    post.method = "analytic"
    return post
