"""Helpers shared by CLI subcommands."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from sbi_core.problem import Problem
from sbi_core.resolve import resolve_problem
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


def problem_for_sims(sims: SimulationSet, problem_ref: str | None) -> Problem:
    """The problem named on the command line, else the one recorded in the simulations."""
    return problem_for_sims_provenance(sims.provenance, problem_ref)


def problem_for_sims_provenance(provenance: dict, problem_ref: str | None) -> Problem:
    """The problem named on the command line, else the one recorded in ``provenance``."""
    ref = problem_ref or provenance.get("problem_source")
    if not ref:
        raise ValueError(
            "These simulations do not record their problem (e.g. a plain .npz); name it with "
            "--problem PROBLEM so its prior applies."
        )
    return resolve_problem(ref)
