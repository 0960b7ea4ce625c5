"""``fit``: from simulations to a trained posterior in one call.

Example::

    sims = simulate(problem, 10_000, seed=0)
    posterior = fit(problem, sims, method="npe", flow="nsf", seed=0)
    samples = posterior.sample((1000,), x=problem.observation(1))
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch
from torch import Tensor

from sbi_core.methods import Method, get_method
from sbi_core.posterior import Posterior
from sbi_core.problem import Problem
from sbi_core.simulation_set import SimulationSet
from sbi_core.training import split_options, train

__all__ = ["fit"]


def _discrete_x_options(problem: Problem, m: Method, options: dict[str, Any]) -> dict[str, Any]:
    """Pass the problem's declared discrete x columns to methods that take them; warn when
    a method would treat them as continuous values."""
    declared = getattr(problem, "x_discrete", None)
    if declared is None or "discrete_columns" in options:
        return options
    if m.accepts_discrete_x:
        return {**options, "discrete_columns": list(declared)}
    warnings.warn(f"Problem {problem.name!r} declares discrete x columns {list(declared)}, but "
                  f"method {m.name!r} treats them as continuous values. Use method='mnle' "
                  "(likelihood) or 'npe' (one-hot encoded) to model them as discrete.",
                  stacklevel=3)
    return options


def fit(problem: Problem, sims: SimulationSet | tuple[Tensor, Tensor] | str | os.PathLike,
        method: str = "npe", seed: int = 0, streaming: bool = False,
        **options: Any) -> Posterior:
    """Train an estimator of ``method`` on ``sims`` and return its :class:`Posterior`.

    Args:
        problem: gives the prior, parameter names and ``x_shape``.
        sims: a :class:`SimulationSet` (invalid simulations are excluded with a warning) or a
            ``(theta (N, D), x (N, *x_shape))`` pair, or the path of a simulation file or zarr
            store.
        method: a registered method name (``sbi_core.available_methods()``).
        seed: fixes initialization, the validation split and minibatch order.
        streaming: train from a zarr store chunk by chunk with bounded memory instead of
            loading it (``sims`` must be the store's path; see :mod:`sbi_core.streaming`).
        **options: training options (``batch_size``, ``learning_rate``, ``max_epochs``,
            ``max_seconds``, ``device``, ``progress``, ... see :class:`TrainConfig`) and
            estimator options (e.g. ``flow="nsf"``, ``hidden_features=64``, ``embedding=...``).
    """
    if streaming:
        if not isinstance(sims, (str, os.PathLike)):
            raise ValueError("streaming=True needs the path of a zarr store as sims "
                             "(simulate(..., store='sims.zarr')).")
        from sbi_core.streaming import fit_streaming  # optional extra (zarr)

        return fit_streaming(problem, sims, method=method, seed=seed, **options)
    if isinstance(sims, (str, os.PathLike)):
        sims = SimulationSet.load(sims)
    m = get_method(method)
    if isinstance(sims, SimulationSet):
        theta, x = sims.training_data()
    else:
        theta, x = (torch.as_tensor(a, dtype=torch.float32) for a in sims)
    if theta.ndim != 2 or theta.shape[1] != problem.dim:
        raise ValueError(
            f"The simulations' theta has shape {tuple(theta.shape)}, but problem {problem.name!r} "
            f"has D={problem.dim} parameters {problem.param_names}."
        )
    if problem.x_shape is not None and tuple(x.shape[1:]) != tuple(problem.x_shape):
        raise ValueError(
            f"The simulations' x has shape {tuple(x.shape[1:])} per sample, but problem "
            f"{problem.name!r} simulates x of shape {tuple(problem.x_shape)}."
        )
    options = _discrete_x_options(problem, m, options)
    if m.fit is not None:
        return m.fit(problem, (theta, x), seed=seed, **options)
    train_config, estimator_options = split_options(
        {**m.training_defaults(options), **options, "seed": seed})
    torch.manual_seed(seed)
    estimator = m.build(theta, x, problem.prior, **estimator_options)
    history = train(estimator, theta, x, train_config, loss_fn=m.loss_fn)
    return m.make_posterior(estimator, problem.prior, problem.spec(), history.to_dict())
