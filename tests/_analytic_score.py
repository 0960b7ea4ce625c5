"""Test helper: NPSE/FMPE estimators whose field is the exact one of the linear Gaussian toy.

Prior ``N(0, I)``, ``x = theta + 0.5 eps`` (``simulators.linear_gaussian``): the posterior
given one ``x`` is ``N(0.8 x, 0.2 I)``, so the diffused posterior is
``N(m_t 0.8 x, (0.2 m_t^2 + sigma_t^2) I)`` with an exact score. Standardization is the
identity, so z-space equals parameter space.
"""

from __future__ import annotations

import torch
from torch import Tensor

from estimators.fmpe import FMPEEstimator
from estimators.npse import NPSEEstimator
from sbi_core.priors import gaussian

GAIN, VAR = 0.8, 0.2


def _exact_eps(est, z: Tensor, x: Tensor, t: Tensor) -> Tensor:
    m, sd = est.schedule.mean_scale(t)[:, None], est.schedule.std(t)[:, None]
    score = -(z - m * GAIN * x) / (VAR * m**2 + sd**2)
    return -sd * score


class ExactNPSE(NPSEEstimator):
    def eps(self, z: Tensor, context: Tensor, t: Tensor) -> Tensor:
        return _exact_eps(self, z, context, t)


class ExactFMPE(FMPEEstimator):
    def eps(self, z: Tensor, context: Tensor, t: Tensor) -> Tensor:
        return _exact_eps(self, z, context, t)

    def velocity(self, z: Tensor, context: Tensor, t: Tensor) -> Tensor:
        # z_t = (1-t) z0 + t eps  =>  v = eps_hat - z0_hat, z0_hat = (z_t - t eps_hat) / (1-t)
        eps = self.eps(z, context, t)
        return eps - (z - t[:, None] * eps) / (1.0 - t[:, None]).clamp(min=1e-6)


def exact_posterior(kind: str = "npse", sde: str = "vp", dim: int = 2):
    """A VectorFieldPosterior with the exact field of the 2-D linear Gaussian toy."""
    from estimators.vector_field_posterior import VectorFieldPosterior

    prior = gaussian(torch.zeros(dim), std=torch.ones(dim))
    cls = ExactNPSE if kind == "npse" else ExactFMPE
    cfg = {"theta_dim": dim, "x_shape": [dim], "prior": prior.spec,
           "sde": sde if kind == "npse" else "linear", "hidden_features": 8, "num_layers": 1}
    est = cls(cfg)
    est.x_min.fill_(-100.0)
    est.x_max.fill_(100.0)
    spec = {"param_names": [f"theta_{i}" for i in range(dim)], "x_shape": [dim],
            "prior": prior.spec}
    return VectorFieldPosterior(est, prior, spec)
