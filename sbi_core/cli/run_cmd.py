"""``sbi-core run PROBLEM --x obs.csv --method tsnpe --rounds 5 --sims-per-round 1000
--out model.pt [--store run.zarr --resume]``: sequential inference for one observation.

Each round simulates, then trains on all rounds so far (:mod:`sbi_core.sequential`); one
progress line per round goes to stderr and a JSON summary with the per-round history to
stdout. With ``--store`` the simulations and each finished round are kept on disk, and
``--resume`` continues a killed run where it stopped (same result).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from sbi_core.cli.common import (
    PROBLEM_HELP,
    add_embedding,
    add_force,
    positive_float,
    positive_int,
)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from sbi_core.sequential import SEQUENTIAL_METHODS

    p = sub.add_parser("run", help="sequential inference focused on one observation",
                       description="Run rounds of simulate -> train focused on one observation "
                                   "(TSNPE, SNPE-C, SNLE, SNRE) and save the final posterior. "
                                   "The model is valid for that observation (or the "
                                   "truncation region) only; see docs/sequential.md.")
    p.add_argument("problem", metavar="PROBLEM", help=PROBLEM_HELP)
    p.add_argument("--x", required=True,
                   help=".csv, .npy or .json holding the one observation x_o")
    p.add_argument("--method", default="tsnpe", choices=sorted(SEQUENTIAL_METHODS),
                   help="tsnpe (default), snpe_c, snle or snre")
    p.add_argument("--rounds", type=positive_int, default=5)
    p.add_argument("--sims-per-round", type=positive_int, default=1000)
    p.add_argument("--out", required=True, help="model file to write (.pt)")
    p.add_argument("--store", help="zarr store for the simulations and the run's state "
                                   "(needed for --resume)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --store where it stopped")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epsilon", type=positive_float, default=1e-4,
                   help="tsnpe: posterior mass left outside the truncation region (1e-4)")
    p.add_argument("--restrict", action="store_true",
                   help="tsnpe/snpe_c: learn where the simulator fails and propose only where "
                        "it is predicted to work")
    p.add_argument("--workers", type=positive_int, default=1, help="simulation processes")
    p.add_argument("--timeout", type=positive_float,
                   help="seconds one simulation chunk may run (recorded invalid past it)")
    p.add_argument("--flow", help="density estimator of tsnpe/snpe_c (fmaf, nsf, mdn, ...); "
                   "snpe_c with mdn trains with the exact non-atomic loss, the strong choice at "
                   "small budgets (docs/sequential.md)")
    add_embedding(p, "tsnpe, snpe_c, snre")
    p.add_argument("--round-steps", type=_round_steps, default="auto",
                   help="tsnpe: optimizer steps of each round before the last ('auto': "
                        "max(300, 0.5 x sims per round); 'none': train those rounds to "
                        "convergence, as before 2026-12-01; or a positive integer)")
    p.add_argument("--final-steps", type=_round_steps, default="auto",
                   help="tsnpe: optimizer steps of the last round, warm-started from the round "
                        "before ('auto': max(1000, 0.25 x total simulations) from 2,000 total "
                        "simulations on, cosine schedules only; 'none': the preset's full "
                        "schedule; or a positive integer)")
    p.add_argument("--region-temperature", type=_region_temperature, default="auto",
                   help="tsnpe: widen each round's truncation region to that of its posterior "
                        "tempered by T ('auto': T = max(1, sqrt(1000 / simulations so far)), "
                        "wider only below 1,000 simulations; 'none' or 1: the plain region; "
                        "or a number >= 1)")
    p.add_argument("--region-union", choices=("off", "on", "auto"), default="off",
                   help="tsnpe: unite each round's region with the previous round's ('auto': "
                        "only below 1,000 simulations; keeps more of the true posterior at "
                        "small budgets, costs accuracy; docs/sequential.md)")
    p.add_argument("--max-epochs", type=positive_int)
    p.add_argument("--max-seconds", type=positive_float, help="wall-time cap per round's training")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--quiet", action="store_true", help="no per-round progress lines")
    add_force(p)
    return p


def _auto_none_or(text: str, parse: type, valid: Any, what: str) -> Any:
    """``auto``, ``none`` (-> None) or ``parse(text)`` if ``valid`` of it, else a usage error
    naming the accepted values (``what``)."""
    if text.lower() in ("auto", "none"):
        return None if text.lower() == "none" else "auto"
    try:
        value = parse(text)
    except ValueError:
        value = None
    if value is None or not valid(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not 'auto', 'none' or {what}.")
    return value


def _round_steps(text: str) -> int | str | None:
    """``--round-steps`` / ``--final-steps``: ``auto``, ``none`` or a positive integer."""
    return _auto_none_or(text, int, lambda v: v >= 1, "a positive integer (optimizer steps)")


def _region_temperature(text: str) -> float | str | None:
    """``--region-temperature``: ``auto``, ``none`` or a number >= 1."""
    return _auto_none_or(text, float, lambda v: math.isfinite(v) and v >= 1,
                         "a number >= 1 (1: the plain region)")


def run(args: argparse.Namespace) -> int:
    from sbi_core.atomic import check_output
    from sbi_core.cli.common import problem_file
    from sbi_core.io import read_observations
    from sbi_core.resolve import resolve_embedding, resolve_problem
    from sbi_core.sequential import run_sequential
    from sbi_core.serialization import save

    out = check_output(args.out, "model", inputs=[args.x, problem_file(args.problem), args.store],
                       force=args.force)
    if args.store is not None:
        if not str(args.store).rstrip("/").endswith(".zarr"):
            raise ValueError(f"--store {args.store}: name the store PATH.zarr.")
        check_output(args.store, "zarr", inputs=[args.x, problem_file(args.problem)],
                     flag="--store")
    if args.resume and args.store is None:
        raise ValueError("--resume needs --store PATH.zarr of the interrupted run.")
    problem = resolve_problem(args.problem)
    xs = read_observations(args.x, tuple(problem.x_shape or ()), problem.x_names)
    if xs.shape[0] != 1:
        raise ValueError(f"{args.x} holds {xs.shape[0]} observations; sequential inference is "
                         "for one observation x_o (one row). For many observations train an "
                         "amortized posterior with `sbi-core simulate` + `sbi-core train`.")
    options = {k: v for k, v in {"max_epochs": args.max_epochs, "max_seconds": args.max_seconds,
                                 "device": args.device, "flow": args.flow,
                                 "embedding": resolve_embedding(args.embedding)}.items()
               if v is not None}
    try:
        result = run_sequential(problem, xs[0], method=args.method, rounds=args.rounds,
                                sims_per_round=args.sims_per_round, seed=args.seed,
                                store=args.store, resume=args.resume, epsilon=args.epsilon,
                                restrict=args.restrict, workers=args.workers,
                                timeout=args.timeout, progress=not args.quiet,
                                round_steps=args.round_steps, final_steps=args.final_steps,
                                region_temperature=args.region_temperature,
                                region_union={"off": False, "on": True,
                                              "auto": "auto"}[args.region_union], **options)
    except KeyboardInterrupt:  # say what is kept and how to go on, in command-line words
        if args.store is not None:
            kept = (f"the finished rounds and simulations are kept in {args.store}: rerun the "
                    "same command with --resume to go on (same result as an uninterrupted run).")
        else:
            kept = ("nothing is kept (no --store): to make a run resumable, give --store "
                    "PATH.zarr and after an interruption rerun the same command with --resume.")
        print(f"sbi-core run: interrupted; {kept}", file=sys.stderr)
        return 130
    save(result.posterior, out, any_name=args.force)
    print(json.dumps({"out": str(args.out), "method": args.method,
                      "total_simulations": result.history[-1].total_simulations,
                      "rounds": result.table()}))
    return 0
