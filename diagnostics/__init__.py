"""Diagnostics that see only the Posterior interface: calibration (TARP, SBC, HPD coverage),
two-sample distances (C2ST, MMD), local calibration at one observation (L-C2ST), posterior
predictive checks and the report card.

Start with :func:`diagnose`; see docs/diagnostics.md.
"""

from diagnostics.c2st import c2st
from diagnostics.coverage import CoverageResult, expected_coverage, run_expected_coverage
from diagnostics.lc2st import LC2ST, LC2STResult, local_c2st
from diagnostics.mmd import mmd, mmd_test
from diagnostics.predictive import PredictiveResult, predictive_check
from diagnostics.report import (
    CHECKS,
    DiagnosisContext,
    DiagnosisReport,
    diagnose,
    register_check,
)
from diagnostics.sbc import SBCResult, run_sbc, sbc, sbc_ranks
from diagnostics.tarp import TarpResult, regression_references, run_tarp, tarp_coverage
from diagnostics.testset import calibration_pairs, posterior_samples

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
