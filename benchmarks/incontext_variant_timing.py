"""Time to first posterior of the in-context variants, interleaved in one process.

For each task and context size, the same simulations (``--seed``) are given to
``fit(problem, sims, method="incontext", variant=v)`` for each ``--variants`` value, round
robin, ``--repeats`` times; the median ``fit`` time per variant (the variant choice included;
the context's encoding happens at the first draw and is in the sampling time) and the median
time of one ``--num-samples`` draw for one observation are printed, with the ratio to the
first variant and the machine load (a shared machine: compare ratios from one run only).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/incontext_variant_timing.py \\
        --variants select auto stack --sims 200 500 1000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from incontext_vs_npe import get_task, observations  # noqa: E402

from sbi_core import fit, simulate  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=["two_moons", "gaussian_linear",
                                                   "gaussian_mixture", "sir"])
    ap.add_argument("--sims", type=int, nargs="+", default=[200, 500, 1000])
    ap.add_argument("--variants", nargs="+", default=["select", "auto", "stack"],
                    help="variant names; 'VARIANT:CAND1,CAND2' fixes the candidate pool, e.g. "
                         "auto:plain-16,residual-16,residual-64,residual-256 (the pool before "
                         "wave 12)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--num-samples", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the rows to this JSON file (after every row)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    print(f"load at start: {os.getloadavg()}", flush=True)
    for task in args.tasks:
        problem = get_task(task)
        x_o = observations(problem, 1)[0]
        for n in args.sims:
            theta, x = simulate(problem, n, seed=args.seed, progress=False).training_data()
            fit_s: dict[str, list[float]] = {v: [] for v in args.variants}
            draw_s: dict[str, list[float]] = {v: [] for v in args.variants}
            chosen: dict[str, str] = {}
            load0 = os.getloadavg()[0]
            for _ in range(args.repeats):
                for v in args.variants:
                    t0 = time.perf_counter()
                    name, _, pool = v.partition(":")
                    extra = {"candidates": pool.split(",")} if pool else {}
                    post = fit(problem, (theta, x), method="incontext", detector=False,
                               seed=args.seed, variant=name, **extra)
                    fit_s[v].append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    post.sample((args.num_samples,), x=x_o, seed=0)
                    draw_s[v].append(time.perf_counter() - t0)
                    chosen[v] = post.history["variant"]
            base = statistics.median(fit_s[args.variants[0]])
            row = {"task": task, "sims": n, "load": [round(load0, 2),
                                                     round(os.getloadavg()[0], 2)],
                   "variants": {v: {"chosen": chosen[v],
                                    "first_posterior_s": round(statistics.median(fit_s[v]), 3),
                                    "ratio_to_first": round(statistics.median(fit_s[v]) / base,
                                                            2),
                                    "draws_s": round(statistics.median(draw_s[v]), 3)}
                                for v in args.variants}}
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(rows, indent=1))
    print(f"load at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
