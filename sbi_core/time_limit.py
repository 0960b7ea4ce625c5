"""A time limit for a call in the main thread (POSIX ``SIGALRM``), for test runs that may hang.

``Problem`` runs the simulator once on a few prior draws to learn ``x_shape``. A simulator
that hangs for some parameters would hang there forever, before ``simulate(..., timeout=)``
(which supervises chunks in worker processes) ever runs. :func:`time_limit` bounds that test
run: when ``seconds`` pass, :class:`TimeLimitExceeded` is raised inside the running code
(a ``BaseException``, so the simulator's own ``except Exception`` does not swallow it; an
external program's process group is killed by its own clean-up).

The limit is applied only where it is safe: in the main thread, on a platform with
``setitimer``, and when no other code uses ``SIGALRM`` (no handler installed, no timer
running). Elsewhere the block runs without a limit. Code that never returns to the Python
interpreter (a long C loop) is interrupted only when it does.

Example::

    with time_limit(300):
        x = simulator(theta)      # TimeLimitExceeded after 300 s
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["time_limit", "TimeLimitExceeded"]


class TimeLimitExceeded(BaseException):
    """The block under :func:`time_limit` ran out of time."""


def _usable() -> bool:
    return (hasattr(signal, "setitimer") and hasattr(signal, "SIGALRM")
            and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, None)
            and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0))


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`TimeLimitExceeded` in the block after ``seconds`` (``None``: no limit)."""
    if seconds is None or not _usable():
        yield
        return

    def _expired(signum, frame):
        raise TimeLimitExceeded(f"time limit of {seconds:g} s exceeded")

    previous = signal.signal(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
