"""PFN against NPE: accuracy (C2ST to the reference posterior), training time, and
inference latency per observation set.

Settings:

- ``two_moons`` with one observation: PFN (``n_max=1``) and NPE (MAF) on the same ``N``
  simulations; C2ST on observations 1..``--num-obs`` against the exact reference.
- 2-D ``linear_gaussian`` with ``n`` iid observations, ``n`` in 1, 10, 50: ONE PFN trained with
  ``n_max=50`` on ``N`` sets (``N * 50`` simulations) answers all ``n``; NPE is trained once per
  ``n`` on ``N`` sets of exactly ``n`` observations (``x`` of shape ``(n, 2)``) through the
  DeepSet embedding ``{"type": "set"}`` (``N * n`` simulations each). NaN-padded variable-size
  sets are not used because the shared training loop refuses non-finite ``x``.
  C2ST against the analytic posterior for ``--num-obs`` observation sets per ``n``.

Latency: median wall time to draw 1,000 posterior samples for one observation set (after a
warm-up call). Both methods get the same ``--max-seconds`` training cap and seed.

Usage::

    PYTHONPATH=. python benchmarks/pfn_vs_npe.py [--num-sims 10000] [--max-seconds 300]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Any

import torch

from diagnostics.c2st import c2st
from sbi_core import fit, simulate
from sbi_core.problem import Problem
from simulators import get_problem
from simulators.linear_gaussian import linear_gaussian, linear_gaussian_posterior

PFN_OPTIONS: dict[str, Any] = {"d_model": 64, "num_layers": 4, "num_heads": 4,
                               "ff_features": 128, "num_buckets": 100}
#: ``--pfn-small``: the size used by the tests (trains ~4x faster per step on a CPU).
PFN_SMALL: dict[str, Any] = {"d_model": 32, "num_layers": 2, "num_heads": 2, "ff_features": 64,
                             "num_buckets": 100, "learning_rate": 2e-3}


def latency(posterior: Any, x: torch.Tensor, repeats: int = 5) -> float:
    """Median seconds to draw 1,000 samples for one observation (set)."""
    posterior.sample((1000,), x, seed=0)
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        posterior.sample((1000,), x, seed=r)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _train(problem: Problem, sims: Any, method: str, seed: int, max_seconds: float,
           **options: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    post = fit(problem, sims, method=method, seed=seed, max_seconds=max_seconds,
               progress=False, **options)
    return post, time.perf_counter() - t0


def two_moons(args: argparse.Namespace) -> list[dict[str, Any]]:
    problem = get_problem("two_moons")
    sims = simulate(problem, args.num_sims, seed=args.seed, progress=False)
    rows = []
    for method, opts in (("pfn", {"n_max": 1, **PFN_OPTIONS}), ("npe", {"flow": "maf"})):
        post, seconds = _train(problem, sims, method, args.seed, args.max_seconds, **opts)
        scores = []
        for k in range(1, args.num_obs + 1):
            x_o = problem.observation(k)
            ref = problem.reference_posterior(x_o, 2000, seed=k)
            scores.append(c2st(post.sample((2000,), x_o, seed=k), ref, seed=0))
        rows.append({"task": "two_moons", "n": 1, "method": method,
                     "simulations": post.history.get("num_simulations", args.num_sims),
                     "c2st": round(statistics.mean(scores), 3),
                     "train_s": round(seconds, 1), "epochs": post.history["epochs"],
                     "latency_ms": round(1000 * latency(post, problem.observation(1)), 1)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _observation_sets(n: int, count: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed + n)
    thetas = torch.randn(count, 2, generator=gen)
    return [t + 0.5 * torch.randn(n, 2, generator=gen) for t in thetas]


def _c2st_lg(post: Any, sets: list[torch.Tensor]) -> float:
    scores = []
    for i, x_o in enumerate(sets):
        with torch.random.fork_rng():
            torch.manual_seed(i)
            ref = linear_gaussian_posterior(x_o).sample((2000,))
        scores.append(c2st(post.sample((2000,), x_o, seed=i), ref, seed=0))
    return statistics.mean(scores)


def _fixed_n_problem(n: int) -> Problem:
    base = linear_gaussian(2)

    def simulator(theta: torch.Tensor) -> torch.Tensor:
        return theta[:, None, :] + 0.5 * torch.randn(theta.shape[0], n, 2)

    return Problem(base.prior, simulator, name=f"linear_gaussian_iid{n}", x_shape=(n, 2))


def linear_gaussian_iid(args: argparse.Namespace) -> list[dict[str, Any]]:
    problem = linear_gaussian(2)
    sims = simulate(problem, args.num_sims, seed=args.seed, progress=False)
    pfn, pfn_seconds = _train(problem, sims, "pfn", args.seed, args.max_seconds, n_max=50,
                              **PFN_OPTIONS)
    rows = []
    for n in (1, 10, 50):
        sets = _observation_sets(n, args.num_obs, args.seed)
        rows.append({"task": "linear_gaussian_2d", "n": n, "method": "pfn (one model, n_max=50)",
                     "simulations": pfn.history["num_simulations"],
                     "c2st": round(_c2st_lg(pfn, sets), 3), "train_s": round(pfn_seconds, 1),
                     "epochs": pfn.history["epochs"],
                     "latency_ms": round(1000 * latency(pfn, sets[0]), 1)})
        print(json.dumps(rows[-1]), flush=True)
        fixed = _fixed_n_problem(n)
        fixed_sims = simulate(fixed, args.num_sims, seed=args.seed, progress=False)
        npe, seconds = _train(fixed, fixed_sims, "npe", args.seed, args.max_seconds,
                              flow="maf", embedding={"type": "set"})
        rows.append({"task": "linear_gaussian_2d", "n": n, "method": f"npe (set embedding, n={n})",
                     "simulations": args.num_sims * n, "c2st": round(_c2st_lg(npe, sets), 3),
                     "train_s": round(seconds, 1), "epochs": npe.history["epochs"],
                     "latency_ms": round(1000 * latency(npe, sets[0]), 1)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description="PFN vs NPE on two_moons and linear Gaussian "
                                                 "sets")
    parser.add_argument("--num-sims", type=int, default=10_000,
                        help="simulated parameters (training sets) per model")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="training cap per model")
    parser.add_argument("--num-obs", type=int, default=3, help="observations (sets) per setting")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=["two_moons", "linear_gaussian"])
    parser.add_argument("--pfn-small", action="store_true",
                        help="small PFN (d_model 32, 2 layers, lr 2e-3) instead of the default")
    args = parser.parse_args()
    if args.pfn_small:
        PFN_OPTIONS.clear()
        PFN_OPTIONS.update(PFN_SMALL)
    print(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                      "machine": f"{platform.node()} ({platform.processor() or platform.machine()})",
                      "torch_threads": torch.get_num_threads(), **vars(args)}), flush=True)
    rows = []
    if args.only in (None, "two_moons"):
        rows += two_moons(args)
    if args.only in (None, "linear_gaussian"):
        rows += linear_gaussian_iid(args)
    print("\n| task | n | method | simulations | C2ST | train s | epochs | latency ms / 1000 "
          "samples |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['task']} | {r['n']} | {r['method']} | {r['simulations']} | {r['c2st']} | "
              f"{r['train_s']} | {r['epochs']} | {r['latency_ms']} |")


if __name__ == "__main__":
    main()
