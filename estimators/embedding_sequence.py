"""Recurrent and attention embeddings for sequences and sets.

- :class:`RNNEmbedding` (``"gru"`` / ``"lstm"``): time series ``(N, T)`` or ``(N, T, C)``
  (time first); the last hidden state summarizes the series.
- :class:`TransformerEmbedding` (``"transformer"``): a pre-LayerNorm transformer encoder
  with learned attention pooling (a learned query attends to all tokens).
  ``mode="sequence"``: tokens are patches of ``patch_size`` time steps of ``(T,)`` /
  ``(T, C)`` plus a learned positional embedding. ``mode="set"``: tokens are the rows of
  ``(n, d)`` with no positions, so the output does not depend on their order; all-NaN
  rows are padding (a varying number of trials) and are masked out of the attention.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from estimators.embedding_conv import mlp

__all__ = ["RNNEmbedding", "TransformerEmbedding"]


class RNNEmbedding(nn.Module):
    """GRU or LSTM over time series ``(N, T)`` / ``(N, T, C)`` → ``(N, output_dim)``.

    Reads the series in time order (causal); the head maps the last layer's final hidden
    state. Recurrence is sequential in ``T``: for long series prefer ``tcn`` or ``cnn1d``.
    """

    def __init__(self, x_shape: tuple[int, ...], cell: str = "gru", hidden_features: int = 64,
                 num_layers: int = 1, output_dim: int = 20):
        super().__init__()
        if len(x_shape) not in (1, 2):
            raise ValueError(f"A {cell} embedding needs x of shape (T,) or (T, C), got {x_shape}.")
        rnn = {"gru": nn.GRU, "lstm": nn.LSTM}[cell]
        self.univariate = len(x_shape) == 1
        in_features = 1 if self.univariate else x_shape[1]
        self.rnn = rnn(in_features, hidden_features, num_layers=num_layers, batch_first=True)
        self.head = nn.Linear(hidden_features, output_dim)

    def forward(self, x: Tensor) -> Tensor:
        if self.univariate:
            x = x.unsqueeze(-1)
        _, state = self.rnn(x)
        h = state[0] if isinstance(state, tuple) else state  # LSTM: (h, c)
        return self.head(h[-1])


class _AttentionPool(nn.Module):
    """One learned query attends to the tokens ``(N, L, E)`` → ``(N, E)`` (masked rows ignored)."""

    def __init__(self, d_model: int, num_heads: int):
        super().__init__()
        self.query = nn.Parameter(0.02 * torch.randn(1, 1, d_model))
        self.att = nn.MultiheadAttention(d_model, num_heads, batch_first=True)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, h: Tensor, pad: Tensor | None) -> Tensor:
        q = self.query.expand(h.shape[0], 1, -1)
        out, _ = self.att(q, h, h, key_padding_mask=pad, need_weights=False)
        return self.norm(out[:, 0])


class TransformerEmbedding(nn.Module):
    """Transformer encoder + attention pooling → ``(N, output_dim)``; see the module docstring.

    Args:
        x_shape: ``(T,)`` or ``(T, C)`` for ``mode="sequence"``; ``(n, d)`` for ``mode="set"``.
        mode: ``"sequence"`` (positional embedding) or ``"set"`` (permutation invariant).
        patch_size: time steps per token (sequences); default: enough for at most 32 tokens
            (attention costs ``O(tokens^2)``).
    """

    def __init__(self, x_shape: tuple[int, ...], mode: str = "sequence", d_model: int = 32,
                 num_heads: int = 4, num_layers: int = 2, ff_features: int = 64,
                 output_dim: int = 20, patch_size: int | None = None):
        super().__init__()
        if mode not in ("sequence", "set"):
            raise ValueError(f"transformer mode must be 'sequence' or 'set', got {mode!r}.")
        if mode == "set" and len(x_shape) != 2:
            raise ValueError(f"A transformer set embedding needs x of shape (n_trials, d), got "
                             f"{x_shape}.")
        if mode == "sequence" and len(x_shape) not in (1, 2):
            raise ValueError(f"A transformer sequence embedding needs x of shape (T,) or (T, C), "
                             f"got {x_shape}; for sets of iid trials use mode='set'.")
        self.mode = mode
        self.x_shape = tuple(x_shape)
        if mode == "set":
            self.patch, token_dim, num_tokens = 1, x_shape[1], x_shape[0]
        else:
            t, c = x_shape[0], (1 if len(x_shape) == 1 else x_shape[1])
            self.patch = int(patch_size or math.ceil(t / 32))
            num_tokens = math.ceil(t / self.patch)
            token_dim = self.patch * c
        self.embed = nn.Linear(token_dim, d_model)
        self.positions = (nn.Parameter(0.02 * torch.randn(1, num_tokens, d_model))
                          if mode == "sequence" else None)
        layer = nn.TransformerEncoderLayer(d_model, num_heads, ff_features, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.pool = _AttentionPool(d_model, num_heads)
        self.head = mlp(d_model, ff_features, output_dim, 1)

    def tokens(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Token features ``(N, L, token_dim)`` and the padding mask ``(N, L)`` (sets) or None."""
        if self.mode == "set":
            return torch.nan_to_num(x), torch.isnan(x).all(-1)
        x = x.unsqueeze(-1) if x.ndim == 2 else x  # (N, T, C)
        n, t, c = x.shape
        extra = (-t) % self.patch
        if extra:  # pad the end with the last value so every token has patch_size steps
            x = torch.cat([x, x[:, -1:].expand(n, extra, c)], dim=1)
        return x.reshape(n, -1, self.patch * c), None

    def forward(self, x: Tensor) -> Tensor:
        tok, pad = self.tokens(x)
        h = self.embed(tok)
        if self.positions is not None:
            h = h + self.positions
        h = self.encoder(h, src_key_padding_mask=pad)
        return self.head(self.pool(h, pad))
