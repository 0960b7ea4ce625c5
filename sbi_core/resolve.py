"""Turn a PROBLEM argument into a :class:`Problem`.

PROBLEM is a built-in name (``two_moons``; see ``simulators.available_problems()``),
``path/to/file.py:function`` or ``module:function``; the function takes no arguments
and returns a Problem.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from sbi_core.problem import Problem

__all__ = ["resolve_problem"]


def resolve_problem(ref: str) -> Problem:
    """Build the problem named by ``ref`` and record ``ref`` as its ``source``."""
    if ":" not in ref:
        import simulators

        problem = simulators.get_problem(ref)
    else:
        target, func_name = ref.rsplit(":", 1)
        if target.endswith(".py"):
            path = Path(target)
            if not path.is_file():
                raise ValueError(f"No Python file at {path} (from PROBLEM {ref!r}).")
            spec = importlib.util.spec_from_file_location(f"_sbi_core_user_{path.stem}", path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
        else:
            try:
                module = importlib.import_module(target)
            except ImportError as err:
                raise ValueError(f"Cannot import module {target!r} (from PROBLEM {ref!r}): {err}") \
                    from err
        factory = getattr(module, func_name, None)
        if factory is None or not callable(factory):
            raise ValueError(f"{target} has no function {func_name!r} (from PROBLEM {ref!r}).")
        problem = factory()
        if not isinstance(problem, Problem):
            raise TypeError(f"{ref} returned {type(problem).__name__}, not an sbi_core.Problem.")
    problem.source = ref
    return problem
