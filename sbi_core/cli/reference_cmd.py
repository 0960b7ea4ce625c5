"""``sbi-core reference TASK --x FILE --num N --out FILE.csv [--seed S]``.

Writes reference (true) posterior samples of a built-in benchmark problem for every
observation in FILE (.csv or .npy, one observation per row, as for ``sbi-core sample``), or
for the problem's own observation K with ``--observation K``. The CSV has an
``observation`` column (row index in FILE, from 0) and the parameter names. MCMC-based
references are cached on disk (``$SBI_CORE_CACHE``, default ``~/.cache/sbi-core``).
"""

from __future__ import annotations

import argparse
import json

from sbi_core.cli.common import add_force, positive_int


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("reference", help="sample the true posterior of a benchmark problem",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", metavar="TASK", help="benchmark problem (e.g. two_moons, slcp)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--x", help=".csv or .npy with one observation per row")
    src.add_argument("--observation", type=int, help="use the problem's observation K (1..10)")
    p.add_argument("--num", type=positive_int, default=10_000, help="samples per observation")
    p.add_argument("--out", required=True, help="CSV file to write")
    p.add_argument("--seed", type=int, default=0)
    add_force(p)
    return p


def run(args: argparse.Namespace) -> int:
    import torch

    from sbi_core.atomic import check_output
    from sbi_core.cli.common import problem_file
    from sbi_core.io import read_observations, write_samples_csv
    from sbi_core.resolve import resolve_problem

    out = check_output(args.out, "csv", inputs=[args.x, problem_file(args.task)],
                       force=args.force)
    problem = resolve_problem(args.task)
    if problem.reference_posterior is None:
        raise ValueError(f"Problem {problem.name!r} has no reference posterior; choose a "
                         "benchmark problem (two_moons, gaussian_linear, slcp, ...).")
    if args.num < 1:
        raise ValueError(f"--num must be at least 1, got {args.num}.")
    if args.x is not None:
        xs = read_observations(args.x, problem.x_shape, getattr(problem, "x_names", None))
    else:
        xs = problem.observation(args.observation)[None]
    try:
        samples = torch.stack([problem.reference_posterior(x, args.num, args.seed) for x in xs], 1)
    except RuntimeError as err:
        raise ValueError(f"reference sampling failed: {err}") from err
    write_samples_csv(out, samples, problem.param_names)
    print(json.dumps({"out": str(args.out), "observations": int(samples.shape[1]),
                      "samples_per_observation": args.num}))
    return 0
