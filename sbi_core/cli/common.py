"""Helpers shared by CLI subcommands."""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sbi_core.problem import Problem
from sbi_core.resolve import recorded_problem, resolve_problem
from sbi_core.simulation_set import SimulationSet

PROBLEM_HELP = ("a built-in name (two_moons, ...), path/to/file.py:function or module:function "
                "returning an sbi_core.Problem")


@contextmanager
def step(message: str, quiet: bool = False) -> Iterator[dict]:
    """Print ``message``, run the block, then print its duration; yields a dict for notes."""
    info: dict = {}
    if not quiet:
        print(f"[sbi-core] {message} ...", flush=True)
    start = time.perf_counter()
    yield info
    info["seconds"] = time.perf_counter() - start
    if not quiet:
        extra = f" ({info['note']})" if "note" in info else ""
        print(f"[sbi-core]   done in {info['seconds']:.1f} s{extra}", flush=True)


def problem_for_sims(sims: SimulationSet, problem_ref: str | None,
                     where: str = "the simulation file") -> Problem:
    """The problem named on the command line, else the built-in one recorded in the simulations."""
    return problem_for_sims_provenance(sims.provenance, problem_ref, where)


def problem_for_sims_provenance(provenance: dict, problem_ref: str | None,
                                where: str = "the simulation file") -> Problem:
    """The problem named on the command line, else the one recorded in ``provenance``.

    A recorded reference is used only if it is a built-in problem name; a recorded path or
    module is shown in the error, never imported (docs/security.md).
    """
    if problem_ref:
        return resolve_problem(problem_ref)
    problem = recorded_problem(provenance.get("problem_source"), where)
    if problem is None:
        raise ValueError(
            f"{where} does not record its problem (e.g. a plain .npz); name it with "
            "--problem PROBLEM so its prior applies."
        )
    return problem


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = _parse(text, int, "an integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = _parse(text, int, "an integer")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive integer, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    value = _parse(text, float, "a number")
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    value = _parse(text, float, "a number")
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def _parse(text: str, kind: type, what: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None


def add_force(p: argparse.ArgumentParser) -> None:
    """The ``--force`` flag of subcommands that write files."""
    p.add_argument("--force", action="store_true",
                   help="overwrite an existing output file of another kind")


def add_embedding(p: argparse.ArgumentParser, methods: str) -> None:
    """The ``--embedding SPEC`` option of the commands that train (``train``, ``run``): one
    parser and help, resolved by :func:`sbi_core.resolve.resolve_embedding` (same values,
    same errors). ``methods`` names the methods of that command that take one."""
    p.add_argument("--embedding", metavar="SPEC",
                   help=f"embedding network for x ({methods}): a built-in type "
                        "(mlp, set, cnn1d, tcn, gru, lstm, transformer, cnn2d), a JSON spec "
                        "('{\"type\": \"cnn1d\", \"channels\": [8, 16]}'), or "
                        "module:function / file.py:function returning your own nn.Module "
                        "(pass the same to sample/diagnose/serve; docs/embeddings.md)")


def problem_file(ref: str | None) -> str | None:
    """The ``.py`` file named by a PROBLEM argument (an input no output may overwrite)."""
    if ref and ":" in ref and ref.rsplit(":", 1)[0].endswith(".py"):
        return ref.rsplit(":", 1)[0]
    return None


def check_iid(posterior) -> None:
    """Refuse ``--iid`` for a posterior that cannot condition on a set of iid trials."""
    if not posterior.supports_iid:
        raise ValueError(
            f"Method {posterior.method!r} cannot condition on a set of iid observations. "
            "Use an NPE with a set embedding trained on sets, or NLE/NRE/score methods "
            "(--method nle|nre|npse|fmpe|pfn)."
        )
