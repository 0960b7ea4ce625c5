"""``scipy.stats`` frozen distributions (and products of them) as a torch prior.

Example::

    from scipy import stats
    prior = from_scipy([stats.norm(0, 1), stats.lognorm(s=0.5), stats.uniform(0, 2)])
    theta = prior.sample((100,))        # (100, 3) float32, seeded by torch's RNG
    prior.log_prob(theta)               # (100,), sum of the components' logpdf

A frozen distribution with array parameters (``stats.norm(loc=[0, 1])``) gives one
dimension per entry. The spec stores each component's distribution name, ``args`` and
``kwds``; rebuilding looks the name up only among the continuous distributions that
``scipy.stats`` exports (:func:`scipy_distributions`), never as an arbitrary attribute.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

__all__ = ["ScipyPrior", "from_scipy", "is_scipy_frozen", "scipy_distributions"]


def is_scipy_frozen(obj: Any) -> bool:
    """True for a frozen univariate ``scipy.stats`` distribution (``stats.norm(0, 1)``)."""
    from scipy.stats import rv_continuous, rv_discrete

    return hasattr(obj, "dist") and isinstance(getattr(obj, "dist", None),
                                               (rv_continuous, rv_discrete)) \
        and hasattr(obj, "args") and hasattr(obj, "kwds")


@lru_cache(maxsize=1)
def scipy_distributions() -> dict[str, Any]:
    """Name -> continuous distribution object, for every one ``scipy.stats`` exports."""
    import scipy.stats
    from scipy.stats import rv_continuous

    return {obj.name: obj for obj in vars(scipy.stats).values()
            if isinstance(obj, rv_continuous) and getattr(obj, "name", None)}


def _plain_args(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain_args(v) for v in value]
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"scipy prior parameters must be numbers or arrays, got {value!r}.")
    return arr.tolist()


def _scalar_constraint(lo: float, hi: float) -> constraints.Constraint:
    if np.isfinite(lo) and np.isfinite(hi):
        return constraints.interval(float(lo), float(hi))
    if np.isfinite(lo):
        return constraints.greater_than(float(lo))
    if np.isfinite(hi):
        return constraints.less_than(float(hi))
    return constraints.real


class ScipyPrior(Distribution):
    """Product of frozen continuous ``scipy.stats`` distributions, event shape ``(D,)``.

    ``sample`` draws with a numpy generator seeded from torch's RNG (so ``torch.manual_seed``
    makes it reproducible); ``log_prob`` is the sum of ``logpdf``, differentiable by central
    differences.
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, components: Sequence[Any]):
        comps = list(components)
        if not comps:
            raise ValueError("from_scipy needs at least one frozen scipy.stats distribution.")
        by_name = scipy_distributions()
        for c in comps:
            if not is_scipy_frozen(c):
                raise TypeError(
                    f"{c!r} is not a frozen scipy.stats distribution; pass e.g. "
                    "scipy.stats.norm(0, 1) (with its parameters), not scipy.stats.norm.")
            if by_name.get(c.dist.name) is None:
                raise ValueError(
                    f"scipy.stats.{c.dist.name} is not a continuous distribution exported by "
                    "scipy.stats; a parameter prior must be continuous.")
        self.frozen = comps
        self.shapes = [tuple(np.shape(c.mean())) for c in comps]
        for c, s in zip(comps, self.shapes):
            if len(s) > 1:
                raise ValueError(f"scipy prior {c.dist.name} has parameters of shape {s}; use "
                                 "scalars or 1-D arrays.")
        self.sizes = [int(np.prod(s)) if s else 1 for s in self.shapes]
        self.spec = {"type": "scipy", "components": [
            {"name": c.dist.name, "args": _plain_args(c.args),
             "kwds": {str(k): _plain_args(v) for k, v in c.kwds.items()}} for c in comps]}
        lows, highs = [], []
        for c, size in zip(comps, self.sizes):
            lo, hi = c.support()
            lows.append(np.broadcast_to(np.asarray(lo, dtype=float), (size,)))
            highs.append(np.broadcast_to(np.asarray(hi, dtype=float), (size,)))
        self.low = torch.as_tensor(np.concatenate(lows), dtype=torch.float32)
        self.high = torch.as_tensor(np.concatenate(highs), dtype=torch.float32)
        super().__init__(torch.Size(), torch.Size([sum(self.sizes)]), validate_args=False)

    @property
    def support(self) -> constraints.Constraint:
        from sbi_core.priors import _ProductSupport

        d = self.event_shape[0]
        return _ProductSupport([_scalar_constraint(float(self.low[i]), float(self.high[i]))
                                for i in range(d)], [1] * d)

    @property
    def mean(self) -> Tensor:
        return torch.as_tensor(np.concatenate([np.reshape(c.mean(), (s,)) for c, s in
                                               zip(self.frozen, self.sizes)]), dtype=torch.float32)

    @property
    def variance(self) -> Tensor:
        return torch.as_tensor(np.concatenate([np.reshape(c.var(), (s,)) for c, s in
                                               zip(self.frozen, self.sizes)]), dtype=torch.float32)

    def sample(self, sample_shape: torch.Size | tuple = ()) -> Tensor:
        shape = tuple(sample_shape)
        n = int(np.prod(shape)) if shape else 1
        seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
        rng = np.random.default_rng(seed)
        parts = [np.reshape(c.rvs(size=(n, *s), random_state=rng), (n, size))
                 for c, s, size in zip(self.frozen, self.shapes, self.sizes)]
        out = torch.as_tensor(np.concatenate(parts, axis=1), dtype=torch.float32)
        return out.reshape(*shape, self.event_shape[0])

    def _logpdf_parts(self, v: np.ndarray) -> np.ndarray:
        """Per-dimension logpdf ``(..., D)`` of ``v`` ``(..., D)`` (float64 numpy)."""
        out, start = [], 0
        for c, s, size in zip(self.frozen, self.shapes, self.sizes):
            part = v[..., start:start + size]
            lp = c.logpdf(part if s else part[..., 0])
            out.append(np.reshape(lp, (*v.shape[:-1], size)))
            start += size
        return np.concatenate(out, axis=-1)

    def log_prob(self, value: Tensor) -> Tensor:
        """Sum of the components' ``logpdf`` ``(...)``; differentiable through a central
        difference per dimension (the components are independent), so MAP search and HMC
        work too."""
        return _ScipyLogProb.apply(value, self)

    def __repr__(self) -> str:
        inner = ", ".join(f"{c['name']}(args={c['args']}, kwds={c['kwds']})"
                          for c in self.spec["components"])
        return f"ScipyPrior([{inner}])"


