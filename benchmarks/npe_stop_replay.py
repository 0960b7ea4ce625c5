"""Replay stopping rules of the default NPE on recorded training runs.

``record``: for each task and seed, fits the default NPE on the same 10,000 simulations as
``benchmarks/compare_sbi.py`` (same simulation seed, the prior passed through its plain-value
spec, ``flow="auto"``), and saves the validation and training curves, the process CPU
seconds at the end of every epoch, the whole fit's CPU seconds, and a copy of the weights
returned at every new best validation loss (the loop's ``best_state``: EMA weights), so that
any rule that only *stops earlier* can be replayed exactly: it returns the best weights up
to its stop epoch, which the recording holds. Also the C2ST of the recorded fit on
observations 1-10 against the task's reference posterior (``diagnostics.c2st``, the same
classifier and sample seeds as compare_sbi.py).

``replay``: for each recorded run and each candidate rule (``RULES``), the epoch at which
the rule stops, the returned best epoch and, where that differs from the recorded run's,
how much higher its validation loss is (nats). The recorded run's own stop is checked
against the replay of the default rule.

``score``: the C2ST of the weights a stop after ``--stops`` epochs would return (the
recorded best weights up to there, loaded into a one-epoch fit of the same task and seed).

Usage:

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/npe_stop_replay.py record \\
        --tasks sir two_moons --seeds 0 1 2 --out /tmp/stop_runs
    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/npe_stop_replay.py replay \\
        --out /tmp/stop_runs --tasks sir two_moons --seeds 0 1 2
    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/npe_stop_replay.py score \\
        --out /tmp/stop_runs --tasks sir --seeds 0 --stops 190
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from diagnostics.c2st import c2st  # noqa: E402
from sbi_core import Problem, fit, prior_from_spec, simulate  # noqa: E402
from sbi_core import training as training_mod  # noqa: E402
from sbi_core.priors import prior_spec  # noqa: E402

NUM_SAMPLES = 10_000


def task_data(task: str, sims: int, seed: int, observations: int):
    """compare_sbi.py's data: simulations, observations and reference samples."""
    import simulators

    problem = simulators.get_problem(task)
    theta, x = simulate(problem, sims, seed=seed, progress=False).training_data()
    ks = list(range(1, observations + 1))
    xo = torch.stack([problem.observation(k) for k in ks])
    refs = [problem.reference_posterior(problem.observation(k), NUM_SAMPLES, k) for k in ks]
    worker_problem = Problem(prior_from_spec(prior_spec(problem.prior)), lambda t: t,
                             x_shape=tuple(x.shape[1:]), validate=False,
                             x_trials=getattr(problem, "x_trials", None))
    return worker_problem, theta.float(), x.float(), xo.float(), refs


def score(posterior, xo: torch.Tensor, refs: list, seed: int) -> list[float]:
    """C2ST on each observation, as compare_sbi.py computes it."""
    out = []
    for k in range(xo.shape[0]):
        samples = posterior.sample((NUM_SAMPLES,), x=xo[k], seed=seed + k)
        out.append(float(c2st(samples, refs[k], seed=0)))
    return out


class _Recorder:
    """Callback: the CPU clock at every epoch end and the best weights at every new best."""

    def __init__(self) -> None:
        self.cpu: list[float] = []
        self.best: dict[int, dict[str, torch.Tensor]] = {}
        self.last_copy: dict[str, torch.Tensor] | None = None

    def on_epoch_end(self, epoch, train_loss, val_loss, lr, seconds) -> None:
        self.cpu.append(time.process_time())

    def on_best(self, epoch, val_loss) -> None:
        self.best[int(epoch)] = {k: v.clone() for k, v in self.last_copy.items()}


