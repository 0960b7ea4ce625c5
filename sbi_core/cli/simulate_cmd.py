"""``sbi-core simulate PROBLEM --num N --seed S --out FILE [--workers K | --dask ADDRESS]``.

With ``--out PATH.zarr`` the simulations go chunk by chunk into a crash-safe zarr store
(``sbi-core[scale]``); after a crash or kill, rerun the same command with ``--resume``.
"""

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
    p.add_argument("--out", required=True,
                   help="output file (.pt or .npz), or a resumable zarr store (PATH.zarr)")
    p.add_argument("--resume", action="store_true",
                   help="complete (or extend to --num) an interrupted PATH.zarr store")
    p.add_argument("--dask", metavar="ADDRESS",
                   help="run chunks on Dask: tcp://HOST:PORT of a scheduler, or local:N")
    p.add_argument("--workers", type=int, default=1, help="local worker processes (-1: all cores)")
    p.add_argument("--chunk-size", type=int, default=1000, help="simulations per chunk")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def run(args: argparse.Namespace) -> int:
    from sbi_core.resolve import resolve_problem
    from sbi_core.simulation import simulate

    is_store = str(args.out).rstrip("/").endswith(".zarr")
    if args.resume and not is_store:
        raise ValueError("--resume needs a zarr store: --out PATH.zarr.")
    if args.dask and args.workers != 1:
        raise ValueError("Use either --workers (local processes) or --dask, not both.")
    problem = resolve_problem(args.problem)
    if is_store:  # never loads the store into memory: it may exceed it
        from sbi_core.simulation import chunk_plan, chunk_source
        from sbi_core.stores import simulate_into_store

        store = simulate_into_store(problem, chunk_plan(args.num, args.seed, args.chunk_size),
                                    chunk_source(args.workers, args.dask), args.out,
                                    seed=args.seed, chunk_size=args.chunk_size,
                                    resume=args.resume, progress=False if args.quiet else None,
                                    return_data=False)
        prov = store.provenance()
    else:
        sims = simulate(problem, args.num, seed=args.seed, workers=args.workers,
                        chunk_size=args.chunk_size, progress=False if args.quiet else None,
                        executor=args.dask)
        sims.save(args.out)
        prov = sims.provenance
    print(json.dumps({"out": str(args.out), "num_simulations": prov["num_simulations"],
                      "num_invalid": prov["num_invalid"],
                      "first_error": prov.get("first_error")}))
    return 0
