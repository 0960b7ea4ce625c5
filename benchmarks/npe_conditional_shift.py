"""NPE with and without the conditional affine pre-standardization of theta, same data.

For each task and seed, sbi-core's NPE trains on the *same* simulations once per variant of
``conditional_shift`` (``none``: the flow sees the prior-standardized theta; ``linear`` /
``linear_full``: theta shifted by a ridge regression on x and scaled by the residual sd /
Cholesky factor, estimators/conditional_shift.py), each in a fresh process through
compare_sbi.py's worker (one torch thread; the order of the variants rotates per run).
Printed per run as it finishes (JSON line): epochs, train CPU and wall seconds, C2ST per
observation against the task's reference posterior (same classifier for all), the load.
``loop_seconds`` is the training loop alone (``train_seconds`` adds building the estimator,
the shift's fit included, and the misspecification detector).

Usage:

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/npe_conditional_shift.py \\
        --tasks sir two_moons gaussian_mixture slcp --seeds 0 --variants none linear_full
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from compare_sbi import run_workers, save_task_data  # noqa: E402

from diagnostics.c2st import c2st  # noqa: E402
from sbi_core import simulate  # noqa: E402

VARIANTS = {"none": None, "linear": "linear", "linear_full": "linear_full"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=["sir", "two_moons", "gaussian_mixture", "slcp"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--sims", type=int, default=10_000)
    ap.add_argument("--observations", type=int, default=10)
    ap.add_argument("--num-samples", type=int, default=10_000)
    ap.add_argument("--variants", nargs="+", default=["none", "linear_full"],
                    choices=sorted(VARIANTS))
    ap.add_argument("--ours-options", default="{}", help="extra fit options for every variant")
    ap.add_argument("--json", help="rows so far, rewritten after every run")
    args = ap.parse_args()
    import simulators

    rows, turn = [], 0
    for task in args.tasks:
        for seed in args.seeds:
            problem = simulators.get_problem(task)
            theta, x = simulate(problem, args.sims, seed=seed, progress=False).training_data()
            ks = list(range(1, args.observations + 1))
            xo = torch.stack([problem.observation(k) for k in ks])
            refs = [problem.reference_posterior(problem.observation(k), args.num_samples, k)
                    for k in ks]
            order = args.variants[turn % len(args.variants):] + \
                args.variants[:turn % len(args.variants)]
            turn += 1
            with tempfile.TemporaryDirectory() as tmp:
                inp = Path(tmp) / "data.npz"
                save_task_data(inp, problem, theta, x, xo, args.num_samples)
                for variant in order:
                    opts = {**json.loads(args.ours_options),
                            "conditional_shift": VARIANTS[variant]}
                    load = os.getloadavg()[0]
                    r = run_workers([("sbi_core", sys.executable)], inp, "auto", seed, 1, opts,
                                    False)["sbi_core"]
                    scores = [c2st(r["samples"][i] if isinstance(r["samples"], torch.Tensor)
                                   else torch.from_numpy(r["samples"][i]), refs[i], seed=0)
                              for i in range(len(ks))]
                    row = {"task": task, "seed": seed, "variant": variant,
                           "epochs": int(r["epochs"]),
                           "train_cpu_seconds": round(float(r["train_cpu_seconds"]), 2),
                           "train_seconds": round(float(r["train_seconds"]), 2),
                           "loop_seconds": round(float(r["loop_seconds"]), 2),
                           "c2st_mean": round(float(np.mean(scores)), 3),
                           "c2st": [round(float(s), 3) for s in scores],
                           "load1": [round(load, 2), round(os.getloadavg()[0], 2)]}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    if args.json:
                        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
