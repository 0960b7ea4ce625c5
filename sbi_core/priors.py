"""Priors: torch distributions with a declarative spec.

Every prior built by the helpers here is a genuine ``torch.distributions.Distribution``
with event shape ``(D,)`` and carries a ``spec`` attribute: a dict of plain values
(lists, floats, strings) from which :func:`prior_from_spec` rebuilds it. That is what
lets a trained model be saved and loaded without pickling any code.

Example::

    prior = box_uniform(low=[-1, -1], high=[1, 1])
    theta = prior.sample((1000,))             # (1000, 2)
    again = prior_from_spec(prior.spec)       # same distribution
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.distributions import (
    Beta,
    CatTransform,
    Distribution,
    Exponential,
    Gamma,
    HalfNormal,
    Independent,
    IndependentTransform,
    LogNormal,
    MultivariateNormal,
    Normal,
    Transform,
    Uniform,
    biject_to,
    constraints,
)

__all__ = [
    "BoxUniform",
    "DiagonalGaussian",
    "FullGaussian",
    "IndependentPrior",
    "box_uniform",
    "gaussian",
    "independent",
    "prior_from_spec",
    "prior_spec",
    "support_bounds",
    "within_support",
    "unconstrained_transform",
]


def _vector(values: Sequence[float] | Tensor | float, name: str) -> Tensor:
    t = torch.as_tensor(values, dtype=torch.float32)
    if t.ndim == 0:
        t = t.reshape(1)
    if t.ndim != 1:
        raise ValueError(f"{name} must be a 1-D list of numbers, got shape {tuple(t.shape)}.")
    return t


class BoxUniform(Independent):
    """Uniform distribution on the box ``[low, high]`` with event shape ``(D,)``."""

    def __init__(self, low: Sequence[float] | Tensor, high: Sequence[float] | Tensor):
        low_t, high_t = _vector(low, "low"), _vector(high, "high")
        if low_t.shape != high_t.shape:
            raise ValueError(
                f"low and high must have the same shape, got {tuple(low_t.shape)} and "
                f"{tuple(high_t.shape)}."
            )
        if not bool((high_t > low_t).all()):
            raise ValueError("Every entry of high must be larger than the matching entry of low.")
        super().__init__(Uniform(low_t, high_t, validate_args=False), 1, validate_args=False)
        self.low, self.high = low_t, high_t
        self.spec = {"type": "box_uniform", "low": low_t.tolist(), "high": high_t.tolist()}

    def expand(self, batch_shape, _instance=None):  # pragma: no cover - torch API
        raise NotImplementedError("BoxUniform priors are not batched.")


class DiagonalGaussian(Independent):
    """Gaussian with diagonal covariance, event shape ``(D,)``."""

    def __init__(self, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor):
        mean_t, std_t = _vector(mean, "mean"), _vector(std, "std")
        if std_t.shape != mean_t.shape:
            std_t = std_t.expand_as(mean_t).clone()
        if not bool((std_t > 0).all()):
            raise ValueError("Every standard deviation must be positive.")
        super().__init__(Normal(mean_t, std_t, validate_args=False), 1, validate_args=False)
        self.spec = {"type": "gaussian", "mean": mean_t.tolist(), "std": std_t.tolist()}


class FullGaussian(MultivariateNormal):
    """Gaussian with a full covariance matrix, event shape ``(D,)``."""

    def __init__(self, mean: Sequence[float] | Tensor, cov: Sequence[Sequence[float]] | Tensor):
        mean_t = _vector(mean, "mean")
        cov_t = torch.as_tensor(cov, dtype=torch.float32)
        d = mean_t.shape[0]
        if cov_t.shape != (d, d):
            raise ValueError(
                f"cov must have shape ({d}, {d}) to match mean, got {tuple(cov_t.shape)}."
            )
        try:
            torch.linalg.cholesky(cov_t)
        except RuntimeError as err:
            raise ValueError("cov must be symmetric positive definite.") from err
        super().__init__(mean_t, covariance_matrix=cov_t, validate_args=False)
        self.spec = {"type": "gaussian", "mean": mean_t.tolist(), "cov": cov_t.tolist()}


_UNIVARIATE = {
    "uniform": (Uniform, ("low", "high")),
    "normal": (Normal, ("loc", "scale")),
    "lognormal": (LogNormal, ("loc", "scale")),
    "gamma": (Gamma, ("concentration", "rate")),
    "beta": (Beta, ("concentration1", "concentration0")),
    "exponential": (Exponential, ("rate",)),
    "halfnormal": (HalfNormal, ("scale",)),
}


class _ProductSupport(constraints.Constraint):
    """Support of a product of components, each on a slice of the last dimension."""

    event_dim = 1

    def __init__(self, supports: list[constraints.Constraint], sizes: list[int]):
        self.supports, self.sizes = supports, sizes
        super().__init__()

    def check(self, value: Tensor) -> Tensor:
        ok = torch.ones(value.shape[:-1], dtype=torch.bool, device=value.device)
        for support, part in zip(self.supports, value.split(self.sizes, dim=-1)):
            inside = support.check(part)
            if inside.ndim == part.ndim:  # elementwise constraint
                inside = inside.all(-1)
            ok = ok & inside
        return ok


class IndependentPrior(Distribution):
    """Product of independent components stacked along the last dimension.

    Components are described by ``(name, params)`` pairs (see :func:`independent`), or
    are any of this module's multivariate priors.
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, components: list[dict[str, Any]]):
        self.components: list[Distribution] = [_component_from_spec(c) for c in components]
        self.sizes = [int(c.event_shape[0]) if c.event_shape else 1 for c in self.components]
        self.spec = {"type": "independent", "components": components}
        super().__init__(torch.Size(), torch.Size([sum(self.sizes)]), validate_args=False)

    @property
    def support(self) -> constraints.Constraint:
        return _ProductSupport([c.support for c in self.components], self.sizes)

    @property
    def mean(self) -> Tensor:
        return torch.cat([c.mean.reshape(-1) for c in self.components])

    @property
    def variance(self) -> Tensor:
        return torch.cat([c.variance.reshape(-1) for c in self.components])

    def sample(self, sample_shape: torch.Size | tuple = ()) -> Tensor:
        parts = []
        for comp, size in zip(self.components, self.sizes):
            s = comp.sample(sample_shape)
            parts.append(s if comp.event_shape else s.unsqueeze(-1))
            assert parts[-1].shape[-1] == size
        return torch.cat(parts, dim=-1)

    def log_prob(self, value: Tensor) -> Tensor:
        total = torch.zeros(value.shape[:-1], dtype=value.dtype, device=value.device)
        for comp, part in zip(self.components, value.split(self.sizes, dim=-1)):
            if comp.event_shape:
                lp = comp.log_prob(part)
            else:
                inside = comp.support.check(part.squeeze(-1))
                safe = torch.where(inside, part.squeeze(-1), comp.mean.expand_as(inside))
                lp = torch.where(inside, comp.log_prob(safe), torch.full_like(safe, -torch.inf))
            total = total + lp
        return total


