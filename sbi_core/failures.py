"""Failing simulations: find the failing rows of a batch, and explain invalid columns.

:func:`isolate_failures` runs a batched simulator on a chunk. When the batched call
raises, the batch is split in halves recursively (bisection) until the failing rows are
found, so ``k`` failing rows among ``n`` cost ``O(k log n)`` simulator calls instead of
``n`` single-row calls (which matters for programs with a start-up cost). Once a few dozen
rows are resolved, the group size adapts to the failure rate seen so far
(:func:`_group_size`): smaller groups when failures are dense, row by row above 50%.
Two kinds of failure need no rerun at all:

- rows returned as NaN/inf are simply invalid;
- a simulator may raise :class:`RowFailures` carrying the outputs of the good rows and
  the mask of failed rows (``simulators.external`` does this for a program that exits
  non-zero and writes a mask file).

Reproducibility: the first call of a chunk uses the random state the chunk was seeded
with (unchanged from a run without failures). Each sub-batch ``[lo, hi)`` is re-seeded
(torch and numpy) from ``SeedSequence([seed, lo, hi])``, so rows that are re-simulated
in a sub-batch get different random numbers than they would have had in the full batch,
but the same ones for a given seed, whatever the number of workers or executor.

If a batch raises but every row of it succeeds in smaller batches, the batched
simulator is broken for that batch size: the error is kept as ``batch_error`` (and
reported as the chunk's ``first_error``; :func:`sbi_core.simulate` warns).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from sbi_core.display import shown

__all__ = ["RowFailures", "Isolation", "isolate_failures", "check_output", "seed_everything",
           "invalid_columns", "describe_invalid"]


class ExecutorLostError(ConnectionError):
    """The cluster running the chunks went away mid-run (a Dask scheduler stopped or
    unreachable). Raised by the Dask chunk source; :func:`sbi_core.simulation.simulate` adds
    how many chunks are kept (a store keeps its committed chunks: rerun with ``resume=True``).
    A ``ConnectionError``, so the command line reports it as one line (exit 2)."""


class RowFailures(RuntimeError):
    """Raised by a simulator that simulated a batch but knows some rows failed.

    Args:
        x: ``(N, *x_shape)`` outputs (rows where ``failed`` is True are ignored), or None
            when all rows failed.
        failed: bool ``(N,)``, the failed rows.
        message: what went wrong (kept as the run's ``first_error``).
    """

    def __init__(self, x: Tensor | None, failed: Tensor, message: str):
        super().__init__(message)
        self.x, self.failed = x, failed


@dataclass
class Isolation:
    """Result of :func:`isolate_failures` for ``n`` rows.

    Attributes:
        x: float32 ``(n, *x_shape)``; NaN in rows whose simulation raised.
        valid: bool ``(n,)``: simulated and finite.
        first_error: the first error message (or a NaN note), None when all rows are valid.
        batch_error: the error of a batch whose rows all succeeded in smaller batches.
        calls: number of simulator calls made.
    """

    x: Tensor
    valid: Tensor
    first_error: str | None
    batch_error: str | None
    calls: int


def seed_everything(seed: int) -> None:
    """Seed torch's and numpy's global generators."""
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


#: What to do about a simulator that returns complex numbers (an FFT, say).
COMPLEX_ADVICE = ("the simulator returned complex values (dtype {dtype}); x must be real, and "
                  "casting would drop the imaginary parts. Return real features instead, e.g. "
                  "torch.cat([x.real, x.imag], -1) or np.concatenate([x.real, x.imag], -1), "
                  "or the magnitude x.abs()")


def check_output(x: object, n: int, x_shape: tuple[int, ...]) -> Tensor:
    """``x`` as a Tensor ``(n, *x_shape)``; raises TypeError/ValueError otherwise."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, Tensor):
        raise TypeError(f"simulator returned {type(x).__name__}, not a Tensor")
    if x.is_complex():  # storing it as float32 would drop the imaginary parts silently
        raise TypeError(COMPLEX_ADVICE.format(dtype=x.dtype))
    if tuple(x.shape) != (n, *x_shape):
        raise ValueError(f"simulator returned shape {tuple(x.shape)}, expected {(n, *x_shape)}")
    return x.detach()  # simulations are data: an autograd graph (a simulator with nn layers)
    # would be kept alive in memory and break stores and worker processes (.numpy())


def _rows(x: Tensor) -> Tensor:
    """``x`` ``(N, ...)`` as ``(N, prod(...))``, also for ``N = 0``."""
    return x.reshape(x.shape[0], int(np.prod(x.shape[1:], dtype=np.int64)))


def _sub_seed(seed: int, lo: int, hi: int) -> int:
    return int(np.random.SeedSequence([seed, lo, hi]).generate_state(1, dtype=np.uint32)[0])


def _message(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def isolate_failures(simulator: Callable[[Tensor], Tensor], theta: Tensor,
                     x_shape: Sequence[int], seed: int) -> Isolation:
    """Simulate ``theta`` ``(n, D)``, isolating failing rows by bisection; never raises for
    simulator failures.

    The first call uses the current random state; sub-batches ``[lo, hi)`` are seeded
    from ``(seed, lo, hi)`` (see the module docstring).
    """
    x_shape = tuple(x_shape)
    n = int(theta.shape[0])
    x = torch.full((n, *x_shape), float("nan"))
    # rows whose status is known, and how many of them raised alone: the failure density
    state = {"calls": 0, "first": None, "batch": None, "resolved": 0, "bad": 0}

    def note(msg: str) -> None:
        if state["first"] is None:
            state["first"] = msg

    def attempt(lo: int, hi: int, reseed: bool) -> int:
        """Simulate rows ``[lo, hi)``; returns how many of them failed by raising."""
        if reseed:
            seed_everything(_sub_seed(seed, lo, hi))
        state["calls"] += 1
        try:
            # a copy: a simulator that writes into its input (theta[:, 0] *= 2) must not
            # change the parameters that are stored with its output
            out = check_output(simulator(theta[lo:hi].clone()), hi - lo, x_shape)
            x[lo:hi] = out.float()
            if out.dtype != torch.float32 and out.is_floating_point():
                big = torch.isfinite(out) & ~torch.isfinite(x[lo:hi])
                if bool(big.any()):  # float64 numbers that float32 cannot hold
                    note(f"the simulator returned finite values beyond float32's range (|x| "
                         f"up to {float(out[big].abs().max()):.3g} > 3.4e38), stored as inf; "
                         "rescale them in the simulator (e.g. log10) if they are real values, "
                         "or return NaN for blown-up rows")
            state["resolved"] += hi - lo
            return 0
        except RowFailures as err:  # the simulator reported its failed rows: no rerun
            failed = torch.as_tensor(err.failed, dtype=torch.bool).reshape(-1)
            try:
                if failed.shape[0] != hi - lo:
                    raise ValueError(f"the failed-row mask has {failed.shape[0]} entries for "
                                     f"a batch of {hi - lo}")
                out = torch.full((hi - lo, *x_shape), float("nan")) if err.x is None else \
                    check_output(err.x, hi - lo, x_shape).float().clone()
            except (TypeError, ValueError) as bad:  # a malformed report: isolate as usual
                msg = f"{_message(err)} ({bad})"
                note(msg)
                return _split(lo, hi, msg)
            out[failed] = float("nan")
            x[lo:hi] = out
            note(_message(err))
            state["resolved"] += hi - lo
            return int(failed.sum())
        except Exception as err:  # isolate by bisection
            msg = _message(err)
            note(msg)
            return _split(lo, hi, msg)

    def _split(lo: int, hi: int, msg: str) -> int:
        if hi - lo == 1:
            state["resolved"] += 1
            state["bad"] += 1
            return 1
        size = _group_size(hi - lo, state["resolved"], state["bad"])
        bad = sum(attempt(a, min(a + size, hi), True) for a in range(lo, hi, size))
        if bad == 0 and state["batch"] is None:
            state["batch"] = msg  # every row worked in smaller batches
        return bad

    if n:
        attempt(0, n, False)
    valid = torch.isfinite(_rows(x)).all(1)
    first_error = state["first"]
    if state["batch"] is not None:
        first_error = ("the batched simulator failed on a batch whose rows all succeeded in "
                       "smaller batches (re-seeded): it is broken for batches, or fails at "
                       f"random: {state['batch']}")
    elif first_error is None and not bool(valid.all()):
        first_error = "the simulator returned NaN or inf"
    return Isolation(x, valid, first_error, state["batch"], state["calls"])


def _group_size(m: int, resolved: int, bad: int, min_resolved: int = 32) -> int:
    """Size of the groups a failing batch of ``m`` rows is split into.

    Halves until ``min_resolved`` rows are known; then, with ``p`` the fraction of known
    rows that raised alone, the largest power of two <= ``(1 - p) / p`` (binary splitting
    for an estimated number of failures, Hwang 1972), at most ``ceil(m / 2)``: dense
    failures (``p`` >= 0.5) are tested row by row, so bisection never costs much more
    than the old row-by-row rescue, and sparse ones are split in halves.
    """
    half = -(-m // 2)
    if resolved < min_resolved or bad == 0:
        return half
    p = bad / resolved
    ratio = (1 - p) / p
    size = 1 if ratio < 2 else 2 ** int(np.floor(np.log2(ratio)))
    return max(1, min(size, half))


def invalid_columns(x: Tensor, valid: Tensor | None = None) -> list[dict]:
    """Per flattened column of ``x`` ``(N, ...)`` with any NaN/inf: counts among all rows.

    Returns:
        ``[{"column": j, "nan": count, "inf": count}]`` sorted by column.
    """
    flat = _rows(x)
    nan = torch.isnan(flat).sum(0)
    inf = torch.isinf(flat).sum(0)
    cols = torch.nonzero((nan + inf) > 0).flatten().tolist()
    return [{"column": int(j), "nan": int(nan[j]), "inf": int(inf[j])} for j in cols]


def describe_invalid(x: Tensor, names: Sequence[str] | None = None, max_columns: int = 5,
                     total: int | None = None) -> str:
    """Which columns of ``x`` ``(N, ...)`` are NaN/inf and how often, most affected first.

    Example: ``"column 7 (ratio_mean) is NaN in 3,996 of 4,000 rows"``. Columns index the
    flattened ``x``; ``names`` (one per flattened column) label them. Rows with no finite value
    at all (failed runs: raised, reported, timed out) are counted first and apart, when ``x``
    has more than one column, so they do not read as a column's problem. Empty when all finite.
    ``total``: the number of rows to report counts against when ``x`` holds only some of them
    (e.g. the invalid rows of a store, read chunk by chunk).
    """
    n = int(x.shape[0]) if total is None else int(total)
    flat = _rows(x)
    whole = torch.zeros(n, dtype=torch.bool)
    if flat.shape[1] > 1:  # rows with no finite value: failed runs, not a column's problem
        whole = ~torch.isfinite(flat).any(1)
    cols = invalid_columns(flat[~whole])
    lead = []
    if whole.any():
        lead = [f"{int(whole.sum()):,} of {n:,} rows have no finite value in any column (the "
                "simulation raised, was reported failed, timed out, or returned only NaN/inf)"]
    if not cols:
        return "; ".join(lead)
    cols.sort(key=lambda c: -(c["nan"] + c["inf"]))
    use_names = names is not None and len(names) == _rows(x).shape[1]
    parts = []
    for c in cols[:max_columns]:
        label = f"column {c['column']}" + (f" ({shown(names[c['column']])})" if use_names else "")
        kinds = [f"NaN in {c['nan']:,}" if c["nan"] else "",
                 f"inf in {c['inf']:,}" if c["inf"] else ""]
        parts.append(f"{label} is {' and '.join(k for k in kinds if k)} of {n:,} rows")
    more = len(cols) - max_columns
    return "; ".join(lead + parts) + (f"; and {more} more column(s)" if more > 0 else "")
