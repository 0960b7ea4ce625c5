"""Diagnostics that see only the Posterior interface: C2ST, calibration, robustness."""

from diagnostics.c2st import c2st

__all__ = ["c2st"]
