"""Test pairs for calibration checks, and batched posterior sampling over them.

Every calibration check needs the same ingredients: ``N`` test pairs ``(theta*_i, x_i)``
drawn from the joint ``p(theta) p(x | theta)`` and ``n`` posterior samples per ``x_i``.
:func:`calibration_pairs` gets the pairs from held-out simulations or by simulating a problem,
dropping invalid simulations (NaN/inf) with a warning; :func:`posterior_samples` draws
``(n, N, D)`` samples with a few large ``sample_batched`` calls and a progress bar.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from diagnostics.ecp import derived_seed
from sbi_core.posterior import Posterior
from sbi_core.problem import Problem
from sbi_core.simulation_set import SimulationSet

__all__ = ["calibration_pairs", "posterior_samples", "finite_rows", "TooFewPairsError"]


class TooFewPairsError(ValueError):
    """A check needs more test pairs than were given; the report card skips it (the model is
    not at fault) and says how many it needs."""


def finite_rows(theta: Tensor, x: Tensor) -> Tensor:
    """Boolean mask ``(N,)`` of rows where both ``theta`` ``(N, D)`` and ``x`` ``(N, ...)`` are finite."""
    return (torch.isfinite(theta.reshape(theta.shape[0], -1)).all(1)
            & torch.isfinite(x.reshape(x.shape[0], -1)).all(1))


def calibration_pairs(problem: Problem | None = None, sims: SimulationSet | tuple[Tensor, Tensor] | None
               = None, num: int = 200, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Test pairs ``theta`` ``(N, D)`` and ``x`` ``(N, *x_shape)`` from the joint.

    Args:
        problem: simulated with ``num`` prior draws (seed ``seed``) when ``sims`` is None.
        sims: held-out simulations (never the training set); the first ``num`` valid rows
            are used. A ``(theta, x)`` pair is accepted too.
        num: number of test pairs.

    Invalid simulations (NaN/inf in ``x`` or ``theta``) are dropped with a warning.
    """
    if num < 1:
        raise ValueError(f"num must be a positive number of test pairs, got {num}.")
    if sims is None:
        if problem is None:
            raise ValueError("Calibration checks need test simulations: pass problem= (they are "
                             "simulated) or sims= (held-out simulations, not the training set).")
        from sbi_core.simulation import simulate

        sims = simulate(problem, num, seed=seed, progress=False)
    if isinstance(sims, SimulationSet):
        theta, x = sims.theta, sims.x
    else:
        theta, x = (torch.as_tensor(a, dtype=torch.float32) for a in sims)
    ok = finite_rows(theta, x)
    if isinstance(sims, SimulationSet):
        ok &= sims.valid
    n_bad = int((~ok).sum())
    if n_bad == len(ok):
        raise ValueError(f"All {len(ok)} test simulations are invalid (NaN/inf); calibration "
                         "cannot be checked. Fix the simulator or use other test simulations.")
    if n_bad:
        warnings.warn(f"Dropping {n_bad} of {len(ok)} invalid test simulations (NaN/inf) from the "
                      "calibration checks.", stacklevel=2)
    theta, x = theta[ok][:num].float(), x[ok][:num].float()
    if len(theta) < 2:
        raise ValueError(f"Only {len(theta)} valid test pair: calibration compares the true "
                         "parameters with the posterior over many test pairs, so it needs at "
                         "least 2 (200 or more recommended). Pass more held-out simulations "
                         "(sims=, CLI --sims) or simulate them from the problem (problem=, "
                         "CLI --problem) with num= / --num 200.")
    if len(theta) < 100:
        warnings.warn(f"Only {len(theta)} test pairs: calibration checks have little power below "
                      "100 (200 or more recommended).", stacklevel=2)
    return theta, x


def posterior_samples(posterior: Posterior, xs: Tensor, num_samples: int = 1000, seed: int = 0,
                      chunk: int | None = None, progress: bool | None = None) -> Tensor:
    """Posterior samples ``(num_samples, N, D)`` for observations ``xs`` ``(N, *x_shape)``.

    Observations are processed in chunks of ``chunk`` (default: about 50,000 samples per
    call) through ``sample_batched``; a tqdm bar shows progress when there is more than one.
    Chunk ``k`` is seeded from ``(seed + k, "samples")`` (see :func:`diagnostics.ecp.derived_seed`).
    """
    from sbi_core.progress import progress_bar

    n_obs = xs.shape[0]
    chunk = chunk or max(1, 50_000 // max(num_samples, 1))
    starts = list(range(0, n_obs, chunk))
    parts = []
    with _range_check_off(posterior):
        for k, start in enumerate(progress_bar(starts, desc="posterior samples", unit="chunk",
                                               progress=False if len(starts) == 1 else progress)):
            parts.append(posterior.sample_batched((num_samples,), xs[start:start + chunk],
                                                  seed=derived_seed(seed + k, "samples"),
                                                  progress=progress))
    return torch.cat(parts, dim=1)


class _range_check_off:
    """Test observations come from the prior predictive; a few may lie just beyond the
    training range. Calibration is exactly the place to find out how the posterior behaves
    there, so the range check is off while diagnostics run."""

    def __init__(self, posterior: Posterior):
        self.posterior = posterior

    def __enter__(self) -> None:
        self.saved = getattr(self.posterior, "range_check", "off")
        self.posterior.range_check = "off"

    def __exit__(self, *exc: object) -> None:
        self.posterior.range_check = self.saved
