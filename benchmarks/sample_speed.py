"""Posterior sampling speed: sbi-core's fused MAF against the nflows MAF (sbi's default).

Untrained flows of the default size (5 transforms, 50 hidden units) are enough: sampling
cost does not depend on the weights. Both flows run in the same process, alternating, and
the median of ``--repeats`` draws of ``--num-samples`` samples is printed with the ratio.

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/sample_speed.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from estimators.flows import build_flow  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num-samples", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dims", type=int, nargs="+", default=[2, 5, 10],
                    help="parameter dimensions (two_moons 2, slcp 5, gaussian_linear 10)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{'D':>3s} {'nflows maf s':>12s} {'fmaf s':>8s} {'ratio':>6s}")
    for d in args.dims:
        flows = {kind: build_flow(kind, d, 8) for kind in ("maf", "fmaf")}
        ctx = torch.randn(1, 8)
        times: dict[str, list[float]] = {"maf": [], "fmaf": []}
        with torch.no_grad():
            for kind in flows:
                flows[kind].sample(100, ctx)  # warm-up
            for _ in range(args.repeats):
                for kind, flow in flows.items():
                    t0 = time.perf_counter()
                    flow.sample(args.num_samples, ctx)
                    times[kind].append(time.perf_counter() - t0)
        maf, fmaf = statistics.median(times["maf"]), statistics.median(times["fmaf"])
        print(f"{d:3d} {maf:12.3f} {fmaf:8.3f} {maf / fmaf:6.2f}", flush=True)


if __name__ == "__main__":
    main()
