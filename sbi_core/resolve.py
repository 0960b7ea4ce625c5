"""Turn a PROBLEM argument into a :class:`Problem`.

PROBLEM is a built-in name (``two_moons``; see ``simulators.available_problems()``),
``path/to/file.py:function`` or ``module:function``; the function takes no arguments
and returns a Problem.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sbi_core.problem import Problem

__all__ = ["resolve_problem", "resolve_callable", "resolve_embedding"]


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


def resolve_callable(ref: str, what: str = "--embedding") -> Callable[..., Any]:
    """The function or class named by ``module:function`` or ``path/to/file.py:function``.

    Only for names the user types (command-line options): names read from files are
    never resolved (model files record a user embedding's class only for display).
    """
    if ":" not in ref:
        raise ValueError(f"{what} {ref!r} must be module:function or path/to/file.py:function "
                         "(a function or class returning your nn.Module).")
    target, name = ref.rsplit(":", 1)
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise ValueError(f"No Python file at {path} (from {what} {ref!r}).")
        spec = importlib.util.spec_from_file_location(f"_sbi_core_user_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as err:
            raise ValueError(f"Cannot import module {target!r} (from {what} {ref!r}): {err}") \
                from err
    obj = getattr(module, name, None)
    if obj is None or not callable(obj):
        raise ValueError(f"{target} has no function or class {name!r} (from {what} {ref!r}).")
    return obj


def resolve_embedding(ref: str | None) -> Any:
    """The ``embedding`` option from ``--embedding``: a built-in type name (``cnn1d``), a JSON
    spec (``'{"type": "cnn1d", "channels": [8, 16]}'``), or ``module:function`` /
    ``file.py:function`` returning your own nn.Module (resolved with :func:`resolve_callable`).
    """
    if ref is None:
        return None
    text = ref.strip()
    if text.startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"--embedding {ref!r} is not valid JSON ({err}).") from err
    if ":" in text:
        return resolve_callable(text)
    return text
