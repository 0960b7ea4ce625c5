"""NPE side by side: sbi-core against sbi 0.27 on the same simulations and machine.

For each task, both libraries train on the *same* theta and x tensors (simulated once by
sbi-core) in separate processes, one after the other (alternating which goes first) or at
the same time (``--concurrent``, for busy shared machines), each with ``--threads`` torch
threads (default 1), then draw 10,000 posterior samples for observations 1..K; C2ST against
the task's reference posterior is computed here, with the same classifier for both. Printed
per task: train seconds, epochs, C2ST per observation, sample seconds, peak memory, and the
ratios sbi / sbi-core. Train seconds exclude one-time process start-up costs (library
imports, torch's lazy imports on the first optimizer), paid before timing by both workers
and printed as start-up seconds; the summary gives the ratio with them too. ``--flows fmaf`` runs sbi-core's fused MAF against sbi's (nflows) MAF.
A task's declared exchangeable trials (``Problem(x_trials=...)``, e.g. slcp's) are given to
sbi-core's worker problem, as ``fit`` would get them from the built-in problem; sbi trains
its default flat NPE.

Usage (see benchmarks/README.md for the sbi environment):

    OMP_NUM_THREADS=1 python benchmarks/compare_sbi.py --sbi-python /work/sbi-venv/bin/python \\
        --tasks two_moons slcp gaussian_linear gaussian_mixture --sims 10000 --observations 5 \\
        --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
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


def _worker_cmd(python: str, lib: str, inp: Path, flow: str, seed: int, threads: int,
                options: dict, run: dict | None = None) -> tuple[list[str], dict, Path]:
    out = inp.with_name(f"{lib}_{flow}_out.npz")
    cmd = [python, str(HERE / "_npe_worker.py"), lib, str(inp), str(out), flow, str(seed),
           str(threads)]
    if lib == "sbi_core" or run:
        cmd.append(json.dumps(options if lib == "sbi_core" else {}))
    if run:
        cmd.append(json.dumps(run))
    env = {**os.environ, "PYTHONPATH": str(ROOT) if lib == "sbi_core" else "",
           "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return cmd, env, out


def save_task_data(path: Path, problem, theta: torch.Tensor, x: torch.Tensor, xo: torch.Tensor,
                   num_samples: int) -> None:
    """The ``.npz`` both libraries' workers read: training ``theta (N, D)`` and ``x (N, ...)``,
    observations ``xo (K, ...)``, the prior as a plain-value spec, the sample count and the
    problem's declared trials."""
    np.savez(path, theta=theta.numpy(), x=x.numpy(), xo=xo.numpy(),
             prior_spec=json.dumps(prior_spec(problem.prior)), num_samples=num_samples,
             x_trials=json.dumps(getattr(problem, "x_trials", None)))


def run_workers(jobs: list[tuple[str, str]], inp: Path, flow: str, seed: int, threads: int,
                options: dict, concurrent: bool, run: dict | None = None) -> dict[str, dict]:
    """Train and sample with each ``(lib, python)`` in a fresh process; one after the other,
    or all at once with ``concurrent`` (both then see the same machine load). Workers run in
    the temporary folder, so sbi's tensorboard logs (``sbi-logs/``) land there. ``run``
    (``device``, ``max_epochs``) goes to both workers (see ``_npe_worker.py``)."""
    procs = {}
    results = {}
    for lib, python in jobs:
        cmd, env, out = _worker_cmd(python, lib, inp, flow, seed, threads, options, run)
        procs[lib] = (subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True, env=env, cwd=inp.parent), out)
        if not concurrent:
            _collect(lib, *procs[lib], results)
    if concurrent:
        for lib, (proc, out) in procs.items():
            _collect(lib, proc, out, results)
    return results


