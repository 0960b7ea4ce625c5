"""Automatic torch thread count for training, sampling, MCMC and diagnostics.

torch's default intra-op thread count is the number of cores. On a laptop or a shared node
where other CPU-bound processes run, those threads oversubscribe the cores: every parallel
region waits for its slowest thread, which is descheduled, and epochs of small networks go
from 0.2 s to 3-18 s (issue 18, item 6). sbi-core's networks are small (tens of thousands of
weights; a matrix product per layer of ``batch x 50``), so they gain little from more than
one thread even on an idle machine.

:func:`choose_threads` picks the count: ``1`` for small work, else the cores that are free
(cores this process may use minus the 1-minute load average, at least 1), never more than
torch's current setting. A user's explicit choice always wins: ``OMP_NUM_THREADS`` /
``MKL_NUM_THREADS`` in the environment, or an explicit ``torch.set_num_threads`` reflected in
:data:`SBI_CORE_THREADS` (``SBI_CORE_THREADS=4``), or an integer passed to the functions.

:func:`thread_scope` applies a choice for the duration of a ``with`` block and restores the
previous setting afterwards; :func:`auto_threads` is the same as a decorator. Only the main
thread changes the (process-wide) setting; other threads run with the process setting.
"""

from __future__ import annotations

import functools
import math
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch

__all__ = ["choose_threads", "free_cores", "thread_scope", "auto_threads", "SMALL_WORK",
           "Threads"]

#: Work (weights x batch rows) below which one thread is chosen: 2e7 covers the default flows
#: (~3e4-1e5 weights) at batch 512; larger networks or batches may use the free cores.
SMALL_WORK = 2e7

Threads = int | str | None  # an integer, "auto", or None (keep torch's setting)

F = TypeVar("F", bound=Callable[..., Any])


def free_cores() -> int:
    """Cores this process may use minus the 1-minute load average (rounded), at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    return max(1, min(cores, int(math.floor(cores - load + 0.5))))


def _user_fixed() -> int | None:
    """The thread count the user fixed through the environment, if any."""
    for name in ("SBI_CORE_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) >= 1:
            return int(value)
    return None


def choose_threads(work: float | None = None) -> int:
    """Thread count for a task of size ``work`` (weights x rows per step; ``None``: unknown).

    1 for work below :data:`SMALL_WORK`; else the free cores (:func:`free_cores`), capped by
    torch's current setting. A count fixed in the environment (``SBI_CORE_THREADS``,
    ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``) is returned as is.
    """
    fixed = _user_fixed()
    if fixed is not None:
        return fixed
    if work is not None and work < SMALL_WORK:
        return 1
    return max(1, min(free_cores(), torch.get_num_threads()))


def resolve_threads(threads: Threads, work: float | None = None) -> int | None:
    """``"auto"`` → :func:`choose_threads`; an int ≥ 1 as is; ``None`` → ``None`` (keep)."""
    if threads is None:
        return None
    if threads == "auto":
        return choose_threads(work)
    if isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1:
        return threads
    raise ValueError(f"threads must be 'auto', an integer >= 1, or None (keep torch's "
                     f"setting); got {threads!r}.")


@contextmanager
def thread_scope(threads: Threads = "auto", work: float | None = None) -> Iterator[int]:
    """Run the block with the resolved thread count; restore torch's setting afterwards.

    Yields the count in effect. Nested scopes keep the outer choice when ``threads`` is
    ``"auto"`` (a diagnostic calling ``posterior.sample`` does not re-decide).
    """
    before = torch.get_num_threads()
    nested = _state.depth > 0
    # torch's setting is process-wide: only the main thread changes it (a server's worker
    # threads keep the process setting, e.g. ``sbi-core serve --threads``).
    in_main = threading.current_thread() is threading.main_thread()
    n = None if (threads == "auto" and nested) or not in_main else resolve_threads(threads, work)
    if in_main:
        _state.depth += 1
    try:
        if n is not None and n != before:
            torch.set_num_threads(n)
        yield torch.get_num_threads()
    finally:
        if in_main:
            _state.depth -= 1
            if torch.get_num_threads() != before:
                torch.set_num_threads(before)


class _State:
    depth = 0


_state = _State()


def module_work(module: torch.nn.Module | None, rows: int) -> float | None:
    """Weights of ``module`` times ``rows`` (the :func:`choose_threads` work measure)."""
    if module is None:
        return None
    return float(sum(p.numel() for p in module.parameters())) * max(int(rows), 1)


def auto_threads(fn: F) -> F:
    """Decorator: run ``fn`` inside ``thread_scope("auto")`` (work unknown → free cores,
    or 1 when the machine is busy)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with thread_scope("auto"):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
