"""Export posterior samples to ArviZ: ``posterior.to_inference_data(x, num=1000)``.

The :class:`arviz.InferenceData` has these groups:

- ``posterior``: one variable per named parameter, dims ``(chain, draw)``. MCMC-based
  posteriors (NLE, NRE, ...) keep their chains (``C`` chains of ``S`` draws each, all kept
  draws), so ``az.summary`` reports R-hat and ESS over real chains; direct samplers (NPE,
  score methods, PFN) give one chain of ``num`` independent draws. Unless ``num_chains`` is
  given (here or in the model's MCMC settings), the export runs ``C = max(4, isqrt(num))``
  chains instead of the sampler's default 100, so that each chain carries at least ``C``
  draws (the default would give 100 chains of 10 draws for ``num <= 1000``: R-hat and ESS
  from 10 draws per chain are noisy, and ArviZ warns "more chains than draws"). Draws of
  different chains are never joined into one "chain": that would hide the between-chain
  differences R-hat measures. An explicit ``num_chains`` larger than the draws per chain is
  kept as asked, without ArviZ's warning (the layout is right, only the chains are short).
- ``prior``: ``num`` prior draws in one chain, same variables.
- ``observed_data``: ``x`` with dims ``x_dim_0, ...`` (``trial, x_dim_0, ...`` for a set of
  iid observations).
- ``posterior_predictive`` (only when a ``problem`` with its simulator is given): ``x``
  simulated once at every posterior draw, dims ``(chain, draw, x_dim_0, ...)``; failed
  simulations are NaN (their count is in the group's ``num_invalid`` attribute).

Write it with :func:`write_netcdf` (atomic) or ``sbi-core sample ... --out samples.nc``.
Optional extra: ``pip install 'sbi-core[arviz]'``.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from sbi_core.posterior import Posterior
    from sbi_core.problem import Problem

__all__ = ["to_inference_data", "write_netcdf", "import_arviz"]


def import_arviz() -> Any:
    """Import arviz, or raise an ImportError saying how to install it."""
    try:
        with warnings.catch_warnings():  # arviz 0.2x announces its refactor on import
            warnings.simplefilter("ignore", FutureWarning)
            import arviz
    except ImportError as err:
        raise ImportError("Exporting to ArviZ needs arviz: pip install 'sbi-core[arviz]' "
                          f"(or pip install arviz h5netcdf). ({err})") from err
    return arviz


def to_inference_data(posterior: Posterior, x: Tensor | None = None, num: int = 1000,
                      problem: Problem | str | None = None, seed: int | None = 0,
                      num_prior: int | None = None, **sample_options: Any) -> Any:
    """Sample ``posterior`` at one observation and return an ``arviz.InferenceData``.

    Args:
        posterior: any :class:`~sbi_core.posterior.Posterior`.
        x: the observation (``x_shape``, or ``(n, *x_shape)`` iid trials where supported);
            default: the posterior's ``default_x``.
        num: posterior draws (MCMC keeps all its kept draws: at least ``num``, split in chains).
        problem: a Problem or PROBLEM string; adds ``posterior_predictive`` (its simulator run
            once per posterior draw). Without it, that group is left out.
        seed: seeds sampling, prior draws and predictive simulations (``None``: unseeded).
        num_prior: prior draws (default ``num``).
        **sample_options: passed to ``posterior.sample`` (e.g. MCMC ``num_chains``; its
            default here: ``max(4, isqrt(num))``, module docstring).
    """
    az = import_arviz()
    if not isinstance(num, int) or isinstance(num, bool) or num < 1:
        raise ValueError(f"num must be an integer >= 1, got {num!r}.")
    from sbi_core.posterior import seeded

    xs = posterior._single_x(x)  # checked (1, ...) batch, or the default observation
    sample_options = _export_chains(posterior, num, sample_options)
    samples = posterior.sample((num,), x=xs[0], seed=seed, **sample_options)
    draws = _chains(posterior, samples)  # (C, S, D)
    names = _names(posterior)
    with seeded(None if seed is None else seed + 1):
        prior = posterior.prior.sample((num_prior or num,)).reshape(1, -1, posterior.dim)
    x_obs = xs[0].detach().cpu().numpy()
    iid = x_obs.ndim > len(posterior.x_shape)
    x_dims = [f"x_dim_{i}" for i in range(len(posterior.x_shape))]
    obs_dims = (["trial"] if iid else []) + x_dims
    groups: dict[str, Any] = {
        "posterior": _by_name(draws, names),
        "prior": _by_name(prior, names),
        "observed_data": {"x": x_obs},
    }
    dims = {"x": x_dims}
    pp_attrs: dict[str, Any] = {}
    if problem is not None:
        x_pred, invalid = _predictive(posterior, problem, draws, seed)
        groups["posterior_predictive"] = {"x": x_pred}
        pp_attrs = {"num_invalid": int(invalid)}
    attrs = {"inference_library": "sbi-core", "sbi_core_method": getattr(posterior, "method_label", posterior.method),
             "sbi_core_estimator": posterior.method,
             "num_chains": int(draws.shape[0]), "param_names": names}
    observed_dims = {"x": obs_dims}
    with warnings.catch_warnings():  # (chain, draw) is the layout given, even if chains are
        warnings.filterwarnings("ignore", message="More chains", category=UserWarning)  # short
        idata = az.from_dict(posterior=groups["posterior"], prior=groups["prior"],
                             posterior_predictive=groups.get("posterior_predictive"),
                             dims=dims)
    obs = az.from_dict(observed_data=groups["observed_data"], dims=observed_dims)
    idata.extend(obs)
    for group in idata.groups():  # from_dict puts attrs on one group only: set them on all
        idata[group].attrs.update(attrs)
    if pp_attrs:
        idata.posterior_predictive.attrs.update(pp_attrs)
    return idata


def write_netcdf(idata: Any, path: str | os.PathLike) -> Path:
    """Write ``idata`` to ``path`` (netCDF4/HDF5 via h5netcdf) atomically; returns the path."""
    from sbi_core.atomic import atomic_write

    path = Path(path)
    try:
        import h5netcdf  # noqa: F401
        engine = "h5netcdf"
    except ImportError:
        try:
            import netCDF4  # noqa: F401
            engine = "netcdf4"
        except ImportError as err:
            raise ImportError("Writing .nc needs h5netcdf (or netCDF4): pip install "
                              "'sbi-core[arviz]'.") from err
    with atomic_write(path) as tmp:
        idata.to_netcdf(str(tmp), engine=engine)
    return path


def _export_chains(posterior: Posterior, num: int,
                   options: dict[str, Any]) -> dict[str, Any]:
    """``options`` for the export's ``sample`` call: for an MCMC posterior whose chain count
    is the sampler's default (not given here nor changed in the model's settings),
    ``num_chains = max(4, isqrt(num))`` (at most that default) so each chain keeps at least
    as many draws as there are chains (``S = max(ceil(num / C), min_draws_per_chain)``)."""
    cfg = getattr(posterior, "mcmc_config", None)
    if cfg is None or "num_chains" in options:
        return options
    from sbi_core.mcmc import MCMCConfig

    default = MCMCConfig().num_chains
    if cfg.num_chains != default:
        return options
    return {**options, "num_chains": min(default, max(4, math.isqrt(num)))}


def _chains(posterior: Posterior, samples: Tensor) -> np.ndarray:
    """``(C, S, D)``: an MCMC run's chains for this call, else one chain of ``samples``."""
    run = None
    last = getattr(posterior, "last_mcmc_in_this_thread", None)
    if callable(last):
        run = last()
    if run is not None and run.chains.ndim == 4 and run.chains.shape[2] == 1:
        return run.chains[:, :, 0, :].detach().cpu().numpy()
    return samples.detach().cpu().reshape(1, -1, posterior.dim).numpy()


