r"""Flow-matching posterior estimation (FMPE).

Along the straight path ``z_t = (1 - t) z + t eps`` between standardized parameters ``z``
(``t = 0``) and noise (``t = 1``), a network regresses the conditional velocity:

.. math:: \mathcal{L} = \mathbb{E}_{t,\, (\theta, x),\, \varepsilon}
          \lVert v_\psi(z_t, x, t) - (\varepsilon - z) \rVert^2 .

``t`` is drawn on ``[0, 1]`` with extra weight near the data end (``sample_times``).
Samples come from integrating ``dz/dt = v`` from ``t = 1`` to ``0`` and ``log_prob`` from the
same ODE with its divergence. For iid sets the velocity is turned into a score,
``eps_hat = z_t + (1 - t) v`` and ``s = -eps_hat / t``, and composed like NPSE scores.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torch.distributions import Distribution

from estimators.vector_field import (
    FIELD_DEFAULTS,
    VectorFieldEstimator,
    build_config,
    make_vector_field_posterior,
)
from sbi_core.methods import Method

__all__ = ["FMPEEstimator", "METHOD", "build_fmpe", "FMPE_DEFAULTS"]

FMPE_DEFAULTS: dict[str, Any] = {**FIELD_DEFAULTS, "sde": "linear"}


class FMPEEstimator(VectorFieldEstimator):
    """Conditional velocity ``v(z_t, x, t)`` of the linear flow-matching path."""

    kind = "fmpe"

    def __init__(self, config: dict[str, Any], prior: Distribution | None = None,
                 embedding: nn.Module | None = None):
        if config.get("sde", "linear") != "linear":
            raise ValueError(f"FMPE uses the 'linear' path, got sde={config.get('sde')!r}.")
        super().__init__({**FMPE_DEFAULTS, **config}, prior, embedding)

    def eps(self, z: Tensor, context: Tensor, t: Tensor) -> Tensor:
        return z + (1.0 - t)[:, None] * self.raw(z, context, t)

    def velocity(self, z: Tensor, context: Tensor, t: Tensor) -> Tensor:
        return self.raw(z, context, t)

    def ode_time_range(self) -> tuple[float, float]:
        return 0.0, 1.0

    def loss(self, theta: Tensor, x: Tensor) -> Tensor:
        """Flow-matching loss ``(N,)``; draws ``t`` and the noise itself."""
        if not self.training:  # validation: average 8 fixed draws per pair (low variance)
            reps = 8
            theta = theta.repeat_interleave(reps, 0)
            x = x.repeat_interleave(reps, 0)
            return self._loss(theta, x).reshape(-1, reps).mean(1)
        return self._loss(theta, x)

    def _loss(self, theta: Tensor, x: Tensor) -> Tensor:
        z = self.to_z(theta)
        gen = self.draw_generator(z.device)
        t = self.sample_times(z.shape[0], z.device, 0.0, 1.0, gen)
        noise = self.sample_noise(z, gen)
        zt = (1.0 - t)[:, None] * z + t[:, None] * noise
        return ((self.raw(zt, self.context(x), t) - (noise - z)) ** 2).sum(-1)


def build_fmpe(theta: Tensor, x: Tensor, prior: Distribution, **options: Any) -> FMPEEstimator:
    """An untrained :class:`FMPEEstimator` with standardization fitted on ``theta``, ``x``."""
    config, _, module = build_config("fmpe", FMPE_DEFAULTS, theta, x, prior, options)
    est = FMPEEstimator(config, prior, module)
    est.fit_standardization(theta, x)
    return est



METHOD = Method(
    name="fmpe",
    build=build_fmpe,
    from_config=FMPEEstimator,
    make_posterior=make_vector_field_posterior,
    description="Flow-matching posterior estimation (ODE sampling and log_prob); iid sets by "
                "composition of its scores.",
)
