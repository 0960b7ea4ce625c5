"""Verify the MCMC reference posteriors by simulation-based calibration (SBC).

For each task: draw ``--runs`` parameters from the prior, simulate, run the reference sampler
with ``--posterior`` draws, and test the ranks of the true parameters for uniformity (KS test
per dimension). Prints one JSON line per task with the p-values and the seconds taken.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/verify_references.py \
        --tasks slcp bernoulli_glm --runs 30 --posterior 200
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from simulators import get_problem
from simulators.reference_check import sbc_ranks, sbc_uniformity_pvalues


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+",
                        default=["slcp", "bernoulli_glm", "sir", "lotka_volterra"])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--posterior", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    # SBC observations are fresh; keep their samples out of the user's cache.
    os.environ.setdefault("SBI_CORE_CACHE", tempfile.mkdtemp(prefix="sbi-core-sbc-"))
    for task in args.tasks:
        start = time.perf_counter()
        ranks = sbc_ranks(get_problem(task), args.runs, args.posterior, args.seed)
        pvalues = sbc_uniformity_pvalues(ranks, args.posterior)
        print(json.dumps({"task": task, "runs": args.runs, "posterior_draws": args.posterior,
                          "ks_pvalues": [round(p, 4) for p in pvalues],
                          "min_pvalue": round(min(pvalues), 4),
                          "seconds": round(time.perf_counter() - start, 1)}), flush=True)


if __name__ == "__main__":
    main()
