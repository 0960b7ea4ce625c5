"""Run simulation chunks on a Dask cluster (needs ``pip install sbi-core[scale]``).

``address`` is an existing scheduler (``"tcp://HOST:PORT"``) or ``"local:N"`` for a
:class:`~distributed.LocalCluster` of ``N`` single-threaded worker processes bound to
127.0.0.1. The problem travels to the workers as cloudpickle bytes inside each task
(lambdas and closures in user problems work; a worker unpickles it once and caches it),
so a task never depends on data held by one worker: when a worker dies, the scheduler
reruns its chunks elsewhere, and tasks that raise are retried ``retries`` times. A chunk
whose task keeps killing its workers (Dask gives up after
``distributed.scheduler.allowed-failures`` deaths, default 3, with ``KilledWorker``) is
run once more in a supervised local process on the client: a chunk that was only caught
on a dying worker succeeds there (same seed, same result); one that kills that process
too is recorded with all rows invalid and the reason, like a dead local worker. The run
goes on either way. The same local rerun covers a result the client itself fails to fetch
(distributed can raise ``RuntimeError: ... bound to a different event loop`` from
``Future.result()`` while a killed worker's tasks are rescheduled and a second client shares
the process). A :class:`~distributed.Client` the user already has open on the same scheduler
is reused rather than a second one opened, and left open.
Chunks are deterministic in ``(index, size, seed[, theta])``, so the result equals a
local run.

Example::

    sims = simulate(problem, 100_000, seed=0, executor="tcp://scheduler:8786")
    sims = simulate(problem, 100_000, seed=0, executor="local:4", store="sims.zarr")
"""

from __future__ import annotations

import hashlib
import logging
import sys
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import CancelledError
from contextlib import contextmanager, nullcontext

from sbi_core.failures import ExecutorLostError
from sbi_core.problem import Problem
from sbi_core.simulation import ChunkResult, run_chunk
from sbi_core.user_code import FILE_MODULE_PREFIX

try:
    import cloudpickle
    from distributed import Client, LocalCluster, as_completed
    from distributed.comm.core import CommClosedError
    from distributed.scheduler import KilledWorker
except ImportError as _err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "Dask execution needs dask.distributed: pip install 'sbi-core[scale]'."
    ) from _err

__all__ = ["dask_chunks", "parse_address", "pickle_problem"]

# Worker-side cache: problem bytes digest -> Problem (unpickled once per worker process).
_PROBLEMS: dict[str, Problem] = {}


def parse_address(address: str) -> tuple[str, int | None]:
    """``("local", N)`` for ``"local:N"``, ``("remote", None)`` for a scheduler address."""
    if address.startswith("local"):
        _, _, n = address.partition(":")
        try:
            workers = int(n) if n else 2
        except ValueError:
            workers = 0
        if workers < 1:
            raise ValueError(f"Bad Dask address {address!r}; use local:N with N >= 1 workers.")
        return "local", workers
    if "://" not in address:
        raise ValueError(f"Bad Dask address {address!r}; use tcp://HOST:PORT of a running "
                         "scheduler, or local:N for a local cluster of N worker processes.")
    return "remote", None


def pickle_problem(problem: Problem) -> bytes:
    """``problem`` as cloudpickle bytes that unpickle on a worker.

    A problem from ``--problem file.py:NAME`` lives in a module imported from that file
    (``_sbi_core_user_<stem>``) that workers cannot import by name: cloudpickle would pickle
    its functions by reference. Such modules are pickled by value instead (their code
    travels with the task); installed modules stay by reference (they must be installed on
    the workers)."""
    added = []
    for name, module in list(sys.modules.items()):
        if name.startswith(FILE_MODULE_PREFIX) and module is not None:
            try:
                cloudpickle.register_pickle_by_value(module)
            except ValueError:  # already registered
                continue
            added.append(module)
    try:
        return cloudpickle.dumps(problem)
    finally:
        for module in added:
            cloudpickle.unregister_pickle_by_value(module)


#: serializes chunks within one worker process (see :func:`_run_pickled`).
_CHUNK_LOCK = threading.Lock()


def _run_pickled(blob: bytes, digest: str, index: int, size: int, seed: int,
                 theta=None) -> ChunkResult:
    """Worker side: unpickle (once) and simulate one chunk with one torch thread."""
    import torch

    torch.set_num_threads(1)
    # A worker with several threads (``dask worker`` defaults to one per core) would run
    # chunks at once in this process; each seeds torch's and NumPy's global random state,
    # so they would draw from each other's streams. One chunk at a time per process keeps
    # every chunk equal to a local run (for parallelism: ``--nworkers N --nthreads 1``).
    with _CHUNK_LOCK:
        problem = _PROBLEMS.get(digest)
        if problem is None:
            problem = cloudpickle.loads(blob)
            _PROBLEMS.clear()
            _PROBLEMS[digest] = problem
        return run_chunk(problem, index, size, seed, theta)


