"""Discrete columns of ``x``: validation, integer codes and one-hot encoding.

Simulators often return choices, counts or categories next to continuous measurements.
Such columns (indices into the **flattened** ``x``) are declared with
``Problem(..., x_discrete=[0])`` or ``fit(..., discrete_columns=[0])``. Their values must be
integers; the categories of column ``j`` are ``low_j, low_j + 1, ..., low_j + K_j - 1``
with ``low_j = min(0, min value)`` and ``K_j`` inferred from the training data
(``max - low + 1``), so codes ``0..K-1``, counts ``0..max`` and choices ``-1 / +1`` all work.
Values that never occur in the training data are rejected when evaluating a likelihood or
conditioning a posterior (the estimator has learned nothing about them).

:class:`DiscreteColumns` holds that plain-value description (saved in the estimator config)
and a buffer of the categories seen in training; :class:`OneHotX` is the preprocessing layer
NPE applies when ``discrete_columns`` is set: z-score the continuous columns, replace each
discrete column by its one-hot code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from sbi_core.posterior import ObservationError

__all__ = ["DiscreteColumns", "OneHotX", "discrete_config", "MAX_CATEGORIES"]

#: More categories than this in one column is almost surely a continuous column declared
#: discrete by mistake (or a count to be modelled as continuous).
MAX_CATEGORIES = 1000


def _columns(columns: Sequence[int], x_dim: int) -> list[int]:
    cols = [int(c) for c in columns]
    if not cols:
        raise ValueError("discrete_columns is empty; list the indices of the discrete columns "
                         "of the flattened x (e.g. discrete_columns=[0]).")
    if len(set(cols)) != len(cols):
        raise ValueError(f"discrete_columns {cols} lists a column twice.")
    bad = [c for c in cols if not 0 <= c < x_dim]
    if bad:
        raise ValueError(f"discrete_columns {bad} are not columns of the flattened x, which has "
                         f"{x_dim} values (indices 0..{x_dim - 1}).")
    return cols


def discrete_config(x: Tensor, columns: Sequence[int]) -> dict[str, list[int]]:
    """Validate the declared discrete ``columns`` of training ``x`` ``(N, *x_shape)`` and
    infer their categories → ``{"discrete_columns", "discrete_low", "num_categories"}``.

    Raises a ``ValueError`` naming the column when a value is not an integer (a continuous
    column declared discrete), not finite, or when a column has more than
    :data:`MAX_CATEGORIES` categories.
    """
    flat = x.reshape(x.shape[0], -1)
    cols = _columns(columns, flat.shape[1])
    values = flat[:, cols].double()
    lows, sizes = [], []
    for j, c in enumerate(cols):
        v = values[:, j]
        if not bool(torch.isfinite(v).all()):
            raise ValueError(f"Discrete x column {c} contains NaN or inf; discrete columns must "
                             "hold integer codes in every (valid) simulation.")
        frac = v[(v - v.round()).abs() > 1e-6]
        if frac.numel():
            raise ValueError(
                f"x column {c} is declared discrete but holds non-integer values (e.g. "
                f"{float(frac[0]):.6g}). Declare only columns of integer codes (choices, counts, "
                "categories) as discrete, or remove it from x_discrete / discrete_columns.")
        low = min(0, int(v.min().round()))
        k = int(v.max().round()) - low + 1
        if k > MAX_CATEGORIES:
            raise ValueError(
                f"Discrete x column {c} spans {k} categories ({low}..{low + k - 1}), more than "
                f"{MAX_CATEGORIES}; treat it as continuous (remove it from the discrete "
                "columns) or recode it.")
        lows.append(low)
        sizes.append(max(k, 2))
    return {"discrete_columns": cols, "discrete_low": lows, "num_categories": sizes}


class DiscreteColumns(nn.Module):
    """The discrete columns of flattened ``x`` and the categories seen in training.

    Args:
        x_dim: number of values of one flattened observation.
        columns, low, num_categories: from :func:`discrete_config` (saved in the config).
    """

    def __init__(self, x_dim: int, columns: Sequence[int], low: Sequence[int],
                 num_categories: Sequence[int]):
        super().__init__()
        self.columns = _columns(columns, x_dim)
        self.low = [int(v) for v in low]
        self.num_categories = [int(k) for k in num_categories]
        self.x_dim = x_dim
        self.continuous = [c for c in range(x_dim) if c not in self.columns]
        self.register_buffer("_low", torch.tensor(self.low, dtype=torch.float32),
                             persistent=False)
        # 1 where category i of column j occurred in training, columns concatenated.
        self.register_buffer("seen", torch.zeros(sum(self.num_categories), dtype=torch.bool))
        starts = [sum(self.num_categories[:j]) for j in range(len(self.columns))]
        self.register_buffer("_offsets", torch.tensor(starts, dtype=torch.long), persistent=False)

    @property
    def one_hot_dim(self) -> int:
        return sum(self.num_categories)

    def fit(self, x_flat: Tensor) -> None:
        """Record the categories present in training data ``(N, x_dim)``."""
        codes = (x_flat[:, self.columns] - self._low).round().long()
        with torch.no_grad():
            self.seen.zero_()
            self.seen[(codes + self._offsets).flatten().unique()] = True

    def codes(self, x_flat: Tensor) -> Tensor:
        """Integer codes ``(N, n_discrete)`` in ``0..K_j-1`` of ``x_flat`` ``(N, x_dim)``;
        :class:`~sbi_core.posterior.ObservationError` (a ``ValueError``) if a value is not an
        integer or was never seen in training."""
        v = x_flat[:, self.columns]
        r = v.round()
        codes = (r - self._low).long()
        size = torch.tensor(self.num_categories, device=v.device)
        ok = ((v - r).abs() <= 1e-4) & (codes >= 0) & (codes < size)
        ok = ok & self.seen[(codes.clamp(min=0) + self._offsets).clamp(max=self.seen.numel() - 1)]
        if not bool(ok.all()):
            row, j = (~ok).nonzero()[0].tolist()
            c = self.columns[j]
            start = sum(self.num_categories[:j])
            seen = [self.low[j] + i for i, s in enumerate(
                self.seen[start:start + self.num_categories[j]].tolist()) if s]
            raise ObservationError(
                f"Discrete x column {c} has value {float(v[row, j]):.6g}, which never occurred in "
                f"the training simulations (values seen: {_short(seen)}). The estimator has "
                "learned nothing about it: check the observation's coding, or simulate (with a "
                "wider prior) until that value occurs and retrain.")
        return codes

    def mask_logits(self, logits: Tensor, j: int) -> Tensor:
        """Logits ``(N, K_j)`` of column ``j`` with the categories never seen in training set
        to ``-inf``, so a categorical puts all its mass on values that occurred."""
        start = sum(self.num_categories[:j])
        seen = self.seen[start:start + self.num_categories[j]]
        return logits.masked_fill(~seen, -torch.inf)

    def one_hot(self, codes: Tensor) -> Tensor:
        """Concatenated one-hot codes ``(N, sum K_j)`` of ``codes`` ``(N, n_discrete)``."""
        return torch.cat([nn.functional.one_hot(codes[:, j], k).float()
                          for j, k in enumerate(self.num_categories)], dim=1)

    def extra_repr(self) -> str:
        return f"columns={self.columns}, low={self.low}, num_categories={self.num_categories}"


def _short(values: list[int], n: int = 12) -> str:
    return str(values) if len(values) <= n else f"{values[:n]}... ({len(values)} values)"


class OneHotX(nn.Module):
    """NPE preprocessing: ``x`` ``(N, *x_shape)`` → ``(N, n_continuous + sum K_j)``: the
    continuous columns z-scored by ``x_norm`` (whose discrete entries are left at mean 0,
    std 1 and are not used), then the one-hot codes of the discrete columns.

    Args:
        x_shape: shape of one observation (flattened here).
        config: the estimator config holding ``discrete_columns``, ``discrete_low``,
            ``num_categories`` (see :func:`discrete_config`).
    """

    def __init__(self, x_shape: tuple[int, ...], config: dict[str, Any]):
        super().__init__()
        x_dim = 1
        for s in x_shape:
            x_dim *= int(s)
        self.discrete = DiscreteColumns(x_dim, config["discrete_columns"],
                                        config["discrete_low"], config["num_categories"])

    @property
    def out_dim(self) -> int:
        return len(self.discrete.continuous) + self.discrete.one_hot_dim

    def forward(self, x: Tensor, x_norm: nn.Module) -> Tensor:
        flat = x.reshape(x.shape[0], -1)
        z = x_norm(x).reshape(x.shape[0], -1)[:, self.discrete.continuous]
        return torch.cat([z, self.discrete.one_hot(self.discrete.codes(flat))], dim=1)

    def unscale_discrete(self, x_norm: nn.Module) -> None:
        """Leave the discrete entries of a fitted ``x_norm`` unscaled (mean 0, std 1)."""
        with torch.no_grad():
            x_norm.mean.view(-1)[self.discrete.columns] = 0.0
            x_norm.std.view(-1)[self.discrete.columns] = 1.0
