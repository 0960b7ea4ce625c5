"""NLE and NRE(-A/-C/BNRE) on the 2-D linear Gaussian: C2ST against the analytic posterior
for 1 and 10 iid trials, with training and sampling times.

    PYTHONPATH=. python benchmarks/nle_nre_iid.py [--sims 3000] [--methods nle,nre,nre_a,bnre]

Baseline in the same run: NPE (it conditions on one observation only, so it is scored on the
1-trial case). C2ST 0.5 is perfect, 1.0 is total mismatch.
"""

from __future__ import annotations

import argparse
import time

import torch

from diagnostics.c2st import c2st
from sbi_core import fit, simulate
from simulators.linear_gaussian import linear_gaussian, linear_gaussian_posterior


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sims", type=int, default=3000)
    parser.add_argument("--methods", default="npe,nle,nre,nre_a,bnre")
    parser.add_argument("--max-seconds", type=float, default=60.0)
    args = parser.parse_args()
    problem = linear_gaussian(dim=2)
    sims = simulate(problem, args.sims, seed=0)
    torch.manual_seed(1)
    trials = problem.simulator(torch.tensor([0.5, -0.3]).expand(10, 2))
    for method in args.methods.split(","):
        t0 = time.perf_counter()
        extra = {} if method == "npe" else {"mcmc": {"progress": False}}
        post = fit(problem, sims, method=method, seed=0, max_seconds=args.max_seconds,
                   progress=False, **extra)
        train_s = time.perf_counter() - t0
        for n in (1, 10) if post.supports_iid else (1,):
            t0 = time.perf_counter()
            x_o = trials[0] if n == 1 else trials[:n]
            samples = post.sample((1000,), x=x_o, seed=0)
            sample_s = time.perf_counter() - t0
            ref = linear_gaussian_posterior(trials[:n]).sample((1000,))
            print(f"{method:6s} n={n:2d}: C2ST {c2st(samples, ref, seed=0):.3f}  train "
                  f"{train_s:5.1f} s  sample 1000 {sample_s:5.1f} s", flush=True)


if __name__ == "__main__":
    main()