def _names(posterior: Posterior) -> list[str]:
    names = list(posterior.param_names) or [f"theta_{i + 1}" for i in range(posterior.dim)]
    if len(set(names)) != len(names) or len(names) != posterior.dim:
        names = [f"theta_{i + 1}" for i in range(posterior.dim)]
    return names


def _by_name(draws: Any, names: list[str]) -> dict[str, np.ndarray]:
    arr = np.asarray(draws.detach().cpu() if isinstance(draws, Tensor) else draws)
    return {name: arr[..., i] for i, name in enumerate(names)}


def _predictive(posterior: Posterior, problem: Problem | str, draws: np.ndarray,
                seed: int | None) -> tuple[np.ndarray, int]:
    """Simulate once at every posterior draw: ``(C, S, *x_shape)`` and the failed count."""
    from sbi_core.resolve import resolve_problem
    from sbi_core.simulation import simulate

    problem = resolve_problem(problem) if isinstance(problem, str) else problem
    if problem.dim != posterior.dim:
        raise ValueError(f"problem {problem.name!r} has D={problem.dim} parameters but the "
                         f"posterior has {posterior.dim}; pass the problem it was trained on.")
    c, s, d = draws.shape
    theta = torch.as_tensor(draws.reshape(c * s, d), dtype=torch.float32)
    sims = simulate(problem, theta=theta, seed=0 if seed is None else seed, progress=False)
    x = sims.x.detach().cpu().to(torch.float64)
    valid = sims.valid.detach().cpu().bool()
    x[~valid] = float("nan")
    if posterior.x_shape and tuple(x.shape[1:]) != tuple(posterior.x_shape):
        raise ValueError(f"problem {problem.name!r} simulates x of shape {tuple(x.shape[1:])} "
                         f"but the posterior expects {posterior.x_shape}.")
    return x.reshape(c, s, *x.shape[1:]).numpy(), int((~valid).sum())
