"""Priors: any torch distribution, saved as data.

A prior is any ``torch.distributions.Distribution`` with event shape ``(D,)`` (frozen
``scipy.stats`` distributions are wrapped by :func:`as_prior`). :func:`prior_spec` turns it
into plain values (strings, numbers, lists) that a model file stores, and
:func:`prior_from_spec` rebuilds it:

- the helpers here (``box_uniform``, ``gaussian``, ``independent``) carry their own ``spec``;
- a distribution built from ``torch.distributions`` classes (``Independent``,
  ``TransformedDistribution`` with the standard transforms, ``MixtureSameFamily``, ...) is
  stored as class names + tensor values and rebuilt from an allow-list of those classes
  (:mod:`sbi_core.torch_prior_spec`);
- ``scipy.stats`` products are stored as distribution names + parameters
  (:mod:`sbi_core.scipy_prior`);
- anything else (a user-written class) is stored only as a reference
  ``{"type": "user", "class": "mypkg.MyPrior"}``: it is never imported from a file, and
  :func:`prior_from_spec` raises :class:`UserPriorRequired`, so ``load(path, prior=...)``
  must supply it.

Example::

    prior = box_uniform(low=[-1, -1], high=[1, 1])
    theta = prior.sample((1000,))             # (1000, 2)
    again = prior_from_spec(prior.spec)       # same distribution
"""

from __future__ import annotations

import math
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
from torch.distributions.transforms import identity_transform

from sbi_core.display import shown
from sbi_core.user_code import class_label

