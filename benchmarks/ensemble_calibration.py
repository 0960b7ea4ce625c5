"""Ensembles of NPE estimators vs a single NPE on the same simulations (issue 18, item 2).

For each task: one simulation set; a single NPE (``fit(..., seed=0)``) and an ensemble of
``K`` members (``fit(..., ensemble=K, seed=0)``), both with the default (accurate) preset.
Reported per posterior — the single NPE, the ensemble, and each ensemble member used alone
(the "average member" of Hermans et al. 2022):

- C2ST against the task's reference posterior on observations 1..``--num-obs``;
- calibration on ``--num-test`` held-out prior draws: HPD expected coverage (ECP at the
  0.9 level, area to curve ATC: < 0 over-confident, > 0 conservative), TARP (ATC, max
  |ECP - alpha|) and the SBC rank spread (std of normalized ranks, 0.289 ideal: larger =
  too narrow, smaller = too wide);
- training wall time (the ensemble / single ratio, measured in the same run).

A second part times one training step of the batched ensemble (one vmapped pass over the
stacked members) against a Python loop over the same members, interleaved, per flow.

Usage (reduced scale on a shared 2-core machine)::

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/ensemble_calibration.py \\
        --tasks two_moons slcp --num-sims 5000 --members 5 --num-obs 5 --num-test 200
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings

import torch

from diagnostics.c2st import c2st
from diagnostics.coverage import run_expected_coverage
from diagnostics.sbc import run_sbc
from diagnostics.tarp import run_tarp
from estimators.ensemble import build_ensemble
from sbi_core import fit, simulate
from sbi_core.posterior import DirectPosterior
from simulators import get_problem


def calibration(post, theta, xs, num_samples: int, seed: int) -> dict:
    cov = run_expected_coverage(post, theta, xs, num_samples=num_samples, seed=seed,
                                progress=False)
    i90 = int(torch.argmin((cov.alpha - 0.9).abs()))
    tarp = run_tarp(post, theta, xs, num_samples=num_samples, seed=seed, progress=False)
    sbc = run_sbc(post, theta, xs, num_samples=num_samples, seed=seed, progress=False)
    return {"ecp90": float(cov.ecp[i90]), "hpd_atc": cov.atc, "tarp_atc": tarp.atc,
            "tarp_maxdev": tarp.max_deviation,
            "sbc_rank_std": float(torch.tensor(sbc.rank_std).mean())}


def accuracy(post, problem, num_obs: int, num_samples: int) -> list[float]:
    out = []
    for k in range(1, num_obs + 1):
        x_o = problem.observation(k)
        ref = problem.reference_posterior(x_o, 10_000, k)[:num_samples]
        out.append(c2st(post.sample((num_samples,), x=x_o, seed=k), ref, seed=0))
    return out


def run_task(name: str, args) -> dict:
    problem = get_problem(name)
    sims = simulate(problem, args.num_sims, seed=args.seed, progress=False)
    opts = {"seed": args.seed, "progress": False, "detector": False}
    t0 = time.perf_counter()
    single = fit(problem, sims, **opts)
    t_single = time.perf_counter() - t0
    t0 = time.perf_counter()
    ens = fit(problem, sims, ensemble=args.members, **opts)
    t_ens = time.perf_counter() - t0
    members = [DirectPosterior(m, problem.prior, single.problem_spec) for m in
               ens.estimator.members]
    theta = problem.prior.sample((args.num_test,))
    xs = problem.simulator(theta)
    ok = torch.isfinite(xs.reshape(len(xs), -1)).all(1)
    theta, xs = theta[ok], xs[ok]
    res = {"task": name, "num_sims": args.num_sims, "members": args.members,
           "train_seconds": {"single": t_single, "ensemble": t_ens, "ratio": t_ens / t_single},
           "epochs": {"single": single.history["epochs"], "ensemble": ens.history["epochs"]}}
    print(json.dumps({"task": name, "train_seconds": res["train_seconds"],
                      "epochs": res["epochs"], "load": os.getloadavg()}), flush=True)
    for label, post in [("single", single), ("ensemble", ens)] + \
            [(f"member{j}", m) for j, m in enumerate(members)]:
        c = accuracy(post, problem, args.num_obs, args.num_samples)
        res[label] = {"c2st": c, "c2st_mean": sum(c) / len(c),
                      **calibration(post, theta, xs, args.num_calib_samples, args.seed)}
        print(json.dumps({"task": name, "posterior": label, **res[label]}), flush=True)
    keys = [k for k in res["member0"] if k != "c2st"]
    res["average_member"] = {k: sum(res[f"member{j}"][k] for j in range(args.members))
                             / args.members for k in keys}
    return res


def step_timing(args) -> list[dict]:
    """One optimizer step: batched ensemble (vmap) vs a loop over the same members."""
    problem = get_problem("two_moons")
    sims = simulate(problem, 2000, seed=0, progress=False)
    theta, x = sims.training_data()
    th, xx = theta[:args.batch], x[:args.batch]
    rows = []
    for flow in ("fmaf", "maf", "nsf"):
        torch.manual_seed(0)
        est = build_ensemble(theta, x, problem.prior, ensemble=args.members, flow=flow)
        opt = torch.optim.Adam(est.parameters(), 1e-3)

        def batched(est=est):
            return est.loss(th, xx)

        def loop(est=est):
            return -torch.stack([m.log_prob(th, xx) for m in est.members]).mean(0)

        def single(est=est):
            return -est.members[0].log_prob(th, xx)

        times = {"batched": 0.0, "loop": 0.0, "single": 0.0}
        fns = {"batched": batched, "loop": loop, "single": single}
        for rep in range(args.steps + 2):
            for key, fn in fns.items():  # interleaved
                t0 = time.perf_counter()
                loss = fn().mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                if rep >= 2:
                    times[key] += time.perf_counter() - t0
        ms = {k: 1e3 * v / args.steps for k, v in times.items()}
        rows.append({"flow": flow, "vmap": est._vmap_ok, **{f"{k}_ms": round(v, 2)
                                                            for k, v in ms.items()},
                     "loop_over_batched": round(ms["loop"] / ms["batched"], 2)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="+", default=["two_moons", "slcp"])
    p.add_argument("--num-sims", type=int, default=5000)
    p.add_argument("--members", type=int, default=5)
    p.add_argument("--num-obs", type=int, default=5)
    p.add_argument("--num-samples", type=int, default=2000, help="C2ST samples")
    p.add_argument("--num-test", type=int, default=200, help="calibration test pairs")
    p.add_argument("--num-calib-samples", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--skip-timing", action="store_true")
    p.add_argument("--out", default=None, help="write all results as JSON here")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    warnings.simplefilter("ignore")
    out = {"load_before": os.getloadavg(), "args": vars(args)}
    if not args.skip_timing:
        out["step_timing"] = step_timing(args)
    out["tasks"] = [run_task(t, args) for t in args.tasks]
    out["load_after"] = os.getloadavg()
    print("\n| task | posterior | mean C2ST | ECP@0.9 | HPD ATC | TARP ATC | TARP max dev |"
          " SBC rank std |")
    print("|---|---|---|---|---|---|---|---|")
    for r in out["tasks"]:
        for label in ("single", "ensemble", "average_member"):
            v = r[label]
            print(f"| {r['task']} | {label} | {v['c2st_mean']:.3f} | {v['ecp90']:.3f} | "
                  f"{v['hpd_atc']:+.3f} | {v['tarp_atc']:+.3f} | {v['tarp_maxdev']:.3f} | "
                  f"{v['sbc_rank_std']:.3f} |")
        ts = r["train_seconds"]
        print(f"| {r['task']} | train s (single / ensemble / ratio) | {ts['single']:.0f} / "
              f"{ts['ensemble']:.0f} / {ts['ratio']:.1f}x | epochs {r['epochs']} | | | | |")
    print(f"load average before {out['load_before']}, after {out['load_after']}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
