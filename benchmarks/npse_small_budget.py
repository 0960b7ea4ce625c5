"""NPSE vs FMPE at small simulation budgets against analytic posteriors (wave 10, npse10).

For each problem, budget and seed one simulation set is drawn and every method is fitted on
it; for each observation 2,000 posterior samples are scored against the analytic posterior:
``merr`` = max over dimensions of |mean - true mean| / true sd, ``sdr`` = mean over
dimensions of sd / true sd, and C2ST (1,000 vs 1,000). One line per (method, observation)
is printed as soon as it is done.

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/npse_small_budget.py \
        --problems one,gaussian_linear --sims 1000,3000 --seeds 0,1,2 --methods npse,fmpe
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from scipy.stats import truncnorm
from torch.distributions import Independent, Uniform

from diagnostics.c2st import c2st
from sbi_core import Problem, fit, simulate
from simulators import get_problem

NOISE = 0.2


def one_d() -> Problem:
    """theta ~ U(-2, 2), x = theta + N(0, 0.2^2): the posterior is N(x, 0.2^2) cut to [-2, 2]."""
    prior = Independent(Uniform(torch.full((1,), -2.0), torch.full((1,), 2.0)), 1)

    def reference(x_o: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
        x = float(x_o.reshape(-1)[0])
        a, b = (-2.0 - x) / NOISE, (2.0 - x) / NOISE
        s = truncnorm.rvs(a, b, loc=x, scale=NOISE, size=n, random_state=seed)
        return torch.as_tensor(s, dtype=torch.float32)[:, None]

    return Problem(prior, lambda th: th + NOISE * torch.randn_like(th), param_names=["m"],
                   name="one", x_shape=(1,), reference_posterior=reference)


def observations(name: str, problem: Problem) -> list[torch.Tensor]:
    if name == "one":
        return [torch.tensor([v]) for v in (0.3, -1.0, 1.5)]
    return [problem.observation(k) for k in (1, 2, 3)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", default="one,gaussian_linear")
    ap.add_argument("--sims", default="3000")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default="npse,fmpe")
    ap.add_argument("--fit", default="", help="extra fit options k=v,k=v (ints)")
    args = ap.parse_args()
    extra = {k: int(v) for k, v in (kv.split("=") for kv in args.fit.split(",") if kv)}
    print(f"# load {os.getloadavg()} extra={extra}", flush=True)
    for name in args.problems.split(","):
        problem = one_d() if name == "one" else get_problem(name)
        xs = observations(name, problem)
        refs = [problem.reference_posterior(x, 2000, 0) for x in xs]
        for n in map(int, args.sims.split(",")):
            for seed in map(int, args.seeds.split(",")):
                sims = simulate(problem, n, seed=seed, progress=False)
                for method in args.methods.split(","):
                    t0 = time.time()
                    post = fit(problem, sims, method=method, seed=seed, progress=False,
                               detector=False, **extra)
                    secs = time.time() - t0
                    h = post.history
                    for k, (x, ref) in enumerate(zip(xs, refs)):
                        s = post.sample((2000,), x=x, seed=seed)
                        mu, sd = ref.mean(0), ref.std(0)
                        merr = float(((s.mean(0) - mu).abs() / sd).max())
                        sdr = float((s.std(0) / sd).mean())
                        acc = c2st(s[:1000], ref[:1000], seed=0)
                        print(f"{name} n={n} seed={seed} {method} obs={k} epochs={h.get('epochs')}"
                              f" fit_s={secs:.1f} merr={merr:.3f} sdr={sdr:.3f} c2st={acc:.3f}",
                              flush=True)


if __name__ == "__main__":
    main()
