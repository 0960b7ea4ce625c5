"""Request cost bounds of `sbi-core serve` (issue 15): the oversized request and a flood.

1. **The reported request**: ``POST /sample`` with 50,000 observations and ``n = 2`` (650 KB,
   inside the body limit). Baseline: the work the server used to do for it, run in-process
   (parse the JSON list, check the observations, ``sample_batched``). Now: the server's time
   to answer (413), over real HTTP. Prints both and the ratio.
2. **Flood**: ``--flooders`` client threads send the largest allowed sample request
   (``n * B = max_batch``) back to back while one client sends small requests (n = 100);
   prints the small requests' p50/p90 latency and how many got 503, for the bounded pool
   (``--max-concurrency``) and for an effectively unbounded one (64 workers) as baseline.

    PYTHONPATH=$PWD python benchmarks/serve_limits.py        # trains a quick NPE (two_moons)
    PYTHONPATH=$PWD python benchmarks/serve_limits.py --model m.pt --flooders 6

Report the machine load with the numbers (``uptime``): this measures wall time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
import warnings
from pathlib import Path

import httpx
import orjson
import torch

from sbi_core import fit, load, save, simulate
from sbi_core.server import BackgroundServer, create_app
from sbi_core.server.schemas import to_tensor
from simulators import get_problem


def quick_model(path: Path) -> None:
    problem = get_problem("two_moons")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = fit(problem, simulate(problem, 2000, seed=0), method="npe", seed=0,
                   max_epochs=20, progress=False)
    save(post, path)


def observations(post, count: int) -> list[list[float]]:
    lo, hi = post.estimator.x_min, post.estimator.x_max
    gen = torch.Generator().manual_seed(0)
    xs = lo + (hi - lo) * (0.3 + 0.4 * torch.rand(count, *lo.shape, generator=gen))
    return [[round(v, 4) for v in row] for row in xs.tolist()]


def reported_request(post, xs: list[list[float]]) -> None:
    body = orjson.dumps({"xs": xs, "n": 2})
    start = time.perf_counter()
    x = to_tensor(orjson.loads(body)["xs"], "xs", 10**7)
    post.sample_batched((2,), x)
    baseline = time.perf_counter() - start
    with BackgroundServer(create_app({"m": post})) as srv:
        start = time.perf_counter()
        r = httpx.post(srv.url + "/api/models/m/sample", content=body,
                       headers={"content-type": "application/json"}, timeout=600)
        now = time.perf_counter() - start
    print(f"reported request ({len(body) / 1e3:.0f} KB, {len(xs):,} observations, n=2):")
    print(f"  baseline, its work in-process: {baseline:.2f} s")
    print(f"  server now: HTTP {r.status_code} in {now:.3f} s ({r.json()['detail'][:60]}...)")
    print(f"  ratio baseline / now: {baseline / now:.0f}x")


def flood(post, x: list[float], flooders: int, concurrency: int, seconds: float,
          max_batch: int) -> tuple[list[float], int, int]:
    app = create_app({"m": post}, max_concurrency=concurrency, queue_wait=2.0)
    small_ms: list[float] = []
    busy = [0]
    big_done = [0]
    stop = threading.Event()
    with BackgroundServer(app) as srv:
        def big() -> None:
            with httpx.Client(timeout=120) as client:
                while not stop.is_set():
                    r = client.post(srv.url + "/api/models/m/sample",
                                    json={"x": x, "n": max_batch})
                    big_done[0] += r.status_code == 200

        def small() -> None:
            with httpx.Client(timeout=120) as client:
                while not stop.is_set():
                    start = time.perf_counter()
                    r = client.post(srv.url + "/api/models/m/sample", json={"x": x, "n": 100})
                    if r.status_code == 200:
                        small_ms.append(1000 * (time.perf_counter() - start))
                    else:
                        busy[0] += 1
                    time.sleep(0.05)

        threads = [threading.Thread(target=big) for _ in range(flooders)]
        threads.append(threading.Thread(target=small))
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join()
    return small_ms, busy[0], big_done[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model file (default: train a quick NPE)")
    parser.add_argument("--observations", type=int, default=50_000)
    parser.add_argument("--flooders", type=int, default=6)
    parser.add_argument("--max-concurrency", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"load average: {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or Path(tmp) / "m.pt"
        if args.model is None:
            quick_model(path)
        post = load(path)
    xs = observations(post, args.observations)
    reported_request(post, xs)
    max_batch = 100_000
    for label, concurrency in (("baseline, 64 workers", 64),
                               (f"bounded, {args.max_concurrency} workers",
                                args.max_concurrency)):
        ms, busy, big = flood(post, xs[0], args.flooders, concurrency, args.seconds, max_batch)
        p50 = statistics.median(ms) if ms else float("nan")
        p90 = sorted(ms)[int(0.9 * (len(ms) - 1))] if ms else float("nan")
        print(f"flood ({args.flooders} clients sending n={max_batch:,}; {label}): small "
              f"requests p50 {p50:.0f} ms, p90 {p90:.0f} ms, {len(ms)} served, {busy} got "
              f"503; {big} large requests served in {args.seconds:g} s")


if __name__ == "__main__":
    main()
