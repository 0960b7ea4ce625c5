"""The simulation engine: draw parameters from the prior and simulate, in chunks.

Reproducibility does not depend on parallelism: the budget is cut into chunks of a
fixed size, and chunk ``i`` draws its parameters and noise from the ``i``-th child of
``numpy.random.SeedSequence(seed)``. Whether the chunks run in one process or many,
the result is the same tensor, bit for bit.

Failures never kill a run. If a batched call raises, the failing rows are found by
bisection (:mod:`sbi_core.failures`); those rows (and any with NaN/inf) are marked
invalid in the :class:`SimulationSet`, with the first error message kept and the NaN/inf
columns summarized in ``provenance["invalid_columns"]``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import platform
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from sbi_core.failures import describe_invalid, isolate_failures, seed_everything
from sbi_core.problem import Problem
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
    batch_error: str | None = None  # a batch raised though all its rows worked alone
    calls: int = 1  # simulator calls made (more than 1 when failures were isolated)


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


def run_chunk(problem: Problem, index: int, size: int, seed: int) -> ChunkResult:
    """Simulate one chunk deterministically from its seed. Never raises for simulator failures."""
    start = time.perf_counter()
    seed_everything(seed)
    theta = problem.prior.sample((size,)).float()
    iso = isolate_failures(problem.simulator, theta, problem.x_shape or (), seed)
    return ChunkResult(index, theta, iso.x, iso.valid, iso.first_error,
                       time.perf_counter() - start, iso.batch_error, iso.calls)


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
    progress: bool = True,
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
        progress: show a progress bar.
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
    with tqdm(total=num_simulations, desc=f"simulating {problem.name}", unit="sim",
              disable=not progress, leave=False) as bar:
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
    x_names = getattr(problem, "x_names", None)
    if x_names is not None:
        provenance["x_names"] = list(x_names)
    if provenance["num_invalid"]:
        provenance["invalid_columns"] = describe_invalid(x, x_names)
    batch_errors = [c.batch_error for c in chunks if getattr(c, "batch_error", None)]
    if batch_errors:
        provenance["batch_error"] = batch_errors[0]
        warnings.warn(
            f"The batched simulator raised on {len(batch_errors)} chunk(s) whose rows all "
            f"succeeded in smaller (re-seeded) batches, so it is broken for batches or fails "
            f"at random (results were rescued by re-simulating sub-batches). First error: "
            f"{batch_errors[0]}", stacklevel=3)
    if seconds is not None:
        provenance["seconds"] = round(seconds, 3)
    return SimulationSet(theta, x, valid, provenance)
