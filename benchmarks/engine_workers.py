"""Supervised worker processes vs. the former ``multiprocessing.Pool`` path, same run.

The baseline is the engine's former implementation (a forked ``Pool`` with
``imap_unordered`` returning ``ChunkResult`` tensors); the new path is
``simulate(..., workers=2)`` (supervised processes, NumPy results through a pipe).
Both produce identical data (checked). Prints best-of-3 seconds and the ratio.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/engine_workers.py
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time

import torch

from sbi_core import Problem, box_uniform
from sbi_core.simulation import chunk_plan, run_chunk, simulate

_PROBLEM = None


def _init() -> None:
    torch.set_num_threads(1)


def _task(task):
    return run_chunk(_PROBLEM, *task)


def _pool_baseline(problem, n, cs, workers=2):
    global _PROBLEM
    _PROBLEM = problem
    plan = chunk_plan(n, 0, cs)
    with mp.get_context("fork").Pool(workers, initializer=_init) as pool:
        res = {r.index: r for r in pool.imap_unordered(_task, plan)}
    return torch.cat([res[i].x for i in range(len(plan))])


def _best(fn, repeats=3):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    problem = Problem(box_uniform([-1.0, -1.0], [1.0, 1.0]),
                      lambda t: t + 0.1 * torch.randn_like(t), name="fast", x_shape=(2,),
                      validate=False)
    print(f"load average: {os.getloadavg()}")
    print("simulations  chunk  pool_s  supervised_s  ratio(pool/supervised)")
    for n, cs in [(20_000, 50), (200_000, 10_000)]:
        t_old, x_old = _best(lambda n=n, cs=cs: _pool_baseline(problem, n, cs))
        t_new, sims = _best(lambda n=n, cs=cs: simulate(problem, n, seed=0, workers=2, chunk_size=cs,
                                             progress=False))
        assert torch.equal(x_old, sims.x)
        print(f"{n:>11}  {cs:>5}  {t_old:6.3f}  {t_new:12.3f}  {t_old / t_new:6.2f}")


if __name__ == "__main__":
    main()