def dask_chunks(problem: Problem, tasks: list[tuple], address: str,
                retries: int = 3, chunk_size: int | None = None) -> Iterator[ChunkResult]:
    """Submit one Dask task per chunk and yield the :class:`ChunkResult` as each finishes.

    Args:
        problem: pickled with cloudpickle and sent with each task.
        tasks: ``(index, size, seed[, theta])`` chunks from
            :func:`sbi_core.simulation.chunk_plan`.
        address: ``"tcp://HOST:PORT"`` or ``"local:N"``.
        retries: reruns of a chunk whose task raised (lost workers are rescheduled anyway).
        chunk_size: only to name the rows of a chunk recorded as failed.
    """
    kind, n_workers = parse_address(address)
    blob = pickle_problem(problem)
    digest = hashlib.sha1(blob).hexdigest()
    cluster = None
    if kind == "local":
        import dask

        from sbi_core.chunk_processes import worker_start_method

        # fork, as the local workers do: "spawn" (Dask's default) reruns the user's script
        # in every worker, which fails in a script without a `if __name__ == "__main__":`
        # guard ("Nanny failed to start").
        with dask.config.set({"distributed.worker.multiprocessing-method":
                              worker_start_method()}):
            cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                   host="127.0.0.1", dashboard_address=None)
        client = Client(cluster)
        own_client = True
    else:
        client = _open_client_for(address)
        own_client = client is None
    if client is None:
        try:
            client = Client(address, timeout=30)
        except OSError as err:
            raise ValueError(f"Cannot reach the Dask scheduler at {address}: {err}. Start one "
                             "(dask scheduler / dask-jobqueue) or use local:N.") from err
    if kind == "remote":
        _warn_without_workers(client, address)
    run_id = uuid.uuid4().hex[:8]
    futures: dict = {}
    done = 0
    try:
        futures = {client.submit(_run_pickled, blob, digest, *task, retries=retries,
                                 pure=False, key=f"sbi-core-chunk-{run_id}-{task[0]}"): task
                   for task in tasks}
        # a scheduler that goes away cancels every task: one error below says so, not
        # distributed's reconnection tracebacks (the user's own client keeps its logging)
        with _quiet_client_log() if own_client else nullcontext():
            for future in as_completed(list(futures)):
                try:
                    result = _result(future, futures[future], problem, chunk_size)
                except (CancelledError, CommClosedError) as err:
                    why = _why(err)
                    what = (f"Lost the connection to the Dask scheduler at {address}"
                            if "connection" in why or isinstance(err, CommClosedError) else
                            f"The Dask scheduler at {address} cancelled this run's tasks")
                    raise ExecutorLostError(f"{what} after {done} of {len(tasks)} chunks of "
                                            f"this run ({why}).") from None
                future.release()
                done += 1
                yield result
    finally:
        if own_client:
            with _quiet_client_log():
                client.close()
        elif futures:  # the user's client stays open; drop this run's unfinished tasks
            client.cancel(list(futures), force=True)
        if cluster is not None:
            cluster.close()


def _warn_without_workers(client, address: str) -> None:
    """A scheduler with no workers runs nothing until one connects (a Slurm cluster's jobs may
    still be queued): say so instead of waiting silently."""
    import warnings

    try:
        workers = client.scheduler_info().get("workers", {})
    except Exception:  # noqa: BLE001 - only a hint; the run itself reports real failures
        return
    if not workers:
        warnings.warn(f"The Dask scheduler at {address} has no workers yet; the run waits until "
                      f"one connects (start one with `dask worker {address}`, or check that "
                      "your cluster's jobs are running).", UserWarning, stacklevel=3)


@contextmanager
def _quiet_client_log() -> Iterator[None]:
    """distributed's client logs no tracebacks while this run's client is in use."""
    log = logging.getLogger("distributed.client")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def _why(err: BaseException) -> str:
    """The short reason of a cancelled task (``scheduler-connection-lost``), else the error."""
    reason = getattr(err, "reason", None)
    return str(reason) if reason else (" ".join(str(err).split())[:200] or type(err).__name__)


def _result(future, task: tuple, problem: Problem, chunk_size: int | None) -> ChunkResult:
    """One chunk's result; a chunk Dask gave up on, or could not fetch, is rerun locally."""
    try:
        return future.result()
    except KilledWorker:
                # Dask gave up on this task after worker deaths; tasks that merely shared the
                # dying worker are caught here too. Decide in one supervised local process:
                # an innocent chunk succeeds (same seed, same result), a guilty one is recorded.
        return _rerun_locally(problem, task, chunk_size, "KilledWorker")
    except RuntimeError as err:
        if not _is_client_loop_error(err):
            raise
        # the client failed to fetch a result (not the task): same seed, same result
        return _rerun_locally(problem, task, chunk_size, "the Dask client could not fetch it")


def _open_client_for(address: str):
    """The user's already-open :class:`~distributed.Client` on ``address``, or ``None``."""
    from distributed.client import default_client

    try:
        client = default_client()
    except ValueError:  # no client in this process
        return None
    try:
        same = client.scheduler is not None and client.scheduler.address == address
    except AttributeError:
        return None
    return client if same and client.status == "running" else None


def _is_client_loop_error(err: RuntimeError) -> bool:
    """Whether ``err`` is distributed's client-side event-loop failure, not the task's."""
    return "event loop" in str(err) or "attached to a different loop" in str(err)


def _rerun_locally(problem: Problem, task: tuple, chunk_size: int | None,
                   why: str) -> ChunkResult:
    """Run one chunk in a supervised local process (deterministic: the same rows)."""
    from sbi_core.chunk_processes import supervised_chunks

    result = next(iter(supervised_chunks(problem, [task], 1, retries=0,
                                         chunk_size=chunk_size)))
    if result.first_error and result.first_error.startswith("worker process died"):
        result.first_error = (f"Dask worker processes died running this chunk ({why}); "
                              "rerun in a local process: " + result.first_error)
    return result
