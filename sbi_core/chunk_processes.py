"""Supervised worker processes for simulation chunks.

:func:`supervised_chunks` runs chunks in worker processes that the parent watches one
by one, so that nothing a simulator does to its process can hang or lose a run:

* a worker that **dies** (``os._exit``, a segfault, the OOM killer) while simulating a
  chunk is replaced by a fresh process and the chunk is retried there once
  (``retries``); if it dies again, the chunk's rows are recorded as invalid with the
  reason, e.g. ``"worker process died with exit code 3 while simulating chunk 4
  (rows 400-499); retried once"``;
* a chunk that runs longer than ``timeout`` seconds has its worker **killed**; its rows
  are recorded as invalid (``"timed out after 2 s ..."``, not retried: a simulator that
  hangs for some θ would hang again) and a fresh worker takes the next chunk;
* workers **ignore SIGINT**: Ctrl-C in a terminal reaches the whole process group, but
  only the parent reacts; it kills the workers (no worker tracebacks) and re-raises
  :class:`KeyboardInterrupt` to its caller, which reports the chunks already done.

Results travel back as NumPy arrays through a pipe (bit-identical to an in-process
run). The problem reaches workers by ``fork`` (lambdas and closures work) and by
pickling where ``fork`` is unavailable.
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection as mpc
import os
import signal
import time
import traceback
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sbi_core.problem import Problem

__all__ = ["supervised_chunks", "failed_chunk"]

Task = tuple  # (index, size, seed) or (index, size, seed, theta (size, D) float32 array)


#: seconds between a waiting worker's checks that its parent is still alive
PARENT_CHECK_SECONDS = 1.0



def worker_start_method() -> str:
    """How local simulation workers start: ``"fork"`` where the platform has it (the problem
    is inherited, lambdas work, and a script needs no ``__main__`` guard), else ``"spawn"``."""
    return "fork" if "fork" in mp.get_all_start_methods() else "spawn"

def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _worker_main(conn: Any, problem: Problem, parent_pid: int | None = None,
                 parent_end: Any = None) -> None:
    """Worker loop: receive a task, simulate it, send back plain arrays; ``None`` stops.

    A worker never outlives its parent: it closes its forked copy of the parent's end of the
    pipe (``parent_end``; so the pipe reports EOF once the parent is gone) and, while waiting
    for a task, checks every ``PARENT_CHECK_SECONDS`` that ``parent_pid`` is still its
    parent (a ``kill -9`` of the parent would otherwise leave it waiting forever: later
    workers hold forked copies of earlier workers' pipe ends too)."""
    if parent_end is not None:
        parent_end.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    # the parent stops a worker (Ctrl-C, a chunk timeout) with SIGTERM first: unwinding lets
    # the simulator clean up, e.g. an external program's process group is killed instead of
    # being left running (orphaned) after sbi-core has exited
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if hasattr(signal, "pthread_sigmask"):  # blocked by the parent while forking
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    torch.set_num_threads(1)
    from sbi_core.simulation import run_chunk

    while True:
        try:
            while not conn.poll(PARENT_CHECK_SECONDS):
                if parent_pid is not None and os.getppid() != parent_pid:
                    return  # the parent died (kill -9): nobody will read our results
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        try:
            res = run_chunk(problem, *task)
            msg: tuple[str, Any] = ("ok", (res.index, res.theta.numpy(), res.x.numpy(),
                                           res.valid.numpy(), res.first_error, res.seconds))
        except Exception as err:  # not a simulator failure (run_chunk records those)
            msg = ("error", f"{type(err).__name__}: {err}\n{traceback.format_exc()}")
        try:
            conn.send(msg)
        except OSError:  # the parent is gone (broken pipe): exit quietly
            return


@dataclass
class _Worker:
    proc: Any
    conn: Any
    task: Task | None = None
    tries: int = 0
    started: float = 0.0


def _start_worker(ctx: Any, problem: Problem) -> _Worker:
    parent, child = ctx.Pipe()
    forked = ctx.get_start_method() == "fork"
    proc = ctx.Process(target=_worker_main, daemon=True,
                       args=(child, problem, os.getpid(), parent if forked else None))
    # Block SIGINT while forking so that a Ctrl-C can never reach a fresh worker before it
    # ignores SIGINT; the parent gets a signal sent meanwhile once it unblocks.
    masked = hasattr(signal, "pthread_sigmask")
    if masked:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        proc.start()
    finally:
        if masked:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
    child.close()
    return _Worker(proc, parent)


def _stop(worker: _Worker, kill: bool) -> None:
    """Ask the worker to exit (``kill=False``) or stop it: SIGTERM, so that it can unwind
    (and stop the programs it started), then SIGKILL if it has not exited within 2 s."""
    if worker.proc.is_alive():
        if kill:
            worker.proc.terminate()
        else:
            try:
                worker.conn.send(None)
            except (OSError, ValueError):
                worker.proc.kill()
    worker.proc.join(2.0)
    if worker.proc.is_alive():
        worker.proc.kill()
        worker.proc.join()
    worker.conn.close()


def _rows(task: Task, chunk_size: int | None) -> str:
    index, size = task[0], task[1]
    if chunk_size is None:
        return f"{size} rows"
    start = index * chunk_size
    return f"rows {start}-{start + size - 1}"


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def failed_chunk(problem: Problem, task: Task, reason: str):
    """A :class:`~sbi_core.simulation.ChunkResult` whose rows are all invalid with ``reason``.

    ``theta`` is the chunk's given θ, or its prior draw (the same draw as
    :func:`~sbi_core.simulation.run_chunk`, made without touching the caller's RNG state).
    """
    from sbi_core.simulation import ChunkResult, chunk_theta

    index, size, seed = task[0], task[1], task[2]
    given = task[3] if len(task) > 3 else None
    np_state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            theta = chunk_theta(problem, size, seed, given)
    except Exception:  # the prior itself failed: keep the rows, without θ
        theta = torch.full((size, problem.dim), float("nan"))
    finally:
        np.random.set_state(np_state)
    x = torch.full((size, *(problem.x_shape or ())), float("nan"))
    return ChunkResult(index, theta, x, torch.zeros(size, dtype=torch.bool), reason, 0.0)


def supervised_chunks(problem: Problem, tasks: list[Task], workers: int,
                      timeout: float | None = None, retries: int = 1,
                      chunk_size: int | None = None) -> Iterator[Any]:
    """Run ``tasks`` in ``workers`` supervised processes; yield each ChunkResult when done.

    Args:
        problem: the :class:`Problem` (inherited by ``fork``).
        tasks: ``(index, size, seed[, theta])`` chunks from
            :func:`sbi_core.simulation.chunk_plan`.
        workers: number of worker processes (at most one per task).
        timeout: seconds one chunk may take before its worker is killed (``None``: no limit).
        retries: reruns in a fresh process of a chunk whose worker died.
        chunk_size: only to name the rows of a failed chunk in its message.

    Yields:
        One :class:`~sbi_core.simulation.ChunkResult` per task, in completion order; a
        chunk whose worker died ``retries + 1`` times or timed out has all rows invalid.
    """
    from sbi_core.simulation import ChunkResult

    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout}.")
    ctx = mp.get_context(worker_start_method())
    pending: deque[tuple[Task, int]] = deque((t, 0) for t in tasks)
    slots: list[_Worker | None] = [None] * max(1, min(workers, len(tasks)))
    clean = False
    try:
        while True:
            for k, worker in enumerate(slots):  # hand out work, starting workers as needed
                if pending and (worker is None or worker.task is None):
                    if worker is None:
                        worker = slots[k] = _start_worker(ctx, problem)
                    worker.task, worker.tries = pending.popleft()
                    worker.started = time.monotonic()
                    worker.conn.send(worker.task)
            busy = [w for w in slots if w is not None and w.task is not None]
            if not busy:
                break
            wait = None
            if timeout is not None:
                wait = max(0.0, min(w.started for w in busy) + timeout - time.monotonic())
            mpc.wait([w.conn for w in busy] + [w.proc.sentinel for w in busy], timeout=wait)
            now = time.monotonic()
            for k, worker in enumerate(slots):
                if worker is None or worker.task is None:
                    continue
                task = worker.task
                message = None
                if worker.conn.poll():
                    try:
                        message = worker.conn.recv()
                    except (EOFError, OSError):
                        message = None
                if message is not None:
                    kind, payload = message
                    if kind == "error":
                        raise RuntimeError(f"Chunk {task[0]} failed outside the simulator in a "
                                           f"worker process: {payload}")
                    index, theta, x, valid, first_error, seconds = payload
                    worker.task = None
                    yield ChunkResult(index, torch.from_numpy(theta), torch.from_numpy(x),
                                      torch.from_numpy(valid), first_error, seconds)
                elif not worker.proc.is_alive():
                    worker.proc.join()
                    code = worker.proc.exitcode
                    worker.conn.close()
                    slots[k] = None
                    if worker.tries < retries:
                        pending.appendleft((task, worker.tries + 1))  # in a fresh process
                        continue
                    tried = {0: "not retried", 1: "retried once in a fresh process"}.get(
                        worker.tries, f"retried {worker.tries} times in fresh processes")
                    yield failed_chunk(problem, task,
                                       f"worker process died with {_exit_reason(code)} while "
                                       f"simulating chunk {task[0]} ({_rows(task, chunk_size)}); "
                                       f"{tried}")
                elif timeout is not None and now - worker.started >= timeout:
                    _stop(worker, kill=True)
                    slots[k] = None
                    yield failed_chunk(problem, task,
                                       f"timed out after {timeout:g} s while simulating chunk "
                                       f"{task[0]} ({_rows(task, chunk_size)}); the worker "
                                       "process was killed")
        clean = True
    finally:  # normal end: ask workers to exit; Ctrl-C, errors, close(): kill them
        for worker in slots:
            if worker is not None:
                _stop(worker, kill=not clean)
