r"""Noise schedules of diffusion (VE, VP, sub-VP) and flow-matching (linear) paths.

Every schedule describes the Gaussian perturbation of standardized parameters

.. math:: \theta_t \mid \theta_0 \sim N(m_t \theta_0, \sigma_t^2 I)

and the forward SDE :math:`d\theta = f(t)\theta\,dt + g(t)\,dW` that produces it, with
:math:`f = d\log m/dt` and :math:`g^2 = d\sigma^2/dt - 2 f \sigma^2`. The samplers only use
``mean_scale`` (:math:`m_t`), ``std`` (:math:`\sigma_t`), ``drift_scale`` (:math:`f`) and
``diffusion_sq`` (:math:`g^2`), so the same code serves all schedules, and the same functions
are used in training and sampling.

=========  ==================================================  =============================
name       :math:`m_t`, :math:`\sigma_t`                        defaults
=========  ==================================================  =============================
``vp``     :math:`e^{-B/2}`, :math:`\sqrt{1-e^{-B}}`           ``beta_min=0.1, beta_max=20``
``subvp``  :math:`e^{-B/2}`, :math:`1-e^{-B}`                  as VP
``ve``     1, :math:`\sigma_{min}(\sigma_{max}/\sigma_{min})^t` ``sigma_min=0.01, sigma_max=10``
``linear`` :math:`1-t`, :math:`t` (flow matching)              --
=========  ==================================================  =============================

with :math:`B(t) = \int_0^t \beta = \beta_{min} t + (\beta_{max}-\beta_{min}) t^2/2`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor

__all__ = ["Schedule", "VPSchedule", "SubVPSchedule", "VESchedule", "LinearSchedule",
           "build_schedule", "SCHEDULES"]


class Schedule(ABC):
    """Interface of a noise schedule; times are floats or tensors in ``[t_min, t_max]``.

    ``z_t = mean_scale(t) z_0 + std(t) eps``; the forward SDE is
    ``dz = drift_scale(t) z dt + sqrt(diffusion_sq(t)) dW``.
    """

    name = ""
    t_min = 1e-3
    t_max = 1.0

    @abstractmethod
    def mean_scale(self, t: Tensor) -> Tensor:
        """Scale of the data in ``z_t``."""

    @abstractmethod
    def std(self, t: Tensor) -> Tensor:
        """Standard deviation of the noise in ``z_t``."""

    @abstractmethod
    def drift_scale(self, t: Tensor) -> Tensor:
        """Linear drift coefficient ``f(t)`` of the forward SDE."""

    @abstractmethod
    def diffusion_sq(self, t: Tensor) -> Tensor:
        """Squared diffusion ``g(t)^2`` of the forward SDE."""

    def terminal_var(self) -> float:
        """Variance of the (approximately Gaussian) terminal marginal of z-scored data."""
        t = torch.tensor(self.t_max)
        return float(self.mean_scale(t) ** 2 + self.std(t) ** 2)

    def params(self) -> dict[str, Any]:
        return {}


class VPSchedule(Schedule):
    """Variance preserving: ``beta(t)`` linear from ``beta_min`` to ``beta_max``."""

    name = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        if not 0 < beta_min < beta_max:
            raise ValueError(f"Need 0 < beta_min < beta_max, got {beta_min}, {beta_max}.")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def integral(self, t: Tensor) -> Tensor:
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def mean_scale(self, t: Tensor) -> Tensor:
        return torch.exp(-0.5 * self.integral(torch.as_tensor(t)))

    def std(self, t: Tensor) -> Tensor:
        return torch.sqrt(-torch.expm1(-self.integral(torch.as_tensor(t))))

    def drift_scale(self, t: Tensor) -> Tensor:
        return -0.5 * self.beta(torch.as_tensor(t))

    def diffusion_sq(self, t: Tensor) -> Tensor:
        return self.beta(torch.as_tensor(t))

    def params(self) -> dict[str, Any]:
        return {"beta_min": self.beta_min, "beta_max": self.beta_max}


class SubVPSchedule(VPSchedule):
    """Sub-variance preserving (Song et al. 2021): ``sigma_t = 1 - exp(-B(t))``."""

    name = "subvp"
    t_min = 1e-2  # sigma_t ~ B(t) vanishes faster than for VP; keep the score bounded

    def std(self, t: Tensor) -> Tensor:
        return -torch.expm1(-self.integral(torch.as_tensor(t)))

    def diffusion_sq(self, t: Tensor) -> Tensor:
        t = torch.as_tensor(t)
        return self.beta(t) * -torch.expm1(-2.0 * self.integral(t))


class VESchedule(Schedule):
    """Variance exploding: geometric ``sigma_t`` from ``sigma_min`` to ``sigma_max``, ``m_t = 1``."""

    name = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 10.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"Need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}.")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    def mean_scale(self, t: Tensor) -> Tensor:
        return torch.ones_like(torch.as_tensor(t, dtype=torch.float32))

    def std(self, t: Tensor) -> Tensor:
        return self.sigma_min * torch.exp(torch.as_tensor(t) * self._log_ratio)

    def drift_scale(self, t: Tensor) -> Tensor:
        return torch.zeros_like(torch.as_tensor(t, dtype=torch.float32))

    def diffusion_sq(self, t: Tensor) -> Tensor:
        return 2.0 * self._log_ratio * self.std(t) ** 2

    def params(self) -> dict[str, Any]:
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max}


class LinearSchedule(Schedule):
    """Flow-matching path ``theta_t = (1 - t) theta_0 + t eps``.

    Score-based samplers stay inside ``[1e-3, 1 - 1e-3]`` where ``f`` and ``g^2`` are finite;
    the native flow ODE of FMPE runs on ``[0, 1]``.
    """

    name = "linear"
    t_min = 1e-3
    t_max = 1.0 - 1e-3

    def mean_scale(self, t: Tensor) -> Tensor:
        return 1.0 - torch.as_tensor(t, dtype=torch.float32)

    def std(self, t: Tensor) -> Tensor:
        return torch.as_tensor(t, dtype=torch.float32) * 1.0

    def drift_scale(self, t: Tensor) -> Tensor:
        return -1.0 / (1.0 - torch.as_tensor(t, dtype=torch.float32))

    def diffusion_sq(self, t: Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float32)
        return 2.0 * t / (1.0 - t)


SCHEDULES = {"vp": VPSchedule, "subvp": SubVPSchedule, "ve": VESchedule, "linear": LinearSchedule}


def build_schedule(name: str, **params: Any) -> Schedule:
    """The schedule called ``name`` (``vp``, ``subvp``, ``ve``, ``linear``) with ``params``."""
    if name not in SCHEDULES:
        raise ValueError(f"Unknown sde {name!r}; use one of {', '.join(SCHEDULES)}.")
    try:
        return SCHEDULES[name](**params)
    except TypeError as err:
        raise ValueError(f"Bad parameters for sde {name!r}: {err}") from err
