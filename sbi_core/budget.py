"""Wall-clock budgets for long calls: samplers end with a clear error instead of running on.

Every sampler (rejection in ``DirectPosterior``, MCMC, score / flow-matching ODE and SDE
samplers, PFN autoregressive sampling, MAP search) receives one :class:`Budget` and calls
:meth:`Budget.check` between batches or steps, with a short account of how far it got.
When the time is up, :meth:`Budget.check` raises :class:`SamplingTimeoutError` (a
:class:`SamplingError`), e.g.::

    SamplingTimeoutError: Rejection sampling stopped after 30.0 s (max_seconds=30): 1,234 of
    10,000 samples, acceptance 0.10%. Pass a larger max_seconds (or None for no limit) ...

Example::

    budget = Budget(5.0, "my loop")
    for step in range(n):
        ...
        budget.check(f"{step + 1} of {n} steps")
"""

from __future__ import annotations

import math
import time

__all__ = ["Budget", "SamplingError", "SamplingTimeoutError"]


class SamplingError(RuntimeError):
    """Sampling cannot finish (e.g. almost all samples fall outside the prior support)."""


class SamplingTimeoutError(SamplingError):
    """A sampler ran out of its wall-clock budget (``max_seconds``)."""


class Budget:
    """A deadline ``max_seconds`` from now (``None``: no limit).

    Args:
        max_seconds: positive number of seconds, or ``None`` for no limit.
        task: what runs, for the error message (``"MCMC (slice)"``).
        advice: what to do when the time is up, appended to the error message.
    """

    def __init__(self, max_seconds: float | None, task: str = "Sampling", advice: str = ""):
        if max_seconds is not None:
            if isinstance(max_seconds, bool) or not isinstance(max_seconds, (int, float)) \
                    or not math.isfinite(max_seconds) or max_seconds <= 0:
                raise ValueError(f"max_seconds must be a positive number of seconds or None "
                                 f"(no limit), got {max_seconds!r}.")
        self.max_seconds = None if max_seconds is None else float(max_seconds)
        self.task, self.advice = task, advice
        self.start = time.monotonic()

    @classmethod
    def of(cls, value: Budget | float | None, task: str = "Sampling",
           advice: str = "") -> Budget:
        """``value`` itself if it is a :class:`Budget`, else a new one of ``value`` seconds."""
        return value if isinstance(value, Budget) else cls(value, task, advice)

    @property
    def elapsed(self) -> float:
        """Seconds since the budget started."""
        return time.monotonic() - self.start

    @property
    def remaining(self) -> float:
        """Seconds left (``inf`` without a limit; negative once exceeded)."""
        return math.inf if self.max_seconds is None else self.max_seconds - self.elapsed

    @property
    def exceeded(self) -> bool:
        return self.max_seconds is not None and self.elapsed > self.max_seconds

    def check(self, progress: str = "", task: str | None = None, advice: str | None = None
              ) -> None:
        """Raise :class:`SamplingTimeoutError` when the time is up.

        Args:
            progress: how far the work got (``"1,234 of 10,000 samples"``).
            task, advice: override the budget's own for this message.
        """
        if not self.exceeded:
            return
        advice = self.advice if advice is None else advice
        limit = f"{self.max_seconds:g}"
        raise SamplingTimeoutError(
            f"{task or self.task} stopped after {self.elapsed:.1f} s (max_seconds={limit})"
            + (f": {progress}." if progress else ".")
            + (f" {advice}" if advice else "")
            + " To allow more time pass a larger max_seconds (or max_seconds=None for no "
            "limit) to the call, or set posterior.max_seconds."
        )
