"""Training from a zarr simulation store larger than memory.

:class:`StoreBatches` is a :class:`~sbi_core.training.BatchSource` over the committed
chunks of a :class:`~sbi_core.stores.SimulationStore`. Whole chunks are held out for
validation (seeded; at most ``max_validation`` rows kept in memory). Each epoch visits
the training chunks in a fresh random order, ``buffer_chunks`` at a time, shuffles the
valid rows inside that buffer and yields full minibatches, so memory stays below about
``(buffer_chunks + 1) * chunk_size`` rows whatever the store size.

:func:`fit_streaming` computes the z-scoring statistics (mean, std, min, max of θ and
x over all valid training rows) in one streaming pass, builds the estimator on a bounded
sample, sets its standardization to the exact statistics when it has ``theta_norm`` /
``x_norm`` layers (the NPE family), and trains through the shared loop.

Example::

    posterior = sbi_core.fit(problem, "sims.zarr", streaming=True, seed=0)
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from sbi_core.methods import get_method
from sbi_core.posterior import Posterior
from sbi_core.problem import Problem
from sbi_core.stores import SimulationStore
from sbi_core.training import split_options, train

__all__ = ["StoreBatches", "fit_streaming", "streaming_statistics"]


class StoreBatches:
    """Shuffled minibatches streamed from a store (see the module docstring).

    Args:
        store: a :class:`SimulationStore` or its path.
        validation_fraction: share of chunks held out (at least one chunk when > 0).
        seed: fixes the held-out chunks.
        buffer_chunks: chunks read and shuffled together (memory vs. mixing).
        max_validation: cap on held-out rows kept in memory.
        padded_sets: rows whose ``x`` ``(n, d)`` is a set padded with all-NaN trials
            (:func:`estimators.embedding.padded_sets`) are training data, not failed
            simulations (NPE with a set embedding, as :func:`sbi_core.fit` in memory).
    """

    def __init__(self, store: SimulationStore | str | os.PathLike,
                 validation_fraction: float = 0.1, seed: int = 0, buffer_chunks: int = 4,
                 max_validation: int = 20_000, padded_sets: bool = False):
        self.store = store if isinstance(store, SimulationStore) else SimulationStore(store)
        self.padded_sets = padded_sets
        chunks = sorted(self.store.committed())
        if len(chunks) < self.store.num_chunks:
            raise ValueError(
                f"{self.store.path} is incomplete ({len(chunks)} of {self.store.num_chunks} "
                "chunks); finish it with resume=True (CLI: --resume) before training.")
        if buffer_chunks < 1:
            raise ValueError(f"buffer_chunks must be >= 1, got {buffer_chunks}.")
        n_val_chunks = int(round(validation_fraction * len(chunks))) if validation_fraction > 0 else 0
        if validation_fraction > 0:
            n_val_chunks = max(n_val_chunks, 1)
            if len(chunks) - n_val_chunks < 1:
                raise ValueError(
                    f"{self.store.path} has {len(chunks)} chunk(s), too few to hold whole chunks "
                    "out for validation; simulate with a smaller chunk_size or train in memory.")
        perm = torch.randperm(len(chunks), generator=torch.Generator().manual_seed(seed)).tolist()
        self.val_chunks = sorted(chunks[i] for i in perm[:n_val_chunks])
        self.train_chunks = sorted(chunks[i] for i in perm[n_val_chunks:])
        self.buffer_chunks = buffer_chunks
        marks = self.store.marks()
        if padded_sets:  # padded rows were marked invalid by simulate: count them as valid
            marks = {i: dict(marks[i], num_invalid=self._num_invalid(i))
                     if marks[i]["num_invalid"] else marks[i] for i in chunks}
        n_bad, n_all = (sum(marks[i][k] for i in chunks) for k in ("num_invalid", "size"))
        if 0 < n_bad < n_all:  # as SimulationSet.training_data warns for in-memory training
            err = self.store.provenance().get("first_error")
            warnings.warn(
                f"Excluding {n_bad} of {n_all} invalid simulations (NaN/inf or errors) of "
                f"{self.store.path} from training" + (f"; first error: {err}" if err else "")
                + ". Excluding them biases the posterior where the simulator fails; see which "
                "rows failed in the `valid` array of the store (SimulationSet.load(path).valid).",
                stacklevel=3)
        self.num_train = sum(marks[i]["size"] - marks[i]["num_invalid"] for i in self.train_chunks)
        if self.num_train < 2:
            raise ValueError(f"{self.store.path} has fewer than 2 valid training simulations.")
        self._val = self._load(self.val_chunks, max_validation) if self.val_chunks else None
        self.num_validation = 0 if self._val is None else int(self._val[0].shape[0])

    def _chunk_rows(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        """All rows of chunk ``index``: theta, x and the training mask ``(n,)``."""
        theta, x, valid = (torch.from_numpy(a) for a in
                           self.store.read_rows(*self.store.chunk_rows(index)))
        if self.padded_sets:
            from estimators.embedding import padded_sets

            valid = valid | (padded_sets(x) & torch.isfinite(theta).all(-1))
        return theta, x, valid

    def _num_invalid(self, index: int) -> int:
        return int((~self._chunk_rows(index)[2]).sum())

    def _chunk(self, index: int) -> tuple[Tensor, Tensor]:
        theta, x, valid = self._chunk_rows(index)
        return theta[valid], x[valid]

    def _load(self, chunks: list[int], limit: int) -> tuple[Tensor, Tensor]:
        thetas, xs, count = [], [], 0
        for i in chunks:
            if count >= limit:
                break
            t, x = self._chunk(i)
            thetas.append(t[:limit - count])
            xs.append(x[:limit - count])
            count += thetas[-1].shape[0]
        return torch.cat(thetas), torch.cat(xs)

    def epoch(self, generator: torch.Generator, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Full minibatches ``(theta (B, D), x (B, *x_shape))`` of one pass over the chunks."""
        order = torch.randperm(len(self.train_chunks), generator=generator).tolist()
        rest: tuple[Tensor, Tensor] | None = None
        yielded = False
        for s in range(0, len(order), self.buffer_chunks):
            parts = [self._chunk(self.train_chunks[i]) for i in order[s:s + self.buffer_chunks]]
            if rest is not None:
                parts.insert(0, rest)
            theta = torch.cat([p[0] for p in parts])
            x = torch.cat([p[1] for p in parts])
            shuffle = torch.randperm(theta.shape[0], generator=generator)
            theta, x = theta[shuffle], x[shuffle]
            full = theta.shape[0] // batch_size * batch_size
            for b in range(0, full, batch_size):
                yield theta[b:b + batch_size], x[b:b + batch_size]
                yielded = True
            rest = (theta[full:], x[full:])
        if not yielded and rest is not None and rest[0].shape[0] > 0:
            yield rest

    def validation(self) -> Iterator[tuple[Tensor, Tensor]]:
        if self._val is None:
            return
        theta, x = self._val
        for i in range(0, theta.shape[0], 8192):
            yield theta[i:i + 8192], x[i:i + 8192]

    def sample(self, rows: int = 10_000) -> tuple[Tensor, Tensor]:
        """Up to ``rows`` valid training rows (to build an estimator's architecture)."""
        return self._load(self.train_chunks, rows)


