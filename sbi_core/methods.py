"""Registry of inference methods, so that the CLI, ``fit``, ``load`` and the benchmark
find every estimator by name without ``sbi_core`` importing ``estimators`` eagerly.

A method is a :class:`Method`: how to build an estimator from training data, how to
rebuild it from its saved config, and how to wrap a trained estimator as a posterior.
Later estimators register by adding one line to ``_REGISTRY``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from sbi_core.display import shown

__all__ = ["Method", "get_method", "available_methods", "register_method"]


@dataclass
class Method:
    """How one inference method plugs into the shared machinery.

    Attributes:
        name: registry key (``"npe"``).
        build: ``build(theta, x, prior, **options) -> estimator`` with its ``config`` set and
            its standardization fitted on the training data.
        from_config: ``from_config(config) -> estimator`` (untrained; weights loaded after).
        make_posterior: ``make_posterior(estimator, prior, problem_spec, history) -> Posterior``.
        train_defaults: overrides of :class:`~sbi_core.training.TrainConfig` for this method,
            or ``f(options) -> dict`` when they depend on the estimator options (e.g. the flow).
        loss_fn: optional loss replacing ``estimator.loss`` during training.
        fit: optional ``fit(problem, sims, seed, train_config, **options) -> Posterior`` for
            methods that do not train on fixed (theta, x) pairs (e.g. PFN sets); when given, it
            replaces build + train.
        accepts_discrete_x: ``build`` takes ``discrete_columns`` (flattened-x indices of
            discrete values); ``fit`` passes a problem's ``x_discrete`` declaration to it.
        accepts_x_trials: ``build`` takes ``x_trials`` (``(n, d)`` exchangeable trials in the
            flattened x); ``fit`` passes a problem's ``x_trials`` declaration to it.
    """

    name: str
    build: Callable[..., nn.Module]
    from_config: Callable[[dict[str, Any]], nn.Module]
    make_posterior: Callable[..., Any]
    train_defaults: dict[str, Any] | Callable[[dict[str, Any]], dict[str, Any]] = \
        field(default_factory=dict)
    loss_fn: Callable[[nn.Module, Tensor, Tensor], Tensor] | None = None
    fit: Callable[..., Any] | None = None
    accepts_discrete_x: bool = False
    accepts_x_trials: bool = False
    description: str = ""

    def training_defaults(self, options: dict[str, Any]) -> dict[str, Any]:
        """The :class:`~sbi_core.training.TrainConfig` overrides for these user ``options``."""
        d = self.train_defaults
        return dict(d(options) if callable(d) else d)


# name -> "module:attribute" of a Method; imported on first use.
_REGISTRY: dict[str, str] = {
    "npe": "estimators.npe:METHOD",
    "npe_ensemble": "estimators.ensemble:METHOD",
    "npse": "estimators.npse:METHOD",
    "fmpe": "estimators.fmpe:METHOD",
    "nle": "estimators.nle:METHOD",
    "mnle": "estimators.mnle:METHOD",
    "nre": "estimators.nre:METHOD",
    "nre_a": "estimators.nre:NRE_A",
    "nre_b": "estimators.nre:NRE_B",
    "nre_c": "estimators.nre:NRE_C",
    "bnre": "estimators.nre:BNRE",
    "pfn": "estimators.pfn_method:METHOD",
    "abc": "estimators.abc:METHOD",
    "smc_abc": "estimators.smc_abc:METHOD",
    "incontext": "estimators.incontext_method:METHOD",
    "prior_npe": "estimators.prior_conditioned:METHOD",
}
_LOADED: dict[str, Method] = {}


def register_method(name: str, target: str | Method) -> None:
    """Register a method by object or by ``"module:attribute"`` path."""
    if isinstance(target, Method):
        _LOADED[name] = target
        _REGISTRY[name] = f"<object {target.name}>"
    else:
        _REGISTRY[name] = target


def available_methods() -> list[str]:
    return sorted(_REGISTRY)


def get_method(name: str) -> Method:
    """The :class:`Method` registered as ``name`` (clear error listing the known ones)."""
    key = name.lower()
    if key in _LOADED:
        return _LOADED[key]
    if key not in _REGISTRY:
        raise ValueError(f"Unknown method {shown(repr(name))}; available: "
                         f"{', '.join(available_methods())}.")
    module_name, attr = _REGISTRY[key].split(":")
    method = getattr(importlib.import_module(module_name), attr)
    _LOADED[key] = method
    return method
