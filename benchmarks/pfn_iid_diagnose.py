"""Why is the PFN worse on sets of iid observations? An ablation on 10-D ``gaussian_linear``.

Every row trains ONE PFN (``n_max=10``) on the same ``--sims`` simulated parameters (each
gets a set of ``n_max`` iid observations, ``sims * n_max`` simulations) and scores it on
``--num-obs`` observation sets of size ``n = 1`` and ``n = 10`` against the analytic
posterior ``N(n x_bar / (n + 1), 0.1 / (n + 1) I)``:

- ``c2st``: mean C2ST (2,000 vs 2,000 samples) over the observation sets;
- ``|dmu|``: mean absolute error of the posterior mean, in posterior standard deviations;
- ``sd ratio``: mean of (model std / true std) over dimensions and sets.

These two split a C2ST into "wrong location" and "wrong width". The ``oracle-bars`` row needs
no training: the analytic posterior discretized onto the model's own buckets (bucket masses
from the Gaussian CDF), so it measures what the bar resolution alone costs.

Variants (``--variants``, comma-separated; each a set of ``fit`` options, see ``VARIANTS``).

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/pfn_iid_diagnose.py \
        --sims 20000 --seeds 0,1 --num-obs 5 --variants baseline,new
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from types import SimpleNamespace
from typing import Any

import torch

from diagnostics.c2st import c2st
from estimators.pfn_method import build_pfn
from sbi_core import fit, simulate
from simulators.gaussian_linear import gaussian_linear, gaussian_linear_posterior

#: Ablation rows: fit options on top of ``n_max=10``. ``old`` is the estimator before
#: issue 21 (pure prior-quantile borders, always the first ``n`` observations of a set);
#: ``new`` the current defaults; ``borders``/``subsets`` change one cause each; ``prev`` is
#: the defaults before the weight average and the ``n`` path (``no-ema``: without the
#: average only).
VARIANTS: dict[str, dict[str, Any]] = {
    "old": {"border_uniform_share": 0.0, "random_subsets": False, "ema_decay": None,
            "n_tilt": False},
    "borders": {"border_uniform_share": 0.5, "random_subsets": False, "ema_decay": None,
                "n_tilt": False},
    "subsets": {"border_uniform_share": 0.0, "random_subsets": True, "ema_decay": None,
                "n_tilt": False},
    "new": {},
    "no-ntilt": {"n_tilt": False},
    "no-ema": {"ema_decay": None},
    "prev": {"ema_decay": None, "n_tilt": False},
}
SMALL: dict[str, Any] = {"d_model": 32, "num_layers": 2, "num_heads": 2, "ff_features": 64,
                         "learning_rate": 2e-3}


def observation_sets(dim: int, n: int, count: int, seed: int) -> list[torch.Tensor]:
    """``count`` sets ``(n, dim)`` drawn from the joint (theta from the prior)."""
    gen = torch.Generator().manual_seed(1000 + seed)
    thetas = math.sqrt(0.1) * torch.randn(count, dim, generator=gen)
    return [t + math.sqrt(0.1) * torch.randn(n, dim, generator=gen) for t in thetas]


def score(samples: torch.Tensor, x_o: torch.Tensor, seed: int) -> dict[str, float]:
    post = gaussian_linear_posterior(x_o)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        ref = post.sample((2000,)).float()
    sd = post.covariance_matrix.diagonal().sqrt().float()
    return {"c2st": c2st(samples, ref, seed=0),
            "dmu": float(((samples.mean(0) - post.mean.float()) / sd).abs().mean()),
            "sd": float((samples.std(0) / sd).mean())}


def oracle_bars(posterior: Any, x_o: torch.Tensor, seed: int) -> torch.Tensor:
    """Analytic posterior discretized onto the estimator's buckets (no training error)."""
    bar = posterior.estimator.bar
    post = gaussian_linear_posterior(x_o)
    mu, sd = post.mean.float()[:, None], post.covariance_matrix.diagonal().sqrt().float()[:, None]
    normal = torch.distributions.Normal(mu, sd)
    cdf = normal.cdf(bar.borders)
    cdf[:, 0] = torch.where(bar.left_tail, torch.zeros_like(cdf[:, 0]), cdf[:, 0])
    cdf[:, -1] = torch.where(bar.right_tail, torch.ones_like(cdf[:, -1]), cdf[:, -1])
    mass = cdf.diff(dim=-1).clamp(min=1e-30)
    gen = torch.Generator().manual_seed(seed)
    logits = mass.log().expand(2000, -1, -1)
    return bar.icdf(logits, torch.rand(2000, mass.shape[0], generator=gen))


