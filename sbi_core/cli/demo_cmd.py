"""``sbi-core demo``: the whole job on built-in defaults.

Two moons, 10,000 simulations, NPE (a progress bar shows the epoch and the validation
loss on a terminal), 10,000 posterior samples for observation 1, C2ST against exact
reference samples, the report card (calibration checks, saved inside the model so the
explorer of `sbi-core serve` shows it, and as report.json), a pairplot of the posterior
over the reference in every panel, and the saved model. The last line printed is a JSON
summary.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sbi_core.cli.common import positive_int


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("demo", help="run the whole pipeline on two moons (no arguments needed)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="sbi-core-demo", help="output folder (default: sbi-core-demo)")
    p.add_argument("--problem", default="two_moons", help="built-in problem (default two_moons)")
    p.add_argument("--num-simulations", type=int, default=10_000)
    p.add_argument("--num-samples", type=int, default=10_000)
    p.add_argument("--observation", type=int, default=1, help="which of the 10 observations")
    p.add_argument("--flow", default="fmaf", choices=["auto", "fmaf", "fnsf", "maf", "nsf", "mdn"],
                   help="NPE density estimator (auto: fnsf when x declares trials, else fmaf; default fmaf; "
                        "fmaf / fnsf: sbi-core's fused MAF / NSF; maf, nsf: nflows)")
    p.add_argument("--preset", choices=["fast", "accurate"], default=None,
                   help="NPE training preset (default accurate)")
    p.add_argument("--theta-transform", choices=["unconstrained"], default=None,
                   help="learn the posterior in the prior's unconstrained space (no rejection)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--max-seconds", type=float, default=None, help="cap on training time")
    p.add_argument("--report-num", type=positive_int, default=100,
                   help="test pairs of the report card (default 100)")
    p.add_argument("--report-samples", type=positive_int, default=500,
                   help="posterior samples per test pair of the report card (default 500)")
    p.add_argument("--no-report", action="store_true", help="skip the report card")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def run(args: argparse.Namespace) -> int:
    import torch

    from sbi_core.atomic import check_output
    from sbi_core.cli.common import step
    from sbi_core.inference import fit
    from sbi_core.resolve import resolve_problem
    from sbi_core.serialization import save
    from sbi_core.simulation import simulate

    out = check_output(args.out, "directory")
    if args.num_simulations < 10 or args.num_samples < 1:
        raise ValueError("--num-simulations must be at least 10 and --num-samples at least 1.")
    if not args.no_report and (args.report_num < 2 or args.report_samples < 2):
        # checked before training: the card refuses them only after it (diagnostics.report)
        raise ValueError(f"--report-num {args.report_num} / --report-samples "
                         f"{args.report_samples}: the report card needs at least 2 test pairs "
                         "and 2 posterior samples each (defaults 100 and 500); raise them or "
                         "pass --no-report.")
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    progress = False if args.quiet else None  # None: a bar on a terminal (sbi_core.progress)
    problem = resolve_problem(args.problem)
    x_o = problem.observation(args.observation)
    with step(f"simulating {args.num_simulations} x {problem.name}") as s_sim:
        sims = simulate(problem, args.num_simulations, seed=args.seed, workers=args.workers,
                        progress=False)
        s_sim["note"] = f"{sims.num_invalid} invalid"
    with step(f"training NPE ({args.flow})") as s_train:
        posterior = fit(problem, sims, method="npe", flow=args.flow, seed=args.seed,
                        preset=args.preset,
                        progress=progress, max_seconds=args.max_seconds,
                        theta_transform=args.theta_transform)
        stopped = posterior.history.get("stopped")
        s_train["note"] = (f"{posterior.history['epochs']} epochs, flow "
                           f"{posterior.estimator.config.get('flow')}"
                           + (", stopped by Ctrl-C: the best weights so far are used"
                              if stopped == "interrupted" else ""))
    model_path = out / "model.pt"
    plot_path = out / "pairplot.png"
    # the trained model is saved at once (a Ctrl-C in the checks below keeps it), and files
    # of an earlier run into this folder, which describe another model, are removed
    for stale in (out / "report.json", plot_path):
        stale.unlink(missing_ok=True)
    save(posterior, model_path)
    try:
        return _check_and_save(args, problem, posterior, x_o, out, model_path, plot_path,
                               progress, s_sim, s_train, stopped)
    except KeyboardInterrupt:
        print(f"sbi-core demo: interrupted; the trained model is saved in {model_path} "
              "(without the report card and pairplot).", file=sys.stderr)
        return 130


def _check_and_save(args: argparse.Namespace, problem, posterior, x_o, out: Path,
                    model_path: Path, plot_path: Path, progress: bool | None, s_sim: dict,
                    s_train: dict, stopped: str | None) -> int:
    """Sample, C2ST against the reference, the report card, the pairplot; save them."""
    from diagnostics.c2st import c2st
    from diagnostics.plots import pairplot
    from diagnostics.report import diagnose
    from sbi_core.atomic import atomic_write
    from sbi_core.cli.common import step
    from sbi_core.io import write_json
    from sbi_core.serialization import save

    with step(f"drawing {args.num_samples} posterior samples for observation {args.observation}") \
            as s_sample:
        samples = posterior.sample((args.num_samples,), x=x_o, seed=args.seed)
    with step("reference posterior samples") as s_ref:
        reference = problem.reference_posterior(x_o, args.num_samples, args.seed)
    with step("C2ST against the reference (0.5 = perfect)") as s_c2st:
        score = c2st(samples, reference, seed=args.seed)
        s_c2st["note"] = f"c2st = {score:.3f}"
    report = None
    if not args.no_report:
        with step(f"report card ({args.report_num} test pairs x {args.report_samples} "
                  "samples)") as s_report:
            report = diagnose(posterior, problem, num=args.report_num,
                              num_samples=args.report_samples, seed=args.seed,
                              progress=progress)
            report.save()  # into posterior.diagnostics: saved with the model below
            s_report["note"] = report.status
        print(report.summary())
    with step("saving the model, the report card and the pairplot"):
        save(posterior, model_path)
        if report is not None:
            write_json(out / "report.json", report.to_dict())
        with atomic_write(plot_path) as tmp_plot:
            # the reference is overlaid on the posterior in every panel (1-D and 2-D)
            pairplot(samples, problem.param_names, reference=reference,
                     truth=problem.true_parameters(args.observation), path=tmp_plot,
                     title=f"{problem.name}: NPE vs reference (C2ST {score:.3f})")
    summary = {
        "problem": problem.name,
        "num_simulations": args.num_simulations,
        "c2st": round(score, 4),
        "train_seconds": round(s_train["seconds"], 2),
        "epochs": posterior.history["epochs"],
        "stopped": stopped,
        "sample_seconds": round(s_sample["seconds"], 3),
        "simulate_seconds": round(s_sim["seconds"], 2),
        "reference_seconds": round(s_ref["seconds"], 2),
        "report_card": report.status if report is not None else None,
        "report": str(out / "report.json") if report is not None else None,
        "model": str(model_path),
        "pairplot": str(plot_path),
    }
    print(json.dumps(summary))
    return 0
