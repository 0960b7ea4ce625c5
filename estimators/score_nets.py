"""Conditional vector-field networks ``net(theta_t, context, t) -> (N, D)``.

- :class:`TimeEmbedding`: fixed sinusoidal features of ``t`` in ``[0, 1]``.
- :class:`MLPField` (``net="mlp"``): an MLP on ``[theta_t, context, emb(t)]``.
- :class:`AdaMLPField` (``net="ada_mlp"``): residual blocks whose LayerNorm is modulated
  (scale and shift, "adaptive normalization") by an embedding of ``[context, emb(t)]``.

The output is the predicted noise (NPSE) or the velocity (FMPE); see ``vector_field.py``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["TimeEmbedding", "MLPField", "AdaMLPField", "build_field_net", "NETS"]


class TimeEmbedding(nn.Module):
    """``t`` ``(N,)`` → ``(N, dim)``: ``[cos(w_k t), sin(w_k t)]`` with geometric ``w_k``."""

    def __init__(self, dim: int = 32, max_frequency: float = 100.0):
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"time_embedding_dim must be an even number >= 2, got {dim}.")
        freqs = torch.exp(torch.linspace(0.0, math.log(max_frequency), dim // 2)) * math.pi
        self.register_buffer("freqs", freqs)
        self.dim = dim

    def forward(self, t: Tensor) -> Tensor:
        arg = t.reshape(-1, 1) * self.freqs
        return torch.cat([arg.cos(), arg.sin()], dim=-1)


class MLPField(nn.Module):
    """Plain MLP on the concatenation ``[theta_t, context, emb(t)]``."""

    def __init__(self, dim: int, context_dim: int, hidden: int = 64, layers: int = 3,
                 time_dim: int = 32):
        super().__init__()
        self.time = TimeEmbedding(time_dim)
        mods: list[nn.Module] = []
        width = dim + context_dim + time_dim
        for _ in range(layers):
            mods += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        mods.append(nn.Linear(width, dim))
        self.net = nn.Sequential(*mods)

    def forward(self, theta: Tensor, context: Tensor, t: Tensor) -> Tensor:
        return self.net(torch.cat([theta, context, self.time(t)], dim=-1))


class _AdaBlock(nn.Module):
    def __init__(self, hidden: int, cond_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False)
        self.modulation = nn.Linear(cond_dim, 3 * hidden)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)
        self.ff = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, h: Tensor, cond: Tensor) -> Tensor:
        scale, shift, gate = self.modulation(cond).chunk(3, dim=-1)
        return h + (1.0 + gate) * self.ff(self.norm(h) * (1.0 + scale) + shift)


class AdaMLPField(nn.Module):
    """Residual MLP with adaptive LayerNorm conditioned on ``[context, emb(t)]``."""

    def __init__(self, dim: int, context_dim: int, hidden: int = 64, layers: int = 3,
                 time_dim: int = 32):
        super().__init__()
        self.time = TimeEmbedding(time_dim)
        self.cond = nn.Sequential(nn.Linear(context_dim + time_dim, hidden), nn.SiLU(),
                                  nn.Linear(hidden, hidden))
        self.inp = nn.Linear(dim + time_dim, hidden)
        self.blocks = nn.ModuleList(_AdaBlock(hidden, hidden) for _ in range(layers))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, theta: Tensor, context: Tensor, t: Tensor) -> Tensor:
        te = self.time(t)
        cond = self.cond(torch.cat([context, te], dim=-1))
        h = self.inp(torch.cat([theta, te], dim=-1))
        for block in self.blocks:
            h = block(h, cond)
        return self.out(h)


NETS = {"mlp": MLPField, "ada_mlp": AdaMLPField}


def build_field_net(name: str, dim: int, context_dim: int, hidden: int, layers: int,
                    time_dim: int) -> nn.Module:
    """The network called ``name`` (``mlp`` or ``ada_mlp``)."""
    if name not in NETS:
        raise ValueError(f"Unknown net {name!r}; use one of {', '.join(NETS)}.")
    return NETS[name](dim, context_dim, hidden, layers, time_dim)
