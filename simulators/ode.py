"""Batched ODE solves with scipy: many parameter sets in one ``solve_ivp`` call.

The ODEs of the benchmark problems (SIR, Lotka-Volterra) are small (2-3 states), so the
systems of ``n`` parameter sets are stacked into one ``(n * S)``-dimensional system whose
right-hand side is evaluated with numpy for all of them at once. ``solve_ivp`` controls the
RMS error over all stacked components, which dilutes one system's error by up to
``sqrt(n * S)``; the tolerances here are therefore tight (DOP853, ``rtol=1e-9``) and the
batch is split into chunks of at most ``chunk`` systems. ``tests/test_benchmark_problems.py``
checks the stacked solve against one ``solve_ivp`` per parameter set.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.integrate import solve_ivp

__all__ = ["solve_batched"]

Rhs = Callable[[np.ndarray, np.ndarray], np.ndarray]


def solve_batched(rhs: Rhs, y0: np.ndarray, params: np.ndarray, t_eval: np.ndarray,
                  rtol: float = 1e-9, atol: float = 1e-12, chunk: int = 256,
                  method: str = "DOP853") -> np.ndarray:
    """Solve ``dy/dt = rhs(y, params)`` for every row of ``params``.

    Args:
        rhs: vectorized right-hand side ``(y (n, S), params (n, P)) -> (n, S)``.
        y0: initial state ``(S,)`` shared by all systems, or ``(n, S)``.
        params: ``(n, P)`` parameters.
        t_eval: ``(T,)`` increasing times, starting at the initial time.
    Returns:
        ``(n, S, T)`` float64 solution; rows whose solve failed are NaN.
    """
    params = np.asarray(params, dtype=np.float64)
    n = params.shape[0]
    y0 = np.broadcast_to(np.asarray(y0, dtype=np.float64), (n, np.shape(y0)[-1]))
    s = y0.shape[1]
    t_eval = np.asarray(t_eval, dtype=np.float64)
    out = np.full((n, s, len(t_eval)), np.nan)
    for start in range(0, n, chunk):
        p = params[start:start + chunk]
        m = p.shape[0]

        def f(_t: float, y: np.ndarray, p: np.ndarray = p, m: int = m) -> np.ndarray:
            return rhs(y.reshape(m, s), p).reshape(-1)

        with np.errstate(all="ignore"):
            sol = solve_ivp(f, (t_eval[0], t_eval[-1]), y0[start:start + chunk].reshape(-1),
                            method=method, t_eval=t_eval, rtol=rtol, atol=atol)
        if sol.success and sol.y.shape[1] == len(t_eval):
            out[start:start + m] = sol.y.reshape(m, s, len(t_eval))
        elif m > 1:  # isolate the failing systems
            for i in range(m):
                out[start + i] = solve_batched(rhs, y0[start + i], p[i:i + 1], t_eval, rtol,
                                               atol, 1, method)[0]
    return out
