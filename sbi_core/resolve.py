"""Turn a PROBLEM argument into a :class:`Problem`.

PROBLEM is a built-in name (``two_moons``; see ``simulators.available_problems()``),
``path/to/file.py:function`` or ``module:function``; the function takes no arguments
and returns a Problem.

Trust model (docs/security.md): only a PROBLEM the user typed (command line or Python) is
imported. A reference *recorded in a file* (a model's ``problem.source``, a simulation file's
or zarr store's ``provenance.problem_source``) goes through :func:`recorded_problem`, which
builds built-in problems only (a registry key names no code path) and otherwise raises an
error that shows the reference and says to pass it with ``--problem``.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sbi_core.display import shown
from sbi_core.problem import Problem
from sbi_core.user_code import FILE_MODULE_PREFIX

__all__ = ["resolve_problem", "recorded_problem", "is_builtin_problem", "resolve_callable",
           "resolve_embedding", "ProblemFileError", "RecordedProblemError"]


class ProblemFileError(ValueError):
    """A user's problem file or module could not be imported or its factory failed."""


class RecordedProblemError(ValueError):
    """A file records a problem that is code (a path or module), which is never imported."""


def is_builtin_problem(ref: str | None) -> bool:
    """True if ``ref`` is a key of the built-in ``simulators`` registry (names no code path)."""
    if not isinstance(ref, str) or not ref or ":" in ref or "/" in ref or "\\" in ref \
            or ref.endswith(".py"):
        return False
    import simulators

    return ref.lower().replace("-", "_") in simulators.available_problems()


def recorded_problem(ref: str | None, where: str) -> Problem | None:
    """Build the problem recorded in a file, if it is a built-in name; never import code.

    ``where`` names the file for the message (e.g. ``"model.pt"``). Returns ``None`` when
    nothing is recorded; raises :class:`RecordedProblemError` for a recorded path or module,
    saying what to pass on the command line.
    """
    if not ref:
        return None
    if is_builtin_problem(ref):
        return resolve_problem(ref)
    raise RecordedProblemError(recorded_problem_hint(ref, where))


def recorded_problem_hint(ref: str, where: str) -> str:
    """The message shown for a recorded, non-built-in problem reference."""
    # quoted: the reference comes from the file, and the suggested option may be pasted into a
    # shell (``x.py:p; rm -rf ~`` must stay one argument, never a second command)
    # shown escaped and bounded: a control character in the file must not reach the terminal
    return (f"{where} was made with problem {shown(repr(ref))}; a problem recorded in a file is "
            f"never imported (it could run code). If you trust it, pass --problem "
            f"{shlex.quote(shown(ref))} (in Python: problem=...).")


def resolve_problem(ref: str) -> Problem:
    """Build the problem named by ``ref`` (typed by the user) and record ``ref`` as its ``source``.

    ``file.py:name`` or ``module:name`` names a function returning a :class:`Problem`, or a
    ``Problem`` object defined at the top level. A ``.py`` file is imported with its folder
    on ``sys.path`` (so it may import sibling modules). Import errors and exceptions of the factory become one :class:`ProblemFileError`
    naming the file.
    """
    if ref is not None and not isinstance(ref, str):
        raise TypeError(f"Expected a problem (a Problem, a built-in name such as 'two_moons', "
                        f"path/to/file.py:function or module:function), got "
                        f"{type(ref).__name__}. Simulations go to sims=, e.g. "
                        f"diagnose(posterior, problem, sims=test_sims).")
    if not isinstance(ref, str) or not ref.strip():
        raise ValueError("PROBLEM is empty; pass a built-in name (two_moons, ...), "
                         "path/to/file.py:function or module:function.")
    if ":" not in ref:
        import simulators

        problem = simulators.get_problem(ref)
    else:
        target, func_name = ref.rsplit(":", 1)
        if not func_name.isidentifier():
            raise ValueError(f"PROBLEM {ref!r}: {func_name!r} is not a function name; use "
                             "path/to/file.py:function or module:function.")
        if target.endswith(".py"):
            module = _import_file(Path(target), ref)
        else:
            try:
                module = importlib.import_module(target)
            except (Exception, SystemExit) as err:
                raise ProblemFileError(
                    f"Cannot import module {target!r} (from PROBLEM {ref!r}): "
                    f"{type(err).__name__}: {err}. "
                    + (_cwd_module_hint(target, func_name) or "Check the module name and that "
                       "it is on the Python path.")) from err
        factory = getattr(module, func_name, None)
        if isinstance(factory, Problem):  # `problem = Problem(...)` at module level
            problem = factory
        elif factory is None or not callable(factory):
            found = ("no such name" if factory is None
                     else f"{func_name!r} is a {type(factory).__name__}")
            raise ValueError(f"{target} has no function {func_name!r} (from PROBLEM {ref!r}; "
                             f"{found}). Name a function that returns an sbi_core.Problem, or "
                             "a Problem object defined at the top level of the file.")
        else:
            try:
                problem = factory()
            except (Exception, SystemExit) as err:
                raise ProblemFileError(
                    f"{func_name}() in {target} raised {type(err).__name__}: {err} (from "
                    f"PROBLEM {ref!r}). Fix the problem function.") from err
        if not isinstance(problem, Problem):
            raise TypeError(f"{ref} returned {type(problem).__name__}, not an sbi_core.Problem.")
    problem.source = ref
    return problem


