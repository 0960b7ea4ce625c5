"""CPU seconds per training epoch of the default NPE: this working tree against a baseline commit.

Paired A/B in one run (issue 18, "a cheaper training step"): the baseline commit is
extracted with ``git archive`` into a temporary folder, and both trees train the same
default ``fit`` (``flow="auto"``, accurate preset) on the same simulations for a fixed number
of epochs (``max_epochs``; the cosine schedule is the default's, shortened) in fresh
processes, alternating which tree goes first. Each worker reports the process CPU seconds
of the training loop (``train``) per epoch, the CPU seconds of the misspecification
detector that ``fit`` trains, and the last validation loss. The ratio baseline / tree is
printed per task and repetition, with the medians and the 1-minute load.

Usage (repository root, one torch thread):
    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/npe_epoch_speed.py --baseline b5f6677 \
        --tasks two_moons sir --epochs 30 --reps 3
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def worker(task: str, sims_path: str, epochs: int, seed: int) -> None:
    """Train the default NPE of ``task`` for ``epochs`` epochs; print one JSON line."""
    import importlib

    import numpy as np
    import torch

    torch.set_num_threads(1)
    import simulators
    from sbi_core import fit

    inference = importlib.import_module("sbi_core.inference")
    training = importlib.import_module("sbi_core.training")
    problem = simulators.get_problem(task)
    data = np.load(sims_path)
    theta, x = torch.as_tensor(data["theta"]), torch.as_tensor(data["x"])
    seen: dict = {}
    marks: list[float] = []

    class EpochClock:
        """Process CPU time at each epoch's end: per-epoch CPU seconds (median: robust to
        bursts of load from other processes)."""

        def on_epoch_end(self, *args) -> None:
            marks.append(time.process_time())

    def timed_train(estimator, th, xx, cfg, loss_fn=None):
        t0 = time.process_time()
        marks.append(t0)
        history = training.train(estimator, th, xx, cfg, loss_fn=loss_fn)
        seen.update(cpu=time.process_time() - t0, history=history)
        return history

    inference.train = timed_train
    # one-time process costs (torch's lazy imports on the first Adam), as _npe_worker.warm_up
    torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    t0 = time.process_time()
    fit(problem, (theta, x), seed=seed, max_epochs=epochs, progress=False,
        callbacks=[EpochClock()])
    fit_cpu = time.process_time() - t0
    history = seen["history"]
    per_epoch = [b - a for a, b in zip(marks[:-1], marks[1:])]
    print(json.dumps({"epochs": history.epochs, "train_cpu": seen["cpu"],
                      "cpu_per_epoch": seen["cpu"] / history.epochs,
                      "median_epoch_cpu": statistics.median(per_epoch),
                      "fit_cpu": fit_cpu, "detector_cpu": fit_cpu - seen["cpu"],
                      "val_loss": history.validation_loss[-1]}))


def interleaved(task: str, baseline: str, sims: int, blocks: int, seed: int) -> dict:
    """Epochs of the default NPE's training loop in ONE process, alternating the fused MAF
    pass, the fused NSF's training pass (hand-written or autograd graph), gradient clipping, Adam step and minibatch gathering of this tree and of
    ``baseline`` (its ``estimators/fast_maf.py`` loaded as a separate module; its clipper,
    lean Adam step and per-epoch gather where its ``training.py`` has them) epoch by epoch
    on the same estimator and data: load bursts from other processes hit both sides alike.
    Where both trees have the autograd-free training step (``FusedNLLStep``, wave 11 on),
    each side runs its own.
    The rest of the loop (loss, validation) is the same code on both sides. Returns
    per-side CPU seconds per epoch (median)."""
    import importlib
    import importlib.util
    import types

    import torch

    import simulators
    from sbi_core import fit, simulate

    torch.set_num_threads(1)
    fast_maf = importlib.import_module("estimators.fast_maf")
    training = importlib.import_module("sbi_core.training")
    inference = importlib.import_module("sbi_core.inference")
    source = subprocess.run(["git", "show", f"{baseline}:estimators/fast_maf.py"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    base = types.ModuleType("fast_maf_baseline")
    exec(compile(source, "fast_maf_baseline.py", "exec"), base.__dict__)
    # the fused MAF's training pass per side: its `log_prob` and `forward_transform`
    # (the baseline's run on its own module's pass and backward)
    sides = {"tree": (fast_maf.FusedMAF.log_prob, fast_maf.FusedMAF.forward_transform),
             "baseline": (base.FusedMAF.log_prob, base.FusedMAF.forward_transform)}
    # the fused NSF (slcp's default): its hand-written training pass where a side has one,
    # else its autograd graph (``_forward_autograd`` is the earlier ``forward_transform``)
    fast_nsf = importlib.import_module("estimators.fast_nsf")
    base_nsf = subprocess.run(["git", "show", f"{baseline}:estimators/fast_nsf.py"], cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout
    nsf_hand = {"tree": getattr(fast_nsf.FusedNSF, "hand_backward", False),
                "baseline": "FusedNSFPass" in base_nsf}
    base_training = subprocess.run(["git", "show", f"{baseline}:sbi_core/training.py"],
                                   cwd=ROOT, capture_output=True, text=True, check=True).stdout
    problem = simulators.get_problem(task)
    theta, x = simulate(problem, sims, seed=seed, progress=False).training_data()
    seen: dict = {}

    def capture(estimator, th, xx, cfg, loss_fn=None):
        seen.update(estimator=estimator, cfg=cfg, loss_fn=loss_fn)
        return training.train(estimator, th, xx, cfg, loss_fn=loss_fn)

    inference.train = capture
    # a short default fit: the estimator at a trained state, and its loss and settings
    fit(problem, (theta, x), seed=seed, max_epochs=20, progress=False, detector=False)
    est, cfg = seen["estimator"], seen["cfg"]
    loss_fn = seen["loss_fn"] or training._default_loss
    gen = torch.Generator().manual_seed(seed)
    data = training._TensorBatches(theta, x, cfg, gen, torch.device("cpu"))
    opt = training.make_adam(est.parameters(), 1e-4)  # a small rate: stays near the optimum
    # the weight average per side: where this tree keeps the weights as slices of one
    # tensor during training (`_one_storage`, wave 12), its one-operation update on this
    # side and the per-tensor update on the baseline's (the same weights either way)
    flat = training._one_storage(est) if hasattr(training, "_one_storage") else None
    emas = {"tree": training._WeightAverage(est, 0.99, flat) if flat is not None
            else training._WeightAverage(est, 0.99),
            "baseline": training._WeightAverage(est, 0.99)}
    params = list(est.parameters())
    max_norm = cfg.clip_max_norm or 5.0
    # the loop's gradient clipping: this tree's (a _GradientClipper where it has one) and
    # the baseline's (torch's clip_grad_norm_ unless its training.py has the clipper)
    tree_clip = training._GradientClipper(est, max_norm) \
        if hasattr(training, "_GradientClipper") else None
    clips = {"tree": tree_clip or (lambda: torch.nn.utils.clip_grad_norm_(params, max_norm)),
             "baseline": (training._GradientClipper(est, max_norm)
                          if "class _GradientClipper" in base_training else
                          (lambda: torch.nn.utils.clip_grad_norm_(params, max_norm)))}
    clip = clips["tree"]
    # the optimizer step and the minibatches: this tree's lean Adam step (`_AdamStep`) and
    # per-epoch gather where it has them; the baseline's torch `zero_grad` / `step` and one
    # index per minibatch unless its training.py has them too
    tree_step = training._AdamStep(opt) if hasattr(training, "_AdamStep") else None
    # this tree's autograd-free training step, where it has one (wave 11)
    tree_fused = training._fused_step(est, seen["loss_fn"]) \
        if hasattr(training, "_fused_step") else None
    base_lean = "class _AdamStep" in base_training
    # the baseline's autograd-free step where its fast_maf.py has one (wave 11 on): the
    # estimator's step built around the baseline's FusedNLLStep class
    base_fused = None
    npe_mod = importlib.import_module("estimators.npe")
    if tree_fused is not None and hasattr(base, "FusedNLLStep") and \
            hasattr(npe_mod, "FusedNLLStep"):
        own = npe_mod.FusedNLLStep
        npe_mod.FusedNLLStep = base.FusedNLLStep
        try:
            base_fused = training._fused_step(est, seen["loss_fn"])
        finally:
            npe_mod.FusedNLLStep = own
        # the steps differ; validation runs this tree's no-gradient pass on both sides
        sides["baseline"] = sides["tree"]

    # this tree's step on rows transformed once per run, where it offers that (`prepare`)
    tree_data = data
    if tree_fused is not None and callable(getattr(tree_fused, "prepare", None)):
        tree_data = copy.copy(data)
        with torch.no_grad():
            tree_data.theta_tr, tree_data.x_tr = tree_fused.prepare(data.theta_tr, data.x_tr)
        tree_fused = tree_fused.prepared

    def batches(lean: bool):
        if lean:
            rows = tree_data if side["name"] == "tree" else data
            yield from rows.epoch(gen, cfg.batch_size)
            return
        order = torch.randperm(data.num_train, generator=gen)
        for b in range(max(data.num_train // cfg.batch_size, 1)):
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            yield data.theta_tr[idx], data.x_tr[idx]

    side = {"name": "tree"}

    def epoch() -> None:
        est.train()
        ema = emas[side["name"]]
        lean = tree_step is not None and (side["name"] == "tree" or base_lean)
        for th, xx in batches(lean):
            step = tree_fused if side["name"] == "tree" else base_fused
            if step is not None:
                tree_step.zero_grad()
                step(th, xx)
            else:
                loss = loss_fn(est, th, xx).mean()
                if lean:
                    tree_step.zero_grad()
                else:
                    opt.zero_grad(set_to_none=True)
                loss.backward()
            clip()
            if lean:
                tree_step.step()
            else:
                opt.step()
            ema.update()
        with ema.swapped():
            training._evaluate_batches(est, loss_fn, data.validation(), torch.device("cpu"))

    times: dict[str, list[float]] = {"tree": [], "baseline": []}
    for b in range(blocks):
        for name in (("tree", "baseline") if b % 2 else ("baseline", "tree")):
            fast_maf.FusedMAF.log_prob, fast_maf.FusedMAF.forward_transform = sides[name]
            if hasattr(fast_nsf.FusedNSF, "hand_backward"):
                fast_nsf.FusedNSF.hand_backward = nsf_hand[name]
            clip = clips[name]
            side["name"] = name
            t0 = time.process_time()
            epoch()
            times[name].append(time.process_time() - t0)
    fast_maf.FusedMAF.log_prob, fast_maf.FusedMAF.forward_transform = sides["tree"]
    if hasattr(fast_nsf.FusedNSF, "hand_backward"):
        fast_nsf.FusedNSF.hand_backward = nsf_hand["tree"]
    med = {k: statistics.median(v) for k, v in times.items()}
    paired = [b / t for b, t in zip(times["baseline"], times["tree"])]
    return {"task": task, "epochs_each": blocks, "median_epoch_cpu_baseline": med["baseline"],
            "median_epoch_cpu_tree": med["tree"], "ratio": med["baseline"] / med["tree"],
            "median_paired_ratio": statistics.median(paired)}


def run_tree(tree: Path, task: str, sims_path: str, epochs: int, seed: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "npe_epoch_speed.py"),
                          "--worker", task, sims_path, str(epochs), str(seed)],
                         cwd=tree, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"worker failed in {tree}:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", help="git commit of the baseline code (required)")
    ap.add_argument("--tasks", nargs="+", default=["two_moons", "sir"])
    ap.add_argument("--sims", type=int, default=10_000)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write all rows here (rewritten after each row)")
    ap.add_argument("--interleaved", type=int, metavar="EPOCHS",
                    help="instead: EPOCHS epochs per side in one process, alternating the "
                    "baseline's and this tree's fused MAF pass epoch by epoch (this tree's "
                    "autograd-free training step where it has one)")
    ap.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        task, path, epochs, seed = args.worker
        worker(task, path, int(epochs), int(seed))
        return
    if not args.baseline:
        ap.error("--baseline COMMIT is required (e.g. --baseline b5f6677)")
    if args.interleaved:
        for task in args.tasks:
            load = os.getloadavg()[0]
            row = interleaved(task, args.baseline, args.sims, args.interleaved, args.seed)
            print(f"{task}: CPU s per epoch (median of {args.interleaved}) baseline "
                  f"{row['median_epoch_cpu_baseline']:.4f}, tree {row['median_epoch_cpu_tree']:.4f}"
                  f", ratio {row['ratio']:.3f} (median of paired ratios "
                  f"{row['median_paired_ratio']:.3f}); load {load:.2f}-{os.getloadavg()[0]:.2f}",
                  flush=True)
        return
    import numpy as np

    import simulators
    from sbi_core import simulate

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "baseline"
        base.mkdir()
        archive = subprocess.run(["git", "archive", args.baseline], cwd=ROOT,
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
        for task in args.tasks:
            sims = simulate(simulators.get_problem(task), args.sims, seed=args.seed,
                            progress=False)
            theta, x = sims.training_data()
            path = str(Path(tmp) / f"{task}.npz")
            np.savez(path, theta=theta.numpy(), x=x.numpy())
            for rep in range(args.reps):
                order = [("baseline", base), ("tree", ROOT)]
                if rep % 2:
                    order.reverse()
                res = {}
                load = os.getloadavg()[0]
                for name, tree in order:
                    res[name] = run_tree(tree, task, path, args.epochs, args.seed)
                row = {"task": task, "rep": rep, "load": round(load, 2),
                       "load_after": round(os.getloadavg()[0], 2), **{
                           f"{k}_{name}": v for name, r in res.items() for k, v in r.items()}}
                row["epoch_ratio"] = row["cpu_per_epoch_baseline"] / row["cpu_per_epoch_tree"]
                row["median_ratio"] = row["median_epoch_cpu_baseline"] / \
                    row["median_epoch_cpu_tree"]
                rows.append(row)
                print(f"{task} rep {rep}: CPU s/epoch baseline {row['cpu_per_epoch_baseline']:.4f}"
                      f" tree {row['cpu_per_epoch_tree']:.4f} (ratio {row['epoch_ratio']:.3f}); median epoch"
                      f" {row['median_epoch_cpu_baseline']:.4f} / {row['median_epoch_cpu_tree']:.4f}"
                      f" (ratio {row['median_ratio']:.3f});"
                      f" detector CPU s {row['detector_cpu_baseline']:.2f} /"
                      f" {row['detector_cpu_tree']:.2f}; val loss {row['val_loss_baseline']:.4f}"
                      f" / {row['val_loss_tree']:.4f}; load {row['load']}-{row['load_after']}",
                      flush=True)
                if args.json:
                    Path(args.json).write_text(json.dumps(rows, indent=1))
        for task in args.tasks:
            r = [row["epoch_ratio"] for row in rows if row["task"] == task]
            rm = [row["median_ratio"] for row in rows if row["task"] == task]
            b = [row["cpu_per_epoch_baseline"] for row in rows if row["task"] == task]
            t = [row["cpu_per_epoch_tree"] for row in rows if row["task"] == task]
            print(f"{task}: median CPU s/epoch baseline {statistics.median(b):.4f}, tree "
                  f"{statistics.median(t):.4f}, median ratio {statistics.median(r):.3f} "
                  f"(of per-epoch medians: {statistics.median(rm):.3f}; {len(r)} pairs)")


if __name__ == "__main__":
    main()
