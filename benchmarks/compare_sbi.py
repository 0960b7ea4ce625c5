"""NPE side by side: sbi-core against sbi 0.27 on the same simulations and machine.

For each task, both libraries train on the *same* theta and x tensors (simulated once by
sbi-core) in separate processes, alternating which goes first, then draw 10,000 posterior
samples for observations 1..K; C2ST against the task's reference posterior is computed
here, with the same classifier for both. Printed per task: train seconds, epochs, C2ST per
observation, sample seconds, peak memory, and the ratios sbi / sbi-core.

Usage (see benchmarks/README.md for the sbi environment):

    python benchmarks/compare_sbi.py --sbi-python /work/sbi-venv/bin/python \
        --tasks two_moons slcp gaussian_linear gaussian_mixture --sims 10000 --observations 5
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from diagnostics.c2st import c2st  # noqa: E402
from sbi_core import simulate  # noqa: E402
from sbi_core.priors import prior_spec  # noqa: E402


def run_worker(python: str, lib: str, inp: Path, flow: str, seed: int) -> dict:
    out = inp.with_name(f"{lib}_{flow}_out.npz")
    env_path = str(ROOT)
    cmd = [python, str(HERE / "_npe_worker.py"), lib, str(inp), str(out), flow, str(seed)]
    import os

    env = {**os.environ, "PYTHONPATH": env_path if lib == "sbi_core" else ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{lib} worker failed:\n{proc.stderr[-4000:]}")
    res = np.load(out)
    return {k: res[k] for k in res.files}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sbi-python", required=True, help="python of the venv with sbi==0.27.0")
    ap.add_argument("--tasks", nargs="+", default=["two_moons", "slcp", "gaussian_linear",
                                                   "gaussian_mixture"])
    ap.add_argument("--sims", type=int, default=10_000)
    ap.add_argument("--observations", type=int, default=5)
    ap.add_argument("--num-samples", type=int, default=10_000)
    ap.add_argument("--flows", nargs="+", default=["maf"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write all results to this JSON file")
    args = ap.parse_args()

    import simulators

    rows = []
    order = 0
    for task in args.tasks:
        problem = simulators.get_problem(task)
        sims = simulate(problem, args.sims, seed=args.seed, progress=False)
        theta, x = sims.training_data()
        ks = list(range(1, args.observations + 1))
        xo = torch.stack([problem.observation(k) for k in ks])
        refs = [problem.reference_posterior(problem.observation(k), args.num_samples, k)
                for k in ks]
        with tempfile.TemporaryDirectory() as tmp:
            inp = Path(tmp) / "data.npz"
            np.savez(inp, theta=theta.numpy(), x=x.numpy(), xo=xo.numpy(),
                     prior_spec=json.dumps(prior_spec(problem.prior)),
                     num_samples=args.num_samples)
            for flow in args.flows:
                libs = ["sbi", "sbi_core"] if order % 2 == 0 else ["sbi_core", "sbi"]
                order += 1
                res = {}
                for lib in libs:
                    python = args.sbi_python if lib == "sbi" else sys.executable
                    res[lib] = run_worker(python, lib, inp, flow, args.seed)
                for lib in ("sbi", "sbi_core"):
                    samples = torch.from_numpy(res[lib]["samples"])
                    scores = [c2st(samples[i], refs[i], seed=0) for i in range(len(ks))]
                    res[lib]["c2st"] = scores
                row = {"task": task, "flow": flow, "first": libs[0]}
                for lib in ("sbi", "sbi_core"):
                    r = res[lib]
                    row[lib] = {
                        "train_seconds": round(float(r["train_seconds"]), 2),
                        "epochs": int(r["epochs"]),
                        "c2st": [round(s, 3) for s in r["c2st"]],
                        "c2st_mean": round(float(np.mean(r["c2st"])), 3),
                        "sample_seconds": round(float(np.mean(r["sample_seconds"])), 3),
                        "peak_mb": round(float(r["peak_mb"]), 1),
                    }
                row["train_speedup"] = round(row["sbi"]["train_seconds"] /
                                             row["sbi_core"]["train_seconds"], 2)
                row["sample_speedup"] = round(row["sbi"]["sample_seconds"] /
                                              max(row["sbi_core"]["sample_seconds"], 1e-9), 2)
                row["c2st_diff"] = round(row["sbi_core"]["c2st_mean"] - row["sbi"]["c2st_mean"], 3)
                rows.append(row)
                print(json.dumps(row), flush=True)

    print()
    header = (f"{'task':18s} {'flow':4s} {'lib':9s} {'train s':>8s} {'epochs':>6s} "
              f"{'c2st mean':>9s} {'sample s':>8s} {'peak MB':>8s}  c2st per observation")
    print(header)
    for row in rows:
        for lib in ("sbi", "sbi_core"):
            r = row[lib]
            print(f"{row['task']:18s} {row['flow']:4s} {lib:9s} {r['train_seconds']:8.1f} "
                  f"{r['epochs']:6d} {r['c2st_mean']:9.3f} {r['sample_seconds']:8.3f} "
                  f"{r['peak_mb']:8.0f}  {r['c2st']}")
        print(f"{'':18s} {'':4s} {'ratio':9s} train x{row['train_speedup']}, sample "
              f"x{row['sample_speedup']}, c2st diff {row['c2st_diff']:+.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
