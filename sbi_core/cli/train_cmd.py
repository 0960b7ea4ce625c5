"""``sbi-core train --sims FILE --method npe --out MODEL [--stream] [--ddp]``.

``--stream`` trains from a zarr store chunk by chunk with bounded memory; ``--ddp``
trains data-parallel across the processes started by ``torchrun`` (rank 0 saves).
"""

from __future__ import annotations

import argparse
import json

from sbi_core.cli.common import (
    PROBLEM_HELP,
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
    p.add_argument("--flow", choices=["maf", "nsf", "fmaf", "mdn"], help="NPE density estimator")
    p.add_argument("--theta-transform", choices=["unconstrained"],
                   help="NPE: learn the posterior in the prior's unconstrained space (samples "
                        "always inside a bounded prior: no rejection, no leakage)")
    p.add_argument("--embedding", metavar="SPEC",
                   help="embedding network for x (npe, nre, fmpe, npse, pfn): a built-in type "
                        "(mlp, set, cnn1d, tcn, gru, lstm, transformer, cnn2d), a JSON spec "
                        "('{\"type\": \"cnn1d\", \"channels\": [8, 16]}'), or "
                        "module:function / file.py:function returning your own nn.Module "
                        "(pass the same to sample/diagnose/serve; docs/embeddings.md)")
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
    p.add_argument("--stream", action="store_true",
                   help="stream a PATH.zarr store from disk instead of loading it into memory")
    p.add_argument("--ddp", action="store_true",
                   help="data-parallel training under torchrun (gloo on CPU, NCCL on GPU)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
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
    }.items() if v is not None}
    if args.ddp:
        options["distributed"] = True
    posterior = fit(problem, sims, method=args.method, seed=args.seed, device=device,
                    progress=None if main_process and not args.quiet else False,
                    streaming=args.stream, **options)
    if args.ddp:
        from sbi_core.distributed import shutdown_distributed

        shutdown_distributed()
    if not main_process:
        return 0
    save(posterior, out)
    h = posterior.history
    print(json.dumps({"out": str(args.out), "method": args.method, "epochs": h.get("epochs"),
                      "train_seconds": round(h.get("seconds", 0.0), 2),
                      "best_validation_loss": h.get("best_validation_loss"),
                      "stopped": h.get("stopped"),
                      "final_train_loss": (h.get("train_loss") or [None])[-1]}))
    return 0
