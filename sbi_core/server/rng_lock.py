"""A readers-writer lock guarding torch's global random number generator across requests.

Seeded calls (``seed=...``) reset the global generator and must see nobody else draw from it
until they finish, so they run alone (exclusive). Unseeded calls only need *some* fresh random
numbers, so they run concurrently with each other (shared). Waiting seeded calls take
precedence over new unseeded ones, so a steady stream of unseeded requests cannot starve them.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

__all__ = ["RNGLock"]


class RNGLock:
    """``with lock.hold(exclusive)``: exclusive for seeded calls, shared otherwise."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    @contextlib.contextmanager
    def hold(self, exclusive: bool) -> Iterator[None]:
        with self._cond:
            if exclusive:
                self._waiting_writers += 1
                while self._writer or self._readers:
                    self._cond.wait()
                self._waiting_writers -= 1
                self._writer = True
            else:
                while self._writer or self._waiting_writers:
                    self._cond.wait()
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
