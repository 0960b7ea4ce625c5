"""Mixture density network: ``q(theta | c)`` a mixture of K full-covariance Gaussians.

The context network outputs mixture logits ``(N, K)``, means ``(N, K, D)`` and lower-
triangular Cholesky factors ``(N, K, D, D)`` with a softplus-positive diagonal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

__all__ = ["MixtureDensity"]


class MixtureDensity(nn.Module):
    """Conditional Gaussian mixture with the ``log_prob`` / ``sample`` interface of a flow."""

    def __init__(self, dim: int, context_dim: int, num_components: int = 10,
                 hidden_features: int = 50, num_layers: int = 2):
        super().__init__()
        self.dim, self.k = dim, num_components
        layers: list[nn.Module] = []
        width = context_dim
        for _ in range(num_layers):
            layers += [nn.Linear(width, hidden_features), nn.Tanh()]
            width = hidden_features
        self.trunk = nn.Sequential(*layers)
        self.logits = nn.Linear(width, num_components)
        self.means = nn.Linear(width, num_components * dim)
        self.n_tril = dim * (dim - 1) // 2
        self.diag = nn.Linear(width, num_components * dim)
        self.offdiag = nn.Linear(width, num_components * self.n_tril) if self.n_tril else None
        self.register_buffer("tril_idx", torch.tril_indices(dim, dim, offset=-1))

    def _mixture(self, context: Tensor) -> MixtureSameFamily:
        h = self.trunk(context)
        n = context.shape[0]
        means = self.means(h).reshape(n, self.k, self.dim)
        scale = torch.diag_embed(F.softplus(self.diag(h)).reshape(n, self.k, self.dim) + 1e-4)
        if self.offdiag is not None:
            off = self.offdiag(h).reshape(n, self.k, self.n_tril)
            scale = _fill_tril(scale, off, self.tril_idx)
        comp = MultivariateNormal(means, scale_tril=scale, validate_args=False)
        return MixtureSameFamily(Categorical(logits=self.logits(h), validate_args=False), comp,
                                 validate_args=False)

    def log_prob(self, inputs: Tensor, context: Tensor) -> Tensor:
        return self._mixture(context).log_prob(inputs)

    def sample(self, num_samples: int, context: Tensor) -> Tensor:
        """``(B, num_samples, D)`` like nflows."""
        return self._mixture(context).sample((num_samples,)).transpose(0, 1)

    def sample_and_log_prob(self, num_samples: int, context: Tensor) -> tuple[Tensor, Tensor]:
        """Reparameterized samples ``(B, n, D)`` and their log densities ``(B, n)``.

        The component index is drawn without gradient; within the component the sample is
        ``mean + L @ eps``, so gradients reach ``context`` through the means and scales (the
        pathwise gradient through the mixture weights is omitted; ``log_prob`` keeps them).
        """
        mix = self._mixture(context)
        comp = mix.component_distribution
        with torch.no_grad():
            idx = mix.mixture_distribution.sample((num_samples,))  # (n, B)
        b = context.shape[0]
        rows = torch.arange(b, device=context.device)[None, :].expand(num_samples, -1)
        loc = comp.loc[rows, idx]  # (n, B, D)
        tril = comp.scale_tril[rows, idx]  # (n, B, D, D)
        eps = torch.randn_like(loc)
        z = loc + (tril @ eps.unsqueeze(-1)).squeeze(-1)
        return z.transpose(0, 1), mix.log_prob(z).transpose(0, 1)


def _fill_tril(scale: Tensor, off: Tensor, idx: Tensor) -> Tensor:
    out = scale.clone()
    out[..., idx[0], idx[1]] = off
    return out
