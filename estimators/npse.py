r"""Neural posterior score estimation (NPSE) by denoising score matching.

Standardized parameters ``z`` are diffused, ``z_t = m_t z + sigma_t eps``, by a VP, sub-VP or
VE schedule (``estimators/sde.py``), and a network predicts the noise:

.. math:: \mathcal{L} = \mathbb{E}_{t,\, (\theta, x),\, \varepsilon}
          \lVert \hat\varepsilon_\psi(z_t, x, t) - \varepsilon \rVert^2,

with ``t`` drawn on ``[t_min, 1]`` with extra weight at low noise
(:meth:`~estimators.vector_field.VectorFieldEstimator.sample_times`), whose minimizer gives the posterior score. The network predicts the residual of
:math:`\hat\varepsilon` over that of the diffused (Gaussian-approximated) prior, so the
score is exact at high noise and restoring far from the data; it gives the posterior score :math:`s(z_t, x, t) = -\hat\varepsilon/\sigma_t`.
The loss draws ``t`` and ``eps`` itself, so it trains through the shared
:func:`sbi_core.training.train`. Sampling and ``log_prob``: ``estimators/score_sampling.py``;
sets of iid observations: ``estimators/compositional.py``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from estimators.vector_field import (
    FIELD_DEFAULTS,
    VectorFieldEstimator,
    build_config,
    make_vector_field_posterior,
)
from sbi_core.methods import Method

__all__ = ["NPSEEstimator", "METHOD", "build_npse", "NPSE_DEFAULTS"]

NPSE_DEFAULTS: dict[str, Any] = {**FIELD_DEFAULTS, "sde": "vp"}


class NPSEEstimator(VectorFieldEstimator):
    """Conditional noise predictor ``eps_hat(z_t, x, t)`` for a diffusion schedule."""

    kind = "npse"

    def __init__(self, config: dict[str, Any], prior: Distribution | None = None,
                 embedding: nn.Module | None = None):
        if config.get("sde", "vp") not in ("vp", "subvp", "ve"):
            raise ValueError(f"NPSE sde must be 'vp', 'subvp' or 've', got {config.get('sde')!r}.")
        super().__init__({**NPSE_DEFAULTS, **config}, prior, embedding)

    def gaussian_eps(self, z: Tensor, t: Tensor) -> Tensor:
        """Noise prediction ``(N, D)`` of the z-space prior Gaussian ``N(mu, C)`` diffused to
        ``t``: ``sigma_t (m_t^2 C + sigma_t^2 I)^{-1} (z - m_t mu)``."""
        m, sd = self.schedule.mean_scale(t)[:, None], self.schedule.std(t)[:, None]
        c, u = torch.linalg.eigh(self.prior_cov_z)
        r = (z - m * self.prior_mean_z) @ u
        return sd * (r / (m**2 * c + sd**2)) @ u.T

    def eps(self, z: Tensor, context: Tensor, t: Tensor) -> Tensor:
        """Gaussian skip + network residual: exact for large ``t``, where every posterior
        diffuses to the same Gaussian, and a restoring score far from the training data."""
        return self.gaussian_eps(z, t) + self.raw(z, context, t)

    def loss(self, theta: Tensor, x: Tensor) -> Tensor:
        """Denoising score matching loss ``(N,)``; draws ``t`` and the noise itself."""
        if not self.training:  # validation: average 8 fixed draws per pair (low variance)
            reps = 8
            theta = theta.repeat_interleave(reps, 0)
            x = x.repeat_interleave(reps, 0)
            return self._loss(theta, x).reshape(-1, reps).mean(1)
        return self._loss(theta, x)

    def _loss(self, theta: Tensor, x: Tensor) -> Tensor:
        z = self.to_z(theta)
        s = self.schedule
        gen = self.draw_generator(z.device)
        t = self.sample_times(z.shape[0], z.device, s.t_min, s.t_max, gen)
        noise = self.sample_noise(z, gen)
        zt = s.mean_scale(t)[:, None] * z + s.std(t)[:, None] * noise
        return ((self.eps(zt, self.context(x), t) - noise) ** 2).sum(-1)


def build_npse(theta: Tensor, x: Tensor, prior: Distribution, **options: Any) -> NPSEEstimator:
    """An untrained :class:`NPSEEstimator` with standardization fitted on ``theta``, ``x``."""
    config, _, module = build_config("npse", NPSE_DEFAULTS, theta, x, prior, options)
    est = NPSEEstimator(config, prior, module)
    est.fit_standardization(theta, x)
    return est



METHOD = Method(
    name="npse",
    build=build_npse,
    from_config=NPSEEstimator,
    make_posterior=make_vector_field_posterior,
    description="Neural posterior score estimation (VE/VP/sub-VP diffusion); iid sets by "
                "composition (GAUSS, JAC, F-NPSE).",
)
