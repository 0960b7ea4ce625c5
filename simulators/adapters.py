"""Adapters that turn user functions into batched torch simulators.

- :func:`from_numpy`: ``f(theta: ndarray (N, D)) -> ndarray (N, ...)``.
- :func:`per_sample`: ``f(theta: Tensor (D,)) -> Tensor (...)`` (or numpy), called per row.

Exceptions from a per-sample function are not swallowed here: the simulation engine
isolates the failing rows and records them as invalid.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["from_numpy", "per_sample"]


class from_numpy:  # noqa: N801 - used like a function
    """Wrap a batched numpy simulator ``ndarray (N, D) -> ndarray (N, ...)``."""

    def __init__(self, fn: Callable[[np.ndarray], Any]):
        self.fn = fn

    def __call__(self, theta: Tensor) -> Tensor:
        out = self.fn(theta.detach().cpu().numpy().astype(np.float64))
        return torch.as_tensor(np.asarray(out, dtype=np.float32))


class per_sample:  # noqa: N801 - used like a function
    """Wrap a per-sample simulator ``theta (D,) -> x (...)``; torch or numpy in and out."""

    def __init__(self, fn: Callable[[Any], Any], numpy: bool = False):
        self.fn, self.numpy = fn, numpy

    def __call__(self, theta: Tensor) -> Tensor:
        rows = []
        for row in theta:
            arg = row.numpy().astype(np.float64) if self.numpy else row
            out = self.fn(arg)
            rows.append(torch.as_tensor(np.asarray(out, dtype=np.float32)) if not
                        isinstance(out, Tensor) else out.float())
        return torch.stack(rows)
