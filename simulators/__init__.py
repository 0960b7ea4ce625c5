"""Built-in simulators (benchmark problems with reference posteriors, scientific models)
and adapters that turn user code into batched simulators.

``get_problem("two_moons")`` builds a :class:`sbi_core.Problem`; ``available_problems()``
lists the names.
"""

from __future__ import annotations

import importlib

from sbi_core.failures import RowFailures
from sbi_core.problem import Problem
from simulators.adapters import adapt, from_numpy, per_sample
from simulators.external import ExternalProgram, external_simulator

__all__ = ["get_problem", "available_problems", "adapt", "from_numpy", "per_sample",
           "external_simulator", "ExternalProgram", "RowFailures", "BENCHMARK_PROBLEMS"]

# name -> "module:factory"; each factory returns a Problem.
_PROBLEMS: dict[str, str] = {
    "two_moons": "simulators.two_moons:two_moons",
    "linear_gaussian": "simulators.linear_gaussian:linear_gaussian",
    "gaussian_linear": "simulators.gaussian_linear:gaussian_linear",
    "gaussian_linear_uniform": "simulators.gaussian_linear_uniform:gaussian_linear_uniform",
    "slcp": "simulators.slcp:slcp",
    "gaussian_mixture": "simulators.gaussian_mixture:gaussian_mixture",
    "bernoulli_glm": "simulators.bernoulli_glm:bernoulli_glm",
    "sir": "simulators.sir:sir",
    "lotka_volterra": "simulators.lotka_volterra:lotka_volterra",
    "hodgkin_huxley": "simulators.hodgkin_huxley:hodgkin_huxley",
    "g_and_k": "simulators.g_and_k:g_and_k",
}

#: The eight problems of the SBI benchmark (Lueckmann et al. 2021), in the paper's order.
BENCHMARK_PROBLEMS = ["gaussian_linear", "gaussian_linear_uniform", "slcp", "gaussian_mixture",
                      "two_moons", "bernoulli_glm", "sir", "lotka_volterra"]


def available_problems() -> list[str]:
    return sorted(_PROBLEMS)


def get_problem(name: str, **kwargs) -> Problem:
    """Build the built-in problem ``name``."""
    key = name.lower().replace("-", "_")
    if key not in _PROBLEMS:
        raise ValueError(
            f"Unknown problem {name!r}. Built-in problems: {', '.join(available_problems())}; "
            "or pass path/to/file.py:function or module:function returning a Problem."
        )
    module_name, attr = _PROBLEMS[key].split(":")
    problem = getattr(importlib.import_module(module_name), attr)(**kwargs)
    problem.source = key if not kwargs else None
    return problem
