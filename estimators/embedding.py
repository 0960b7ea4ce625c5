"""Embedding networks for observations, built from a plain-value spec.

A spec is a dict, so an embedding is saved with the model without pickling:

- ``{"type": "identity"}``: flatten ``x``.
- ``{"type": "mlp", "output_dim": 20, "hidden_features": 64, "num_layers": 2}``.
- ``{"type": "set", ...}``: permutation-invariant DeepSet over iid trials; ``x`` of shape
  ``(n_trials, d)``; rows that are all NaN are padding (a varying number of trials).
- ``{"type": "cnn1d", "channels": [16, 32], "kernel_size": 5, "output_dim": 20}``: time
  series of shape ``(T,)`` or ``(C, T)``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["build_embedding", "SetEmbedding", "CNN1dEmbedding", "MLPEmbedding"]


def _mlp(inp: int, hidden: int, out: int, layers: int) -> nn.Sequential:
    mods: list[nn.Module] = []
    width = inp
    for _ in range(layers):
        mods += [nn.Linear(width, hidden), nn.GELU()]
        width = hidden
    mods.append(nn.Linear(width, out))
    return nn.Sequential(*mods)


class MLPEmbedding(nn.Module):
    """Flatten ``x`` ``(N, *x_shape)`` and map through an MLP → ``(N, output_dim)``."""

    def __init__(self, x_shape: tuple[int, ...], output_dim: int = 20, hidden_features: int = 64,
                 num_layers: int = 2):
        super().__init__()
        self.net = _mlp(math.prod(x_shape), hidden_features, output_dim, num_layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1))


class SetEmbedding(nn.Module):
    """DeepSet: ``rho(mean_i phi(x_i))`` over trials ``(N, n, d)`` → ``(N, output_dim)``.

    All-NaN trials are padding and are ignored, so sets of different sizes share a batch.
    The number of valid trials is appended to the pooled features.
    """

    def __init__(self, x_shape: tuple[int, ...], output_dim: int = 20, hidden_features: int = 64,
                 num_layers: int = 2):
        super().__init__()
        if len(x_shape) != 2:
            raise ValueError(f"A set embedding needs x of shape (n_trials, d), got {x_shape}.")
        d = x_shape[1]
        self.phi = _mlp(d, hidden_features, hidden_features, num_layers)
        self.rho = _mlp(hidden_features + 1, hidden_features, output_dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        pad = torch.isnan(x).all(-1)  # (N, n)
        h = self.phi(torch.nan_to_num(x))
        keep = (~pad).float().unsqueeze(-1)
        count = keep.sum(1).clamp(min=1.0)
        pooled = (h * keep).sum(1) / count
        return self.rho(torch.cat([pooled, count.log()], dim=-1))


class CNN1dEmbedding(nn.Module):
    """1-D CNN for time series ``(N, T)`` or ``(N, C, T)`` → ``(N, output_dim)``."""

    def __init__(self, x_shape: tuple[int, ...], channels: list[int] | None = None,
                 kernel_size: int = 5, output_dim: int = 20, hidden_features: int = 64):
        super().__init__()
        if len(x_shape) not in (1, 2):
            raise ValueError(f"A cnn1d embedding needs x of shape (T,) or (C, T), got {x_shape}.")
        in_ch = 1 if len(x_shape) == 1 else x_shape[0]
        length = x_shape[-1]
        layers: list[nn.Module] = []
        for ch in channels or [16, 32]:
            layers += [nn.Conv1d(in_ch, ch, kernel_size, padding=kernel_size // 2), nn.GELU(),
                       nn.MaxPool1d(2)]
            in_ch, length = ch, max(length // 2, 1)
        self.conv = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool1d(min(length, 8))
        self.head = _mlp(in_ch * min(length, 8), hidden_features, output_dim, 1)
        self.univariate = len(x_shape) == 1

    def forward(self, x: Tensor) -> Tensor:
        if self.univariate:
            x = x.unsqueeze(1)
        return self.head(self.pool(self.conv(x)).flatten(1))


class _Flatten(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1)


def build_embedding(spec: dict[str, Any] | None, x_shape: tuple[int, ...]) -> tuple[nn.Module, int]:
    """Build the embedding named by ``spec`` for observations of ``x_shape``.

    Returns the module and its output dimension.
    """
    spec = dict(spec or {"type": "identity"})
    kind = spec.pop("type", "identity")
    if kind == "identity":
        return _Flatten(), math.prod(x_shape)
    builders = {"mlp": MLPEmbedding, "set": SetEmbedding, "cnn1d": CNN1dEmbedding}
    if kind not in builders:
        raise ValueError(f"Unknown embedding type {kind!r}; use one of identity, {', '.join(builders)}.")
    try:
        module = builders[kind](x_shape, **spec)
    except TypeError as err:
        raise ValueError(f"Bad options for embedding {kind!r}: {err}") from err
    with torch.no_grad():
        out = module(torch.zeros(2, *x_shape)).shape[-1]
    return module, int(out)
