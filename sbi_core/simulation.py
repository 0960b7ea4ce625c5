"""The simulation engine: draw parameters from the prior and simulate, in chunks.

Reproducibility does not depend on parallelism: the budget is cut into chunks of a
fixed size, and chunk ``i`` draws its parameters and noise from the ``i``-th child of
``numpy.random.SeedSequence(seed)``. Whether the chunks run in one process or many,
the result is the same tensor, bit for bit.

Failures never kill a run. If a batched call raises, the failing rows are found by
bisection (:mod:`sbi_core.failures`); those rows (and any with NaN/inf) are marked
invalid in the :class:`SimulationSet`, with the first error message kept and the NaN/inf
columns summarized in ``provenance["invalid_columns"]``.

Process failures never hang or lose a run either. With ``workers >= 2``, a ``timeout``
or ``isolate=True`` the chunks run in supervised worker processes
(:mod:`sbi_core.chunk_processes`): a worker that dies is replaced and its chunk retried
once in a fresh process, then recorded as invalid with the reason; a chunk over
``timeout`` seconds has its worker killed and is recorded as invalid. With
``workers=1`` and neither option, chunks run in the calling process (fastest), where a
simulator that kills its process (``os._exit``, a segfault) kills the caller too.

``theta=`` simulates at given parameters instead of prior draws, with the same chunks,
seeds, failure records, stores and resume.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sbi_core.display import shown
from sbi_core.failures import (
    ExecutorLostError,
    describe_invalid,
    isolate_failures,
    seed_everything,
)
from sbi_core.problem import Problem
from sbi_core.progress import progress_bar
from sbi_core.simulation_set import SimulationSet

__all__ = ["simulate", "ChunkResult", "chunk_plan", "run_chunk", "chunk_source", "chunk_theta",
           "validate_theta"]

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


def whole_number(value: object, name: str) -> int:
    """``value`` as an ``int``: ints, numpy integers and whole floats (``1e4``) pass; a bool,
    a fraction or text is a ``TypeError`` naming ``name`` (not a failure deep in seeding)."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a whole number, got {value!r}.")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and math.isfinite(value) \
            and float(value).is_integer():
        return int(value)  # 1e4 written for ten thousand
    raise TypeError(f"{name} must be a whole number, got {value!r} "
                    f"({type(value).__name__}); e.g. {name}=10_000.")