def evaluate(posterior: Any, dim: int, num_obs: int, seed: int,
             oracle: bool = False) -> dict[int, dict[str, float]]:
    out = {}
    for n in (1, 10):
        rows = []
        for i, x_o in enumerate(observation_sets(dim, n, num_obs, seed)):
            s = (oracle_bars(posterior, x_o, i) if oracle
                 else posterior.sample((2000,), x_o, seed=i))
            rows.append(score(s, x_o, i))
        out[n] = {k: statistics.mean(r[k] for r in rows) for k in rows[0]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sims", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=10)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--num-obs", type=int, default=5)
    ap.add_argument("--max-seconds", type=float, default=None, help="training cap per model")
    ap.add_argument("--max-epochs", type=int, default=None)
    ap.add_argument("--variants", default="old,new")
    ap.add_argument("--oracle", action="store_true", help="add an oracle-bars row per model")
    ap.add_argument("--oracle-only", action="store_true",
                    help="only the oracle rows (no training): old and new borders")
    ap.add_argument("--small", action="store_true",
                    help="small PFN (d_model 32, 2 layers, lr 2e-3; ~4x cheaper per step)")
    args = ap.parse_args()
    print(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                      "load": os.getloadavg(), **vars(args)}), flush=True)
    problem = gaussian_linear(args.dim)
    seeds = [int(s) for s in args.seeds.split(",")]
    caps = {k: v for k, v in (("max_seconds", args.max_seconds),
                              ("max_epochs", args.max_epochs)) if v is not None}
    table = []
    if args.oracle_only:
        theta = problem.prior.sample((1000,))
        for name in args.variants.split(","):
            est = build_pfn(theta, problem.simulator(theta), problem.prior,
                            **{k: v for k, v in VARIANTS[name].items() if k != "random_subsets"})
            res = evaluate(SimpleNamespace(estimator=est), args.dim, args.num_obs, 0, oracle=True)
            row = {"variant": f"oracle-bars ({name} borders)", "seed": 0, "train_s": 0,
                   "epochs": 0, "load": round(os.getloadavg()[0], 1),
                   **{f"{k}@{n}": round(v, 3) for n, r in res.items() for k, v in r.items()}}
            print(json.dumps(row), flush=True)
            table.append(row)
    for name in [] if args.oracle_only else args.variants.split(","):
        for seed in seeds:
            sims = simulate(problem, args.sims, seed=seed, progress=False)
            t0 = time.perf_counter()
            post = fit(problem, sims, method="pfn", seed=seed, n_max=10, progress=False,
                       **{**caps, **(SMALL if args.small else {}), **VARIANTS[name]})
            secs = time.perf_counter() - t0
            res = evaluate(post, args.dim, args.num_obs, seed)
            row = {"variant": name, "seed": seed, "train_s": round(secs),
                   "epochs": post.history["epochs"], "load": round(os.getloadavg()[0], 1),
                   **{f"{k}@{n}": round(v, 3) for n, r in res.items() for k, v in r.items()}}
            print(json.dumps(row), flush=True)
            table.append(row)
            if args.oracle:
                res = evaluate(post, args.dim, args.num_obs, seed, oracle=True)
                row = {"variant": f"oracle-bars ({name} borders)", "seed": seed, "train_s": 0, "epochs": 0,
                       "load": round(os.getloadavg()[0], 1),
                       **{f"{k}@{n}": round(v, 3) for n, r in res.items() for k, v in r.items()}}
                print(json.dumps(row), flush=True)
                table.append(row)
    print("\n| variant | seed | C2ST n=1 | C2ST n=10 | abs dmu n=1 | abs dmu n=10 | sd ratio n=1 "
          "| sd ratio n=10 | train s | epochs | load |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for r in table:
        print(f"| {r['variant']} | {r['seed']} | {r['c2st@1']} | {r['c2st@10']} | {r['dmu@1']} | "
              f"{r['dmu@10']} | {r['sd@1']} | {r['sd@10']} | {r['train_s']} | {r['epochs']} | "
              f"{r['load']} |")


if __name__ == "__main__":
    main()
