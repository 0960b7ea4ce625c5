"""Scale-out benchmark: throughput of a 10 ms-per-simulation simulator with 1 and 2 local
worker processes and through Dask (LocalCluster, 2 workers), with parallel efficiency;
and the overhead of the zarr store against in-memory simulation.

Run:  PYTHONPATH=. python benchmarks/scale_out.py [--num 400] [--chunk-size 20]

Parallel efficiency = throughput(k workers) / (k * throughput(1 worker)). The Dask figure
is reported both for the whole call (cluster start-up included) and for the simulation
alone on an already running cluster.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from sbi_core import Problem, box_uniform
from sbi_core.simulation import simulate
from simulators import get_problem


def _sleepy(theta: torch.Tensor) -> torch.Tensor:
    time.sleep(0.01 * theta.shape[0])  # 10 ms per simulation, like a small external model
    return theta + 0.1 * torch.randn_like(theta)


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--num", type=int, default=400, help="simulations of the 10 ms simulator")
    ap.add_argument("--chunk-size", type=int, default=20)
    ap.add_argument("--store-num", type=int, default=200_000,
                    help="simulations of two_moons for the zarr overhead")
    args = ap.parse_args()
    problem = Problem(box_uniform([-1.0, -1.0], [1.0, 1.0]), _sleepy, name="sleepy10ms")
    kw = dict(seed=0, chunk_size=args.chunk_size, progress=False)

    t1, ref = _timed(lambda: simulate(problem, args.num, workers=1, **kw))
    t2, two = _timed(lambda: simulate(problem, args.num, workers=2, **kw))
    td, dsk = _timed(lambda: simulate(problem, args.num, executor="local:2", **kw))
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster):
        simulate(problem, 2 * args.chunk_size, executor=cluster.scheduler_address, **kw)  # warm
        tw, warm = _timed(lambda: simulate(problem, args.num,
                                           executor=cluster.scheduler_address, **kw))
    assert torch.equal(ref.x, two.x) and torch.equal(ref.x, dsk.x) and torch.equal(ref.x, warm.x)
    rate1 = args.num / t1
    print(f"10 ms simulator, {args.num} simulations, chunks of {args.chunk_size}")
    print(f"{'executor':<34}{'seconds':>9}{'sims/s':>9}{'efficiency':>12}")
    for name, t, k in [("local, 1 worker", t1, 1), ("local, 2 workers", t2, 2),
                       ("dask local:2 (incl. start-up)", td, 2),
                       ("dask, running 2-worker cluster", tw, 2)]:
        rate = args.num / t
        print(f"{name:<34}{t:9.2f}{rate:9.1f}{rate / (k * rate1):12.2f}")

    tm = get_problem("two_moons")
    kw2 = dict(seed=0, chunk_size=10_000, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        tmem, mem = _timed(lambda: simulate(tm, args.store_num, **kw2))
        tsto, sto = _timed(lambda: simulate(tm, args.store_num, store=Path(tmp) / "s.zarr",
                                            **kw2))
    assert torch.equal(mem.x, sto.x)
    print(f"\nzarr store overhead, two_moons, {args.store_num} simulations, chunks of 10000")
    print(f"in memory {tmem:.2f} s, into zarr store (and read back) {tsto:.2f} s, "
          f"ratio {tsto / tmem:.2f}x, overhead {(tsto - tmem) / args.store_num * 1e6:.1f} us/sim")


if __name__ == "__main__":
    main()
