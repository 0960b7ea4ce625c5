"""Posterior sampling speed.

Two modes.

``--tasks`` (issue 18: 10,000 draws under 0.2 s on every benchmark task): trains each task's
*default* NPE posterior (``fit(problem, sims)``, default flow and architecture, default
misspecification detector) on a small budget (``--sims``, ``--max-epochs``: sampling cost
does not depend on how well the weights are trained), saves it, then times
``posterior.sample((num_samples,), x=x_o)`` (the public call, with the prior-support
rejection and the detector check) for observations ``--observations`` in worker processes,
one per code root: this checkout and, with ``--baseline DIR`` (e.g. an unpacked
``git archive`` of the base commit), the same model files under the baseline's code,
alternating rounds. Printed per task and observation: the median CPU seconds
(``time.process_time``) and wall seconds over ``--repeats``, and the ratio baseline / this.

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/sample_speed.py --tasks \\
        two_moons slcp gaussian_linear gaussian_mixture sir bernoulli_glm --baseline /tmp/base

Without ``--tasks``: sbi-core's fused MAF against the nflows MAF (sbi's default), untrained
flows of the default size (5 transforms, 50 hidden units), median of ``--repeats`` draws.

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/sample_speed.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from estimators.flows import build_flow  # noqa: E402


def flows_main(args: argparse.Namespace) -> None:
    """fmaf against nflows' MAF, untrained."""
    torch.set_num_threads(args.threads)
    print(f"{'D':>3s} {'nflows maf s':>12s} {'fmaf s':>8s} {'ratio':>6s}")
    for d in args.dims:
        flows = {kind: build_flow(kind, d, 8) for kind in ("maf", "fmaf")}
        ctx = torch.randn(1, 8)
        times: dict[str, list[float]] = {"maf": [], "fmaf": []}
        with torch.no_grad():
            for kind in flows:
                flows[kind].sample(100, ctx)  # warm-up
            for _ in range(args.repeats):
                for kind, flow in flows.items():
                    t0 = time.perf_counter()
                    flow.sample(args.num_samples, ctx)
                    times[kind].append(time.perf_counter() - t0)
        maf, fmaf = statistics.median(times["maf"]), statistics.median(times["fmaf"])
        print(f"{d:3d} {maf:12.3f} {fmaf:8.3f} {maf / fmaf:6.2f}", flush=True)


def train_models(tasks: list[str], sims: int, max_epochs: int, out: Path) -> dict[str, str]:
    """Fit each task's default NPE posterior on ``sims`` simulations; model paths by task."""
    from sbi_core import fit, save, simulate
    from simulators import get_problem

    paths = {}
    for task in tasks:
        problem = get_problem(task)
        t0 = time.perf_counter()
        posterior = fit(problem, simulate(problem, sims, seed=0, progress=False), seed=0,
                        max_epochs=max_epochs, progress=False)
        paths[task] = str(save(posterior, out / f"{task}.pt"))
        flow = posterior.estimator.config.get("flow") if hasattr(posterior.estimator, "config") \
            else "?"
        print(f"trained {task} ({flow}) in {time.perf_counter() - t0:.1f} s", flush=True)
    return paths


def time_worker(spec: dict) -> None:
    """Child process: time ``posterior.sample`` for each model and observation; JSON out."""
    import warnings

    from sbi_core import load
    from simulators import get_problem

    torch.set_num_threads(1)
    result = {}
    for task, path in spec["models"].items():
        posterior = load(path)
        problem = get_problem(task)
        for k in spec["observations"]:
            x_o = problem.observation(k)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                posterior.sample((1000,), x=x_o, seed=0)  # warm-up
                cpu, wall = [], []
                for r in range(spec["repeats"]):
                    c0, w0 = time.process_time(), time.perf_counter()
                    posterior.sample((spec["num_samples"],), x=x_o, seed=r)
                    cpu.append(time.process_time() - c0)
                    wall.append(time.perf_counter() - w0)
            result[f"{task}/{k}"] = {"cpu": cpu, "wall": wall}
    print("RESULT " + json.dumps(result), flush=True)


def run_worker(root: str, spec: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker",
                           json.dumps(spec)], env=env, capture_output=True, text=True,
                          cwd=root, check=False)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not line:
        raise RuntimeError(f"worker under {root} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[0][len("RESULT "):])


def tasks_main(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    out = Path(args.model_dir or tempfile.mkdtemp(prefix="sample_speed_"))
    models = {t: str(out / f"{t}.pt") for t in args.tasks}
    missing = [t for t in args.tasks if not Path(models[t]).exists()]
    if missing:
        models.update(train_models(missing, args.sims, args.max_epochs, out))
    roots = {"this": str(ROOT)}
    if args.baseline:
        roots["base"] = str(Path(args.baseline).resolve())
    spec = {"models": models, "observations": args.observations, "repeats": args.repeats,
            "num_samples": args.num_samples}
    runs: dict[str, dict[str, dict[str, list[float]]]] = {name: {} for name in roots}
    for rnd in range(args.rounds):  # alternate which code goes first
        for name in (list(roots) if rnd % 2 == 0 else list(reversed(roots))):
            for key, t in run_worker(roots[name], spec).items():
                acc = runs[name].setdefault(key, {"cpu": [], "wall": []})
                acc["cpu"] += t["cpu"]
                acc["wall"] += t["wall"]
    print(f"load (1, 5, 15 min): {os.getloadavg()}")
    head = f"{'task/obs':18s} {'cpu s':>7s} {'wall s':>7s}"
    if args.baseline:
        head += f" {'base cpu s':>10s} {'base wall s':>11s} {'cpu ratio':>9s}"
    print(head)
    for key in runs["this"]:
        cpu = statistics.median(runs["this"][key]["cpu"])
        wall = statistics.median(runs["this"][key]["wall"])
        line = f"{key:18s} {cpu:7.3f} {wall:7.3f}"
        if args.baseline:
            bcpu = statistics.median(runs["base"][key]["cpu"])
            bwall = statistics.median(runs["base"][key]["wall"])
            line += f" {bcpu:10.3f} {bwall:11.3f} {bcpu / cpu:9.2f}"
        print(line, flush=True)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        time_worker(json.loads(sys.argv[2]))
        return
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num-samples", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dims", type=int, nargs="+", default=[2, 5, 10],
                    help="flows mode: parameter dimensions (two_moons 2, slcp 5, "
                         "gaussian_linear 10)")
    ap.add_argument("--tasks", nargs="+", help="time each task's default posterior")
    ap.add_argument("--sims", type=int, default=2000, help="tasks mode: training simulations")
    ap.add_argument("--max-epochs", type=int, default=20, help="tasks mode: training epochs")
    ap.add_argument("--observations", type=int, nargs="+", default=[1])
    ap.add_argument("--model-dir", help="tasks mode: where to save/reuse the trained models")
    ap.add_argument("--baseline", help="tasks mode: code root of the baseline (same models)")
    ap.add_argument("--rounds", type=int, default=2,
                    help="tasks mode: worker runs per code root (alternating order)")
    args = ap.parse_args()
    if args.tasks:
        tasks_main(args)
    else:
        flows_main(args)


if __name__ == "__main__":
    main()
