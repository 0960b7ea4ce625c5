"""A readers-writer lock guarding torch's global random number generator across requests.

Seeded calls (``seed=...``) reset the global generator and must see nobody else draw from it
until they finish, so they run alone (exclusive). Unseeded calls only need *some* fresh random
numbers, so they run concurrently with each other (shared). Waiting seeded calls take
precedence over new unseeded ones, so a steady stream of unseeded requests cannot starve them.

The lock is held by the server's worker threads (``workers.py``) for the whole of a request's
posterior calls; ``timeout`` bounds the wait so that a request never waits past its budget.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

__all__ = ["RNGLock"]


class RNGLock:
    """``with lock.hold(exclusive, timeout)``: exclusive for seeded calls, shared otherwise;
    raises ``TimeoutError`` when the lock is not free within ``timeout`` seconds."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    @contextlib.contextmanager
    def hold(self, exclusive: bool, timeout: float | None = None) -> Iterator[None]:
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            if exclusive:
                self._waiting_writers += 1
                try:
                    while self._writer or self._readers:
                        self._wait(end)
                finally:
                    self._waiting_writers -= 1
                    self._cond.notify_all()  # readers held back by this writer may go on
                self._writer = True
            else:
                while self._writer or self._waiting_writers:
                    self._wait(end)
                self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                if exclusive:
                    self._writer = False
                else:
                    self._readers -= 1
                self._cond.notify_all()

    def _wait(self, end: float | None) -> None:
        left = None if end is None else end - time.monotonic()
        if left is not None and left <= 0:
            raise TimeoutError("timed out waiting for the random number generator lock")
        self._cond.wait(left)
