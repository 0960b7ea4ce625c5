"""Convolutional embeddings: 1-D CNN and causal TCN for time series, 2-D CNN for images.

All map a batch of observations ``(N, *x_shape)`` to features ``(N, output_dim)`` and are
built from plain values (see :func:`estimators.embedding.build_embedding`).

Why the 1-D CNN downsamples with strided convolutions and ReLU (``layout=2``, the default
for new models): the first layout (``layout=1``: ``Conv1d -> GELU -> MaxPool1d(2)`` per
stage, then ``AdaptiveAvgPool1d(8)``) spent about 40 % of a training step in
``max_pool2d_with_indices`` (PyTorch pools 1-D through its 2-D CPU kernel), and 12 % in
GELU on full-resolution feature maps. A stride-2 convolution downsamples while it
convolves (half the work of the second layer, no pooling kernel) and ReLU is a cheap
elementwise op; ``benchmarks/embedding_speed.py`` measures the difference
(``docs/embeddings.md``). Files saved with ``layout=1`` keep loading with that layout.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CNN1dEmbedding", "CNN2dEmbedding", "TCNEmbedding", "mlp"]


def mlp(inp: int, hidden: int, out: int, layers: int, act: type[nn.Module] = nn.GELU
        ) -> nn.Sequential:
    """``layers`` hidden layers of width ``hidden`` between ``inp`` and ``out`` features."""
    mods: list[nn.Module] = []
    width = inp
    for _ in range(layers):
        mods += [nn.Linear(width, hidden), act()]
        width = hidden
    mods.append(nn.Linear(width, out))
    return nn.Sequential(*mods)


def _pool_to(length: int, max_length: int) -> tuple[nn.Module, int]:
    """An average pool that leaves at most ``max_length`` positions, and that length."""
    if length <= max_length:
        return nn.Identity(), length
    k = math.ceil(length / max_length)
    return nn.AvgPool1d(k, ceil_mode=True), math.ceil(length / k)


class CNN1dEmbedding(nn.Module):
    """1-D CNN for time series ``(N, T)`` or ``(N, C, T)`` (channels first) → ``(N, output_dim)``.

    ``layout=2``: per entry of ``channels`` (default ``[16, 32, 32]``) one
    ``Conv1d(kernel_size, stride=2)`` + ReLU (each halves the length), an average pool down
    to at most ``max_length`` positions (16), then an MLP head on the flattened features. ``layout=1`` is the original (slower)
    architecture, kept so that old model files load.
    """

    def __init__(self, x_shape: tuple[int, ...], channels: list[int] | None = None,
                 kernel_size: int = 5, output_dim: int = 20, hidden_features: int = 64,
                 max_length: int = 16, layout: int = 2):
        super().__init__()
        if len(x_shape) not in (1, 2):
            raise ValueError(f"A cnn1d embedding needs x of shape (T,) or (C, T), got {x_shape}.")
        if layout not in (1, 2):
            raise ValueError(f"cnn1d layout must be 1 or 2, got {layout}.")
        in_ch = 1 if len(x_shape) == 1 else x_shape[0]
        length = x_shape[-1]
        self.univariate = len(x_shape) == 1
        layers: list[nn.Module] = []
        if layout == 1:  # original layout (kept for files saved before layout=2)
            for ch in channels or [16, 32]:
                layers += [nn.Conv1d(in_ch, ch, kernel_size, padding=kernel_size // 2),
                           nn.GELU(), nn.MaxPool1d(2)]
                in_ch, length = ch, max(length // 2, 1)
            self.conv = nn.Sequential(*layers)
            self.pool: nn.Module = nn.AdaptiveAvgPool1d(min(length, 8))
            self.head = mlp(in_ch * min(length, 8), hidden_features, output_dim, 1)
            return
        for ch in channels or [16, 32, 32]:
            layers += [nn.Conv1d(in_ch, ch, kernel_size, stride=2, padding=kernel_size // 2),
                       nn.ReLU()]
            in_ch, length = ch, (length + 2 * (kernel_size // 2) - kernel_size) // 2 + 1
        self.conv = nn.Sequential(*layers)
        self.pool, length = _pool_to(length, int(max_length))
        self.head = mlp(in_ch * length, hidden_features, output_dim, 1, nn.ReLU)

    def forward(self, x: Tensor) -> Tensor:
        if self.univariate:
            x = x.unsqueeze(1)
        return self.head(self.pool(self.conv(x)).flatten(1))


class CNN2dEmbedding(nn.Module):
    """2-D CNN for images ``(N, H, W)`` or ``(N, C, H, W)`` (channels first) → ``(N, output_dim)``.

    Per entry of ``channels``: ``Conv2d(kernel_size, padding same)`` + ReLU + 2×2 max pool
    (halves height and width); then an average pool to at most ``max_size`` × ``max_size``
    and an MLP head on the flattened features.
    """

    def __init__(self, x_shape: tuple[int, ...], channels: list[int] | None = None,
                 kernel_size: int = 3, output_dim: int = 20, hidden_features: int = 64,
                 max_size: int = 4):
        super().__init__()
        if len(x_shape) not in (2, 3):
            raise ValueError(f"A cnn2d embedding needs images of shape (H, W) or (C, H, W), "
                             f"got {x_shape}.")
        in_ch = 1 if len(x_shape) == 2 else x_shape[0]
        h, w = x_shape[-2:]
        layers: list[nn.Module] = []
        for ch in channels or [16, 32]:
            layers += [nn.Conv2d(in_ch, ch, kernel_size, padding=kernel_size // 2), nn.ReLU()]
            if min(h, w) >= 2:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            in_ch = ch
        self.conv = nn.Sequential(*layers)
        self.out_hw = (min(h, int(max_size)), min(w, int(max_size)))
        self.head = mlp(in_ch * self.out_hw[0] * self.out_hw[1], hidden_features, output_dim, 1,
                        nn.ReLU)
        self.single_channel = len(x_shape) == 2

    def forward(self, x: Tensor) -> Tensor:
        if self.single_channel:
            x = x.unsqueeze(1)
        h = self.conv(x)
        if tuple(h.shape[-2:]) != self.out_hw:
            h = F.adaptive_avg_pool2d(h, self.out_hw)
        return self.head(h.flatten(1))


class _CausalBlock(nn.Module):
    """Residual block: two dilated causal convolutions (left padding only) + ReLU."""

    def __init__(self, channels: int, kernel_size: int, dilation: int):
        super().__init__()
        self.pad = (kernel_size - 1) * dilation
        self.conv1 = nn.Conv1d(channels, channels, kernel_size, dilation=dilation)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size, dilation=dilation)

    def forward(self, h: Tensor) -> Tensor:
        y = torch.relu(self.conv1(F.pad(h, (self.pad, 0))))
        y = self.conv2(F.pad(y, (self.pad, 0)))
        return torch.relu(h + y)


class TCNEmbedding(nn.Module):
    """Causal temporal convolution net for time series ``(N, T)`` or ``(N, T, C)`` (time first)
    → ``(N, output_dim)``.

    ``num_blocks`` residual blocks of dilated causal convolutions (dilation 1, 2, 4, ...),
    so the feature at time ``t`` depends only on ``x[:t+1]`` and the receptive field grows
    as ``2^num_blocks``. The head sees the last time step (which has seen the whole
    receptive field) and the mean over time.
    """

    def __init__(self, x_shape: tuple[int, ...], channels: int = 16, kernel_size: int = 3,
                 num_blocks: int = 4, output_dim: int = 20, hidden_features: int = 64):
        super().__init__()
        if len(x_shape) not in (1, 2):
            raise ValueError(f"A tcn embedding needs x of shape (T,) or (T, C), got {x_shape}.")
        in_ch = 1 if len(x_shape) == 1 else x_shape[1]
        self.univariate = len(x_shape) == 1
        self.inp = nn.Conv1d(in_ch, channels, 1)
        self.blocks = nn.Sequential(*(_CausalBlock(channels, kernel_size, 2**i)
                                      for i in range(num_blocks)))
        self.head = mlp(2 * channels, hidden_features, output_dim, 1, nn.ReLU)

    def features(self, x: Tensor) -> Tensor:
        """Causal features ``(N, channels, T)``: position ``t`` sees ``x[:, :t+1]`` only."""
        x = x.unsqueeze(1) if self.univariate else x.transpose(1, 2)
        return self.blocks(self.inp(x))

    def forward(self, x: Tensor) -> Tensor:
        h = self.features(x)
        return self.head(torch.cat([h[..., -1], h.mean(-1)], dim=-1))
