"""Optimally weighted MMD on g-and-k, and ABC / SMC-ABC against NPE by C2ST at equal budgets.

Part 1 (``--part mmd``) reproduces the g-and-k check of Bharti et al. (ICML 2023, Table 1):
at the *true* theta = (3, 1, 0.1, 0.1), so that the ideal MMD² is 0, estimate MMD² between
``m`` simulations and ``n = 10,000`` observed draws with the V-statistic, the U-statistic and
the optimally weighted (OW) estimator, ``--reps`` times (seeds 0..reps-1), with the
simulator's uniform inputs drawn iid (the paper's table) and by scrambled Sobol (RQMC).
Reported (x 10^3): mean, sd, and RMSE against the exact MMD² between the model and the
empirical observed sample (its own small value, computed by RQMC with many model draws, is
printed; the estimators all share the observed term).

Part 2 (``--part c2st``) fits, on two_moons and gaussian_linear (observations
``--observations``), rejection ABC (keeps the nearest 1% of ``--budget`` prior simulations),
SMC-ABC (population 0: ``--budget / 5`` prior simulations, ``--budget / 50`` particles, then
rounds up to ``--budget`` simulator calls in all) and NPE (``--budget`` simulations, ``preset=--npe-preset``), and scores
``--num-samples`` posterior samples against the reference posterior with C2ST (0.5 =
indistinguishable). Every simulator call counts towards the budget. The machine load is
printed (accuracy does not depend on it; wall times are for the loaded machine).

Full run:

    OMP_NUM_THREADS=1 python benchmarks/abc_owmmd.py --part all --reps 100 \\
        --observations 1 2 3 4 5 --budget 10000 --num-samples 10000

Reduced run (the one in benchmarks/RESULTS.md):

    OMP_NUM_THREADS=1 python benchmarks/abc_owmmd.py --part all --reps 100 \\
        --observations 1 2 --budget 10000 --num-samples 2000
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from diagnostics.c2st import c2st
from diagnostics.mmd import bq_weights, median_lengthscale, mmd2_weighted, observed_term
from sbi_core import fit, simulate
from sbi_core.noise import qmc_uniform
from simulators import get_problem
from simulators.g_and_k import TRUE_THETA, g_and_k_data, simulate_g_and_k


def _model_term(y: torch.Tensor, ell: float) -> float:
    """E k(X, X') - 2 E k(X, y) of the model at the true theta by RQMC: 8,192 scrambled Sobol
    inputs for the first term, 32,768 for the second (1-D: error far below the estimators')."""
    theta = torch.tensor(TRUE_THETA, dtype=torch.float64)
    xa = simulate_g_and_k(theta.expand(8192, 4), qmc_uniform(8192, 1, seed=12345))
    xb = simulate_g_and_k(theta.expand(32768, 4), qmc_uniform(32768, 1, seed=54321))
    exx = float(torch.exp(-torch.cdist(xa, xa).square() / (2 * ell**2)).mean())
    exy = sum(float(torch.exp(-torch.cdist(xb[i:i + 2048], y).square() / (2 * ell**2)).sum())
              for i in range(0, len(xb), 2048)) / (len(xb) * len(y))
    return exx - 2 * exy


def part_mmd(reps: int, ms: list[int], n: int = 10_000) -> list[dict]:
    y = g_and_k_data(TRUE_THETA, n, seed=10_000).double()
    ell = median_lengthscale(y)
    yy = observed_term(y, ell)
    yy_u = observed_term(y, ell, unbiased=True)
    truth = _model_term(y, ell) + yy
    print(f"g-and-k: n={n}, lengthscale {ell:.4f}, MMD²(P, Q_n) = {truth * 1e3:.4f} e-3 "
          "(the estimators' target)")
    rows = []
    for m in ms:
        theta = torch.tensor(TRUE_THETA, dtype=torch.float64).expand(m, 4)
        for inputs in ("iid", "sobol"):
            est = {"v": [], "u": [], "ow": []}
            t0 = time.perf_counter()
            for r in range(reps):
                u = (torch.rand(m, 1, generator=torch.Generator().manual_seed(r),
                                dtype=torch.float64) if inputs == "iid" else qmc_uniform(m, 1, r))
                x = simulate_g_and_k(theta, u)
                est["v"].append(float(mmd2_weighted(x, y, None, ell, yy)))
                est["u"].append(float(mmd2_weighted(x, y, None, ell, yy_u, unbiased=True)))
                est["ow"].append(float(mmd2_weighted(x, y, bq_weights(u), ell, yy)))
            for name, vals in est.items():
                v = torch.tensor(vals, dtype=torch.float64)
                target = truth if name != "u" else truth - yy + yy_u
                row = {"part": "mmd", "m": m, "inputs": inputs, "estimator": name,
                       "mean_e3": float(v.mean()) * 1e3, "sd_e3": float(v.std()) * 1e3,
                       "bias_e3": float(v.mean() - target) * 1e3,
                       "rmse_e3": float((v - target).square().mean().sqrt()) * 1e3,
                       "reps": reps, "seconds": time.perf_counter() - t0}
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def _fit(problem, method: str, x_o: torch.Tensor, k: int, budget: int, npe_preset: str):
    """One method at ``budget`` simulator calls in all (seed ``k``)."""
    if method == "abc":
        sims = simulate(problem, budget, seed=k, progress=False)
        return fit(problem, sims, method="abc", x_o=x_o, quantile=0.01, seed=k, detector=False)
    if method == "smc_abc":
        sims = simulate(problem, budget // 5, seed=k, progress=False)
        return fit(problem, sims, method="smc_abc", x_o=x_o, num_simulations=budget,
                   num_particles=max(2, budget // 50), seed=k, detector=False)
    sims = simulate(problem, budget, seed=k, progress=False)
    return fit(problem, sims, method="npe", preset=npe_preset, seed=k, detector=False,
               progress=False)


def part_c2st(observations: list[int], budget: int, num_samples: int,
              npe_preset: str) -> list[dict]:
    rows = []
    for task in ("two_moons", "gaussian_linear"):
        problem = get_problem(task)
        for k in observations:
            x_o = problem.observation(k)
            ref = problem.reference_posterior(x_o, num_samples, 0)
            for method in ("abc", "smc_abc", "npe"):
                t0 = time.perf_counter()
                post = _fit(problem, method, x_o, k, budget, npe_preset)
                seconds = time.perf_counter() - t0
                s = post.sample((num_samples,), x=x_o, seed=0)
                sims_used = post.history.get("num_simulations", budget)
                row = {"part": "c2st", "task": task, "observation": k, "method": method,
                       "budget": budget, "simulator_calls": int(sims_used),
                       "c2st": c2st(s, ref), "seconds": seconds,
                       "ess": post.history.get("ess")}
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", choices=["mmd", "c2st", "all"], default="all")
    p.add_argument("--reps", type=int, default=100)
    p.add_argument("--m", type=int, nargs="+", default=[64, 256])
    p.add_argument("--observations", type=int, nargs="+", default=[1, 2])
    p.add_argument("--budget", type=int, default=10_000)
    p.add_argument("--num-samples", type=int, default=2000)
    p.add_argument("--npe-preset", default="fast")
    p.add_argument("--out", help="write all rows as JSON lines here")
    a = p.parse_args()
    print(f"load before: {os.getloadavg()}", flush=True)
    rows = []
    if a.part in ("mmd", "all"):
        rows += part_mmd(a.reps, a.m)
    if a.part in ("c2st", "all"):
        rows += part_c2st(a.observations, a.budget, a.num_samples, a.npe_preset)
    print(f"load after: {os.getloadavg()}", flush=True)
    if a.out:
        with open(a.out, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)


if __name__ == "__main__":
    main()