__all__ = [
    "UserPriorRequired",
    "as_prior",
    "from_scipy",
    "user_prior_class",
    "same_prior_spec",
    "BoxUniform",
    "DiagonalGaussian",
    "FullGaussian",
    "IndependentPrior",
    "box_uniform",
    "gaussian",
    "independent",
    "prior_from_spec",
    "prior_log_prob",
    "prior_spec",
    "prior_support",
    "support_bounds",
    "support_is_real",
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

    def __init__(self, components: list[dict[str, Any] | Distribution]):
        self.components: list[Distribution] = [
            c if isinstance(c, Distribution) else _component_from_spec(c) for c in components]
        for c in self.components:
            if c.batch_shape != torch.Size() or len(c.event_shape) > 1:
                raise ValueError(
                    f"Each component of independent(...) must be one scalar distribution or a "
                    f"distribution with event shape (k,), and no batch shape; got {c!r} with batch "
                    f"shape {tuple(c.batch_shape)} and event shape {tuple(c.event_shape)}. Wrap a "
                    "batch of scalars with torch.distributions.Independent(dist, 1).")
        self.sizes = [int(c.event_shape[0]) if c.event_shape else 1 for c in self.components]
        self.spec = {"type": "independent", "components": [
            c if not isinstance(c, Distribution) else prior_spec(c) for c in components]}
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
    if kind in ("box_uniform", "gaussian", "torch", "scipy", "user", "independent"):
        return prior_from_spec(spec)
    raise ValueError(
        f"Unknown prior component type {kind!r}; use one of {sorted(_UNIVARIATE)}, a "
        "'box_uniform' / 'gaussian' spec, or a torch.distributions object."
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

    Components may also be any ``torch.distributions`` objects (scalar or event shape
    ``(k,)``), e.g. ``independent(Gamma(2.0, 1.0), Normal(0.0, 1.0))``, or frozen
    ``scipy.stats`` distributions.
    """
    specs: list[dict[str, Any] | Distribution] = []
    for comp in components:
        if isinstance(comp, dict):
            specs.append(dict(comp))
        elif isinstance(comp, Distribution):
            specs.append(comp)
        elif _is_scipy(comp):
            specs.append(as_prior(comp))
        elif (isinstance(comp, (tuple, list)) and len(comp) == 2 and isinstance(comp[0], str)
              and isinstance(comp[1], dict)):
            name, params = comp
            specs.append({"type": name, **{k: float(v) for k, v in params.items()}})
        else:
            hint = (" Pass the components as separate arguments: independent(*components)."
                    if isinstance(comp, (tuple, list)) else "")
            raise TypeError(
                f"independent() got a component {comp!r:.80}; each component is a "
                "torch.distributions object, a frozen scipy.stats distribution, a dict spec, or "
                f"a (name, params) pair such as ('uniform', {{'low': 0, 'high': 1}}).{hint}")
    return IndependentPrior(specs)


class UserPriorRequired(ValueError):
    """A saved prior is a user-written class; it is never imported from a file."""


_OWN_TYPES = ("box_uniform", "gaussian", "independent")


def prior_from_spec(spec: dict[str, Any]) -> Distribution:
    """Rebuild a prior from its declarative ``spec`` (see :func:`prior_spec`).

    Raises :class:`UserPriorRequired` for a user-written prior class, which is never imported
    from a spec: pass the prior itself (``load(path, prior=...)``).
    """
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
        part = user_prior_class(spec)
        if part is not None:
            raise UserPriorRequired(user_prior_message("sbi_core.independent", part))
        return IndependentPrior(list(spec["components"]))
    if kind == "torch":
        from sbi_core.torch_prior_spec import torch_from_spec

        return torch_from_spec(spec)
    if kind == "scipy":
        from sbi_core.scipy_prior import scipy_from_spec

        return scipy_from_spec(spec)
    if kind == "user":
        raise UserPriorRequired(user_prior_message(str(spec.get("class", "?")),
                                                   spec.get("user_class")))
    raise ValueError(
        f"Unknown prior type {kind!r}. Known types: box_uniform, gaussian, independent, torch, "
        "scipy, user."
    )


def user_prior_message(cls: str, part: str | None = None) -> str:
    """The message shown when a saved prior is (or contains) a user-written class."""
    cls, part = shown(cls), (None if part is None else shown(part))  # names read from a file
    what = f"user-written prior {cls}" if not part or part == cls else \
        f"prior {cls} containing the user-written {part}"
    short = cls.replace(":", ".").rsplit(".", 1)[-1]
    return (f"This model was trained with a {what}. Its code is never imported from a file, so "
            f"give the prior again: sbi_core.load(path, prior={short}(...)) in "
            "Python, or --problem FILE.py:FUNCTION (the problem that defines the prior) on the "
            "command line.")


def prior_spec(prior: Distribution) -> dict[str, Any]:
    """Plain-value spec of any prior (never raises for a ``Distribution``).

    The helpers' own priors keep their spec; distributions built from allow-listed
    ``torch.distributions`` classes become ``{"type": "torch", "class", "params",
    "children"}``; :class:`~sbi_core.scipy_prior.ScipyPrior` becomes ``{"type": "scipy"}``;
    anything else becomes a reference ``{"type": "user", "class": "module.Name", "repr"}``
    that :func:`prior_from_spec` refuses to rebuild.
    """
    if not isinstance(prior, Distribution):
        raise TypeError(f"prior_spec needs a torch Distribution, got {type(prior).__name__}.")
    from sbi_core.scipy_prior import ScipyPrior
    from sbi_core.torch_prior_spec import UnsupportedPrior, torch_spec

    if type(prior) in (BoxUniform, DiagonalGaussian, FullGaussian, IndependentPrior, ScipyPrior):
        return prior.spec
    try:
        return torch_spec(prior)
    except UnsupportedPrior as err:
        part = str(err)  # the innermost part that is not allow-listed (may be prior itself)
    cls = type(prior)
    try:
        text = repr(prior)
    except Exception:  # a user __repr__ may fail; the class name is enough
        text = cls.__name__
    return {"type": "user", "class": class_label(cls), "user_class": part,
            "repr": text[:500], "event_shape": [int(n) for n in prior.event_shape]}


def user_prior_class(spec: dict[str, Any]) -> str | None:
    """The class name of the first user-written prior inside ``spec``, or None if the whole
    spec can be rebuilt from data."""
    if not isinstance(spec, dict):
        return None
    if spec.get("type") == "user":
        return str(spec.get("user_class") or spec.get("class", "?"))
    for child in list(spec.get("children") or []) + list(spec.get("components") or []):
        found = user_prior_class(child)
        if found:
            return found
    return None


def same_prior_spec(a: Any, b: Any, rtol: float = 1e-5) -> bool:
    """True when two specs describe the same prior (numbers compared with ``rtol``)."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = (set(a) | set(b)) - {"repr", "dtype"}
        return all(same_prior_spec(a.get(k), b.get(k), rtol) for k in keys)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_prior_spec(x, y, rtol) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) \
            and not isinstance(a, bool) and not isinstance(b, bool):
        return math.isclose(float(a), float(b), rel_tol=rtol, abs_tol=1e-7) or a == b
    return a == b


def _is_scipy(obj: Any) -> bool:
    from sbi_core.scipy_prior import is_scipy_frozen

    return is_scipy_frozen(obj)


def from_scipy(dists: Any) -> Distribution:
    """A frozen ``scipy.stats`` distribution, or a list of them (a product), as a torch prior
    (:class:`~sbi_core.scipy_prior.ScipyPrior`)."""
    from sbi_core.scipy_prior import from_scipy as _from_scipy

    return _from_scipy(dists)


def as_prior(prior: Any) -> Distribution:
    """``prior`` as a torch Distribution: torch distributions pass through; a frozen
    ``scipy.stats`` distribution or a list of them becomes a
    :class:`~sbi_core.scipy_prior.ScipyPrior`."""
    if isinstance(prior, Distribution):
        return prior
    if _is_scipy(prior) or (isinstance(prior, (list, tuple)) and prior
                            and all(_is_scipy(p) for p in prior)):
        from sbi_core.scipy_prior import from_scipy

        return from_scipy(prior)
    raise TypeError(
        f"prior must be a torch.distributions.Distribution (or frozen scipy.stats "
        f"distributions), got {type(prior).__name__}. Use sbi_core.box_uniform, "
        "sbi_core.gaussian, sbi_core.independent, any torch.distributions object with event "
        "shape (D,), or e.g. [scipy.stats.norm(0, 1), scipy.stats.gamma(2)]."
    )


def _support(prior: Distribution) -> constraints.Constraint | None:
    """The prior's support, or None when the class does not define one."""
    try:
        return prior.support
    except NotImplementedError:
        return None


def _constraint_bounds(c: constraints.Constraint | None, size: int) -> tuple[Tensor, Tensor]:
    """Per-dimension ``(low, high)`` ``(size,)`` of a constraint (``±inf`` where unbounded or
    unknown)."""
    if isinstance(c, _ProductSupport):
        parts = [_constraint_bounds(p, n) for p, n in zip(c.supports, c.sizes)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    while isinstance(c, constraints.independent):
        c = c.base_constraint
    if c is constraints.simplex:
        lo, hi = 0.0, 1.0
    else:
        lo = getattr(c, "lower_bound", -torch.inf)
        hi = getattr(c, "upper_bound", torch.inf)
    return _fit_bound(lo, size, torch.amin), _fit_bound(hi, size, torch.amax)


def _fit_bound(value: Any, size: int, reduce: Any) -> Tensor:
    t = torch.as_tensor(value, dtype=torch.float32).detach().cpu()
    if t.numel() > size and t.numel() % size == 0:  # e.g. mixture components (K, D)
        return reduce(t.reshape(-1, size), dim=0)
    return t.expand(size).clone() if t.ndim == 0 else t.reshape(-1).expand(size).clone()


def simplex_parameters(prior: Distribution) -> bool:
    """Whether (part of) the prior's support is a simplex (e.g. ``Dirichlet``): parameters
    that sum to 1 fill a ``(D-1)``-dimensional set that a density in ``D`` dimensions cannot
    describe."""
    support = _support(prior)
    parts = [c.support for c in prior.components] if isinstance(prior, IndependentPrior) else \
        (support.supports if isinstance(support, _ProductSupport) else [support])
    for c in parts:
        while isinstance(c, constraints.independent):
            c = c.base_constraint
        if c is constraints.simplex:
            return True
    return False


def support_bounds(prior: Distribution) -> tuple[Tensor, Tensor]:
    """Lower and upper bounds ``(D,)`` of the prior's support (``±inf`` if unbounded).

    Works for any prior: boxes, intervals, half-lines (``positive``, ``greater_than``),
    ``independent`` wrappers, products (:class:`IndependentPrior`, scipy priors) and mixtures
    (the bounding box over components). A prior without a ``support`` is taken as unbounded.
    """
    d = int(prior.event_shape[0])
    if isinstance(prior, BoxUniform):
        return prior.low.clone(), prior.high.clone()
    if isinstance(prior, IndependentPrior):
        lows, highs = [], []
        for comp, size in zip(prior.components, prior.sizes):
            lo, hi = support_bounds(comp) if comp.event_shape else \
                _constraint_bounds(_support(comp), 1)
            lows.append(lo.reshape(size))
            highs.append(hi.reshape(size))
        return torch.cat(lows), torch.cat(highs)
    return _constraint_bounds(_support(prior), d)


class _FiniteLogProbSupport(constraints.Constraint):
    """Support of a prior whose class defines none: the points with a finite ``log_prob``."""

    event_dim = 1

    def __init__(self, prior: Distribution):
        self.prior = prior
        super().__init__()

    def check(self, value: Tensor) -> Tensor:
        flat = value.reshape(-1, value.shape[-1])
        return within_support(self.prior, flat).reshape(value.shape[:-1])


def prior_support(prior: Distribution) -> constraints.Constraint:
    """The prior's ``support``, or :class:`_FiniteLogProbSupport` when its class defines none."""
    support = _support(prior)
    return _FiniteLogProbSupport(prior) if support is None else support


def support_is_real(prior: Distribution) -> bool:
    """Whether the prior's support is known to be all of ``R^D`` (every finite point inside).

    False for a bounded support, for a support that is no box (e.g. a user constraint such
    as ``b < a``) and for a prior whose class defines no ``support``: samples of an estimator
    may then leave the support, so they must be checked (``within_support``).
    """
    if isinstance(prior, IndependentPrior):
        return all(support_is_real(c) if c.event_shape else _all_real(_support(c))
                   for c in prior.components)
    return _all_real(_support(prior))


def _all_real(c: constraints.Constraint | None) -> bool:
    if isinstance(c, _ProductSupport):
        return all(_all_real(p) for p in c.supports)
    while isinstance(c, constraints.independent):
        c = c.base_constraint
    return type(c) is type(constraints.real)


def within_support(prior: Distribution, theta: Tensor) -> Tensor:
    """Boolean mask ``(N,)`` of rows of ``theta`` ``(N, D)`` inside the prior's support.

    A prior without a ``support`` counts rows with a finite ``log_prob`` as inside.
    """
    finite = torch.isfinite(theta).all(-1)
    support = _support(prior)
    if support is None:
        safe = torch.where(finite.unsqueeze(-1), theta, torch.zeros_like(theta))
        with torch.no_grad():
            ok = torch.isfinite(prior.log_prob(safe))
        return ok & finite
    ok = support.check(theta)
    if ok.ndim == theta.ndim:
        ok = ok.all(-1)
    return ok & finite


def prior_log_prob(prior: Distribution, theta: Tensor) -> Tensor:
    """``prior.log_prob`` ``(N,)`` of ``theta`` ``(N, D)`` that is ``-inf`` outside the support
    instead of raising (torch distributions validate their arguments by default) or NaN;
    gradients flow for rows inside."""
    inside = within_support(prior, theta)
    if bool(inside.all()):
        return prior.log_prob(theta)
    center = unconstrained_transform(prior)(torch.zeros(1, theta.shape[-1], dtype=theta.dtype))
    safe = torch.where(inside.unsqueeze(-1), theta, center.to(theta.device).expand_as(theta))
    lp = prior.log_prob(safe)
    return torch.where(inside, lp, torch.full_like(lp, -torch.inf))


def unconstrained_transform(prior: Distribution) -> Transform:
    """Bijection from ``R^D`` onto the prior's support (its ``.inv`` maps back), event_dim 1.

    Built with ``torch.distributions.biject_to`` from the prior's support; products are
    concatenated per component. A prior without a support, or with a support ``biject_to``
    does not know, gets the identity (its samples are then kept inside by rejection).
    """
    support = _support(prior)
    if isinstance(prior, IndependentPrior):
        support = _ProductSupport([c.support for c in prior.components], prior.sizes)
    if isinstance(support, _ProductSupport):
        return CatTransform([_as_event_transform(_biject(c)) for c in support.supports],
                            dim=-1, lengths=support.sizes)
    return _as_event_transform(_biject(support))


def support_is_mapped(prior: Distribution) -> bool:
    """Whether :func:`unconstrained_transform` maps ``R^D`` onto the whole support (a box, a
    half-line, ...): False for a prior class without ``support`` or with a constraint
    ``biject_to`` does not know, whose estimators' draws may leave the support."""
    if isinstance(prior, IndependentPrior):
        return all(support_is_mapped(c) for c in prior.components)
    support = _support(prior)
    if support is None:
        return False
    if isinstance(support, _ProductSupport):
        return all(_biject(c) is not identity_transform or _all_real(c)
                   for c in support.supports)
    return _biject(support) is not identity_transform or _all_real(support)


def _biject(support: constraints.Constraint | None) -> Transform:
    if support is None:
        return identity_transform
    try:
        return biject_to(support)
    except NotImplementedError:
        return identity_transform


def _as_event_transform(t: Transform) -> Transform:
    return t if t.domain.event_dim >= 1 else IndependentTransform(t, 1)
