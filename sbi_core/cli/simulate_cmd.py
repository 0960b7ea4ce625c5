"""``sbi-core simulate PROBLEM --num N --seed S --out FILE [--workers K]``."""

from __future__ import annotations

import argparse
import json

from sbi_core.cli.common import PROBLEM_HELP


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("simulate", help="simulate from the prior and save the simulations",
                       description="Draw parameters from the prior, simulate, and save a "
                                   "simulation file (.pt, or .npz).")
    p.add_argument("problem", metavar="PROBLEM", help=PROBLEM_HELP)
    p.add_argument("--num", type=int, required=True, help="number of simulations")
    p.add_argument("--seed", type=int, default=0, help="seed (results do not depend on --workers)")
    p.add_argument("--out", required=True, help="output file (.pt or .npz)")
    p.add_argument("--workers", type=int, default=1, help="local worker processes (-1: all cores)")
    p.add_argument("--chunk-size", type=int, default=1000, help="simulations per chunk")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def run(args: argparse.Namespace) -> int:
    from sbi_core.resolve import resolve_problem
    from sbi_core.simulation import simulate

    problem = resolve_problem(args.problem)
    sims = simulate(problem, args.num, seed=args.seed, workers=args.workers,
                    chunk_size=args.chunk_size, progress=not args.quiet)
    sims.save(args.out)
    print(json.dumps({"out": str(args.out), "num_simulations": len(sims),
                      "num_invalid": sims.num_invalid,
                      "first_error": sims.provenance.get("first_error")}))
    return 0
