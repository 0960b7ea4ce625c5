"""Does ``fnsf`` beat ``fmaf`` on a Gaussian posterior with 3-9 parameters?

Trains NPE with each flow on the same ``gaussian_linear(dim=D)`` simulations (analytic
posterior) and prints C2ST per observation, the mean and the training seconds, one JSON line
per flow (both flows in one run, same data)::

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/flow_by_dimension.py --dim 5 --flows fmaf fnsf
"""

from __future__ import annotations

import argparse
import json
import os
import time

from diagnostics import c2st
from sbi_core import fit, simulate
from simulators.gaussian_linear import gaussian_linear


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=5)
    ap.add_argument("--flows", nargs="+", default=["fmaf", "fnsf"])
    ap.add_argument("--sims", type=int, default=10_000)
    ap.add_argument("--observations", type=int, default=5)
    ap.add_argument("--num-samples", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    problem = gaussian_linear(dim=args.dim)
    sims = simulate(problem, args.sims, seed=args.seed)
    for flow in args.flows:
        start = time.perf_counter()
        posterior = fit(problem, sims, flow=flow, seed=args.seed)
        seconds = time.perf_counter() - start
        scores = []
        for k in range(1, args.observations + 1):
            x_o = problem.observation(k)
            samples = posterior.sample(args.num_samples, x=x_o, seed=k)
            reference = problem.reference_posterior(x_o, args.num_samples, k)
            scores.append(round(float(c2st(samples.reshape(args.num_samples, -1), reference,
                                           seed=0)), 3))
        print(json.dumps({"dim": args.dim, "flow": flow, "c2st": scores,
                          "mean": round(sum(scores) / len(scores), 3),
                          "train_s": round(seconds, 1), "load": round(os.getloadavg()[0], 2)}),
              flush=True)


if __name__ == "__main__":
    main()
