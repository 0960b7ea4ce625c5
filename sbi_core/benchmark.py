"""Benchmark an inference method on a problem with a reference posterior.

For each simulation budget, simulate, train the method once (amortized), then for each
requested observation draw posterior samples and score them against reference posterior
samples with C2ST (0.5 = indistinguishable), as in Lueckmann et al. (2021).

Example::

    rows = run_benchmark("two_moons", "npe", sims=[1000, 10000], observations=[1, 2],
                         method_options={"flow": "nsf"})
    for row in rows:
        print(row.to_dict())
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from sbi_core.inference import fit
from sbi_core.methods import available_methods
from sbi_core.problem import NUM_OBSERVATIONS, Problem
from sbi_core.resolve import resolve_problem
from sbi_core.simulation import simulate

__all__ = ["BenchmarkResult", "run_benchmark"]


@dataclass
class BenchmarkResult:
    """One row of a benchmark: a (task, method, budget, observation) combination."""

    task: str
    method: str
    sims: int
    observation: int
    c2st: float
    train_seconds: float
    sample_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_benchmark(task: str | Problem, method: str, sims: Sequence[int],
                  observations: Sequence[int], seed: int = 0, num_samples: int = 10_000,
                  num_reference: int | None = None, workers: int = 1,
                  method_options: dict[str, Any] | None = None,
                  c2st_options: dict[str, Any] | None = None,
                  on_result: Callable[[BenchmarkResult], None] | None = None
                  ) -> list[BenchmarkResult]:
    """Train ``method`` on each budget in ``sims`` and score it on each observation.

    Args:
        task: a problem name (or Problem) that has a reference posterior.
        method: a registered method (``sbi_core.available_methods()``).
        sims: simulation budgets; each trains a fresh estimator with seed ``seed``.
        observations: observation numbers in ``1..10``.
        num_samples: posterior samples per observation (the paper uses 10,000).
        num_reference: reference samples per observation (default ``num_samples``).
        method_options: passed unchanged to :func:`sbi_core.fit` (training and estimator
            options of the method, e.g. ``{"flow": "nsf", "max_seconds": 60}``).
        c2st_options: passed to :func:`diagnostics.c2st.c2st` (e.g. ``{"folds": 5}``).
        on_result: called with each row as soon as it is computed (for streaming output).
    Returns:
        One :class:`BenchmarkResult` per (budget, observation).
    """
    from diagnostics.c2st import c2st

    problem = resolve_problem(task) if isinstance(task, str) else task
    if problem.reference_posterior is None:
        raise ValueError(f"Problem {problem.name!r} has no reference posterior, so it cannot be "
                         "benchmarked; use one of the built-in benchmark problems.")
    if method.lower() not in available_methods():
        raise ValueError(f"Unknown method {method!r}; available: {', '.join(available_methods())}.")
    bad = [k for k in observations if not 1 <= int(k) <= NUM_OBSERVATIONS]
    if bad:
        raise ValueError(f"Observations are numbered 1..{NUM_OBSERVATIONS}; got {bad}.")
    bad_sims = [n for n in sims if int(n) < 2]
    if not sims or bad_sims:
        raise ValueError(f"Simulation budgets must be integers >= 2; got {list(sims)}.")
    num_reference = num_reference or num_samples
    references = {k: problem.reference_posterior(problem.observation(k), num_reference, seed)
                  for k in observations}
    results: list[BenchmarkResult] = []
    for n in sims:
        data = simulate(problem, int(n), seed=seed, workers=workers, progress=False)
        start = time.perf_counter()
        posterior = fit(problem, data, method=method, seed=seed,
                        **{"progress": False, **(method_options or {})})
        train_seconds = time.perf_counter() - start
        for k in observations:
            start = time.perf_counter()
            samples = posterior.sample((num_samples,), x=problem.observation(k), seed=seed)
            sample_seconds = time.perf_counter() - start
            samples = samples.reshape(num_samples, -1)
            finite = torch.isfinite(samples).all(1)
            score = c2st(samples[finite], references[k], seed=seed, **(c2st_options or {})) \
                if finite.sum() >= 10 else 1.0
            row = BenchmarkResult(problem.name, method, int(n), int(k), round(float(score), 4),
                                  round(train_seconds, 3), round(sample_seconds, 4))
            results.append(row)
            if on_result is not None:
                on_result(row)
    return results
