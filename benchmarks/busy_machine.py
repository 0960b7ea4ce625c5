"""NPE training time on an idle vs a busy machine, torch's default threads vs sbi-core's choice.

Issue 18, item 6: with torch's default intra-op threads (one per core), training slowed from
~25 s to 490 s on a 2-core machine while other CPU-bound processes ran. sbi-core now picks
the thread count itself (``TrainConfig.num_threads="auto"``, :mod:`sbi_core.threads`).

In one run, each configuration trains the same NPE (two_moons, fixed simulations, a fixed
number of epochs so that the work is identical) in a fresh process whose environment has no
``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` (so torch starts with one thread per core):

- ``torch-default``: ``num_threads=None`` (keep torch's setting: the old behaviour);
- ``auto``: ``num_threads="auto"`` (the new default).

Both run first with no background load of ours ("idle"), then with ``--busy`` (default 2)
CPU-bound background processes (pure Python loops) started by this script ("busy"), and
alternating order. Printed: seconds per configuration and phase, the busy/idle ratio of each
(target for ``auto``: <= 2), and the load average before each phase. On a machine shared
with other jobs, "idle" means "without our background processes"; the load is printed.

Usage::

    PYTHONPATH=$PWD python benchmarks/busy_machine.py --sims 5000 --epochs 20 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_CHILD = """
import json, sys, time, torch
from sbi_core import fit, simulate
import simulators
threads, sims, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
problem = simulators.get_problem("two_moons")
data = simulate(problem, sims, seed=0, progress=False)
torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])  # torch's lazy imports, off the clock
seen = []
def loss_fn(est, theta, x):
    seen.append(torch.get_num_threads())
    return est.loss(theta, x)
t0 = time.perf_counter()
post = fit(problem, data, seed=0, progress=False, max_epochs=epochs, stop_after_epochs=10**6,
           num_threads=None if threads == "none" else threads)
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "epochs": post.history["epochs"],
                  "torch_default_threads": torch.get_num_threads()}))
"""


def _spin(stop_at: float) -> None:
    x = 0
    while time.time() < stop_at:
        x += 1


def train_once(threads: str, sims: int, epochs: int) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "SBI_CORE_THREADS")}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", _CHILD, threads, str(sims), str(epochs)],
                         capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def phase(name: str, sims: int, epochs: int, repeats: int, order: list[str]) -> dict:
    res: dict[str, list[float]] = {c: [] for c in order}
    load = os.getloadavg()
    for r in range(repeats):
        for cfg in (order if r % 2 == 0 else order[::-1]):
            out = train_once("none" if cfg == "torch-default" else "auto", sims, epochs)
            res[cfg].append(out["seconds"])
            print(json.dumps({"phase": name, "config": cfg, **out,
                              "load1": round(os.getloadavg()[0], 2)}), flush=True)
    return {"load_before": [round(v, 2) for v in load],
            **{c: round(min(v), 2) for c, v in res.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sims", type=int, default=5000)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2, help="runs per configuration and phase "
                    "(the minimum is reported)")
    ap.add_argument("--busy", type=int, default=2, help="CPU-bound background processes")
    args = ap.parse_args()
    order = ["torch-default", "auto"]
    print(f"cores: {os.cpu_count()}, load average: {os.getloadavg()}", flush=True)
    idle = phase("idle", args.sims, args.epochs, args.repeats, order)
    stop_at = time.time() + 24 * 3600
    spinners = [mp.Process(target=_spin, args=(stop_at,), daemon=True) for _ in range(args.busy)]
    for p in spinners:
        p.start()
    try:
        time.sleep(2.0)
        busy = phase("busy", args.sims, args.epochs, args.repeats, order[::-1])
    finally:
        for p in spinners:
            p.terminate()
            p.join()
    print()
    print(f"{'config':14s} {'idle s':>8s} {'busy s':>8s} {'busy/idle':>9s}")
    summary = {"idle": idle, "busy": busy, "sims": args.sims, "epochs": args.epochs,
               "busy_processes": args.busy}
    for cfg in order:
        ratio = busy[cfg] / idle[cfg]
        summary[f"{cfg}_busy_over_idle"] = round(ratio, 2)
        print(f"{cfg:14s} {idle[cfg]:8.2f} {busy[cfg]:8.2f} {ratio:9.2f}")
    summary["idle_default_over_auto"] = round(idle["torch-default"] / idle["auto"], 2)
    summary["busy_default_over_auto"] = round(busy["torch-default"] / busy["auto"], 2)
    print(f"torch-default / auto: idle x{summary['idle_default_over_auto']}, "
          f"busy x{summary['busy_default_over_auto']}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