def _component_from_spec(spec: dict[str, Any]) -> Distribution:
    kind = spec.get("type")
    if kind in _UNIVARIATE:
        cls, names = _UNIVARIATE[kind]
        missing = [n for n in names if n not in spec]
        if missing:
            raise ValueError(f"Component {kind!r} needs parameters {list(names)}; missing {missing}.")
        return cls(*(torch.tensor(float(spec[n])) for n in names), validate_args=False)
    if kind in ("box_uniform", "gaussian"):
        return prior_from_spec(spec)
    raise ValueError(
        f"Unknown prior component type {kind!r}; use one of {sorted(_UNIVARIATE)} "
        "or a 'box_uniform' / 'gaussian' spec."
    )


def box_uniform(low: Sequence[float] | Tensor | float, high: Sequence[float] | Tensor | float,
                dim: int | None = None) -> BoxUniform:
    """Uniform prior on a box. Scalars are broadcast to ``dim`` dimensions."""
    low_t, high_t = _vector(low, "low"), _vector(high, "high")
    if dim is not None:
        low_t, high_t = low_t.expand(dim).clone(), high_t.expand(dim).clone()
    return BoxUniform(low_t, high_t)


def gaussian(mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor | float | None = None,
             cov: Sequence[Sequence[float]] | Tensor | None = None) -> Distribution:
    """Gaussian prior: diagonal when ``std`` is given, full when ``cov`` is given."""
    if (std is None) == (cov is None):
        raise ValueError("Give exactly one of std (diagonal Gaussian) or cov (full covariance).")
    if cov is not None:
        return FullGaussian(mean, cov)
    return DiagonalGaussian(mean, _vector(std, "std"))