def record(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    options = json.loads(args.options)
    for task in args.tasks:
        for seed in args.seeds:
            path = out / f"{task}_{seed}{args.tag}.pt"
            if path.exists():
                continue
            problem, theta, x, xo, refs = task_data(task, args.sims, seed, args.observations)
            rec = _Recorder()
            original = training_mod._state_copy

            def copy(module, _orig=original, _rec=rec):
                state = _orig(module)
                _rec.last_copy = state
                return state

            training_mod._state_copy = copy
            load = os.getloadavg()[0]
            try:
                cpu0 = time.process_time()
                posterior = fit(problem, (theta, x), method="npe", flow="auto", seed=seed,
                                progress=False, callbacks=[rec], **options)
                fit_cpu = time.process_time() - cpu0
            finally:
                training_mod._state_copy = original
            scores = score(posterior, xo, refs, seed) if args.score else []
            h = posterior.history
            torch.save({"task": task, "seed": seed, "options": options,
                        "validation_loss": h["validation_loss"], "train_loss": h["train_loss"],
                        "best_epoch": h["best_epoch"], "epochs": h["epochs"],
                        "stopped": h.get("stopped"), "config": h.get("config"),
                        "epoch_cpu": [c - cpu0 for c in rec.cpu], "fit_cpu": fit_cpu,
                        "c2st": scores, "best_states": rec.best,
                        "load": [load, os.getloadavg()[0]]}, path)
            print(json.dumps({"task": task, "seed": seed, "tag": args.tag,
                              "epochs": h["epochs"], "best_epoch": h["best_epoch"],
                              "best_val": round(float(min(h["validation_loss"])), 4),
                              "fit_cpu": round(fit_cpu, 2), "c2st_mean": round(float(np.mean(scores)), 4) if scores else None,
                              "c2st": [round(s, 3) for s in scores],
                              "load": [round(load, 2), round(os.getloadavg()[0], 2)]}), flush=True)


def replay_stop(val: list[float], stop_after: int = 40, min_delta: float = 0.003,
                overfit_rise: float | None = 0.05, overfit_epochs: int = 25,
                window: int = 5, extra=None) -> tuple[int, int]:
    """(stop epoch, returned best epoch), 0-based, of the loop's stall rule replayed on the
    validation curve ``val``; ``extra(epoch, since_best, best, history)`` may stop sooner."""
    best, best_epoch, since = float("inf"), -1, 0
    for e, v in enumerate(val):
        if v < best:
            real = v < best - min_delta
            best, best_epoch = v, e
            since = 0 if real else since + 1
        else:
            since += 1
        stalled = since >= stop_after
        if not stalled and overfit_rise is not None and since >= overfit_epochs:
            stalled = min(val[max(0, e + 1 - window):e + 1]) > best + overfit_rise
        if not stalled and extra is not None:
            stalled = extra(e, since, best, val[:e + 1])
        if stalled:
            return e, best_epoch
    return len(val) - 1, best_epoch


def noise_stop(window: int, k: float):
    """An extra stop: the best validation loss gained less than ``k`` times the median
    epoch-to-epoch change of the last ``window`` epochs over those epochs (a gain within the
    curve's own noise)."""
    def extra(epoch: int, since: int, best: float, val: list[float]) -> bool:
        if epoch < 2 * window:
            return False
        v = np.asarray(val)
        sigma = float(np.median(np.abs(np.diff(v[-window - 1:]))))
        return float(v[:epoch + 1 - window].min() - v.min()) < k * sigma
    return extra


#: candidate rules replayed by ``replay``: keyword arguments of :func:`replay_stop`
#: (the default: patience 40, min_delta 0.003, overfit_rise 0.05 after 25 epochs)
RULES: dict[str, dict] = {
    "default": {},
    "patience 30": {"stop_after": 30},
    "patience 25": {"stop_after": 25},
    "patience 20": {"stop_after": 20},
    "patience 30, overfit 15": {"stop_after": 30, "overfit_epochs": 15},
    "min_delta 0.005": {"min_delta": 0.005},
    "min_delta 0.01": {"min_delta": 0.01},
    "noise W20 k0.5": {"extra": noise_stop(20, 0.5)},
    "noise W30 k1": {"extra": noise_stop(30, 1.0)},
}


def replay(args: argparse.Namespace) -> None:
    for task in args.tasks:
        for seed in args.seeds:
            path = Path(args.out) / f"{task}_{seed}{args.tag}.pt"
            if not path.exists():
                continue
            run = torch.load(path, weights_only=False)
            val = run["validation_loss"]
            stop, best = replay_stop(val)
            if (stop + 1, best) != (run["epochs"], run["best_epoch"]):
                raise RuntimeError(f"{path}: the replayed default stops at {stop + 1}/{best}, "
                                   f"the run at {run['epochs']}/{run['best_epoch']}")
            row = {"task": task, "seed": seed}
            for name, kw in RULES.items():
                e, b = replay_stop(val, **kw)
                row[name] = f"{e + 1}/{b}" + ("" if b == best else f" ({val[b] - val[best]:+.3f})")
            print(json.dumps(row), flush=True)


def evaluate_state(run: dict, epoch: int, observations: int, sims: int) -> list[float]:
    """C2ST of the recorded best weights of ``epoch``: a one-epoch fit of the same task and
    seed gives the estimator (same architecture and z-scoring), the weights are loaded."""
    import warnings

    problem, theta, x, xo, refs = task_data(run["task"], sims, run["seed"], observations)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        posterior = fit(problem, (theta, x), method="npe", flow="auto", seed=run["seed"],
                        progress=False, max_epochs=1, **run["options"])
        posterior.estimator.load_state_dict(run["best_states"][epoch])
        return score(posterior, xo, refs, run["seed"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["record", "replay", "score"])
    ap.add_argument("--stops", type=int, nargs="+", default=[],
                    help="score: C2ST of the weights a stop after these epochs (1-based "
                         "count) would return (the best up to there)")
    ap.add_argument("--tasks", nargs="+", default=["sir"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--sims", type=int, default=10_000)
    ap.add_argument("--observations", type=int, default=10)
    ap.add_argument("--options", default="{}", help="JSON: extra fit options")
    ap.add_argument("--no-score", dest="score", action="store_false",
                    help="skip C2ST of the recorded fit (replayed rules that return the same "
                         "best epoch return the same weights)")
    ap.add_argument("--tag", default="", help="suffix of the saved run files")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.mode == "record":
        record(args)
    elif args.mode == "replay":
        replay(args)
    else:
        score_stops(args)


def score_stops(args: argparse.Namespace) -> None:
    """C2ST of the weights returned by stopping after each of ``args.stops`` epochs."""
    for task in args.tasks:
        for seed in args.seeds:
            run = torch.load(Path(args.out) / f"{task}_{seed}{args.tag}.pt", weights_only=False)
            val = run["validation_loss"]
            for stop in args.stops:
                stop = min(stop, len(val))
                best = int(np.argmin(val[:stop]))
                scores = evaluate_state(run, best, args.observations, args.sims)
                print(json.dumps({"task": task, "seed": seed, "stop_epochs": stop,
                                  "best_epoch": best, "val": round(float(val[best]), 4),
                                  "final_best": run["best_epoch"],
                                  "c2st_mean": round(float(np.mean(scores)), 4),
                                  "c2st": [round(c, 3) for c in scores],
                                  "recorded_c2st_mean": round(float(np.mean(run["c2st"])), 4)
                                  if run["c2st"] else None,
                                  "load": round(os.getloadavg()[0], 2)}), flush=True)


if __name__ == "__main__":
    main()