def _cwd_module_hint(target: str, name: str) -> str | None:
    """The fix when ``target`` (``mypkg.nets``) is a file or package in the current folder.

    The ``sbi-core`` console script does not put the current folder on ``sys.path`` (unlike
    ``python -m``), so ``mypkg.nets:make`` typed next to ``mypkg/`` cannot be imported.
    """
    parts = target.split(".")
    base = Path(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if Path(parts[0]).exists() and candidate.is_file():
            return (f"{candidate} is in the current folder, which is not on the Python path "
                    f"of the sbi-core command: name the file instead ({candidate.as_posix()}:"
                    f"{name}), or run the command with PYTHONPATH=. in front.")
    return None


def _import_file(path: Path, ref: str, what: str = "PROBLEM"):
    """Import the Python file ``path`` with its folder first on ``sys.path`` during the import."""
    if not path.is_file():
        raise ValueError(f"No Python file at {path} (from {what} {ref!r}).")
    spec = importlib.util.spec_from_file_location(f"{FILE_MODULE_PREFIX}{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ProblemFileError(f"Cannot import {path} (from {what} {ref!r}).")
    module = importlib.util.module_from_spec(spec)
    folder = str(path.resolve().parent)
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as err:
        sys.modules.pop(spec.name, None)
        raise ProblemFileError(
            f"{path}, line {err.lineno}: syntax error: {err.msg} (from {what} {ref!r}).") from err
    except (Exception, SystemExit) as err:
        sys.modules.pop(spec.name, None)
        raise ProblemFileError(
            f"Importing {path} raised {type(err).__name__}: {err} (from {what} {ref!r}). "
            "Fix the file (a sibling module it imports must sit in the same folder).") from err
    finally:
        if added:
            try:
                sys.path.remove(folder)
            except ValueError:
                pass
    return module


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
        module = _import_file(Path(target), ref, what)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as err:
            hint = _cwd_module_hint(target, name)
            raise ValueError(f"Cannot import module {target!r} (from {what} {ref!r}): {err}"
                             + (f". {hint}" if hint else "")) from err
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
        from torch import nn

        target = resolve_callable(text)
        if isinstance(target, nn.Module):  # a module instance: used as it is
            return target

        def factory() -> Any:
            from estimators.embedding import UserEmbeddingError

            try:
                module = target()
            except TypeError as err:  # in the words of the command line, not fit(...)'s
                raise UserEmbeddingError(
                    f"--embedding {text!r} cannot be called without arguments ({err}); name a "
                    "function or class that takes none and returns your nn.Module (e.g. "
                    "def net(): return MyNet(32)).") from err
            if not isinstance(module, nn.Module):
                raise UserEmbeddingError(
                    f"--embedding {text!r} returned {type(module).__name__}, not a "
                    "torch.nn.Module; name a function or class that returns your embedding "
                    "network.")
            return module

        # recorded in the model file for display only: the error that asks for the embedding
        # at load time names the option it was trained with (never imported from the file)
        factory.cli_spec = text  # type: ignore[attr-defined]
        factory.__name__ = getattr(target, "__name__", text)  # errors name the user's function
        return factory
    return text