def independent(*components: tuple[str, dict[str, float]] | dict[str, Any]) -> IndependentPrior:
    """Product of independent components, e.g.
    ``independent(("lognormal", {"loc": -0.5, "scale": 1.0}), ("uniform", {"low": 0, "high": 1}))``.
    """
    specs = []
    for comp in components:
        if isinstance(comp, dict):
            specs.append(dict(comp))
        elif isinstance(comp, Distribution) and hasattr(comp, "spec"):
            specs.append(dict(comp.spec))
        else:
            name, params = comp
            specs.append({"type": name, **{k: float(v) for k, v in params.items()}})
    return IndependentPrior(specs)


def prior_from_spec(spec: dict[str, Any]) -> Distribution:
    """Rebuild a prior from its declarative ``spec`` (see the helpers above)."""
    if not isinstance(spec, dict) or "type" not in spec:
        raise ValueError(f"A prior spec is a dict with a 'type' key, got {spec!r}.")
    kind = spec["type"]
    if kind == "box_uniform":
        return BoxUniform(spec["low"], spec["high"])
    if kind == "gaussian":
        if "cov" in spec:
            return FullGaussian(spec["mean"], spec["cov"])
        return DiagonalGaussian(spec["mean"], spec["std"])
    if kind == "independent":
        return IndependentPrior(list(spec["components"]))
    raise ValueError(
        f"Unknown prior type {kind!r}. Known types: box_uniform, gaussian, independent."
    )


def prior_spec(prior: Distribution) -> dict[str, Any]:
    """The declarative spec of a prior built by this module's helpers."""
    spec = getattr(prior, "spec", None)
    if spec is None:
        raise ValueError(
            f"This prior ({type(prior).__name__}) has no declarative spec, so it cannot be saved "
            "without pickling code. Build it with sbi_core.box_uniform, sbi_core.gaussian or "
            "sbi_core.independent."
        )
    return spec


def support_bounds(prior: Distribution) -> tuple[Tensor, Tensor]:
    """Lower and upper bounds of the prior's support per dimension (``±inf`` if unbounded)."""
    d = prior.event_shape[0]
    if isinstance(prior, IndependentPrior):
        lows, highs = [], []
        for comp, size in zip(prior.components, prior.sizes):
            lo, hi = support_bounds(comp) if comp.event_shape else _univariate_bounds(comp)
            lows.append(lo.reshape(size))
            highs.append(hi.reshape(size))
        return torch.cat(lows), torch.cat(highs)
    if isinstance(prior, BoxUniform):
        return prior.low.clone(), prior.high.clone()
    support = prior.support
    base = getattr(support, "base_constraint", support)
    lo = getattr(base, "lower_bound", -torch.inf)
    hi = getattr(base, "upper_bound", torch.inf)
    return (torch.as_tensor(lo, dtype=torch.float32).expand(d).clone(),
            torch.as_tensor(hi, dtype=torch.float32).expand(d).clone())


def _univariate_bounds(dist: Distribution) -> tuple[Tensor, Tensor]:
    support = dist.support
    lo = getattr(support, "lower_bound", -torch.inf)
    hi = getattr(support, "upper_bound", torch.inf)
    return torch.as_tensor(lo, dtype=torch.float32), torch.as_tensor(hi, dtype=torch.float32)


def within_support(prior: Distribution, theta: Tensor) -> Tensor:
    """Boolean mask ``(N,)`` of rows of ``theta`` ``(N, D)`` inside the prior's support."""
    ok = prior.support.check(theta)
    if ok.ndim == theta.ndim:
        ok = ok.all(-1)
    return ok & torch.isfinite(theta).all(-1)


def unconstrained_transform(prior: Distribution) -> Transform:
    """Bijection from ``R^D`` onto the prior's support (its ``.inv`` maps back), event_dim 1."""
    if isinstance(prior, IndependentPrior):
        parts = [
            _as_event_transform(biject_to(c.support)) for c in prior.components
        ]
        return CatTransform(parts, dim=-1, lengths=prior.sizes)
    return _as_event_transform(biject_to(prior.support))


def _as_event_transform(t: Transform) -> Transform:
    return t if t.domain.event_dim >= 1 else IndependentTransform(t, 1)
