"""Fused NSF (``flow="fnsf"``) speed against the nflows NSF (``nsf``) and the fused MAF (``fmaf``).

For each benchmark task, in one process and interleaved (flow by flow, repeat by repeat, so
all three see the same machine load):

1. **training step cost**: ``--steps`` Adam steps on minibatches of ``--batch-size`` of
   the task's simulations (the training loop's own work per step: forward, backward, clip,
   step), reported as CPU seconds per epoch of ``--sims`` simulations (90% training split);
2. **training to convergence**: each flow is trained on the same ``--sims`` simulations with
   the default preset (accurate), to early stopping with ``--epochs 0`` or for at most
   ``--epochs`` epochs; wall and CPU seconds of this process and the epochs are reported
   (``train_s``, ``train_cpu_s``, ``epochs``);
3. **posterior sampling**: with each trained flow, ``posterior.sample((10_000,), x=x_o)`` for
   observation 1 is timed (median of ``--repeats``), rejection of draws outside the prior's
   support included, in wall-clock and in CPU seconds of this process (``sample_cpu_s``:
   on a loaded shared machine wall time mostly measures waiting for a core);
   ``flow_sample_s`` times the flow's own sampler (no rejection).

Prints per task the seconds and the ratios nsf / fnsf and fnsf / fmaf, the load average,
and whether each flow met the target of < 0.2 s for 10,000 draws (``sample_target_met``,
judged on the CPU seconds: on a loaded machine wall time mostly measures waiting).

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/nsf_speed.py            # 30 epochs
    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/nsf_speed.py --epochs 0 # to convergence
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sbi_core import fit, simulate  # noqa: E402
from sbi_core.methods import get_method  # noqa: E402

TASKS = ["two_moons", "slcp", "gaussian_linear", "gaussian_mixture", "sir", "bernoulli_glm"]
FLOWS = ["fmaf", "fnsf", "nsf"]


def step_seconds(estimators: dict, theta: torch.Tensor, x: torch.Tensor, steps: int,
                 batch_size: int, repeats: int) -> dict[str, float]:
    """Median CPU seconds (this process) per Adam step for each estimator, interleaved over
    ``repeats``."""
    opts = {k: torch.optim.Adam(e.parameters(), lr=1e-4) for k, e in estimators.items()}
    gen = torch.Generator().manual_seed(0)
    times: dict[str, list[float]] = {k: [] for k in estimators}
    for r in range(repeats + 1):  # the first round warms up
        for k, est in estimators.items():
            idx = torch.randint(0, theta.shape[0], (steps, batch_size), generator=gen)
            t0 = time.process_time()
            for i in range(steps):
                loss = est.loss(theta[idx[i]], x[idx[i]]).mean()
                opts[k].zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(est.parameters(), 5.0)
                opts[k].step()
            if r:
                times[k].append((time.process_time() - t0) / steps)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=TASKS)
    ap.add_argument("--flows", nargs="+", default=FLOWS)
    ap.add_argument("--sims", type=int, default=10_000)
    ap.add_argument("--epochs", type=int, default=30,
                    help="most training epochs before sampling (0: train to convergence)")
    ap.add_argument("--target-s", type=float, default=0.2,
                    help="sampling target for --num-samples draws, seconds")
    ap.add_argument("--steps", type=int, default=20, help="timed training steps per repeat")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--num-samples", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args()
    warnings.filterwarnings("ignore", message="Reached max_epochs")
    import simulators

    print(f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()}")
    rows = []
    npe = get_method("npe")
    for task in args.tasks:
        problem = simulators.get_problem(task)
        sims = simulate(problem, args.sims, seed=0, progress=False)
        theta, x = sims.training_data()
        xo = problem.observation(1)
        load_before = os.getloadavg()[0]
        torch.manual_seed(0)
        ests = {f: npe.build(theta, x, problem.prior, flow=f) for f in args.flows}
        step = step_seconds(ests, theta, x, args.steps, args.batch_size, args.repeats)
        steps_per_epoch = max(int(0.9 * theta.shape[0]) // args.batch_size, 1)
        per_epoch = {f: s * steps_per_epoch for f, s in step.items()}
        posts, train_s, train_cpu = {}, {}, {}
        limit = {"max_epochs": args.epochs} if args.epochs > 0 else {}
        for f in args.flows:
            t0, c0 = time.perf_counter(), time.process_time()
            posts[f] = fit(problem, sims, flow=f, seed=0, detector=False, progress=False,
                           **limit)
            train_s[f], train_cpu[f] = time.perf_counter() - t0, time.process_time() - c0
        sample_t: dict[str, list[float]] = {f: [] for f in args.flows}
        sample_cpu: dict[str, list[float]] = {f: [] for f in args.flows}
        flow_t: dict[str, list[float]] = {f: [] for f in args.flows}
        for r in range(args.repeats + 1):
            for f, post in posts.items():
                t0, c0 = time.perf_counter(), time.process_time()
                post.sample((args.num_samples,), x=xo, seed=r)
                t1, c1 = time.perf_counter(), time.process_time()
                with torch.no_grad():
                    post.estimator.sample(args.num_samples, xo[None])
                t2 = time.perf_counter()
                if r:
                    sample_t[f].append(t1 - t0)
                    sample_cpu[f].append(c1 - c0)
                    flow_t[f].append(t2 - t1)
        row = {"task": task, "D": problem.dim, "load1": round(load_before, 2),
               "epoch_s": {f: round(v, 4) for f, v in per_epoch.items()},
               "train_s": {f: round(v, 2) for f, v in train_s.items()},
               "train_cpu_s": {f: round(v, 2) for f, v in train_cpu.items()},
               "epochs": {f: int(p.history["epochs"]) for f, p in posts.items()},
               "sample_s": {f: round(statistics.median(v), 4) for f, v in sample_t.items()},
               "sample_cpu_s": {f: round(statistics.median(v), 4) for f, v in sample_cpu.items()},
               "flow_sample_s": {f: round(statistics.median(v), 4) for f, v in flow_t.items()}}
        row["sample_target_met"] = {f: v < args.target_s for f, v in row["sample_cpu_s"].items()}
        row["load1_after"] = round(os.getloadavg()[0], 2)
        for key in ("epoch_s", "train_cpu_s", "sample_s", "sample_cpu_s", "flow_sample_s"):
            v = row[key]
            if "nsf" in v and "fnsf" in v:
                row[f"{key}_nsf/fnsf"] = round(v["nsf"] / v["fnsf"], 2)
            if "fmaf" in v and "fnsf" in v:
                row[f"{key}_fnsf/fmaf"] = round(v["fnsf"] / v["fmaf"], 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.json:  # rewritten after every task: a stopped run keeps its rows
            Path(args.json).write_text(json.dumps(rows, indent=1))

    print(f"\nload average after: {os.getloadavg()}")
    names = " / ".join(args.flows)
    print(f"{'task':17s} {'D':>2s} | {'epoch s: ' + names:28s} | {'sample 10k s: ' + names:32s} | "
          f"{'sample CPU s: ' + names:32s} | ratios nsf/fnsf, fnsf/fmaf (epoch; sample; CPU)")
    for row in rows:
        e, s, c = (" / ".join(f"{row[key][f]:.3f}" for f in args.flows)
                   for key in ("epoch_s", "sample_s", "sample_cpu_s"))
        ratios = "; ".join(f"{row.get(f'{key}_nsf/fnsf', '-')}, {row.get(f'{key}_fnsf/fmaf', '-')}"
                           for key in ("epoch_s", "sample_s", "sample_cpu_s"))
        print(f"{row['task']:17s} {row['D']:2d} | {e:28s} | {s:32s} | {c:32s} | {ratios}")
    print(f"\n{'task':17s} | train s (CPU s, epochs): {names}")
    for row in rows:
        print(f"{row['task']:17s} | " + " / ".join(
            f"{row['train_s'][f]:.1f} ({row['train_cpu_s'][f]:.1f}, {row['epochs'][f]})"
            for f in args.flows))


if __name__ == "__main__":
    main()
