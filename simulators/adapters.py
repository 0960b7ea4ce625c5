"""Adapters that turn user functions into batched torch simulators.

- :func:`adapt` (the one obvious way): ``adapt(fn)`` finds out by a probe call whether
  ``fn`` takes a batch ``(N, D)`` or one parameter set ``(D,)``, and torch tensors or
  numpy arrays; ``batched=`` / ``numpy=`` fix either choice explicitly.
- :func:`from_numpy`: ``f(theta: ndarray (N, D)) -> ndarray (N, ...)`` (same as
  ``adapt(f, batched=True, numpy=True)``).
- :func:`per_sample`: ``f(theta: Tensor (D,)) -> Tensor (...)`` (``numpy=True``: ndarray),
  called per row (same as ``adapt(f, batched=False, numpy=...)``).

The probe (:func:`probe`) runs on the first call, with the random state saved and restored,
so it never changes the simulations. It tries, in this order: a batch of 2 and of 3 rows
as a tensor, the same as float64 arrays, one row ``(D,)`` as a tensor, one row as an array.
A batched kind is accepted when it returns one row per parameter set for both sizes (a
function that ignores the batch size fails this). When a batched and a per-sample call
both work but give differently shaped rows, the function is ambiguous and ``batched=``
must be given. A function returning numpy arrays, or one that makes numpy warn when given
tensors, is given numpy input when it accepts it.

Exceptions from the wrapped function are not swallowed: the simulation engine isolates
the failing rows and records them as invalid.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["adapt", "from_numpy", "per_sample", "probe", "adapter_call", "suggest_adapter"]


@dataclass
class _Attempt:
    batched: bool
    numpy: bool
    ok: bool
    detail: str  # the output shape, or why it failed
    row_shape: tuple[int, ...] | None = None
    returns_numpy: bool = False
    warned: bool = False  # the call warned (e.g. numpy ufuncs on torch tensors)


def adapter_call(batched: bool, numpy: bool) -> str:
    """The explicit call for a kind, e.g. ``"simulators.per_sample(fn, numpy=True)"``."""
    if batched:
        return "simulators.from_numpy(fn)" if numpy else "passing fn directly (no adapter)"
    return "simulators.per_sample(fn, numpy=True)" if numpy else "simulators.per_sample(fn)"


def _kind(batched: bool, numpy: bool) -> str:
    return (f"{'batched' if batched else 'per-sample'} "
            f"({'numpy arrays' if numpy else 'torch tensors'})")


def _as_tensor(out: Any) -> Tensor:
    if (out.is_complex() if isinstance(out, Tensor) else np.iscomplexobj(out)):
        from sbi_core.failures import COMPLEX_ADVICE  # float32 would drop the imaginary parts

        raise TypeError(COMPLEX_ADVICE.format(dtype=getattr(out, "dtype", type(out).__name__)))
    if isinstance(out, Tensor):
        return out.float()
    if out is None:  # np.asarray(None, float32) would be NaN: "returned NaN" hides the cause
        raise TypeError("the simulator returned None (a missing `return` statement?); it must "
                        "return the simulated x")
    return torch.as_tensor(np.asarray(out, dtype=np.float32))


def _arg(theta: Tensor, numpy: bool) -> Any:
    return theta.detach().cpu().numpy().astype(np.float64) if numpy else theta


def _try(fn: Callable, theta: Tensor, batched: bool, numpy: bool) -> _Attempt:
    with warnings.catch_warnings(record=True) as caught:  # a wrong kind may warn
        warnings.simplefilter("always")  # (e.g. numpy ufuncs on torch tensors)
        attempt = _try_kind(fn, theta, batched, numpy)
    attempt.warned = bool(caught)
    return attempt


def _try_kind(fn: Callable, theta: Tensor, batched: bool, numpy: bool) -> _Attempt:
    try:
        if batched:
            shapes = []
            returns_numpy = False
            for n in (2, 3):
                rows = theta[torch.arange(n) % theta.shape[0]]
                out = fn(_arg(rows, numpy))
                returns_numpy = returns_numpy or isinstance(out, np.ndarray)
                shape = tuple(_as_tensor(out).shape)
                if len(shape) < 2 or shape[0] != n:
                    return _Attempt(True, numpy, False, f"{n} rows gave shape {shape}, not "
                                    f"({n}, ...)")
                shapes.append(shape[1:])
            if shapes[0] != shapes[1]:
                return _Attempt(True, numpy, False, f"row shapes {shapes[0]} and {shapes[1]} "
                                                    "differ for 2 and 3 rows")
            return _Attempt(True, numpy, True, f"rows of shape {shapes[0]}", shapes[0],
                            returns_numpy)
        out = fn(_arg(theta[0], numpy))
        shape = tuple(_as_tensor(out).shape) or (1,)
        return _Attempt(False, numpy, True, f"shape {shape}", shape, isinstance(out, np.ndarray))
    except Exception as err:  # any failure just rules this kind out
        return _Attempt(batched, numpy, False, f"{type(err).__name__}: {err}")


def probe(fn: Callable, theta: Tensor, batched: bool | None = None,
          numpy: bool | None = None) -> tuple[bool, bool, list[_Attempt]]:
    """Find how ``fn`` wants to be called, from a few of the rows of ``theta`` ``(N, D)``.

    Returns:
        ``(batched, numpy, attempts)``; raises ValueError naming what each try saw and the
        explicit call to use when no kind (or more than one, inconsistently) works.
    """
    theta = theta.detach().float()
    if theta.ndim != 2 or theta.shape[0] == 0:
        raise ValueError(f"probe needs theta of shape (N >= 1, D), got {tuple(theta.shape)}.")
    kinds = [(b, n) for b in (True, False) for n in (False, True)
             if (batched is None or b == batched) and (numpy is None or n == numpy)]
    np_state = np.random.get_state()
    with torch.random.fork_rng():
        try:
            attempts = [_try(fn, theta, b, n) for b, n in kinds]
        finally:
            np.random.set_state(np_state)
    ok = [a for a in attempts if a.ok]
    if not ok:
        tried = "; ".join(f"{_kind(a.batched, a.numpy)}: {a.detail}" for a in attempts)
        hint = ""
        if batched is not None or numpy is not None:  # say which kind works instead
            others = [k for k in _all_kinds() if k not in kinds]
            works = [a for a in (_try_quietly(fn, theta, b, n) for b, n in others) if a.ok]
            if works:
                hint = (f" It does work {_kind(works[0].batched, works[0].numpy)}: use "
                        f"{adapter_call(works[0].batched, works[0].numpy)} or "
                        "simulators.adapt(fn) without batched=/numpy=.")
        raise ValueError(
            f"Could not call the simulator {_name(fn)} in any of the ways tried ({tried}).{hint}"
            " A simulator takes theta (N, D) or one row (D,), as torch tensors or numpy "
            "arrays, and returns one row of x per parameter set; fix the function or pass "
            "simulators.adapt(fn, batched=..., numpy=...) to see the error of the intended call.")
    batched_ok = [a for a in ok if a.batched]
    single_ok = [a for a in ok if not a.batched]
    if batched_ok and single_ok and batched_ok[0].row_shape != single_ok[0].row_shape:
        raise ValueError(
            f"The simulator {_name(fn)} runs both on a batch (x rows of shape "
            f"{batched_ok[0].row_shape}) and on one row (x of shape {single_ok[0].row_shape}); "
            "the shapes disagree, so it is unclear which is meant. Pass "
            "simulators.adapt(fn, batched=True) for a batched function or "
            "simulators.adapt(fn, batched=False) (= simulators.per_sample(fn)) for a "
            "per-sample one.")
    pick = ok[0]
    if not pick.numpy and (pick.returns_numpy or pick.warned):
        # a numpy function (it returns arrays, or numpy warns about the tensors it was
        # given, e.g. ``__array_wrap__`` deprecations): give it numpy input when that works
        # without warnings
        same = [a for a in ok if a.batched == pick.batched and a.numpy and not a.warned]
        pick = same[0] if same else pick
    return pick.batched, pick.numpy, attempts


def _all_kinds() -> list[tuple[bool, bool]]:
    return [(True, False), (True, True), (False, False), (False, True)]


def _try_quietly(fn: Callable, theta: Tensor, batched: bool, numpy: bool) -> _Attempt:
    np_state = np.random.get_state()
    with torch.random.fork_rng():
        try:
            return _try(fn, theta, batched, numpy)
        finally:
            np.random.set_state(np_state)


def _name(fn: Callable) -> str:
    return repr(getattr(fn, "__qualname__", None) or type(fn).__name__)


class adapt:  # noqa: N801 - used like a function
    """A batched torch simulator from ``fn``, whatever kind it is.

    Args:
        fn: a batched or per-sample function of torch tensors or numpy arrays.
        batched: True for ``(N, D) -> (N, ...)``, False for ``(D,) -> (...)``; None: probe.
        numpy: True for float64 numpy input, False for torch; None: probe.

    The kind is probed on the first call (see :func:`probe`) and kept (also when pickled
    into worker processes); ``kind`` says what was chosen.
    """

    def __init__(self, fn: Callable[[Any], Any], batched: bool | None = None,
                 numpy: bool | None = None):
        if not callable(fn):
            raise TypeError(f"adapt needs a callable, got {type(fn).__name__}.")
        self.fn, self.batched, self.numpy = fn, batched, numpy

    @property
    def kind(self) -> str:
        if self.batched is None or self.numpy is None:
            return "not probed yet"
        return _kind(self.batched, self.numpy)

    def __repr__(self) -> str:
        return f"adapt({_name(self.fn)}, {self.kind})"

    def __call__(self, theta: Tensor) -> Tensor:
        """``theta`` ``(N, D)`` -> ``x`` ``(N, ...)`` float32."""
        if self.batched is None or self.numpy is None:
            self.batched, self.numpy, _ = probe(self.fn, theta, self.batched, self.numpy)
        if self.batched:
            return _as_tensor(self.fn(_arg(theta, self.numpy)))
        rows: list[Tensor | None] = []
        first: Exception | None = None
        for row in theta:
            try:
                # a copy: a function that returns the same buffer each call (out[:] = ...;
                # return out) would otherwise leave every row equal to the last one
                out = _as_tensor(self.fn(_arg(row, self.numpy))).clone()
            except Exception as err:  # this row failed; the others still count
                first = first or err
                rows.append(None)
                continue
            rows.append(out.reshape(1) if out.ndim == 0 else out)
        first = first or _drop_odd_shapes(rows)
        if first is None:
            return torch.stack(rows)  # type: ignore[arg-type]
        if len(rows) == 1:
            raise first
        # each row ran on its own, so the failed ones are known: report them (the engine then
        # keeps the good rows instead of re-running the batch by bisection)
        from sbi_core.failures import RowFailures

        failed = torch.tensor([r is None for r in rows])
        good = [r for r in rows if r is not None]
        x = None if not good else torch.stack(
            [torch.full_like(good[0], float("nan")) if r is None else r for r in rows])
        raise RowFailures(x, failed, f"{type(first).__name__}: {first} ({int(failed.sum())} of "
                                     f"{len(rows)} rows raised)") from first


def _drop_odd_shapes(rows: list[Tensor | None]) -> Exception | None:
    """Mark rows whose shape differs from the most common one as failed (set to None), e.g.
    an ODE solver that stopped early and returned fewer time points; returns the error that
    says so, or None when all rows agree."""
    shapes = [tuple(r.shape) for r in rows if r is not None]
    if len(set(shapes)) <= 1:
        return None
    common = max(set(shapes), key=shapes.count)
    odd = [i for i, r in enumerate(rows) if r is not None and tuple(r.shape) != common]
    shape = tuple(rows[odd[0]].shape)  # type: ignore[union-attr]
    for i in odd:
        rows[i] = None
    return ValueError(
        f"{len(odd)} row(s) (first: row {odd[0]}) returned x of shape {shape} while "
        f"the others returned {common}; x must have one fixed shape (a solver that stopped "
        "early returns fewer points: return NaN of the full shape instead)")


class from_numpy(adapt):  # noqa: N801 - used like a function
    """Wrap a batched numpy simulator ``ndarray (N, D) -> ndarray (N, ...)``."""

    def __init__(self, fn: Callable[[np.ndarray], Any]):
        super().__init__(fn, batched=True, numpy=True)


class per_sample(adapt):  # noqa: N801 - used like a function
    """Wrap a per-sample simulator ``theta (D,) -> x (...)``; torch (or numpy with
    ``numpy=True``) in, torch or numpy out."""

    def __init__(self, fn: Callable[[Any], Any], numpy: bool = False):
        super().__init__(fn, batched=False, numpy=numpy)


def suggest_adapter(simulator: Callable, theta: Tensor) -> str:
    """A sentence naming the call that works for ``simulator`` (an adapter is looked
    through to its function), or ``""`` when no kind works; for error messages."""
    from simulators.external import ExternalProgram

    if isinstance(simulator, ExternalProgram):  # batched by construction; probing would
        return ""                                # start the program again (maybe a timeout)
    fn = simulator.fn if isinstance(simulator, adapt) else simulator
    used = (simulator.batched, simulator.numpy) if isinstance(simulator, adapt) else (True, False)
    for b, n in _all_kinds():
        a = _try_quietly(fn, theta, b, n)
        if a.ok:
            if (b, n) == used:
                return ""
            current = adapter_call(*used)
            return (f" The function works {_kind(b, n)} (x rows of shape {a.row_shape}): use "
                    f"{adapter_call(b, n)}, or simulators.adapt(fn) to detect it, instead of "
                    f"{current}.")
    return ""
