"""A posterior at one observation as a ``torch.distributions.Distribution``.

``posterior.condition(x_o)`` returns a :class:`ConditionedPosterior`: ``batch_shape ()``,
``event_shape (D,)``, ``support`` the prior's support, ``sample(sample_shape)`` →
``(*sample_shape, D)`` and ``log_prob(value (..., D))`` → ``(...)``. It can stand wherever
torch (or Pyro) code expects a distribution, e.g. as the proposal of importance sampling::

    q = posterior.condition(x_o)
    theta = q.sample((10_000,))                       # (10000, D)
    log_w = prior.log_prob(theta) + log_lik(theta) - q.log_prob(theta)

``log_prob`` is normalized when the posterior's is (``posterior.normalized_log_prob``;
NLE / NRE posteriors give it up to a constant). Sampling is not differentiable
(``has_rsample`` is False). With ``validate_args`` (torch's default), ``log_prob`` of a
value outside the support raises like every torch distribution; pass
``validate_args=False`` to get ``-inf`` there instead.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

from sbi_core.priors import prior_support

__all__ = ["ConditionedPosterior"]


class ConditionedPosterior(Distribution):
    """``p(theta | x_o)`` of a :class:`~sbi_core.posterior.Posterior` as a torch distribution.

    Args:
        posterior: the posterior.
        x: one observation (``x_shape``, or an iid set where the posterior supports it);
            ``None`` uses ``posterior.default_x``.
        validate_args: as for any torch distribution.
    """

    arg_constraints: dict[str, constraints.Constraint] = {}
    has_rsample = False

    def __init__(self, posterior: Any, x: Tensor | None = None,
                 validate_args: bool | None = None):
        self.posterior = posterior
        self.x = posterior._single_x(x)[0]  # checked now: errors surface at condition()
        super().__init__(batch_shape=torch.Size(), event_shape=torch.Size([posterior.dim]),
                         validate_args=validate_args)

    @property
    def support(self) -> constraints.Constraint:  # type: ignore[override]
        return prior_support(self.posterior.prior)  # also for a prior class with none

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = torch.Size()) -> Tensor:  # noqa: B008
        """``(*sample_shape, D)`` posterior draws (torch's global RNG)."""
        return self.posterior.sample(tuple(sample_shape), self.x)

    def log_prob(self, value: Tensor) -> Tensor:
        """``(...)`` log densities of ``value`` ``(..., D)``."""
        value = torch.as_tensor(value, dtype=torch.float32)
        if self._validate_args:
            self._validate_sample(value)
        batch = value.shape[:-1]
        lp = self.posterior.log_prob(value.reshape(-1, self.posterior.dim), self.x)
        return lp.reshape(batch)

    def expand(self, batch_shape: torch.Size, _instance: Any = None) -> Distribution:
        if tuple(batch_shape) != ():
            raise NotImplementedError("A conditioned posterior has batch_shape (); condition "
                                      "on each observation separately, or use sample_batched.")
        return self

    def __repr__(self) -> str:
        name = type(self.posterior).__name__
        return f"ConditionedPosterior({name}, event_shape={tuple(self.event_shape)})"
