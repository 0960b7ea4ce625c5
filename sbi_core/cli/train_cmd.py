"""``sbi-core train --sims FILE --method npe --out MODEL [--preset fast|accurate] [--stream] [--ddp]``.

``--stream`` trains from a zarr store chunk by chunk with bounded memory; ``--ddp``
trains data-parallel across the processes started by ``torchrun`` (rank 0 saves).
``--log-dir runs/`` logs the training curves, the config and the outcome to TensorBoard
(``runs/<model name>-<time>``; extra ``sbi-core[tracking]``), ``--mlflow`` to MLflow;
``--report-card`` runs the diagnostics after training, saves them in the model and logs
their metrics too (docs/tracking_and_export.md).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from sbi_core.cli.common import (
    PROBLEM_HELP,
    add_embedding,
    add_force,
    nonnegative_float,
    positive_float,
    positive_int,
)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from sbi_core.methods import available_methods

    p = sub.add_parser("train", help="train an amortized posterior on simulations",
                       description="Train an estimator on a simulation file and save the "
                                   "posterior as one safe model file.")
    p.add_argument("--sims", required=True,
                   help="simulation file from `sbi-core simulate`, or an .npz with theta and x")
    p.add_argument("--method", default="npe", help=f"one of {', '.join(available_methods())}")
    p.add_argument("--out", required=True, help="model file to write (.pt)")
    p.add_argument("--problem", help=f"problem whose prior applies (needed for .npz): {PROBLEM_HELP}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--flow", choices=["auto", "fmaf", "fnsf", "maf", "nsf", "mdn"],
                   help="NPE density estimator (default auto: fnsf when x declares trials, else fmaf; "
                        "docs/npe.md)")
    p.add_argument("--preset", choices=["fast", "accurate"],
                   help="NPE training preset (default accurate; fast stops at a coarser "
                        "optimum sooner; explicit --batch-size/--learning-rate win)")
    p.add_argument("--theta-transform", choices=["unconstrained"],
                   help="NPE: learn the posterior in the prior's unconstrained space (samples "
                        "always inside a bounded prior: no rejection, no leakage)")
    add_embedding(p, "npe, nre, fmpe, npse, pfn")
    p.add_argument("--ensemble", type=positive_int, metavar="K",
                   help="npe: train K members as one batched model; the posterior is their "
                        "mixture (docs/ensembles.md)")
    p.add_argument("--max-epochs", type=positive_int)
    p.add_argument("--max-seconds", type=positive_float, help="wall-time cap on training")
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--learning-rate", type=positive_float)
    p.add_argument("--regularizer", choices=["fim", "noise"],
                   help="NPE adversarial defense: FIM-trace regularizer or noise augmentation "
                        "(see docs/robustness.md)")
    p.add_argument("--beta", type=nonnegative_float,
                   help="weight of the FIM-trace regularizer (0.05)")
    p.add_argument("--fim-samples", type=positive_int,
                   help="Monte Carlo samples of the FIM trace (5)")
    p.add_argument("--fim-ema", type=positive_float,
                   help="EMA weight of the newest FIM gradient (0.85)")
    p.add_argument("--noise-eps", type=positive_float,
                   help="noise augmentation radius relative to the data scale (0.2)")
    p.add_argument("--discrete-columns", type=int, nargs="+", metavar="COL",
                   help="flattened-x columns holding integer codes (mnle, npe); default: the "
                        "problem's x_discrete")
    p.add_argument("--log-columns", type=int, nargs="+", metavar="COL",
                   help="mnle: positive continuous columns modelled on the log scale")
    p.add_argument("--context-size", type=positive_int, metavar="N",
                   help="incontext: use a random subsample of N simulations as the context "
                        "(the pretrained model takes 8 to 1000)")
    p.add_argument("--stream", action="store_true",
                   help="stream a PATH.zarr store from disk instead of loading it into memory")
    p.add_argument("--ddp", action="store_true",
                   help="data-parallel training under torchrun (gloo on CPU, NCCL on GPU)")
    p.add_argument("--x", metavar="FILE",
                   help="the observation for methods fitted to one observation (abc, smc_abc): "
                        ".csv/.npy/.json; several rows are one set of iid observations")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="method option (JSON value), e.g. quantile=0.01 or "
                        "num_simulations=20000; repeatable")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--log-dir", metavar="DIR",
                   help="TensorBoard: write this run's event files to DIR/<model name>-<time> "
                        "(view with tensorboard --logdir DIR)")
    p.add_argument("--mlflow", action="store_true",
                   help="log to MLflow (its active run or a new one; MLFLOW_TRACKING_URI "
                        "says where; extra sbi-core[mlflow])")
    p.add_argument("--report-card", action="store_true",
                   help="after training, run the report card (needs the problem's simulator), "
                        "save it in the model and log its metrics")
    p.add_argument("--report-num", type=positive_int, default=200,
                   help="test pairs of --report-card (default 200)")
    add_force(p)
    return p


def run(args: argparse.Namespace) -> int:
    from sbi_core.atomic import check_output
    from sbi_core.cli.common import problem_file, problem_for_sims, problem_for_sims_provenance
    from sbi_core.inference import fit
    from sbi_core.resolve import resolve_embedding
    from sbi_core.serialization import save
    from sbi_core.simulation_set import SimulationSet

    out = check_output(args.out, "model", inputs=[args.sims, problem_file(args.problem)],
                       force=args.force)
    if args.fim_ema is not None and args.fim_ema > 1:
        raise ValueError(f"--fim-ema must be in (0, 1], got {args.fim_ema}.")
    device, main_process = args.device, True
    if args.ddp:
        from sbi_core.distributed import init_distributed, is_main_process

        device = init_distributed(args.device)
        main_process = is_main_process()
    if args.stream:
        if not str(args.sims).rstrip("/").endswith(".zarr"):
            raise ValueError("--stream needs a zarr store (--sims PATH.zarr from "
                             "`sbi-core simulate ... --out PATH.zarr`).")
        from sbi_core.stores import SimulationStore

        store = SimulationStore(args.sims)
        problem = problem_for_sims_provenance(store.provenance(), args.problem, args.sims)
        sims = args.sims
    else:
        sims = SimulationSet.load(args.sims)
        problem = problem_for_sims(sims, args.problem, args.sims)
    options = {k: v for k, v in {
        "flow": args.flow, "theta_transform": args.theta_transform, "max_epochs": args.max_epochs, "max_seconds": args.max_seconds,
        "batch_size": args.batch_size, "learning_rate": args.learning_rate,
        "regularizer": args.regularizer, "beta": args.beta, "fim_samples": args.fim_samples,
        "fim_ema": args.fim_ema, "noise_eps": args.noise_eps,
        "embedding": resolve_embedding(args.embedding),
        "discrete_columns": args.discrete_columns, "log_columns": args.log_columns,
        "ensemble": args.ensemble,
        "context_size": args.context_size,
    }.items() if v is not None}
    if args.x is not None or args.option:
        from sbi_core.cli.benchmark_cmd import parse_options
        from sbi_core.io import read_observations

        options.update(parse_options(args.option))
        if args.x is not None:
            obs = read_observations(args.x, tuple(problem.x_shape or ()), problem.x_names)
            options["x_o"] = obs[0] if obs.shape[0] == 1 else obs
    if args.ddp:
        options["distributed"] = True
    loggers = _loggers(args, out, problem) if main_process else []
    if loggers:
        options["callbacks"] = loggers
    posterior = fit(problem, sims, method=args.method, seed=args.seed, device=device,
                    progress=None if main_process and not args.quiet else False,
                    streaming=args.stream, preset=args.preset, **options)
    if args.ddp:
        from sbi_core.distributed import shutdown_distributed

        shutdown_distributed()
    if not main_process:
        return 0
    report = None
    if args.report_card:
        from diagnostics.report import diagnose

        save(posterior, out, any_name=args.force)  # the trained model first: nothing trained is lost if this fails
        try:
            report = diagnose(posterior, problem, num=args.report_num, seed=args.seed,
                              progress=None if not args.quiet else False)
        except KeyboardInterrupt:
            print(f"sbi-core train: interrupted in the report card; the trained model is saved "
                  f"in {out} (without the report card: `sbi-core diagnose {shlex.quote(str(out))}"
                  " --problem ...` makes it).", file=sys.stderr)
            return 130
        report.save()
        print(report.summary())
    save(posterior, out, any_name=args.force)
    for logger in loggers:
        if report is not None:
            logger.log_report(report.to_dict(), step=max(posterior.history.get("epochs", 1) - 1, 0))
        logger.close()
    h = posterior.history
    print(json.dumps({"out": str(args.out), "method": posterior.method, "epochs": h.get("epochs"),
                      "train_seconds": round(h.get("seconds", 0.0), 2),
                      "best_validation_loss": h.get("best_validation_loss"),
                      "stopped": h.get("stopped"),
                      "detector_stopped": h.get("detector_stopped"),
                      "final_train_loss": (h.get("train_loss") or [None])[-1],
                      "report_card": report.status if report is not None else None,
                      "log_dir": next((lg.log_dir for lg in loggers if hasattr(lg, "log_dir")),
                                      None)}))
    return 0


def _loggers(args: argparse.Namespace, out, problem) -> list:
    """The TensorBoard / MLflow callbacks asked for on the command line."""
    import time
    from pathlib import Path

    from sbi_core.tracking import MLflowLogger, TensorBoardLogger

    params = {"method": args.method, "problem": problem.name, "sims": str(args.sims),
              "out": str(args.out), "seed": args.seed,
              "options": {k: v for k, v in vars(args).items()
                          if k in ("flow", "preset", "theta_transform", "embedding", "max_epochs",
                                   "max_seconds", "batch_size", "learning_rate", "regularizer")
                          and v is not None}}
    loggers: list = []
    if args.log_dir:
        base = Path(args.log_dir)
        if base.exists() and not base.is_dir():
            raise ValueError(f"--log-dir {base} is a file; pass a folder (e.g. runs/).")
        run_dir = base / f"{Path(out).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        loggers.append(TensorBoardLogger(run_dir, params=params))
    if args.mlflow:
        loggers.append(MLflowLogger(params=params))
    return loggers