def streaming_statistics(batches: StoreBatches) -> dict[str, Tensor]:
    """Mean, std (unbiased), min and max of θ and x over all valid training rows, one pass.

    Chunk statistics are merged with Chan et al.'s pairwise update in float64, which is
    exact up to rounding whatever the number of chunks.
    """
    acc: dict[str, Any] = {}
    for i in batches.train_chunks:
        theta, x = batches._chunk(i)
        for name, v in (("theta", theta), ("x", x)):
            v = v.double()
            n_b = v.shape[0]
            if n_b == 0:
                continue
            mean_b = v.mean(0)
            m2_b = ((v - mean_b) ** 2).sum(0)
            lo, hi = v.min(0).values, v.max(0).values
            if name not in acc:
                acc[name] = [n_b, mean_b, m2_b, lo, hi]
                continue
            n_a, mean_a, m2_a, lo_a, hi_a = acc[name]
            n = n_a + n_b
            delta = mean_b - mean_a
            acc[name] = [n, mean_a + delta * n_b / n, m2_a + m2_b + delta ** 2 * n_a * n_b / n,
                         torch.minimum(lo_a, lo), torch.maximum(hi_a, hi)]
    out = {}
    for name, (n, mean, m2, lo, hi) in acc.items():
        out[f"{name}_mean"] = mean.float()
        out[f"{name}_std"] = (m2 / max(n - 1, 1)).sqrt().float()
        out[f"{name}_min"], out[f"{name}_max"] = lo.float(), hi.float()
    return out


