"""SNPE-C (APT) against amortized NPE at small simulation budgets on two_moons (issue 17).

For each observation, seed and total budget: amortized NPE (``fit`` on the whole budget of
prior simulations, default preset) and ``run_sequential(method="snpe_c")`` variants given
as ``NAME=JSON`` (keyword arguments of ``run_sequential``; ``rounds`` and
``sims_per_round`` are derived from the budget when ``rounds`` is given without
``sims_per_round``), optionally sbi 0.27's SNPE-C (``--sbi-python``; run in a subprocess by
``benchmarks/sequential_vs_sbi.py``'s worker, never imported here). C2ST
(``diagnostics.c2st``) of ``--num-samples`` posterior samples at x_o against the task's
reference posterior. One JSON row per run as it finishes, then the means and the load.

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/snpe_c_small_budget.py \\
        --budgets 1000 --observations 1 2 3 --seeds 0 1 \\
        --variant 'proposal_5x={"rounds": 5}' --variant 'batch_5x={"rounds": 5, "apt_atoms": "batch"}'
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="two_moons")
    ap.add_argument("--budgets", type=int, nargs="+", default=[1000])
    ap.add_argument("--observations", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME=JSON run_sequential keywords (repeatable)")
    ap.add_argument("--no-npe", action="store_true", help="skip the amortized NPE baseline")
    ap.add_argument("--npe-variant", action="append", default=[],
                    help="NAME=JSON fit options of a further amortized NPE baseline")
    ap.add_argument("--sbi-python", help="python of the sbi 0.27 venv: also run sbi's SNPE-C")
    ap.add_argument("--sbi-rounds", type=int, default=5)
    ap.add_argument("--num-samples", type=int, default=2000)
    ap.add_argument("--json", help="append every row to this JSON-lines file")
    args = ap.parse_args()

    import torch

    import simulators
    from diagnostics.c2st import c2st
    from sbi_core import fit, simulate
    from sbi_core.sequential import run_sequential

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="Reached max_epochs")
    variants, npe_variants = {}, {}
    for v in args.variant:
        name, _, kw = v.partition("=")
        variants[name] = json.loads(kw or "{}")
    for v in args.npe_variant:
        name, _, kw = v.partition("=")
        npe_variants[name] = json.loads(kw or "{}")
    problem = simulators.get_problem(args.task)
    rows = []
    print(f"load average before: {os.getloadavg()}", flush=True)
    for k in args.observations:
        x_o = problem.observation(k)
        ref = problem.reference_posterior(x_o, args.num_samples, seed=k)
        for seed in args.seeds:
            for budget in args.budgets:
                runs = ([] if args.no_npe else [("npe", {})]) + \
                    [(n, {"npe": kw}) for n, kw in npe_variants.items()] + list(variants.items())
                if args.sbi_python:
                    runs.append(("sbi_snpe_c", None))
                for name, kw in runs:
                    t0 = time.perf_counter()
                    if name == "npe" or "npe" in kw:
                        post = fit(problem, simulate(problem, budget, seed=seed, progress=False),
                                   method="npe", seed=seed, progress=False, **kw.get("npe", {}))
                        samples = post.sample((args.num_samples,), x=x_o, seed=seed,
                                              max_seconds=None)
                        seconds = time.perf_counter() - t0
                    elif name == "sbi_snpe_c":
                        from sequential_vs_sbi import run_sbi

                        res = run_sbi(args.sbi_python, args.task, k, seed, budget,
                                      args.sbi_rounds, "sbi_snpe_c", args.num_samples)
                        if "error" in res:
                            print(json.dumps({"method": name, "error": res["error"]}))
                            continue
                        samples, seconds = torch.as_tensor(res["samples"]), res["seconds"]
                    else:
                        kw = dict(kw)
                        kw.setdefault("sims_per_round", budget // kw.get("rounds", 5))
                        post, _ = run_sequential(problem, x_o, method="snpe_c", seed=seed,
                                                 progress=False, **kw)
                        seconds = time.perf_counter() - t0
                        samples = post.sample((args.num_samples,), x=x_o, seed=seed,
                                              max_seconds=None)
                    row = {"task": args.task, "observation": k, "seed": seed, "budget": budget,
                           "method": name, "c2st": round(c2st(samples, ref, seed=0), 3),
                           "seconds": round(seconds, 1), "load": round(os.getloadavg()[0], 2)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    if args.json:
                        with open(args.json, "a") as fh:
                            fh.write(json.dumps(row) + "\n")
    print(f"load average after: {os.getloadavg()}")
    print(f"{'budget':>6s} {'method':16s} {'C2ST mean':>9s} {'seconds':>8s}  runs")
    for budget in args.budgets:
        for name in dict.fromkeys(r["method"] for r in rows):
            g = [r for r in rows if r["budget"] == budget and r["method"] == name]
            if g:
                print(f"{budget:6d} {name:16s} {np.mean([r['c2st'] for r in g]):9.3f} "
                      f"{np.mean([r['seconds'] for r in g]):8.1f}  {len(g)}")


if __name__ == "__main__":
    main()
