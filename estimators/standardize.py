"""Standardization layers fitted on training data (z-scoring), stored as buffers."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

__all__ = ["Standardize", "StandardizedEstimator", "fit_standardize"]


class Standardize(nn.Module):
    """``(v - mean) / std`` elementwise over the trailing shape; buffers travel in state_dict."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("std", torch.ones(shape))

    def forward(self, v: Tensor) -> Tensor:
        return (v - self.mean) / self.std

    def inverse(self, z: Tensor) -> Tensor:
        return z * self.std + self.mean

    def log_abs_det(self) -> Tensor:
        """``sum log std``: subtract from a log density in standardized space... added back."""
        return self.std.log().sum()


def fit_standardize(layer: Standardize, data: Tensor, name: str, structured: bool = False) -> None:
    """Set ``layer`` to z-score ``data`` ``(N, *shape)``; warn about constant dimensions.

    With ``structured=True`` one mean and std are shared by all entries (time series, images).
    """
    data = data.float()
    if structured:
        mean = data.mean().expand(layer.mean.shape)
        std = data.std().expand(layer.std.shape)
    else:
        mean, std = data.mean(0), data.std(0)
    constant = ~(std > 1e-12)
    if bool(constant.any()):
        warnings.warn(
            f"{int(constant.sum())} dimension(s) of {name} are constant in the training data; "
            "they carry no information and are passed through unscaled.",
            stacklevel=3,
        )
    std = torch.where(constant, torch.ones_like(std), std)
    layer.mean.copy_(mean)
    layer.std.copy_(std)


class StandardizedEstimator(nn.Module):
    """Base for estimators that z-score ``theta`` and ``x`` and remember the training x range.

    Subclasses call :meth:`_init_scaling` in ``__init__``; ``fit_standardization`` fits the
    layers ``theta_norm``, ``x_norm`` and the buffers ``x_min`` / ``x_max`` (used by the
    posterior's range check and the server).
    """

    def _init_scaling(self, theta_dim: int, x_shape: tuple[int, ...]) -> None:
        self.theta_norm = Standardize((theta_dim,))
        self.x_norm = Standardize(x_shape)
        self.register_buffer("x_min", torch.zeros(x_shape))
        self.register_buffer("x_max", torch.zeros(x_shape))

    def fit_standardization(self, theta: Tensor, x: Tensor) -> None:
        """Fit z-scoring of ``theta`` ``(N, D)`` and ``x`` ``(N, *x_shape)``, and the x range."""
        with torch.no_grad():
            fit_standardize(self.theta_norm, theta, "theta")
            fit_standardize(self.x_norm, x, "x")
            self.x_min.copy_(x.min(0).values)
            self.x_max.copy_(x.max(0).values)
