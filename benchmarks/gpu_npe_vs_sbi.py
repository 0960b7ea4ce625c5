"""NPE on a GPU: sbi-core against sbi 0.27's defaults on the same device and simulations.

Issue 18, item 8. For each task (default two_moons and slcp) the simulations are drawn once
(``--num-sims``, default 100,000, seeded by ``--seed``); each library then trains its NPE on
them in a fresh process (``_npe_worker.py``, one after the other) with its default settings
on ``--device`` (data, network and sampling on the device), draws ``--num-samples``
posterior samples for observations 1..``--observations``, and this script scores them by
C2ST against the task's reference posterior. Printed per task and library: seconds to
convergence (early stopping, or ``--max-epochs``), epochs, seconds per epoch, C2ST per
observation and mean, sampling seconds, peak host memory and peak GPU memory; then the
ratios sbi / sbi-core. One JSON line per finished run is printed (and ``--json`` is rewritten
after each), so a stopped run keeps its numbers.

On a GPU machine (the measurement the issue asks for; sbi in its own environment):

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/gpu_npe_vs_sbi.py \\
        --sbi-python /work/sbi-venv/bin/python --json gpu_npe.json

Options for sbi-core only (e.g. a larger batch on the GPU) go in ``--ours-options``:
``--ours-options '{"batch_size": 2048, "learning_rate": 0.002}'``.

The same code path on a CPU at a tiny scale (checks the script, measures nothing):

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/gpu_npe_vs_sbi.py --device cpu \\
        --num-sims 2000 --max-epochs 2 --observations 1 --num-samples 500 --libs sbi_core
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

from compare_sbi import run_workers  # noqa: E402

from diagnostics.c2st import c2st  # noqa: E402
from sbi_core import simulate  # noqa: E402
from sbi_core.priors import prior_spec  # noqa: E402

LIBS = ("sbi", "sbi_core")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="cuda (default where available) or cpu")
    ap.add_argument("--tasks", nargs="+", default=["two_moons", "slcp"])
    ap.add_argument("--num-sims", type=int, default=100_000)
    ap.add_argument("--observations", type=int, default=5)
    ap.add_argument("--num-samples", type=int, default=10_000)
    ap.add_argument("--max-epochs", type=int, default=None,
                    help="stop after this many epochs (default: train to convergence)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--flow", default="fmaf",
                    help="sbi-core flow (default fmaf, the default); sbi runs the same family")
    ap.add_argument("--libs", nargs="+", default=list(LIBS), choices=LIBS)
    ap.add_argument("--sbi-python", default="/work/sbi-venv/bin/python",
                    help="python of the environment with sbi==0.27.0 (needed for --libs sbi)")
    ap.add_argument("--ours-options", default="{}", help="JSON dict of extra sbi_core.fit options")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads for both workers")
    ap.add_argument("--json", help="write the results to this JSON file")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA GPU is available here; use --device cpu for the "
                 "tiny-scale check of the code path")
    if "sbi" in args.libs and not Path(args.sbi_python).exists():
        ap.error(f"--sbi-python {args.sbi_python} does not exist; point it at the environment "
                 "with sbi 0.27, or run only sbi-core's half with --libs sbi_core")
    return args


def summarize(res: dict, c2sts: list[float]) -> dict:
    """One library's numbers from its worker's output ``res``."""
    epochs = int(res["epochs"])
    train_s = float(res["train_seconds"])
    return {"train_seconds": round(train_s, 3), "epochs": epochs,
            "seconds_per_epoch": round(train_s / max(epochs, 1), 4),
            "startup_seconds": round(float(res["startup_seconds"]), 2),
            "c2st": [round(c, 3) for c in c2sts], "c2st_mean": round(float(np.mean(c2sts)), 3),
            "sample_seconds": round(float(np.mean(res["sample_seconds"])), 4),
            "peak_mb": round(float(res["peak_mb"]), 1),
            "peak_gpu_mb": round(float(res.get("peak_gpu_mb", 0.0)), 1)}


def run(args: argparse.Namespace) -> list[dict]:
    """Every task of ``args``; returns one row per task."""
    import simulators

    device_name = (torch.cuda.get_device_name(0) if args.device.startswith("cuda")
                   else f"cpu ({os.cpu_count()} cores)")
    print(f"device {device_name}, load average {os.getloadavg()}", flush=True)
    rows = []
    for task in args.tasks:
        problem = simulators.get_problem(task)
        theta, x = simulate(problem, args.num_sims, seed=args.seed, progress=False).training_data()
        ks = list(range(1, args.observations + 1))
        xo = torch.stack([problem.observation(k) for k in ks])
        refs = [problem.reference_posterior(problem.observation(k), args.num_samples, k)
                for k in ks]
        jobs = [(lib, args.sbi_python if lib == "sbi" else sys.executable)
                for lib in LIBS if lib in args.libs]
        load_before = os.getloadavg()[0]
        with tempfile.TemporaryDirectory() as tmp:
            inp = Path(tmp) / "data.npz"
            np.savez(inp, theta=theta.numpy(), x=x.numpy(), xo=xo.numpy(),
                     prior_spec=json.dumps(prior_spec(problem.prior)),
                     num_samples=args.num_samples)
            res = run_workers(jobs, inp, args.flow, args.seed, args.threads,
                              json.loads(args.ours_options), concurrent=False,
                              run={"device": args.device, "max_epochs": args.max_epochs})
        row = {"task": task, "device": args.device, "device_name": device_name,
               "num_sims": args.num_sims, "flow": args.flow, "seed": args.seed,
               "max_epochs": args.max_epochs, "ours_options": json.loads(args.ours_options),
               "load1": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
        for lib, _ in jobs:
            samples = torch.from_numpy(res[lib]["samples"])
            c2sts = [c2st(samples[i], refs[i], seed=0) for i in range(len(ks))]
            row[lib] = summarize(res[lib], c2sts)
        if "sbi" in row and "sbi_core" in row:
            ours, theirs = row["sbi_core"], row["sbi"]
            row["train_speedup"] = round(theirs["train_seconds"] / ours["train_seconds"], 2)
            row["epoch_speedup"] = round(theirs["seconds_per_epoch"] /
                                         ours["seconds_per_epoch"], 2)
            row["c2st_diff"] = round(ours["c2st_mean"] - theirs["c2st_mean"], 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"\n{'task':10s} {'lib':9s} {'train s':>8s} {'epochs':>6s} {'s/epoch':>8s} "
          f"{'c2st':>6s} {'sample s':>8s} {'host MB':>8s} {'GPU MB':>7s}")
    for row in rows:
        for lib in LIBS:
            if lib in row:
                r = row[lib]
                print(f"{row['task']:10s} {lib:9s} {r['train_seconds']:8.2f} {r['epochs']:6d} "
                      f"{r['seconds_per_epoch']:8.4f} {r['c2st_mean']:6.3f} "
                      f"{r['sample_seconds']:8.4f} {r['peak_mb']:8.0f} {r['peak_gpu_mb']:7.0f}")
        if "train_speedup" in row:
            print(f"{row['task']:10s} {'ratio':9s} to convergence x{row['train_speedup']}, per "
                  f"epoch x{row['epoch_speedup']}, C2ST diff {row['c2st_diff']:+.3f}")


def main(argv: list[str] | None = None) -> list[dict]:
    rows = run(parse_args(argv))
    print_table(rows)
    return rows


if __name__ == "__main__":
    main()
