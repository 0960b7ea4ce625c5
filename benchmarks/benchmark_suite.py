"""Run ``sbi_core.benchmark.run_benchmark`` over several tasks and budgets; JSON lines out.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/benchmark_suite.py \
        --tasks two_moons gaussian_linear slcp --method npe --sims 1000 10000 \
        --observations 1 2 3 > results.jsonl

Each line has ``task, method, sims, observation, c2st, train_seconds, sample_seconds``.
Method options pass through as ``--option KEY=VALUE`` (JSON values), as for the CLI.
"""

from __future__ import annotations

import argparse
import json

from sbi_core.benchmark import run_benchmark
from sbi_core.cli.benchmark_cmd import parse_options
from simulators import BENCHMARK_PROBLEMS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=BENCHMARK_PROBLEMS)
    parser.add_argument("--method", default="npe")
    parser.add_argument("--sims", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--observations", type=int, nargs="+", default=list(range(1, 11)))
    parser.add_argument("--num-samples", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--option", action="append", metavar="KEY=VALUE")
    args = parser.parse_args()
    for task in args.tasks:
        run_benchmark(task, args.method, args.sims, args.observations, seed=args.seed,
                      num_samples=args.num_samples, method_options=parse_options(args.option),
                      on_result=lambda row: print(json.dumps(row.to_dict()), flush=True))


if __name__ == "__main__":
    main()