class _ScipyLogProb(torch.autograd.Function):
    """``log p(value)`` by numpy; gradient by central differences of each dimension's logpdf."""

    @staticmethod
    def forward(ctx: Any, value: Tensor, prior: ScipyPrior) -> Tensor:
        v = value.detach().cpu().double().numpy()
        ctx.prior, ctx.v = prior, v
        total = prior._logpdf_parts(v).sum(-1)
        return torch.as_tensor(total, dtype=value.dtype, device=value.device)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        v, prior = ctx.v, ctx.prior
        h = 1e-5 * np.maximum(1.0, np.abs(v))
        d = (prior._logpdf_parts(v + h) - prior._logpdf_parts(v - h)) / (2 * h)
        d = np.where(np.isfinite(d), d, 0.0)
        g = torch.as_tensor(d, dtype=grad.dtype, device=grad.device)
        return grad.unsqueeze(-1) * g, None


def from_scipy(dists: Any) -> ScipyPrior:
    """Wrap a frozen ``scipy.stats`` distribution, or a list of them (a product), as a prior."""
    if is_scipy_frozen(dists):
        dists = [dists]
    return ScipyPrior(list(dists))


def scipy_from_spec(spec: dict[str, Any]) -> ScipyPrior:
    """Rebuild a :class:`ScipyPrior` from its spec (names looked up in the allow-list only)."""
    by_name = scipy_distributions()
    comps = []
    for c in spec.get("components") or []:
        dist = by_name.get(c.get("name"))
        if dist is None:
            raise ValueError(f"scipy distribution {c.get('name')!r} is not one of the continuous "
                             "distributions of scipy.stats; the prior cannot be rebuilt.")
        comps.append(dist(*c.get("args", []), **dict(c.get("kwds") or {})))
    return ScipyPrior(comps)
