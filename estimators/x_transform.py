"""A variance-stabilizing map of nonnegative, right-skewed x columns before z-scoring (NPE).

Counts and other heavy-tailed nonnegative summaries (the SIR task's ten infection counts:
skewness 1.1-3.8) keep their skew after z-scoring; ``log1p`` (or ``sqrt``) of such columns
makes the conditioning variable closer to symmetric. The map is deterministic and
invertible, so the posterior ``p(theta | x)`` is unchanged in theory; only the network's
input changes.

``x_transform`` (an NPE estimator option):

- ``"none"`` / ``None``: no transform.
- ``"auto"``: ``log1p`` on every flattened x column that is ``>= 0`` in all training rows, is
  not constant and has sample skewness ``> AUTO_SKEW`` (1.0); nothing elsewhere. Only for a
  flat x fed to the identity embedding (no declared trials, set embedding or discrete
  columns); otherwise no transform. The rule was fixed before the held-out measurements
  (benchmarks/RESULTS.md, "Issue 18: a log1p transform of skewed count x"). It is not
  NPE's default: on sir (10,000 simulations, seeds 0-2) it cost C2ST (0.672 -> 0.724) and
  did not shorten training (223 -> 238 epochs); it helped an overdispersed negative
  binomial problem (0.623 -> 0.594, benchmarks/x_transform_counts.py).
- ``"log1p"`` / ``"sqrt"``: that map on every nonnegative, non-constant column.

The map is applied sign-symmetrically, ``sign(v) * log1p(|v|)`` (``sign(v) * sqrt(|v|)``), so
an observation with a negative value in a transformed column stays finite (the posterior's
training-range check warns about it). The resolved choice is plain data in the estimator
config, ``x_map = {"kind": "log1p", "columns": [flattened indices]}``; configs without it
(files saved before the option existed) mean no transform.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["X_TRANSFORMS", "AUTO_SKEW", "XTransform", "resolve_x_transform", "skewed_columns"]

X_TRANSFORMS = (None, "none", "auto", "log1p", "sqrt")
KINDS = ("log1p", "sqrt")
# sample skewness above which "auto" transforms a nonnegative column
AUTO_SKEW = 1.0


def _stats(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per flattened column of ``x`` ``(N, ...)``: nonnegative, non-constant, skewness."""
    v = x.reshape(x.shape[0], -1).double()
    mean = v.mean(0)
    centred = v - mean
    var = (centred ** 2).mean(0)
    nonconstant = var > 1e-12 * (1.0 + mean.abs()) ** 2
    skew = (centred ** 3).mean(0) / var.clamp(min=1e-300) ** 1.5
    return (v >= 0).all(0), nonconstant, torch.where(nonconstant, skew, torch.zeros_like(skew))


def skewed_columns(x: Tensor, threshold: float = AUTO_SKEW) -> list[int]:
    """Flattened indices of the columns of ``x`` ``(N, ...)`` that are ``>= 0`` in every row,
    not constant, and have sample skewness ``> threshold`` (the ``"auto"`` rule)."""
    nonneg, nonconstant, skew = _stats(x)
    return [int(i) for i in torch.nonzero(nonneg & nonconstant & (skew > threshold)).flatten()]


def resolve_x_transform(option: Any, x: Tensor, flat_identity: bool,
                        structured: bool) -> dict[str, Any] | None:
    """The ``x_map`` config entry for the option ``x_transform`` and training ``x``.

    Args:
        option: one of ``X_TRANSFORMS``.
        x: the training observations ``(N, *x_shape)``.
        flat_identity: x reaches the flow through the identity embedding (``"auto"`` applies
            only then).
        structured: x declares trials, a set embedding or discrete columns (no transform
            possible: explicit kinds raise).
    """
    if option not in X_TRANSFORMS:
        raise ValueError(f"Unknown x_transform {option!r}; use one of "
                         f"{[k for k in X_TRANSFORMS if k is not None]} (or None).")
    if option in (None, "none"):
        return None
    if option == "auto":
        if structured or not flat_identity:
            return None
        cols = skewed_columns(x)
        return {"kind": "log1p", "columns": cols} if cols else None
    if structured:
        raise ValueError(f"x_transform={option!r} works on flat x only, not with declared "
                         "trials (x_trials), a set embedding or discrete_columns; pass "
                         "x_transform='none' (or x_trials=None for a flat x).")
    nonneg, nonconstant, _ = _stats(x)
    cols = [int(i) for i in torch.nonzero(nonneg & nonconstant).flatten()]
    if not cols:
        raise ValueError(f"x_transform={option!r}: no x column is nonnegative (and not "
                         "constant) in the training data, so there is nothing to transform; "
                         "pass x_transform='none'.")
    return {"kind": option, "columns": cols}


def check_x_map(x_map: Any, numel: int) -> dict[str, Any] | None:
    """Validate an ``x_map`` read from a config (a file): plain kind and in-range columns."""
    if x_map is None:
        return None
    if not isinstance(x_map, dict) or x_map.get("kind") not in KINDS or \
            not isinstance(x_map.get("columns"), (list, tuple)) or \
            not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < numel
                    for c in x_map["columns"]):
        raise ValueError(f"x_map={x_map!r} in an estimator config must be None or "
                         f"{{'kind': one of {KINDS}, 'columns': flattened indices < {numel}}}.")
    return {"kind": x_map["kind"], "columns": [int(c) for c in x_map["columns"]]}


class XTransform(nn.Module):
    """Applies ``x_map`` to observations ``(N, *x_shape)``; identity when ``x_map`` is None.

    The column mask is a non-persistent buffer (rebuilt from the config, not in state_dict),
    so files saved before the option existed load unchanged.
    """

    def __init__(self, x_shape: tuple[int, ...], x_map: dict[str, Any] | None):
        super().__init__()
        numel = 1
        for s in x_shape:
            numel *= int(s)
        self.x_map = check_x_map(x_map, numel)
        mask = torch.zeros(numel, dtype=torch.bool)
        if self.x_map is not None:
            mask[self.x_map["columns"]] = True
        self.register_buffer("mask", mask.reshape(x_shape), persistent=False)

    @property
    def active(self) -> bool:
        return self.x_map is not None

    def forward(self, x: Tensor) -> Tensor:
        if self.x_map is None:
            return x
        a = x.abs()
        f = torch.log1p(a) if self.x_map["kind"] == "log1p" else a.sqrt()
        return torch.where(self.mask, torch.sign(x) * f, x)

    def inverse(self, v: Tensor) -> Tensor:
        """The original x for transformed values ``v`` ``(..., *x_shape)``."""
        if self.x_map is None:
            return v
        a = v.abs()
        f = torch.expm1(a) if self.x_map["kind"] == "log1p" else a * a
        return torch.where(self.mask, torch.sign(v) * f, v)
