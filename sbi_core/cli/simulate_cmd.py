"""``sbi-core simulate PROBLEM (--num N | --theta FILE) --out FILE [--workers K | --dask ADDR]``.

With ``--out PATH.zarr`` the simulations go chunk by chunk into a crash-safe zarr store
(``sbi-core[scale]``); after a crash, kill or Ctrl-C, rerun the same command with
``--resume`` (add ``--repair`` to re-simulate chunks damaged on disk). ``--theta`` simulates
at given parameters (a ``.npy`` array or a ``.csv`` table, ``(N, D)``) instead of prior draws.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

from sbi_core.cli.common import PROBLEM_HELP, add_force, positive_int
from sbi_core.display import from_spreadsheet_safe


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("simulate", help="simulate from the prior (or at given θ) and save",
                       description="Draw parameters from the prior (or take them from --theta), "
                                   "simulate, and save a simulation file (.pt, .npz) or a "
                                   "resumable zarr store (PATH.zarr).")
    p.add_argument("problem", metavar="PROBLEM", help=PROBLEM_HELP)
    p.add_argument("--num", type=positive_int, help="number of simulations (prior draws); with --theta "
                                           "it defaults to (and must equal) its rows")
    p.add_argument("--theta", metavar="FILE",
                   help="simulate at these parameters: .npy array (N, D) or .csv (N rows of D "
                        "numbers, optional header of parameter names)")
    p.add_argument("--seed", type=int, default=0, help="seed (results do not depend on --workers)")
    p.add_argument("--out", required=True,
                   help="output file (.pt or .npz), or a resumable zarr store (PATH.zarr)")
    p.add_argument("--resume", action="store_true",
                   help="complete (or extend to --num) an interrupted PATH.zarr store")
    p.add_argument("--repair", action="store_true",
                   help="with --resume: re-simulate committed chunks that are damaged on disk "
                        "(same seeds, same result as an undamaged run)")
    p.add_argument("--append", action="store_true",
                   help="with --theta and PATH.zarr: add these θ after the rows the store holds")
    p.add_argument("--dask", metavar="ADDRESS",
                   help="run chunks on Dask: tcp://HOST:PORT of a scheduler, or local:N")
    p.add_argument("--workers", type=int, default=1, help="local worker processes (-1: all cores)")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="per-chunk time limit: the chunk runs in a worker process that is killed "
                        "after SECONDS, its rows recorded as invalid")
    p.add_argument("--isolate", action="store_true",
                   help="run chunks in a supervised worker process (the default on the command "
                        "line, kept for scripts that pass it): a simulator that kills its "
                        "process becomes recorded failures, never a silent exit")
    p.add_argument("--in-process", action="store_true",
                   help="with --workers 1, run chunks in this process instead (a simulator "
                        "that calls os._exit or crashes then ends sbi-core too)")
    p.add_argument("--chunk-size", type=positive_int, default=1000, help="simulations per chunk")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_force(p)
    return p


def read_theta_file(path: str | Path, param_names: list[str] | None = None) -> np.ndarray:
    """Parameters ``(N, D)`` from a ``.npy`` or ``.csv`` file (never executes anything)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No theta file at {path}.")
    if path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except ValueError as err:
            raise ValueError(f"{path} is not a plain numeric .npy array ({err}).") from err
        return np.asarray(arr, dtype=np.float64)
    if path.suffix == ".csv":
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # a BOM (Excel) dropped
        skip = 0
        if lines:
            first = [c.strip() for c in lines[0].split(",")]
            try:
                [float(c) for c in first]
            except ValueError:
                skip = 1
                numeric = [c for c in first if _is_number(c)]
                if numeric and len(first) > 1:  # data with a typo, not a header of names
                    bad = [c for c in first if not _is_number(c)]
                    raise ValueError(
                        f"{path} line 1 {first} mixes numbers with {bad}, which are not numbers; "
                        "it is neither a header of parameter names nor a row of θ. Fix the value"
                        + (f" (a header, if any, is {','.join(param_names)})."
                           if param_names is not None else ".")) from None
                if param_names is not None and [from_spreadsheet_safe(c) for c in first] != list(
                        param_names):  # a header sbi-core wrote has names made spreadsheet-safe
                    hint = (" Separate values with commas." if len(first) == 1
                            and any(d in first[0] for d in ";\t ") else "")
                    raise ValueError(f"{path} has columns {first}; the problem's parameters are "
                                     f"{list(param_names)} (in this order).{hint}") from None
        try:
            return np.loadtxt(lines, delimiter=",", skiprows=skip, ndmin=2, dtype=np.float64)
        except ValueError as err:
            raise ValueError(f"{path} is not a numeric CSV table of θ ({err}).") from err
    raise ValueError(f"--theta takes a .npy or .csv file, got {path}.")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def run(args: argparse.Namespace) -> int:
    from sbi_core.atomic import check_output
    from sbi_core.cli.common import problem_file
    from sbi_core.resolve import resolve_problem
    from sbi_core.simulation import simulate

    is_store = str(args.out).rstrip("/").endswith(".zarr")
    check_output(args.out, "zarr" if is_store else "simulations",
                 inputs=[problem_file(args.problem), args.theta], force=args.force)
    if (args.resume or args.repair or args.append) and not is_store:
        raise ValueError("--resume, --repair and --append need a zarr store: --out PATH.zarr.")
    if args.repair and not args.resume:
        raise ValueError("--repair checks an existing store: add --resume.")
    if args.append and not args.theta:
        raise ValueError("--append adds given parameters: pass --theta FILE (to add prior draws, "
                         "--resume with a larger --num).")
    if args.dask and args.workers != 1:
        raise ValueError("Use either --workers (local processes) or --dask, not both.")
    if args.num is None and not args.theta:
        raise ValueError("Pass --num N (prior draws) or --theta FILE (given parameters).")
    problem = resolve_problem(args.problem)
    theta = None
    if args.theta:
        from sbi_core.simulation import validate_theta

        theta = validate_theta(problem, read_theta_file(args.theta, list(problem.param_names)))
        if args.num is not None and args.num != len(theta) and not args.append:
            raise ValueError(f"--num {args.num} but {args.theta} has {len(theta)} rows; omit "
                             "--num with --theta.")
    try:
        if is_store:  # never loads the store into memory: it may exceed it
            from sbi_core.simulation import chunk_source
            from sbi_core.stores import simulate_into_store

            store = simulate_into_store(
                problem, None, chunk_source(args.workers, args.dask, timeout=args.timeout,
                                            isolate=_isolate(args), chunk_size=args.chunk_size),
                args.out, seed=args.seed, chunk_size=args.chunk_size,
                resume=args.resume or args.append, progress=False if args.quiet else None, return_data=False,
                num_simulations=None if theta is not None else args.num, theta=theta,
                repair=args.repair, append=args.append)
            prov = store.provenance()
            if prov["num_invalid"]:
                prov["invalid_columns"] = store.invalid_summary()
            extra = {"repaired_chunks": store.repaired} if args.repair else {}
        else:
            with warnings.catch_warnings():  # said once already, when --theta was read
                warnings.filterwarnings("ignore", message=r".* given theta lie outside the "
                                        "prior's support")
                sims = simulate(problem, None if theta is not None else args.num,
                                seed=args.seed, workers=args.workers, chunk_size=args.chunk_size,
                                progress=False if args.quiet else None, executor=args.dask,
                                theta=theta, timeout=args.timeout, isolate=_isolate(args))
            sims.save(args.out, any_name=args.force)
            prov, extra = sims.provenance, {}
    except KeyboardInterrupt as err:  # one line, whatever the workers were doing
        detail = str(err) or "interrupted"
        if not detail.startswith("interrupted"):
            detail = "interrupted: " + detail
        if not is_store:  # the Python hint (store=, resume=) in command-line words
            detail = detail.split(" (finished chunks")[0] + (
                f"; they are lost: {args.out} is written only at the end. To keep finished "
                "chunks across interruptions, write a store (--out PATH.zarr) and rerun the "
                "same command with --resume.")
        print(f"sbi-core simulate: {detail}", file=sys.stderr)
        return 130
    print(json.dumps({"out": str(args.out), "num_simulations": prov["num_simulations"],
                      "num_invalid": prov["num_invalid"],
                      "first_error": prov.get("first_error"),
                      "invalid_columns": prov.get("invalid_columns"), **extra}))
    return 0


def _isolate(args: argparse.Namespace) -> bool:
    """Chunks run in a supervised worker process unless --in-process (or Dask) is asked for."""
    if args.in_process and args.isolate:
        raise ValueError("--isolate and --in-process contradict each other; pass one.")
    return not args.in_process and not args.dask
