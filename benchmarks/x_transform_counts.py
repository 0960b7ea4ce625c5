"""NPE's ``x_transform`` on count simulators other than sir, against exact posteriors.

Two count problems with nonnegative, right-skewed x (so ``x_transform="auto"`` applies log1p):

- ``poisson_gamma``: theta_j ~ Gamma(2, 0.4) (j = 1, 2), x = Poisson(theta_j * t) for
  exposures t = (1, 3, 10): six counts; the posterior is the product of
  Gamma(2 + sum x_j, 0.4 + 14) (conjugate, exact samples).
- ``negbin``: mean mu ~ Gamma(2, 0.2), dispersion r ~ Uniform(0.5, 10); x = 8 iid negative
  binomial counts with mean mu and size r; posterior on a 400 x 400 grid (exact up to the
  grid; samples: a cell by its mass, then uniform within the cell).

For each problem and seed both variants (``"none"``, ``"auto"``) train with ``fit``'s
defaults on the same simulations (``--sims``), one after the other in this process; C2ST
against the exact posterior on observations 1..K. One JSON line per run (incremental).

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/x_transform_counts.py --seeds 0 1 2 \\
        --sims 5000 --observations 5 --out counts.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import warnings
from pathlib import Path

import torch
from torch.distributions import Gamma, NegativeBinomial, Uniform

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from diagnostics.c2st import c2st  # noqa: E402
from sbi_core import Problem, fit, simulate  # noqa: E402
from sbi_core.priors import independent  # noqa: E402

EXPOSURE = torch.tensor([1.0, 3.0, 10.0])
NB_TRIALS = 8


def poisson_gamma() -> tuple[Problem, callable]:
    prior = independent(Gamma(2.0, 0.4), Gamma(2.0, 0.4))

    def simulator(theta: torch.Tensor) -> torch.Tensor:
        return torch.poisson((theta[:, :, None] * EXPOSURE).reshape(theta.shape[0], -1))

    def reference(x: torch.Tensor, n: int) -> torch.Tensor:
        s = x.reshape(2, 3).sum(1)
        return Gamma(2.0 + s, 0.4 + EXPOSURE.sum()).sample((n,))

    return Problem(prior, simulator, x_shape=(6,), name="poisson_gamma"), reference


def _nb(theta: torch.Tensor) -> NegativeBinomial:
    mu, r = theta[..., 0:1], theta[..., 1:2]
    return NegativeBinomial(total_count=r, probs=mu / (mu + r))  # mean r p / (1 - p) = mu


def negbin() -> tuple[Problem, callable]:
    prior = independent(Gamma(2.0, 0.2), Uniform(0.5, 10.0))

    def simulator(theta: torch.Tensor) -> torch.Tensor:
        return _nb(theta).sample((NB_TRIALS,)).squeeze(-1).T

    def reference(x: torch.Tensor, n: int, cells: int = 400) -> torch.Tensor:
        mu_hi = float(x.mean()) * 4 + 20
        mus = torch.linspace(1e-3, mu_hi, cells + 1, dtype=torch.float64)
        rs = torch.linspace(0.5, 10.0, cells + 1, dtype=torch.float64)
        mc, rc = (mus[1:] + mus[:-1]) / 2, (rs[1:] + rs[:-1]) / 2
        grid = torch.stack(torch.meshgrid(mc, rc, indexing="ij"), -1).reshape(-1, 2)
        lp = Gamma(torch.tensor(2.0, dtype=torch.float64),
                   torch.tensor(0.2, dtype=torch.float64)).log_prob(grid[:, 0])
        lp = lp + _nb(grid).log_prob(x.double()[None, :]).sum(-1)
        idx = torch.multinomial(torch.softmax(lp, 0).float(), n, replacement=True)
        i, j = idx // cells, idx % cells
        u = torch.rand(n, 2, dtype=torch.float64)
        out = torch.stack([mus[i] + u[:, 0] * (mus[1] - mus[0]),
                           rs[j] + u[:, 1] * (rs[1] - rs[0])], -1)
        return out.float()

    return Problem(prior, simulator, x_shape=(NB_TRIALS,), name="negbin"), reference


PROBLEMS = {"poisson_gamma": poisson_gamma, "negbin": negbin}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", nargs="+", default=list(PROBLEMS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--sims", type=int, default=5000)
    ap.add_argument("--observations", type=int, default=5)
    ap.add_argument("--num-samples", type=int, default=5000)
    ap.add_argument("--variants", nargs="+", default=["none", "auto"])
    ap.add_argument("--out", help="append one JSON line per run")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    for name in args.problems:
        problem, reference = PROBLEMS[name]()
        ks = range(1, args.observations + 1)
        torch.manual_seed(12345)
        refs = [reference(problem.observation(k), args.num_samples) for k in ks]
        for seed in args.seeds:
            sims = simulate(problem, args.sims, seed=seed, progress=False)
            for variant in args.variants:
                cpu0, t0 = time.process_time(), time.perf_counter()
                post = fit(problem, sims, seed=seed, progress=False, x_transform=variant)
                cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
                scores = [float(c2st(post.sample((args.num_samples,), x=problem.observation(k),
                                                 seed=0), refs[i], seed=0))
                          for i, k in enumerate(ks)]
                row = {"problem": name, "seed": seed, "sims": args.sims, "variant": variant,
                       "x_map": post.estimator.config.get("x_map"),
                       "epochs": int(post.history["epochs"]),
                       "best_epoch": post.history.get("best_epoch"),
                       "train_cpu_s": round(cpu, 2), "train_wall_s": round(wall, 2),
                       "c2st": [round(s, 3) for s in scores],
                       "c2st_mean": round(sum(scores) / len(scores), 4),
                       "load1": round(os.getloadavg()[0], 2),
                       "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
                line = json.dumps(row)
                print(line, flush=True)
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(line + "\n")


if __name__ == "__main__":
    main()