def _apply_statistics(estimator: torch.nn.Module, stats: dict[str, Tensor]) -> bool:
    """Copy exact statistics into ``theta_norm`` / ``x_norm`` / ``x_min`` / ``x_max`` if present."""
    theta_norm, x_norm = getattr(estimator, "theta_norm", None), getattr(estimator, "x_norm", None)
    if theta_norm is None or not hasattr(theta_norm, "mean"):
        return False
    config = getattr(estimator, "config", {}) or {}
    is_set = (config.get("embedding") or {}).get("type") == "set"
    with torch.no_grad():
        # theta statistics are of raw theta; with a theta transform, keep the sample's fit.
        has_transform = getattr(estimator, "theta_transform", None) is not None
        # x statistics are of raw x; with an x transform (log1p columns), keep the sample's fit
        x_transformed = getattr(getattr(estimator, "x_transform", None), "active", False)
        for layer, name in ((None if has_transform else theta_norm, "theta"),
                            (None if is_set or x_transformed else x_norm, "x")):
            if layer is None or not bool(torch.isfinite(stats[f"{name}_mean"]).all()):
                continue  # NaN-padded sets: keep the fit of the sample, as in memory
            std = stats[f"{name}_std"]
            layer.mean.copy_(stats[f"{name}_mean"].reshape(layer.mean.shape))
            layer.std.copy_(torch.where(std > 1e-12, std, torch.ones_like(std))
                            .reshape(layer.std.shape))
        if not is_set and hasattr(estimator, "x_min") and bool(torch.isfinite(stats["x_min"]).all()) and hasattr(estimator, "x_max"):
            estimator.x_min.copy_(stats["x_min"].reshape(estimator.x_min.shape))
            estimator.x_max.copy_(stats["x_max"].reshape(estimator.x_max.shape))
    return True


def fit_streaming(problem: Problem, store: str | os.PathLike | SimulationStore,
                  method: str = "npe", seed: int = 0, buffer_chunks: int = 4,
                  max_validation: int = 20_000, **options: Any) -> Posterior:
    """Train ``method`` on a store chunk by chunk with bounded memory; see the module docstring.

    Args:
        problem: gives the prior and the problem spec saved with the model.
        store: a finished zarr store (``simulate(..., store=PATH)``).
        method: a registered method that trains on ``(theta, x)`` pairs.
        buffer_chunks, max_validation: see :class:`StoreBatches`.
        **options: training and estimator options, as for :func:`sbi_core.fit`.
    """
    m = get_method(method)
    if m.fit is not None:
        raise ValueError(f"Method {method!r} trains with its own loop and cannot stream from a "
                         "store; load the store into memory (streaming=False).")
    train_config, estimator_options = split_options(
        {**m.training_defaults(options), **options, "seed": seed})
    from sbi_core.inference import _embeds_padded_sets, check_parameter_names

    batches = StoreBatches(store, train_config.validation_fraction, seed, buffer_chunks,
                           max_validation, padded_sets=_embeds_padded_sets(method, options))

    check_parameter_names(problem, batches.store.provenance())
    theta_s, x_s = batches.sample()
    if theta_s.shape[1] != problem.dim:
        raise ValueError(f"The store's theta has {theta_s.shape[1]} columns, but problem "
                         f"{problem.name!r} has D={problem.dim} parameters.")
    stats = streaming_statistics(batches)
    torch.manual_seed(seed)
    estimator = m.build(theta_s, x_s, problem.prior, **estimator_options)
    exact = _apply_statistics(estimator, stats)
    del theta_s, x_s
    history = train(estimator, batches, None, train_config, loss_fn=m.loss_fn).to_dict()
    history["streaming"] = {"store": str(batches.store.path), "buffer_chunks": buffer_chunks,
                            "exact_standardization": exact,
                            "chunks": len(batches.train_chunks) + len(batches.val_chunks)}
    return m.make_posterior(estimator, problem.prior, problem.spec(), history)

