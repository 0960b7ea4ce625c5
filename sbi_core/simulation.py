"""The simulation engine: draw parameters from the prior and simulate, in chunks.

Reproducibility does not depend on parallelism: the budget is cut into chunks of a
fixed size, and chunk ``i`` draws its parameters and noise from the ``i``-th child of
``numpy.random.SeedSequence(seed)``. Whether the chunks run in one process or many,
the result is the same tensor, bit for bit.

Failures never kill a run. If a batched call raises, the chunk is re-simulated one
sample at a time to find the failing rows; those rows (and any with NaN/inf) are
marked invalid in the :class:`SimulationSet`, with the first error message kept.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from sbi_core.problem import Problem
from sbi_core.progress import progress_bar
from sbi_core.simulation_set import SimulationSet

__all__ = ["simulate", "ChunkResult", "chunk_plan", "run_chunk", "chunk_source"]

DEFAULT_CHUNK_SIZE = 1000


@dataclass
class ChunkResult:
    """Output of one chunk: ``theta`` ``(n, D)``, ``x`` ``(n, *x_shape)``, ``valid`` ``(n,)``."""

    index: int
    theta: Tensor
    x: Tensor
    valid: Tensor
    first_error: str | None
    seconds: float


def chunk_plan(num_simulations: int, seed: int, chunk_size: int) -> list[tuple[int, int, int]]:
    """``(chunk index, size, seed)`` for each chunk; depends only on the budget and seed."""
    if num_simulations <= 0:
        raise ValueError(f"num_simulations must be positive, got {num_simulations}.")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}.")
    n_chunks = -(-num_simulations // chunk_size)
    children = np.random.SeedSequence(seed).spawn(n_chunks)
    plan = []
    for i, child in enumerate(children):
        size = min(chunk_size, num_simulations - i * chunk_size)
        plan.append((i, size, int(child.generate_state(1, dtype=np.uint32)[0])))
    return plan


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def run_chunk(problem: Problem, index: int, size: int, seed: int) -> ChunkResult:
    """Simulate one chunk deterministically from its seed. Never raises for simulator failures."""
    start = time.perf_counter()
    _seed_everything(seed)
    theta = problem.prior.sample((size,)).float()
    x_shape = problem.x_shape or ()
    first_error = None
    try:
        x = _checked(problem.simulator(theta), size, x_shape)
    except Exception as err:  # isolate failing rows one by one
        first_error = f"{type(err).__name__}: {err}"
        rows = []
        for i in range(size):
            _seed_everything(seed + 7919 * (i + 1))
            try:
                rows.append(_checked(problem.simulator(theta[i : i + 1]), 1, x_shape)[0])
            except Exception as row_err:  # recorded, not raised
                first_error = first_error or f"{type(row_err).__name__}: {row_err}"
                rows.append(torch.full(x_shape, float("nan")))
        x = torch.stack(rows)
        if all(not torch.isnan(r).all() for r in rows):
            first_error = None  # the batch failed but every single row succeeded
    x = x.float()
    valid = torch.isfinite(x.reshape(size, -1)).all(1)
    if first_error is None and not bool(valid.all()):
        first_error = "the simulator returned NaN or inf"
    return ChunkResult(index, theta, x, valid, first_error, time.perf_counter() - start)


def _checked(x: Tensor, n: int, x_shape: tuple[int, ...]) -> Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, Tensor):
        raise TypeError(f"simulator returned {type(x).__name__}, not a Tensor")
    if tuple(x.shape) != (n, *x_shape):
        raise ValueError(f"simulator returned shape {tuple(x.shape)}, expected {(n, *x_shape)}")
    return x


# The problem reaches forked workers through this global, so lambdas and closures work.
_WORKER_PROBLEM: Problem | None = None


def _worker_init() -> None:
    torch.set_num_threads(1)


def _worker_chunk(task: tuple[int, int, int]) -> ChunkResult:
    assert _WORKER_PROBLEM is not None
    return run_chunk(_WORKER_PROBLEM, *task)


def _local_chunks(problem: Problem, plan: list[tuple[int, int, int]],
                  workers: int) -> Iterator[ChunkResult]:
    global _WORKER_PROBLEM
    if workers <= 1 or len(plan) == 1:
        for task in plan:
            yield run_chunk(problem, *task)
        return
    method = "fork" if platform.system() != "Windows" else "spawn"
    ctx = mp.get_context(method)
    _WORKER_PROBLEM = problem
    try:
        with ctx.Pool(min(workers, len(plan)), initializer=_worker_init) as pool:
            yield from pool.imap_unordered(_worker_chunk, plan)
    finally:
        _WORKER_PROBLEM = None


ChunkSource = Callable[[Problem, list[tuple[int, int, int]]], Iterator[ChunkResult]]


def chunk_source(workers: int = 1, executor: ChunkSource | str | None = None) -> ChunkSource:
    """The chunk runner: ``executor`` if callable, Dask for an address string, else local."""
    if isinstance(executor, str):
        from sbi_core.dask_executor import dask_chunks  # optional extra

        address = executor
        return lambda prob, tasks: dask_chunks(prob, tasks, address)
    if workers == -1:
        workers = os.cpu_count() or 1
    return executor or (lambda prob, tasks: _local_chunks(prob, tasks, workers))


def simulate(
    problem: Problem,
    num_simulations: int,
    seed: int = 0,
    workers: int = 1,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: bool | None = None,
    store: str | os.PathLike | None = None,
    resume: bool = False,
    executor: ChunkSource | str | None = None,
) -> SimulationSet:
    """Draw ``num_simulations`` parameters from the prior and simulate them.

    Args:
        problem: the :class:`Problem`.
        num_simulations: the budget ``N``.
        seed: fixes the result, whatever ``workers`` is.
        workers: local worker processes (``-1``: one per CPU core).
        chunk_size: simulations per chunk; part of the seed's meaning (keep it fixed).
        progress: show a progress bar (``None``: only on a terminal; see
            :mod:`sbi_core.progress`).
        store: optional path of a zarr store written chunk by chunk (needs ``sbi-core[scale]``).
        resume: continue an interrupted run into ``store``.
        executor: optional callable ``(problem, plan) -> iterator of ChunkResult`` or a Dask
            address string (``"tcp://HOST:PORT"`` or ``"local:N"``) for cluster execution.

    Returns:
        A :class:`SimulationSet` with ``theta`` ``(N, D)``, ``x`` ``(N, *x_shape)`` and ``valid``.
    """
    if workers == -1:
        workers = os.cpu_count() or 1
    plan = chunk_plan(num_simulations, seed, chunk_size)
    source = chunk_source(workers, executor)
    if store is not None:
        from sbi_core.stores import simulate_into_store  # optional extra (zarr)

        return simulate_into_store(problem, plan, source, store, seed=seed, chunk_size=chunk_size,
                                   resume=resume, progress=progress)
    if resume:
        raise ValueError("resume=True needs a store path to resume from (store=PATH.zarr).")

    results: dict[int, ChunkResult] = {}
    start = time.perf_counter()
    with progress_bar(total=num_simulations, desc=f"simulating {problem.name}", unit="sim",
                      progress=progress) as bar:
        for res in source(problem, plan):
            results[res.index] = res
            bar.update(res.theta.shape[0])
    ordered = [results[i] for i in range(len(plan))]
    return assemble(problem, ordered, seed=seed, chunk_size=chunk_size,
                    seconds=time.perf_counter() - start)


def assemble(problem: Problem, chunks: list[ChunkResult], seed: int, chunk_size: int,
             seconds: float | None = None) -> SimulationSet:
    """Concatenate ordered chunk results into a :class:`SimulationSet` with provenance."""
    theta = torch.cat([c.theta for c in chunks])
    x = torch.cat([c.x for c in chunks])
    valid = torch.cat([c.valid for c in chunks])
    errors = [c.first_error for c in chunks if c.first_error]
    provenance = {
        "problem": problem.name,
        "problem_source": problem.source,
        "seed": seed,
        "chunk_size": chunk_size,
        "num_simulations": int(theta.shape[0]),
        "num_invalid": int((~valid).sum()),
        "first_error": errors[0] if errors else None,
        "torch_version": str(torch.__version__),
    }
    if seconds is not None:
        provenance["seconds"] = round(seconds, 3)
    return SimulationSet(theta, x, valid, provenance)
