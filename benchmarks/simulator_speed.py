"""Speed of the vectorized simulators against a per-sample loop (baseline in the same run).

For Hodgkin-Huxley and the ODE problems, simulate ``--n`` parameter sets in one batched call
and ``--n-loop`` of them one at a time, and print simulations per second and the ratio.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/simulator_speed.py
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from simulators import get_problem


def rate(simulator, theta: torch.Tensor, batch: int) -> float:
    """Simulations per second, calling ``simulator`` on batches of ``batch`` rows."""
    start = time.perf_counter()
    for i in range(0, theta.shape[0], batch):
        simulator(theta[i:i + batch])
    return theta.shape[0] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["hodgkin_huxley", "sir", "lotka_volterra"])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--n-loop", type=int, default=20)
    args = parser.parse_args()
    torch.manual_seed(0)
    for task in args.tasks:
        p = get_problem(task)
        theta = p.prior.sample((args.n,))
        batched = rate(p.simulator, theta, args.n)
        looped = rate(p.simulator, theta[: args.n_loop], 1)
        print(json.dumps({"task": task, "batched_sims_per_s": round(batched, 1),
                          "loop_sims_per_s": round(looped, 1),
                          "speedup": round(batched / looped, 1)}), flush=True)


if __name__ == "__main__":
    main()