def chunk_plan(num_simulations: int, seed: int, chunk_size: int,
               theta: np.ndarray | None = None) -> list[tuple]:
    """``(chunk index, size, seed)`` for each chunk; depends only on the budget and seed.

    With ``theta`` (a validated float32 array ``(num_simulations, D)``, see
    :func:`validate_theta`) each task carries its rows as a fourth element,
    ``(index, size, seed, theta[start:stop])``; the seeds are the same.
    """
    if theta is not None and len(theta) != num_simulations:
        raise ValueError(f"theta has {len(theta)} rows but num_simulations is {num_simulations}.")
    if num_simulations <= 0:
        raise ValueError(f"num_simulations must be positive, got {num_simulations}.")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}.")
    n_chunks = -(-num_simulations // chunk_size)
    children = np.random.SeedSequence(seed).spawn(n_chunks)
    plan = []
    for i, child in enumerate(children):
        size = min(chunk_size, num_simulations - i * chunk_size)
        task = (i, size, int(child.generate_state(1, dtype=np.uint32)[0]))
        if theta is not None:
            task = (*task, theta[i * chunk_size: i * chunk_size + size])
        plan.append(task)
    return plan


def validate_theta(problem: Problem, theta: Tensor | np.ndarray) -> np.ndarray:
    """Check given parameters and return them as a float32 array ``(N, D)``.

    Raises on a wrong shape or non-finite values; warns when rows lie outside the prior's
    support (the simulator may fail there, and a posterior trained on them is not the
    posterior under the prior).
    """
    theta = _by_parameter_name(problem, theta)
    if isinstance(theta, Tensor):
        arr = theta.detach().cpu().numpy()
    else:
        try:
            arr = np.asarray(theta, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"theta must be a numeric (N, D) tensor or array: {err}") from err
    if arr.dtype == np.float64:  # 1e300 is finite: say so, not "NaN/inf" after the cast
        big = np.isfinite(arr) & (np.abs(arr) > np.finfo(np.float32).max)
        if big.any():
            row = int(np.flatnonzero(big.any(axis=-1) if arr.ndim > 1 else big)[0])
            raise ValueError(f"theta holds finite values beyond float32's range (|value| up to "
                             f"{float(np.abs(arr[big]).max()):.3g} > 3.4e38; first: row {row}); "
                             "parameters are stored in float32. Rescale them (e.g. log10) in "
                             "the prior and the simulator.")
    if arr.ndim == 1 and problem.dim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[1] != problem.dim or arr.shape[0] == 0:
        raise ValueError(
            f"theta must have shape (N, D) = (N, {problem.dim}) for problem {problem.name!r} "
            f"(parameters {list(problem.param_names)}) with N >= 1, got {tuple(arr.shape)}.")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    finite = np.isfinite(arr).all(1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ValueError(f"theta has {bad.size} row(s) with NaN/inf (first: row {bad[0]}); "
                         "pass finite parameters.")
    try:
        from sbi_core.priors import within_support

        with torch.no_grad():
            inside = within_support(problem.prior, torch.from_numpy(arr)).numpy()
    except Exception:  # a user prior whose log_prob fails even inside: no support check
        inside = None
    if inside is not None and not inside.all():
        bad = np.flatnonzero(~inside)
        warnings.warn(
            f"{bad.size} of {len(arr)} given theta lie outside the prior's support (first: row "
            f"{bad[0]} = {arr[bad[0]].tolist()}); they are simulated, but the simulator may fail "
            "there and a posterior trained on them is not the posterior under this prior.",
            stacklevel=3)
    return arr


def _by_parameter_name(problem: Problem, theta: object) -> object:
    """A table with named columns (a pandas DataFrame) in the problem's parameter order.

    Its columns are matched by name when they are the problem's parameter names in any
    order (read by position they would be silently swapped); a table naming some but not
    all of them is an error; columns without parameter names are read by position."""
    columns = getattr(theta, "columns", None)
    if columns is None or isinstance(theta, (Tensor, np.ndarray)):
        return theta
    names = [str(c) for c in columns]
    wanted = [str(n) for n in problem.param_names]
    if names == wanted or not set(names) & set(wanted):
        return theta
    if sorted(names) == sorted(wanted):
        return theta[[list(columns)[names.index(n)] for n in wanted]]  # type: ignore[index]
    raise ValueError(f"theta's columns {names} are not the problem's parameters {wanted}; name "
                     "the columns exactly so (any order), or pass a plain (N, D) array in "
                     "the problem's order.")


def recorded_prior(problem: Problem) -> dict[str, Any] | None:
    """The problem's prior spec as plain JSON-safe values, recorded with simulations (a
    store attribute, a file's provenance) so that a resume or a fit with another prior is
    caught; None if it cannot be written as JSON."""
    from sbi_core.priors import prior_spec

    try:
        spec = prior_spec(problem.prior)
        json.dumps(spec, allow_nan=False)
    except (TypeError, ValueError):
        return None
    return spec


def prior_text(spec: dict[str, Any]) -> str:
    """A short description of a prior spec for messages (values from a file: escaped)."""
    text = json.dumps({k: v for k, v in spec.items() if k != "repr"}, sort_keys=True)
    return shown(text if len(text) <= 200 else text[:197] + "...")


def chunk_theta(problem: Problem, size: int, seed: int,
                theta: np.ndarray | Tensor | None = None) -> Tensor:
    """The chunk's parameters ``(size, D)``: given ``theta``, or ``size`` prior draws from ``seed``.

    Seeds torch and NumPy from ``seed`` first (as :func:`run_chunk` does before simulating).
    """
    seed_everything(seed)
    if theta is None:
        return problem.prior.sample((size,)).float()
    if isinstance(theta, Tensor):
        return theta.detach().float().clone()
    return torch.tensor(np.asarray(theta), dtype=torch.float32)


def run_chunk(problem: Problem, index: int, size: int, seed: int,
              theta: np.ndarray | Tensor | None = None) -> ChunkResult:
    """Simulate one chunk deterministically from its seed. Never raises for simulator failures.

    ``theta`` ``(size, D)``: simulate at these parameters instead of drawing from the prior.
    """
    start = time.perf_counter()
    theta = chunk_theta(problem, size, seed, theta)
    iso = isolate_failures(problem.simulator, theta, problem.x_shape or (), seed)
    return ChunkResult(index, theta, iso.x, iso.valid, iso.first_error,
                       time.perf_counter() - start, iso.batch_error, iso.calls)


@contextlib.contextmanager
def closing_chunks(chunks: Iterable[ChunkResult]) -> Iterator[Iterator[ChunkResult]]:
    """Iterate a chunk source and close it on exit (a generator's workers are stopped)."""
    it = iter(chunks)
    try:
        yield it
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


def _local_chunks(problem: Problem, plan: list[tuple], workers: int,
                  timeout: float | None = None, isolate: bool = False,
                  chunk_size: int | None = None) -> Iterator[ChunkResult]:
    """In the calling process (``workers=1``, no timeout, not isolated), else supervised."""
    if workers <= 1 and timeout is None and not isolate:
        for task in plan:
            yield run_chunk(problem, *task)
        return
    from sbi_core.chunk_processes import supervised_chunks

    yield from supervised_chunks(problem, plan, max(1, workers), timeout=timeout,
                                 chunk_size=chunk_size)


ChunkSource = Callable[[Problem, list[tuple]], Iterator[ChunkResult]]


def chunk_source(workers: int = 1, executor: ChunkSource | str | None = None,
                 timeout: float | None = None, isolate: bool = False,
                 chunk_size: int | None = None) -> ChunkSource:
    """The chunk runner: ``executor`` if callable, Dask for an address string, else local.

    ``timeout`` (seconds per chunk) and ``isolate`` apply to local workers; ``chunk_size``
    only names the rows of failed chunks in their messages.
    """
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout}.")
    if isinstance(executor, str):
        from sbi_core.dask_executor import dask_chunks  # optional extra

        if timeout is not None:
            raise ValueError("timeout= is enforced by local worker processes; with Dask, use "
                             "workers=K (CLI: --workers K) instead of an executor address, or "
                             "make the simulator time out itself.")
        address = executor
        return lambda prob, tasks: dask_chunks(prob, tasks, address, chunk_size=chunk_size)
    if executor is not None:
        if timeout is not None or isolate:
            raise ValueError("timeout= and isolate= apply to sbi-core's local worker processes, "
                             "not to a custom executor; drop them or drop executor=.")
        return executor
    if workers == -1:
        workers = os.cpu_count() or 1
    return lambda prob, tasks: _local_chunks(prob, tasks, workers, timeout=timeout,
                                             isolate=isolate, chunk_size=chunk_size)


def simulate(
    problem: Problem,
    num_simulations: int | None = None,
    seed: int = 0,
    workers: int = 1,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: bool | None = None,
    store: str | os.PathLike | None = None,
    resume: bool = False,
    executor: ChunkSource | str | None = None,
    *,
    theta: Tensor | np.ndarray | None = None,
    timeout: float | None = None,
    isolate: bool = False,
    repair: bool = False,
    append: bool = False,
) -> SimulationSet:
    """Simulate ``num_simulations`` prior draws, or the given parameters ``theta``.

    Args:
        problem: the :class:`Problem`.
        num_simulations: the budget ``N`` (optional with ``theta``: its number of rows).
        seed: fixes the result, whatever ``workers`` is.
        workers: local worker processes (``-1``: one per CPU core). ``1`` without ``timeout``
            or ``isolate`` runs in this process: a simulator that kills its process
            (``os._exit``, a segfault) kills the caller too.
        chunk_size: simulations per chunk; part of the seed's meaning (keep it fixed).
        progress: show a progress bar (``None``: only on a terminal; see
            :mod:`sbi_core.progress`).
        store: optional path of a zarr store written chunk by chunk (needs ``sbi-core[scale]``).
        resume: continue an interrupted run into ``store`` (or extend it to a larger budget).
        executor: optional callable ``(problem, plan) -> iterator of ChunkResult`` or a Dask
            address string (``"tcp://HOST:PORT"`` or ``"local:N"``) for cluster execution.
        theta: simulate at these parameters ``(N, D)`` instead of prior draws (validated:
            shape, finite; a warning for rows outside the prior's support). Chunk ``i`` is
            still seeded by child ``i`` of ``SeedSequence(seed)``.
        timeout: seconds one chunk may run; the chunk runs in a worker process that is killed
            after ``timeout`` and its rows are recorded as invalid (not retried).
        isolate: run chunks in a supervised worker process even with ``workers=1``, so a
            simulator that kills its process becomes recorded failures (retried once).
        repair: with ``store`` and ``resume``: check every committed chunk decodes and matches
            the checksums recorded when it was written, and re-simulate the damaged ones
            (same seeds, same θ) — the store then equals an undamaged run.
        append: with ``store`` and ``theta``: add these θ after the rows the store holds
            (round after round of sequential inference); implies ``resume``.

    Returns:
        A :class:`SimulationSet` with ``theta`` ``(N, D)``, ``x`` ``(N, *x_shape)`` and ``valid``.
        A chunk whose worker died twice or timed out has all its rows invalid, with the
        reason in ``provenance["first_error"]`` (and, in a store, in the chunk's mark).
    """
    num_simulations = None if num_simulations is None else whole_number(
        num_simulations, "num_simulations")
    seed = seed if seed is None else whole_number(seed, "seed")
    chunk_size = whole_number(chunk_size, "chunk_size")
    workers = whole_number(workers, "workers")
    if workers == -1:
        workers = os.cpu_count() or 1
    given = None if theta is None else validate_theta(problem, theta)
    if (repair or append) and store is None:
        raise ValueError(f"{'repair' if repair else 'append'}=True needs a store path "
                         "(store=PATH.zarr).")
    if append and given is None:
        raise ValueError("append=True adds given parameters to a store; pass theta=(N, D). "
                         "To add prior draws, resume with a larger num_simulations.")
    if append and num_simulations is not None:
        raise ValueError("With append=True the new rows are theta's rows; omit num_simulations.")
    if given is not None and not append:
        if num_simulations is not None and num_simulations != len(given):
            raise ValueError(f"num_simulations={num_simulations} but theta has {len(given)} "
                             "rows; omit num_simulations when passing theta.")
        num_simulations = len(given)
    if num_simulations is None and not append:
        raise ValueError("Pass num_simulations (prior draws) or theta (given parameters).")
    source = chunk_source(workers, executor, timeout=timeout, isolate=isolate,
                          chunk_size=chunk_size)
    if store is not None:
        from sbi_core.stores import simulate_into_store  # optional extra (zarr)

        return simulate_into_store(problem, None, source, store, seed=seed,
                                   chunk_size=chunk_size, resume=resume or append,
                                   progress=progress, num_simulations=num_simulations,
                                   theta=given, repair=repair, append=append)
    if resume:
        raise ValueError("resume=True needs a store path to resume from (store=PATH.zarr).")
    plan = chunk_plan(num_simulations, seed, chunk_size, given)

    results: dict[int, ChunkResult] = {}
    start = time.perf_counter()
    with progress_bar(total=num_simulations, desc=f"simulating {problem.name}", unit="sim",
                      progress=progress) as bar:
        try:
            with closing_chunks(source(problem, plan)) as chunks:
                for res in chunks:
                    results[res.index] = res
                    bar.update(res.theta.shape[0])
        except KeyboardInterrupt:
            raise KeyboardInterrupt(
                f"interrupted: {len(results)} of {len(plan)} chunks were done (finished chunks "
                "are kept only in a store: pass store=PATH.zarr, then resume=True).") from None
        except ExecutorLostError as err:
            raise ExecutorLostError(
                f"{err} {len(results)} of {len(plan)} chunks were done and are lost (finished "
                "chunks are kept only in a store: pass store=PATH.zarr, CLI --out PATH.zarr, "
                "then resume=True / --resume).") from None
    ordered = [results[i] for i in range(len(plan))]
    sims = assemble(problem, ordered, seed=seed, chunk_size=chunk_size,
                    seconds=time.perf_counter() - start)
    sims.provenance["theta_source"] = "prior" if given is None else "given"
    return sims


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
        "param_names": list(problem.param_names),
        "prior": recorded_prior(problem),
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
