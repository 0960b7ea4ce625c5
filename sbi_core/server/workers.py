"""Posterior work off the event loop: a bounded pool of worker threads and a time budget.

Every posterior request runs as ``await pool.run(work)``: it waits at most ``queue_wait``
seconds for one of ``max_concurrency`` worker slots (else HTTP 503 "busy, retry"), then
runs ``work(deadline)`` in a worker thread while the event loop keeps answering other
requests. ``work`` calls ``deadline.check()`` between batches and stops with HTTP 503 once
the request has used its ``request_timeout``; a batch that overruns the budget still gets
its answer (503) on time, and its worker slot is freed when the batch ends. Torch releases
the GIL in most operations, so the worker threads do run in parallel.

The slot count and the executor are plain ``threading`` objects, not asyncio ones, so one
app can serve from several event loops (uvicorn, or Starlette's TestClient, which opens a
loop per request).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from fastapi import HTTPException

__all__ = ["Deadline", "WorkerPool", "BUSY_RETRY_AFTER"]

T = TypeVar("T")

#: Seconds a busy answer suggests waiting (``Retry-After`` header).
BUSY_RETRY_AFTER = 1
#: Extra seconds the event loop waits for a batch beyond the budget before answering 503.
GRACE_SECONDS = 0.5


class Deadline:
    """The end of one request's time budget (``time.monotonic`` based)."""

    def __init__(self, seconds: float):
        self.seconds = float(seconds)
        self.start = time.monotonic()
        self.end = self.start + self.seconds

    def remaining(self) -> float:
        """Seconds left (negative once past)."""
        return self.end - time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def sampler_seconds(self) -> float:
        """The ``max_seconds`` to give a sampler call: what is left of the budget, so that a
        single long batch stops inside it too (a sampler's ``SamplingTimeoutError`` → 503)."""
        return max(self.remaining(), 0.01)

    def check(self) -> None:
        """HTTP 503 when the budget is used up (call between batches of work)."""
        if self.remaining() <= 0:
            raise self.exceeded()

    def exceeded(self) -> HTTPException:
        return HTTPException(
            503, f"The request took longer than this server's time budget of {self.seconds:g} s "
                 "per request (--request-timeout) and was stopped. Ask for fewer samples or "
                 "observations, retry when the server is less busy, or start the server with a "
                 "larger --request-timeout (create_app(request_timeout=...)).",
            headers={"Retry-After": str(BUSY_RETRY_AFTER)})


class WorkerPool:
    """``max_concurrency`` worker threads shared by all posterior requests of one app.

    Args:
        max_concurrency: requests computed at once.
        queue_wait: seconds a request waits for a free worker before HTTP 503.
        request_timeout: seconds per request (waiting included) before HTTP 503.
    """

    def __init__(self, max_concurrency: int, queue_wait: float, request_timeout: float):
        self.max_concurrency = int(max_concurrency)
        self.queue_wait = float(queue_wait)
        self.request_timeout = float(request_timeout)
        self._slots = threading.BoundedSemaphore(self.max_concurrency)
        self._executor = ThreadPoolExecutor(self.max_concurrency,
                                            thread_name_prefix="sbi-core-serve-worker")

    async def run(self, work: Callable[[Deadline], T]) -> T:
        """Run ``work(deadline)`` in a worker thread; 503 when busy or over the budget."""
        deadline = Deadline(self.request_timeout)
        give_up = time.monotonic() + min(self.queue_wait, self.request_timeout)
        while not self._slots.acquire(blocking=False):
            if time.monotonic() >= give_up:
                raise HTTPException(
                    503, f"The server is busy: all {self.max_concurrency} workers are computing "
                         f"other requests (waited {min(self.queue_wait, self.request_timeout):g} "
                         "s). Retry in a moment; an operator can allow more with "
                         "--max-concurrency (create_app(max_concurrency=...)).",
                    headers={"Retry-After": str(BUSY_RETRY_AFTER)})
            await asyncio.sleep(0.005)
        try:
            future = self._executor.submit(work, deadline)
        except BaseException:
            self._slots.release()
            raise
        loop = asyncio.get_running_loop()
        done = asyncio.Event()

        def finished(_: Future[T]) -> None:  # in the worker thread
            self._slots.release()
            try:
                loop.call_soon_threadsafe(done.set)
            except RuntimeError:  # the loop has closed: nobody is waiting any more
                pass

        future.add_done_callback(finished)
        try:
            await asyncio.wait_for(done.wait(), max(deadline.remaining(), 0.0) + GRACE_SECONDS)
        except asyncio.TimeoutError:  # the builtin TimeoutError from Python 3.11 on
            raise deadline.exceeded() from None
        return future.result()

    def busy(self) -> int:
        """Workers computing right now (approximate; for tests and monitoring)."""
        return self.max_concurrency - self._slots._value  # type: ignore[attr-defined]
