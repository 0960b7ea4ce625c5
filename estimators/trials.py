"""Exchangeable trials in a flattened ``x``: permutation-invariant NPE without a hand-written
embedding.

A problem declares ``Problem(..., x_trials=(n, d))`` when its flattened ``x`` holds ``n``
exchangeable trials of ``d`` values each (trial ``i`` is ``x[i*d:(i+1)*d]``, e.g. ``n`` iid
draws given ``theta``): the posterior is then the same for every order of the trials. ``fit``
passes the declaration to NPE, which handles it by one of the ``TRIAL_MODES``:

- ``"sort"`` (default): trials put in a canonical order (by their first value, ties by the
  next) before the flattened estimator; exactly invariant, as cheap as the plain estimator.
  The estimator must still represent the posterior across the order's boundaries (where two
  trials' first values cross), which it learns from the data;
- ``"set"``: x is viewed as ``(N, n, d)`` and embedded by the DeepSet
  (:class:`~estimators.embedding.SetEmbedding`; ``embedding={"type": "set", "moments":
  True}`` adds the trials' first and second moments), exactly invariant up to float rounding;
  its size does not grow with ``n`` (for many trials; measured here only with ``n = 4``);
- ``"permute"``: the flattened estimator, trained on a fresh random order of each row's
  trials in every minibatch (data augmentation; invariant only approximately).

In every mode the z-scoring of x shares its mean and standard deviation across the trials
(one per trial feature), so standardization itself is invariant too. The default was chosen
with ``benchmarks/compare_sbi.py`` on slcp (benchmarks/RESULTS.md, "Issue 18: declared
exchangeable trials"): at 10,000 simulations (seed 0, observations 1-10) mean C2ST
fmaf / fnsf: flat 0.905 / 0.845, ``"sort"`` 0.855 / 0.813, ``"set"`` 0.889 / 0.894, set with
moments 0.856 / 0.821, ``"permute"`` 0.866 (fmaf; 901 epochs against 176 for ``"sort"``).
With declared trials the default flow is ``fnsf`` (``flow="auto"``, ``AUTO_FLOW`` in
:mod:`estimators.npe`): sorted trials + fnsf + cosine preset averaged C2ST 0.794 on slcp over
seeds 0-2 (benchmarks/RESULTS.md, "Issue 18: a single-model default for declared trials").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from estimators.embedding import is_set_embedding

__all__ = ["TRIAL_MODES", "DEFAULT_TRIAL_MODE", "resolve_trials", "trial_statistics",
           "permute_trials", "sort_trials"]

TRIAL_MODES = ("set", "permute", "sort")
DEFAULT_TRIAL_MODE = "sort"


def resolve_trials(x_trials: Any, trial_mode: str | None, embedding: Any,
                   x_shape: tuple[int, ...]) -> tuple[list[int] | None, str | None, Any]:
    """What NPE does with declared trials: ``(x_trials, trial_mode, embedding)`` to store.

    Args:
        x_trials: ``(n, d)`` or None (nothing declared: returned unchanged, no mode).
        trial_mode: one of ``TRIAL_MODES`` or None (default: ``DEFAULT_TRIAL_MODE`` when no
            embedding is given; with a set embedding ``"set"``; with another embedding the
            declaration is not used, so ``embedding="identity"`` turns it off).
        embedding: the user's ``embedding=`` option (None: not given).
    """
    if x_trials is None:
        if trial_mode is not None:
            raise ValueError(f"trial_mode={trial_mode!r} needs exchangeable trials: declare "
                             "them with Problem(..., x_trials=(n, d)) or pass x_trials=(n, d).")
        return None, None, embedding
    from sbi_core.problem import check_trials

    n, d = check_trials(x_trials, x_shape)
    if trial_mode is not None and trial_mode not in TRIAL_MODES:
        raise ValueError(f"Unknown trial_mode {trial_mode!r}; use one of {TRIAL_MODES}.")
    spec = {"type": embedding} if isinstance(embedding, str) else embedding
    is_set = isinstance(spec, Mapping) and is_set_embedding(spec)
    if embedding is None:
        mode = trial_mode or DEFAULT_TRIAL_MODE
        return [n, d], mode, ({"type": "set"} if mode == "set" else None)
    if is_set:
        if trial_mode not in (None, "set"):
            raise ValueError(f"trial_mode={trial_mode!r} does not go with the set embedding "
                             f"{embedding!r}; leave trial_mode out (the set embedding is "
                             "already permutation invariant).")
        return [n, d], "set", embedding
    if trial_mode == "set":
        raise ValueError(f"trial_mode='set' uses the set embedding; it cannot be combined with "
                         f"embedding={embedding!r}. Leave embedding out, or use trial_mode="
                         "'permute' / 'sort' with a flat embedding.")
    if trial_mode is None:  # an explicit flat embedding: the declaration is not used
        return None, None, embedding
    return [n, d], trial_mode, embedding


def trial_statistics(x: Tensor, d: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-feature mean, std, min and max ``(d,)`` over all trials of ``x`` ``(N, *x_shape)``
    viewed as rows of ``d`` values (all-NaN trials, the padding of sets, are left out)."""
    rows = x.reshape(-1, d).float()
    rows = rows[~torch.isnan(rows).all(-1)]
    std = rows.std(0)
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    return (rows.mean(0), std, torch.nan_to_num(rows.min(0).values),
            torch.nan_to_num(rows.max(0).values))


def permute_trials(x: Tensor, n: int, d: int) -> Tensor:
    """``x`` ``(N, *x_shape)`` with each row's ``n`` trials in a fresh random order (torch's
    global generator)."""
    order = torch.rand(x.shape[0], n, device=x.device).argsort(1)
    return _take(x, order, n, d)


def sort_trials(x: Tensor, n: int, d: int) -> Tensor:
    """``x`` ``(N, *x_shape)`` with each row's trials sorted lexicographically by their
    values (first value, ties broken by the next ones): one canonical order for every
    permutation of the same trials."""
    trials = x.reshape(x.shape[0], n, d)
    order = torch.arange(n, device=x.device).expand(x.shape[0], n)
    for j in reversed(range(d)):  # stable sorts from the last key to the first
        key = trials[..., j].gather(1, order)
        order = order.gather(1, key.argsort(dim=1, stable=True))
    return _take(x, order, n, d)


def _take(x: Tensor, order: Tensor, n: int, d: int) -> Tensor:
    trials = x.reshape(x.shape[0], n, d)
    return trials.gather(1, order.unsqueeze(-1).expand(-1, -1, d)).reshape(x.shape)
