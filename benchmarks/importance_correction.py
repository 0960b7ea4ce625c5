"""Importance-sampling correction (SIR) of NPE posteriors on gaussian_linear (issue 18, item 4).

NPE is trained on the same simulations for a few training lengths (deliberately poor to
converged); for each, samples of the raw NPE and of ``sample(..., correct="is")`` with the
true likelihood are compared by C2ST with the analytic posterior on observations
1..``--num-obs``, with the effective sample size and the sampling time of both.

Usage::

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/importance_correction.py
"""

from __future__ import annotations

import argparse
import math
import os
import time
import warnings

import torch

from diagnostics.c2st import c2st
from sbi_core import fit, simulate
from sbi_core.importance import ImportanceSamplingError
from simulators import get_problem
from simulators.gaussian_linear import gaussian_linear_posterior


def loglik(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.distributions.Normal(theta, math.sqrt(0.1)).log_prob(x).sum(-1)


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--num-sims", type=int, default=2000)
    p.add_argument("--epochs", type=int, nargs="+", default=[10, 20, 50, 1000])
    p.add_argument("--num-obs", type=int, default=3)
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--oversampling", type=int, default=32)
    args = p.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    problem = get_problem("gaussian_linear")
    sims = simulate(problem, args.num_sims, seed=0, progress=False)
    print(f"load before {os.getloadavg()}")
    print("| max epochs (preset fast) | epochs | raw C2ST | corrected C2ST | ESS (of M) | "
          "raw s | corrected s |")
    print("|---|---|---|---|---|---|---|")
    for ep in args.epochs:
        post = fit(problem, sims, max_epochs=ep, preset="fast", seed=0, progress=False,
                   detector=False)
        raw_c, cor_c, ess, t_raw, t_cor = [], [], [], 0.0, 0.0
        for k in range(1, args.num_obs + 1):
            x_o = problem.observation(k)
            ref = gaussian_linear_posterior(x_o).sample((args.num_samples,)).float()
            t0 = time.perf_counter()
            raw = post.sample((args.num_samples,), x=x_o, seed=k)
            t_raw += time.perf_counter() - t0
            raw_c.append(c2st(raw, ref, seed=0))
            t0 = time.perf_counter()
            try:
                cor = post.sample((args.num_samples,), x=x_o, seed=k, correct="is",
                                  log_likelihood=loglik, oversampling=args.oversampling)
            except ImportanceSamplingError as err:
                print(f"epochs {ep}, observation {k}: {str(err)[:120]}")
                continue
            t_cor += time.perf_counter() - t0
            cor_c.append(c2st(cor, ref, seed=0))
            ess.append(post.last_importance.ess)
        m = args.num_samples * args.oversampling
        print(f"| {ep} | {post.history['epochs']} | {mean(raw_c):.3f} | {mean(cor_c):.3f} | "
              f"{mean(ess):,.0f} ({m:,}) | {t_raw:.2f} | {t_cor:.2f} |", flush=True)
    print(f"load after {os.getloadavg()}")


if __name__ == "__main__":
    main()
