"""Checks of the in-context method's inputs and of a loaded in-context model.

The pretrained network (:mod:`estimators.incontext`) reads the user's simulations as its
context. Some contexts look valid but give silently wrong posteriors; they are caught here
(hardening wave 14, docs/incontext.md "Limits"):

- **exact copies** of simulations (the same ``theta`` and ``x`` twice, e.g. a simulation file
  concatenated with itself): a held-out pair's copy sits in the context when the variant is
  chosen, and the network's nearest-neighbour term finds it; they are dropped with a warning
  (:func:`drop_duplicate_pairs`);
- a parameter that takes **one value in every simulation**: the per-data-set
  standardization divides by its spread (zero), and the posterior becomes a point mass at
  that value (:func:`check_parameter_spread`);
- a tampered model file whose context statistics, bounds, mixture weights or neighbour
  counts are not finite / positive (:func:`check_estimator_state`): refused when the file is
  loaded, not by a torch error (or NaN densities) at the first ``sample``.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["drop_duplicate_pairs", "check_parameter_spread", "check_finetune_steps",
           "check_num_neighbors", "check_estimator_state"]


def drop_duplicate_pairs(theta: Tensor, x: Tensor) -> tuple[Tensor, Tensor, int]:
    """``theta`` ``(N, D)`` and ``x`` ``(N, *x_shape)`` without exact copies of earlier rows
    (the first of each kept, in the original order) and the number dropped; warns when any
    are dropped."""
    n = theta.shape[0]
    rows = torch.cat([theta.reshape(n, -1), x.reshape(n, -1)], 1).float()
    if n < 2:
        return theta, x, 0
    _, inverse = torch.unique(rows, dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), n, dtype=torch.long)
    first.scatter_reduce_(0, inverse, torch.arange(n), reduce="amin")
    keep = first.sort().values
    dropped = n - keep.numel()
    if dropped == 0:
        return theta, x, 0
    warnings.warn(
        f"{dropped} of {n} simulations are exact copies of others (the same theta and x); the "
        f"in-context model uses the {keep.numel()} distinct ones. Copies are not new information "
        "and would leak held-out pairs into the context when the variant is chosen. If the "
        "file was concatenated with itself, simulate again with another seed instead.",
        UserWarning, stacklevel=5)
    return theta[keep], x[keep], dropped


def check_parameter_spread(theta: Tensor, names: Sequence[str] | None = None) -> None:
    """Refuse a context in which a parameter column of ``theta`` ``(N, D)`` is constant."""
    if theta.shape[0] < 2:
        return
    flat = (theta.max(0).values == theta.min(0).values).nonzero().flatten().tolist()
    if not flat:
        return
    labels = [f"{names[j]!r}" if names is not None and j < len(names) else f"column {j}"
              for j in flat]
    values = ", ".join(f"{lab} = {float(theta[0, j]):.6g}" for lab, j in zip(labels, flat))
    raise ValueError(
        f"Parameter(s) {values} take one value in all {theta.shape[0]} simulations; the "
        "in-context model learns the posterior from how theta varies across the simulations, "
        "and for a constant parameter it would return a point mass at that value. Simulate "
        "with theta drawn from the prior (simulate(problem, N)), or, to keep the parameter "
        "fixed, leave it out of the problem (set it inside the simulator).")


def check_finetune_steps(steps: Any) -> int:
    """``finetune_steps`` as an ``int`` (``None`` / ``0``: no fine-tuning); else a clear
    error."""
    if steps is None:
        return 0
    if isinstance(steps, numbers.Integral) and not isinstance(steps, bool) and steps >= 0:
        return int(steps)
    raise ValueError(f"finetune_steps must be a non-negative integer (0: no fine-tuning), "
                     f"got {steps!r}.")


def check_num_neighbors(value: Any, where: str = "num_neighbors") -> int:
    """A neighbour count: a positive integer, else a clear error."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1:
        return int(value)
    raise ValueError(f"{where} must be a positive integer, got {value!r}.")


_POSITIVE = ("theta_std", "x_std")
_FINITE = ("theta_context", "x_context", "theta_mean", "x_mean", "x_min", "x_max", "coef")


def check_estimator_state(est: nn.Module) -> None:
    """Refuse an in-context estimator whose loaded buffers cannot describe a context: not
    finite, standard deviations not positive, bounds with ``low > high``, mixture weights not
    finite (a tampered or damaged model file). ``est``: an ``InContextEstimator`` or a
    ``StackedInContextEstimator``."""
    comps = list(getattr(est, "components", [est]))
    weights = getattr(est, "log_weights", None)
    if weights is not None and not (bool(torch.isfinite(weights).all())
                                    and abs(float(weights.exp().sum()) - 1.0) < 1e-3):
        raise ValueError("the in-context mixture weights (log_weights) are not finite "
                         "probabilities summing to 1")
    for i, comp in enumerate(comps):
        where = f"component {i}: " if len(comps) > 1 else ""
        for name, value in comp.named_buffers(recurse=False):
            if name in _FINITE or name.startswith("adj_"):
                if not bool(torch.isfinite(value).all()):
                    raise ValueError(f"{where}the in-context buffer {name!r} is not finite")
            if name in _POSITIVE and not bool((value > 0).all()):
                raise ValueError(f"{where}the in-context buffer {name!r} has values <= 0 "
                                 "(it is a standard deviation)")
        low, high = comp.low, comp.high
        if bool(torch.isnan(low).any() | torch.isnan(high).any()) or bool((low > high).any()):
            raise ValueError(f"{where}the in-context prior bounds (low, high) are NaN or "
                             "have low > high")
        if not math.isfinite(float(comp.num_neighbors)) or comp.num_neighbors < 1:
            raise ValueError(f"{where}num_neighbors must be a positive integer")
