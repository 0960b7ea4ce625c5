"""Plain-value specs of ``torch.distributions`` objects, rebuilt from an allow-list.

:func:`torch_spec` turns a distribution built from ``torch.distributions`` classes
(including ``Independent``, ``TransformedDistribution`` with the standard transforms and
``MixtureSameFamily``) into nested dicts of strings, numbers and lists::

    {"type": "torch", "class": "Independent", "params": {"reinterpreted_batch_ndims": 1},
     "children": [{"type": "torch", "class": "LogNormal",
                   "params": {"loc": [0.0, 1.0], "scale": [0.5, 0.5]}, "children": []}]}

:func:`torch_from_spec` rebuilds it by looking the class name up in :data:`DISTRIBUTIONS`
or :data:`TRANSFORMS` only: a name read from a file is never imported or looked up on a
module. Only the exact classes are accepted (``type(d) is Normal``); a subclass may
override methods, so it is treated as user code by the caller.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.distributions import (
    AffineTransform,
    Beta,
    Categorical,
    CatTransform,
    Cauchy,
    Chi2,
    ComposeTransform,
    Dirichlet,
    Distribution,
    Exponential,
    ExpTransform,
    FisherSnedecor,
    Gamma,
    Gumbel,
    HalfCauchy,
    HalfNormal,
    Independent,
    IndependentTransform,
    InverseGamma,
    Kumaraswamy,
    Laplace,
    LogisticNormal,
    LogNormal,
    LowRankMultivariateNormal,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
    Pareto,
    PowerTransform,
    ReshapeTransform,
    SigmoidTransform,
    SoftmaxTransform,
    SoftplusTransform,
    StackTransform,
    StickBreakingTransform,
    StudentT,
    TanhTransform,
    Transform,
    TransformedDistribution,
    Uniform,
    VonMises,
    Weibull,
)
from torch.distributions.transforms import _InverseTransform

from sbi_core.user_code import class_label

__all__ = ["DISTRIBUTIONS", "TRANSFORMS", "torch_spec", "torch_from_spec", "UnsupportedPrior"]

#: Distribution classes rebuilt from tensors: class name -> (class, tensor parameter names).
DISTRIBUTIONS: dict[str, tuple[type[Distribution], tuple[str, ...]]] = {
    "Normal": (Normal, ("loc", "scale")),
    "LogNormal": (LogNormal, ("loc", "scale")),
    "Uniform": (Uniform, ("low", "high")),
    "Beta": (Beta, ("concentration1", "concentration0")),
    "Gamma": (Gamma, ("concentration", "rate")),
    "InverseGamma": (InverseGamma, ("concentration", "rate")),
    "Exponential": (Exponential, ("rate",)),
    "HalfNormal": (HalfNormal, ("scale",)),
    "HalfCauchy": (HalfCauchy, ("scale",)),
    "Cauchy": (Cauchy, ("loc", "scale")),
    "Laplace": (Laplace, ("loc", "scale")),
    "StudentT": (StudentT, ("df", "loc", "scale")),
    "Chi2": (Chi2, ("df",)),
    "Gumbel": (Gumbel, ("loc", "scale")),
    "Weibull": (Weibull, ("scale", "concentration")),
    "Pareto": (Pareto, ("scale", "alpha")),
    "Kumaraswamy": (Kumaraswamy, ("concentration1", "concentration0")),
    "FisherSnedecor": (FisherSnedecor, ("df1", "df2")),
    "VonMises": (VonMises, ("loc", "concentration")),
    "LogisticNormal": (LogisticNormal, ("loc", "scale")),
    "Dirichlet": (Dirichlet, ("concentration",)),
    "MultivariateNormal": (MultivariateNormal, ("loc", "scale_tril")),
    "LowRankMultivariateNormal": (LowRankMultivariateNormal, ("loc", "cov_factor", "cov_diag")),
    "Categorical": (Categorical, ("logits",)),
    # structural classes (children, not only tensors)
    "Independent": (Independent, ()),
    "TransformedDistribution": (TransformedDistribution, ()),
    "MixtureSameFamily": (MixtureSameFamily, ()),
}

#: Transform classes: name -> class. Parameters are read per class in ``_transform_spec``.
TRANSFORMS: dict[str, type[Transform]] = {
    "ExpTransform": ExpTransform,
    "AffineTransform": AffineTransform,
    "SigmoidTransform": SigmoidTransform,
    "TanhTransform": TanhTransform,
    "SoftplusTransform": SoftplusTransform,
    "PowerTransform": PowerTransform,
    "SoftmaxTransform": SoftmaxTransform,
    "StickBreakingTransform": StickBreakingTransform,
    "ComposeTransform": ComposeTransform,
    "IndependentTransform": IndependentTransform,
    "ReshapeTransform": ReshapeTransform,
    "CatTransform": CatTransform,
    "StackTransform": StackTransform,
    "_InverseTransform": _InverseTransform,
}


class UnsupportedPrior(ValueError):
    """The distribution (or one of its parts) is not built from the allow-listed classes."""


def _value(v: Any) -> Any:
    """A tensor or number as plain lists / floats (dtype recorded by the caller)."""
    if isinstance(v, Tensor):
        return v.detach().cpu().tolist()
    if isinstance(v, (int, float, bool)):
        return v
    if isinstance(v, (list, tuple)):
        return [_value(e) for e in v]
    raise UnsupportedPrior(f"parameter of type {type(v).__name__} is not a tensor or number")


def _dtype(values: list[Any]) -> str:
    return "float64" if any(isinstance(v, Tensor) and v.dtype == torch.float64
                            for v in values) else "float32"


def _node(cls: str, params: dict[str, Any], children: list[dict[str, Any]],
          raw: list[Any] = ()) -> dict[str, Any]:
    return {"type": "torch", "class": cls, "params": params, "children": children,
            "dtype": _dtype(list(raw))}


def torch_spec(dist: Distribution) -> dict[str, Any]:
    """Plain spec of ``dist``; raises :class:`UnsupportedPrior` naming the part that is not
    built from the allow-listed classes."""
    name = type(dist).__name__
    entry = DISTRIBUTIONS.get(name)
    if entry is None or type(dist) is not entry[0]:
        raise UnsupportedPrior(class_label(type(dist)))
    cls, names = entry
    if cls is Independent:
        return _node(name, {"reinterpreted_batch_ndims": int(dist.reinterpreted_batch_ndims)},
                     [torch_spec(dist.base_dist)])
    if cls is TransformedDistribution:
        node = _node(name, {}, [torch_spec(dist.base_dist)])
        node["transforms"] = [_transform_spec(t) for t in dist.transforms]
        return node
    if cls is MixtureSameFamily:
        return _node(name, {}, [torch_spec(dist.mixture_distribution),
                                torch_spec(dist.component_distribution)])
    raw = [getattr(dist, n) for n in names]
    return _node(name, {n: _value(v) for n, v in zip(names, raw)}, [], raw)


def _transform_spec(t: Transform) -> dict[str, Any]:
    name = type(t).__name__
    if TRANSFORMS.get(name) is not type(t):
        raise UnsupportedPrior(f"transform {class_label(type(t))}")
    params: dict[str, Any] = {}
    children: list[dict[str, Any]] = []
    raw: list[Any] = []
    if isinstance(t, AffineTransform):
        # python numbers stay numbers: torch treats a number and a 0-d tensor scale differently
        raw = [t.loc, t.scale]
        params = {"loc": _value(t.loc), "scale": _value(t.scale), "event_dim": int(t.event_dim),
                  "numbers": [n for n in ("loc", "scale")
                              if not isinstance(getattr(t, n), Tensor)]}
    elif isinstance(t, PowerTransform):
        raw = [t.exponent]
        params = {"exponent": _value(t.exponent)}
    elif isinstance(t, ComposeTransform):
        children = [_transform_spec(p) for p in t.parts]
    elif isinstance(t, IndependentTransform):
        params = {"reinterpreted_batch_ndims": int(t.reinterpreted_batch_ndims)}
        children = [_transform_spec(t.base_transform)]
    elif isinstance(t, ReshapeTransform):
        params = {"in_shape": list(t.in_shape), "out_shape": list(t.out_shape)}
    elif isinstance(t, (CatTransform, StackTransform)):
        params = {"dim": int(t.dim)}
        if isinstance(t, CatTransform):
            params["lengths"] = [int(n) for n in t.lengths]
        children = [_transform_spec(p) for p in t.transforms]
    elif isinstance(t, _InverseTransform):
        children = [_transform_spec(t._inv)]
    return {"class": name, "params": params, "children": children, "dtype": _dtype(raw)}


def _tensor(v: Any, dtype: torch.dtype) -> Tensor:
    return torch.as_tensor(v, dtype=dtype)


def _dtype_of(spec: dict[str, Any]) -> torch.dtype:
    return torch.float64 if spec.get("dtype") == "float64" else torch.float32


def torch_from_spec(spec: dict[str, Any]) -> Distribution:
    """Rebuild a distribution written by :func:`torch_spec` (allow-listed classes only)."""
    name = spec.get("class")
    if name not in DISTRIBUTIONS:
        raise ValueError(f"Prior class {name!r} is not in the allow-list of torch.distributions "
                         f"classes that can be rebuilt from a file: {sorted(DISTRIBUTIONS)}.")
    cls, names = DISTRIBUTIONS[name]
    params, children = dict(spec.get("params") or {}), list(spec.get("children") or [])
    if cls is Independent:
        return Independent(torch_from_spec(children[0]),
                           int(params["reinterpreted_batch_ndims"]), validate_args=False)
    if cls is TransformedDistribution:
        return TransformedDistribution(torch_from_spec(children[0]),
                                       [_transform_from_spec(t) for t in spec["transforms"]],
                                       validate_args=False)
    if cls is MixtureSameFamily:
        return MixtureSameFamily(torch_from_spec(children[0]), torch_from_spec(children[1]),
                                 validate_args=False)
    dtype = _dtype_of(spec)
    missing = [n for n in names if n not in params]
    if missing:
        raise ValueError(f"The {name} prior spec lacks parameters {missing}.")
    return cls(**{n: _tensor(params[n], dtype) for n in names}, validate_args=False)


def _transform_from_spec(spec: dict[str, Any]) -> Transform:
    name = spec.get("class")
    if name not in TRANSFORMS:
        raise ValueError(f"Transform {name!r} is not in the allow-list of torch transforms that "
                         f"can be rebuilt from a file: {sorted(TRANSFORMS)}.")
    cls = TRANSFORMS[name]
    p, children = dict(spec.get("params") or {}), list(spec.get("children") or [])
    dtype = _dtype_of(spec)
    if cls is AffineTransform:
        numbers = set(p.get("numbers") or [])
        loc, scale = (float(p[n]) if n in numbers else _tensor(p[n], dtype)
                      for n in ("loc", "scale"))
        return AffineTransform(loc, scale, event_dim=int(p.get("event_dim", 0)))
    if cls is PowerTransform:
        return PowerTransform(_tensor(p["exponent"], dtype))
    if cls is ComposeTransform:
        return ComposeTransform([_transform_from_spec(c) for c in children])
    if cls is IndependentTransform:
        return IndependentTransform(_transform_from_spec(children[0]),
                                    int(p["reinterpreted_batch_ndims"]))
    if cls is ReshapeTransform:
        return ReshapeTransform(torch.Size(p["in_shape"]), torch.Size(p["out_shape"]))
    if cls is CatTransform:
        return CatTransform([_transform_from_spec(c) for c in children], int(p["dim"]),
                            [int(n) for n in p["lengths"]])
    if cls is StackTransform:
        return StackTransform([_transform_from_spec(c) for c in children], int(p["dim"]))
    if cls is _InverseTransform:
        return _transform_from_spec(children[0]).inv
    return cls()
