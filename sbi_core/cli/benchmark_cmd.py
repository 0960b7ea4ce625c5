"""``sbi-core benchmark --task TASK --method METHOD --sims N [N ...] --observations K [K ...]``.

Trains METHOD on each simulation budget and prints, per observation, C2ST against reference
posterior samples (0.5 = perfect), training seconds and sampling seconds. ``--json`` prints
one JSON object per line instead of a table. Method options pass through with
``--option KEY=VALUE`` (values are parsed as JSON when possible, e.g. ``flow=nsf``,
``max_seconds=60``, ``hidden_features=64``).
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def parse_options(items: list[str] | None) -> dict[str, Any]:
    """``["a=1", "flow=nsf"]`` → ``{"a": 1, "flow": "nsf"}``."""
    options: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--option takes KEY=VALUE, got {item!r}.")
        key, value = item.split("=", 1)
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from sbi_core.methods import available_methods

    p = sub.add_parser("benchmark", help="score a method against reference posteriors (C2ST)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, help="benchmark problem (e.g. two_moons, slcp)")
    p.add_argument("--method", required=True,
                   help=f"inference method ({', '.join(available_methods())})")
    p.add_argument("--sims", type=int, nargs="+", required=True, help="simulation budgets")
    p.add_argument("--observations", type=int, nargs="+", default=[1],
                   help="observation numbers in 1..10 (default 1)")
    p.add_argument("--num-samples", type=int, default=10_000,
                   help="posterior and reference samples per observation (default 10000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="simulation worker processes")
    p.add_argument("--max-seconds", type=float, default=None, help="cap on each training run")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="method/training option passed to fit (repeatable)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    return p


def run(args: argparse.Namespace) -> int:
    from sbi_core.benchmark import BenchmarkResult, run_benchmark

    options = parse_options(args.option)
    if args.max_seconds is not None:
        options["max_seconds"] = args.max_seconds
    header = f"{'task':<24} {'method':<8} {'sims':>8} {'obs':>4} {'c2st':>7} " \
             f"{'train_s':>9} {'sample_s':>9}"
    if not args.json:
        print(header, flush=True)

    def emit(row: BenchmarkResult) -> None:
        if args.json:
            print(json.dumps(row.to_dict()), flush=True)
        else:
            print(f"{row.task:<24} {row.method:<8} {row.sims:>8} {row.observation:>4} "
                  f"{row.c2st:>7.3f} {row.train_seconds:>9.2f} {row.sample_seconds:>9.3f}",
                  flush=True)

    run_benchmark(args.task, args.method, args.sims, args.observations, seed=args.seed,
                  num_samples=args.num_samples, workers=args.workers, method_options=options,
                  on_result=emit)
    return 0
