"""Entry point of the ``sbi-core`` command.

Each subcommand lives in its own module ``sbi_core/cli/<name>_cmd.py`` exposing
``add_parser(subparsers)`` and ``run(args) -> int``; add new ones to ``COMMANDS``.
Errors a user can fix (bad files, shapes, names) print one clear line, not a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from sbi_core.posterior import ObservationError, SamplingError

COMMANDS = ["demo", "simulate", "train", "sample", "diagnose", "robustness", "reference",
            "benchmark", "serve"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sbi-core",
        description="Simulation-based inference: simulate, train amortized posteriors, sample, "
                    "check calibration.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"sbi_core.cli.{name}_cmd")
        sp = module.add_parser(sub)
        sp.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 1
    try:
        return int(args._run(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, ObservationError, SamplingError) as err:
        print(f"sbi-core {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sbi-core {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
