"""Diagnostics that see only the Posterior interface: calibration (TARP, SBC, HPD coverage),
two-sample distances (C2ST, MMD), local calibration at one observation (L-C2ST), posterior
predictive checks and the report card.

Start with :func:`diagnose`; see docs/diagnostics.md.
"""

import importlib
import sys
import types
from typing import Any

# Submodules load on first use (PEP 562): ``fit`` trains the misspecification detector
# (diagnostics.misspecification) without importing scipy.stats and matplotlib, which the
# calibration and report modules need (~50 MB and ~1 s of start-up; benchmarks/RESULTS.md,
# "Issue 18: training speed").
_WHERE = {
    "c2st": "c2st",
    "CoverageResult": "coverage", "expected_coverage": "coverage",
    "run_expected_coverage": "coverage",
    "LC2ST": "lc2st", "LC2STResult": "lc2st", "local_c2st": "lc2st",
    "mmd": "mmd", "mmd_test": "mmd",
    "PredictiveResult": "predictive", "predictive_check": "predictive",
    "CHECKS": "report", "DiagnosisContext": "report", "DiagnosisReport": "report",
    "diagnose": "report", "register_check": "report",
    "SBCResult": "sbc", "run_sbc": "sbc", "sbc": "sbc", "sbc_ranks": "sbc",
    "TarpResult": "tarp", "regression_references": "tarp", "run_tarp": "tarp",
    "tarp_coverage": "tarp",
    "calibration_pairs": "testset", "posterior_samples": "testset",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'diagnostics' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"diagnostics.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))


class _Package(types.ModuleType):
    """Keeps ``diagnostics.c2st``, ``.mmd`` and ``.sbc`` the functions (as the eager imports
    did) when their submodules of the same name are imported later: the import system would
    otherwise set the package attribute to the submodule."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _WHERE and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


__all__ = [
    "CHECKS",
    "CoverageResult",
    "DiagnosisContext",
    "DiagnosisReport",
    "LC2ST",
    "LC2STResult",
    "PredictiveResult",
    "SBCResult",
    "TarpResult",
    "c2st",
    "diagnose",
    "expected_coverage",
    "local_c2st",
    "mmd",
    "mmd_test",
    "posterior_samples",
    "predictive_check",
    "register_check",
    "regression_references",
    "run_expected_coverage",
    "run_sbc",
    "run_tarp",
    "sbc",
    "sbc_ranks",
    "tarp_coverage",
    "calibration_pairs",
]