def _collect(lib: str, proc: subprocess.Popen, out: Path, results: dict) -> None:
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{lib} worker failed:\n{err[-4000:]}")
    res = np.load(out)
    results[lib] = {k: res[k] for k in res.files}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sbi-python", required=True, help="python of the venv with sbi==0.27.0")
    ap.add_argument("--tasks", nargs="+", default=["two_moons", "slcp", "gaussian_mixture",
                                                   "gaussian_linear", "sir", "bernoulli_glm"])
    ap.add_argument("--sims", type=int, default=10_000)
    ap.add_argument("--observations", type=int, default=5)
    ap.add_argument("--num-samples", type=int, default=10_000)
    ap.add_argument("--flows", nargs="+", default=["auto"],
                    help="sbi-core flows (default: auto, sbi-core's default: fnsf when x "
                         "declares trials and D <= 9, else fmaf); sbi runs the "
                         "same family from nflows: MAF for fmaf, maf and auto, NSF for fnsf "
                         "and nsf")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0],
                    help="one run per seed (simulations, split, initialization all change); "
                         "C2ST varies by several 0.01 between seeds, so compare means over "
                         "several seeds")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch/OpenMP threads for BOTH libraries (default 1: on a shared or "
                         "2-core machine more threads oversubscribe the cores)")
    ap.add_argument("--libs", nargs="+", default=["sbi", "sbi_core"],
                    choices=["sbi", "sbi_core"], help="run only some libraries (tuning)")
    ap.add_argument("--ours-options", default="{}",
                    help="JSON dict of extra sbi_core.fit options, e.g. '{\"batch_size\": 512}' "
                         "or '{\"preset\": \"fast\"}'")
    ap.add_argument("--concurrent", action="store_true",
                    help="train both libraries at the same time (each with --threads threads) "
                         "instead of one after the other: on a busy shared machine both then "
                         "see the same load")
    ap.add_argument("--json", help="also write all results to this JSON file (rewritten after "
                                   "every run, so a stopped grid keeps its finished rows)")
    args = ap.parse_args()

    import simulators

    rows = []
    order = 0
    for task, seed in [(t, s) for t in args.tasks for s in args.seeds]:
        problem = simulators.get_problem(task)
        sims = simulate(problem, args.sims, seed=seed, progress=False)
        theta, x = sims.training_data()
        ks = list(range(1, args.observations + 1))
        xo = torch.stack([problem.observation(k) for k in ks])
        refs = [problem.reference_posterior(problem.observation(k), args.num_samples, k)
                for k in ks]
        with tempfile.TemporaryDirectory() as tmp:
            inp = Path(tmp) / "data.npz"
            save_task_data(inp, problem, theta, x, xo, args.num_samples)
            for flow in args.flows:
                libs = [lib for lib in ("sbi", "sbi_core") if lib in args.libs]
                if order % 2:
                    libs.reverse()
                order += 1
                jobs = [(lib, args.sbi_python if lib == "sbi" else sys.executable)
                        for lib in libs]
                load_before = os.getloadavg()[0]
                res = run_workers(jobs, inp, flow, seed, args.threads,
                                  json.loads(args.ours_options), args.concurrent)
                for lib in libs:
                    samples = torch.from_numpy(res[lib]["samples"])
                    scores = [c2st(samples[i], refs[i], seed=0) for i in range(len(ks))]
                    res[lib]["c2st"] = scores
                row = {"task": task, "flow": flow, "seed": seed, "sims": int(theta.shape[0]),
                       "first": "both" if args.concurrent else libs[0], "threads": args.threads,
                       "ours_options": json.loads(args.ours_options),
                       "x_trials": getattr(problem, "x_trials", None),
                       "load1": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
                for lib in libs:
                    r = res[lib]
                    row[lib] = {
                        "train_seconds": round(float(r["train_seconds"]), 2),
                        "startup_seconds": round(float(r.get("startup_seconds", 0.0)), 2),
                        "epochs": int(r["epochs"]),
                        "c2st": [round(s, 3) for s in r["c2st"]],
                        "c2st_mean": round(float(np.mean(r["c2st"])), 3),
                        "sample_seconds": round(float(np.mean(r["sample_seconds"])), 3),
                        "peak_mb": round(float(r["peak_mb"]), 1),
                    }
                    for key in ("train_cpu_seconds", "loop_seconds"):  # loop: sbi-core's
                        if key in r:  # training loop alone, without the detector
                            row[lib][key] = round(float(r[key]), 2)
                if len(libs) < 2:
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    continue
                row["train_speedup"] = round(row["sbi"]["train_seconds"] /
                                             row["sbi_core"]["train_seconds"], 2)
                if "train_cpu_seconds" in row["sbi_core"] and "train_cpu_seconds" in row["sbi"]:
                    row["train_cpu_speedup"] = round(row["sbi"]["train_cpu_seconds"] /
                                                     row["sbi_core"]["train_cpu_seconds"], 2)
                if "loop_seconds" in row["sbi_core"]:
                    row["train_speedup_loop"] = round(row["sbi"]["train_seconds"] /
                                                      row["sbi_core"]["loop_seconds"], 2)
                row["sample_speedup"] = round(row["sbi"]["sample_seconds"] /
                                              max(row["sbi_core"]["sample_seconds"], 1e-9), 2)
                row["c2st_diff"] = round(row["sbi_core"]["c2st_mean"] - row["sbi"]["c2st_mean"], 3)
                rows.append(row)
                print(json.dumps(row), flush=True)
                _write_json(args.json, rows)

    print()
    header = (f"{'task':18s} {'flow':4s} {'seed':>4s} {'lib':9s} {'train s':>8s} {'epochs':>6s} "
              f"{'c2st mean':>9s} {'sample s':>8s} {'peak MB':>8s}  c2st per observation")
    print(header)
    for row in rows:
        for lib in ("sbi", "sbi_core"):
            if lib not in row:
                continue
            r = row[lib]
            print(f"{row['task']:18s} {row['flow']:4s} {row['seed']:4d} {lib:9s} "
                  f"{r['train_seconds']:8.1f} {r['epochs']:6d} {r['c2st_mean']:9.3f} "
                  f"{r['sample_seconds']:8.3f} {r['peak_mb']:8.0f}  {r['c2st']}")
        if "train_speedup" in row:
            print(f"{'':18s} {'':4s} {'':4s} {'ratio':9s} train x{row['train_speedup']}, sample "
                  f"x{row['sample_speedup']}, c2st diff {row['c2st_diff']:+.3f}")
    summary = summarize(rows)
    if summary:
        print("\nOver seeds (train and sample seconds: means; C2ST: mean over seeds and "
              "observations):")
        for s in summary:
            print(json.dumps(s))
    _write_json(args.json, rows)


def _write_json(path: str | None, rows: list[dict]) -> None:
    """Rows so far and their summary to ``path`` (if given)."""
    if path:
        Path(path).write_text(json.dumps({"runs": rows, "summary": summarize(rows)}, indent=1))


def summarize(rows: list[dict]) -> list[dict]:
    """Per task and flow: means over seeds of each library's numbers, and their ratios."""
    out = []
    for key in dict.fromkeys((r["task"], r["flow"]) for r in rows):
        group = [r for r in rows if (r["task"], r["flow"]) == key]
        s: dict = {"task": key[0], "flow": key[1], "seeds": [r["seed"] for r in group]}
        for lib in ("sbi", "sbi_core"):
            runs = [r[lib] for r in group if lib in r]
            if not runs:
                continue
            s[lib] = {
                "train_seconds": round(float(np.mean([r["train_seconds"] for r in runs])), 2),
                "startup_seconds": round(float(np.mean([r["startup_seconds"] for r in runs])), 2),
                "epochs": round(float(np.mean([r["epochs"] for r in runs])), 1),
                "c2st_mean": round(float(np.mean([r["c2st_mean"] for r in runs])), 3),
                "c2st_per_seed": [r["c2st_mean"] for r in runs],
                "sample_seconds": round(float(np.mean([r["sample_seconds"] for r in runs])), 3),
            }
        if "sbi" in s and "sbi_core" in s:
            s["train_speedup"] = round(s["sbi"]["train_seconds"] / s["sbi_core"]["train_seconds"], 2)
            cold = {lib: s[lib]["train_seconds"] + s[lib]["startup_seconds"]
                    for lib in ("sbi", "sbi_core")}
            s["train_speedup_with_startup"] = round(cold["sbi"] / cold["sbi_core"], 2)
            s["sample_speedup"] = round(s["sbi"]["sample_seconds"] /
                                        max(s["sbi_core"]["sample_seconds"], 1e-9), 2)
            s["c2st_diff"] = round(s["sbi_core"]["c2st_mean"] - s["sbi"]["c2st_mean"], 3)
        out.append(s)
    return out


if __name__ == "__main__":
    main()
