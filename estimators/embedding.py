"""Embedding networks for observations: built-in ones from plain-value specs, or your own.

An embedding maps a batch of (z-scored) observations ``(N, *x_shape)`` to features
``(N, C)`` and is trained jointly with the estimator. Built-in embeddings are described by
a plain-value spec (a dict, or just its type name as a string), saved with the model
without pickling:

==================  ==================================  =========================================
``type``            ``x_shape``                          use for
==================  ==================================  =========================================
``"identity"``      any                                  (default) flatten ``x``
``"mlp"``           any                                  flattened vectors of summary statistics
``"set"``           ``(n_trials, d)``                    iid trials, DeepSet; all-NaN rows = padding
``"transformer"``   ``(T,)``, ``(T, C)`` / ``(n, d)``    sequences (``mode="sequence"``) or sets
                                                         with interactions (``mode="set"``)
``"cnn1d"``         ``(T,)`` or ``(C, T)``               time series with local patterns
``"tcn"``           ``(T,)`` or ``(T, C)``               time series, causal dilated convolutions
``"gru"``/``"lstm"``  ``(T,)`` or ``(T, C)``             short/medium time series, recurrent
``"cnn2d"``         ``(H, W)`` or ``(C, H, W)``          images
==================  ==================================  =========================================

Your own ``nn.Module`` (any module mapping ``(N, *x_shape)`` to ``(N, C)``) is passed as
``fit(..., embedding=my_net)``. Its weights are saved with the model; the file records its
class name and output size only for display (``{"type": "user", "class": ..., "output_dim":
...}``), and :func:`sbi_core.load` needs the module again (``load(path, embedding=MyNet)``):
no name read from a file is ever imported. See ``docs/embeddings.md``.
"""

from __future__ import annotations

import copy
import math
import shlex
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from estimators.embedding_conv import CNN1dEmbedding, CNN2dEmbedding, TCNEmbedding, mlp
from estimators.embedding_sequence import RNNEmbedding, TransformerEmbedding
from sbi_core.display import MESSAGE_LIMIT, shown
from sbi_core.user_code import class_label

__all__ = ["build_embedding", "prepare_embedding", "is_set_embedding", "is_user_embedding",
           "padded_sets",
           "user_embedding_module", "UserEmbeddingError", "SetEmbedding", "MLPEmbedding",
           "CNN1dEmbedding", "CNN2dEmbedding", "TCNEmbedding", "RNNEmbedding",
           "TransformerEmbedding", "BUILTIN_EMBEDDINGS"]


class UserEmbeddingError(ValueError):
    """A user embedding is missing, of the wrong kind, or does not fit the saved weights."""


class MLPEmbedding(nn.Module):
    """Flatten ``x`` ``(N, *x_shape)`` and map through an MLP → ``(N, output_dim)``."""

    def __init__(self, x_shape: tuple[int, ...], output_dim: int = 20, hidden_features: int = 64,
                 num_layers: int = 2):
        super().__init__()
        self.net = mlp(math.prod(x_shape), hidden_features, output_dim, num_layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1))


class SetEmbedding(nn.Module):
    """DeepSet: ``rho(mean_i phi(x_i))`` over trials ``(N, n, d)`` → ``(N, output_dim)``.

    All-NaN trials are padding and are ignored, so sets of different sizes share a batch.
    The number of valid trials is appended to the pooled features. With ``moments=True``
    the set's first and second moments (the mean of each trial value and of each product of
    two, ``d + d(d+1)/2`` numbers: the sufficient statistics of Gaussian trials) are also
    pooled, fed to ``rho`` and appended to the output, so the estimator sees them exactly
    (output ``output_dim + d + d(d+1)/2``).
    """

    def __init__(self, x_shape: tuple[int, ...], output_dim: int = 20, hidden_features: int = 64,
                 num_layers: int = 2, moments: bool = False):
        super().__init__()
        if len(x_shape) != 2:
            raise ValueError(f"A set embedding needs x of shape (n_trials, d), got {x_shape}.")
        d = x_shape[1]
        self.moments = bool(moments)
        extra = d + d * (d + 1) // 2 if self.moments else 0
        self.phi = mlp(d, hidden_features, hidden_features, num_layers)
        self.rho = mlp(hidden_features + 1 + extra, hidden_features, output_dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        pad = torch.isnan(x).all(-1)  # (N, n)
        x = torch.nan_to_num(x)
        h = self.phi(x)
        keep = (~pad).float().unsqueeze(-1)
        count = keep.sum(1).clamp(min=1.0)
        pooled = (h * keep).sum(1) / count
        if not self.moments:
            return self.rho(torch.cat([pooled, count.log()], dim=-1))
        i, j = torch.triu_indices(x.shape[-1], x.shape[-1], device=x.device)
        feats = torch.cat([x, x[..., i] * x[..., j]], dim=-1)  # (N, n, d + d(d+1)/2)
        mom = (feats * keep).sum(1) / count
        return torch.cat([self.rho(torch.cat([pooled, count.log(), mom], dim=-1)), mom], -1)


class _Flatten(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1)


def _rnn(cell: str) -> Callable[..., nn.Module]:
    def build(x_shape: tuple[int, ...], **options: Any) -> nn.Module:
        return RNNEmbedding(x_shape, cell=cell, **options)

    return build


#: type name -> constructor ``f(x_shape, **options)`` of the built-in embeddings.
BUILTIN_EMBEDDINGS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLPEmbedding, "set": SetEmbedding, "cnn1d": CNN1dEmbedding, "cnn2d": CNN2dEmbedding,
    "tcn": TCNEmbedding, "gru": _rnn("gru"), "lstm": _rnn("lstm"),
    "transformer": TransformerEmbedding,
}
# Options recorded in new configs (by prepare_embedding) so that later default changes never
# alter saved models; a spec without them comes from a file saved before they existed.
_RECORDED = {"cnn1d": {"layout": 2}}
_BEFORE_RECORDED = {"cnn1d": {"layout": 1}}


def is_user_embedding(spec: Any) -> bool:
    """True for the record of a user module (``{"type": "user", ...}``) in a config."""
    return isinstance(spec, Mapping) and spec.get("type") == "user"


def is_set_embedding(spec: Any) -> bool:
    """True when ``spec`` embeds sets of iid trials ``(n, d)`` (NaN rows are padding)."""
    if not isinstance(spec, Mapping):
        return False
    return spec.get("type") == "set" or (spec.get("type") == "transformer"
                                         and spec.get("mode") == "set")


def padded_sets(x: Tensor) -> Tensor:
    """Rows ``(N,)`` of ``x`` ``(N, n, d)`` that are sets padded with all-NaN trials: every
    trial is all finite or all NaN, and at least one trial is finite (a failed simulation,
    all NaN, or a trial with NaN/inf in only some values is not a padded set)."""
    if x.ndim != 3:
        return torch.zeros(x.shape[0], dtype=torch.bool)
    finite, pad = torch.isfinite(x).all(-1), torch.isnan(x).all(-1)
    return (finite | pad).all(-1) & finite.any(-1)


def build_embedding(spec: Mapping[str, Any] | str | None, x_shape: tuple[int, ...],
                    module: nn.Module | None = None) -> tuple[nn.Module, int]:
    """Build the embedding named by ``spec`` for observations of ``x_shape``.

    Args:
        spec: a plain-value spec (dict or type name), None (identity), or the record of a
            user module (``{"type": "user", ...}``), which then must be given as ``module``.
            Specs are read as stored in configs: a ``cnn1d`` spec without ``layout`` is the
            original layout 1 (use :func:`prepare_embedding` for the current defaults).
        module: the user module for a ``"user"`` record (see :func:`prepare_embedding`).

    Returns:
        The module and its output dimension ``C``.
    """
    if is_user_embedding(spec):
        if module is None:
            raise UserEmbeddingError(_missing_message(spec))
        return module, int(spec["output_dim"])  # type: ignore[index]
    if module is not None:
        raise UserEmbeddingError(f"An embedding module was given, but this model's embedding "
                                 f"is the built-in {spec!r}; do not pass embedding= for it.")
    spec = dict(_normalize(spec) or {"type": "identity"})
    kind = spec.pop("type", "identity")
    if kind == "identity":
        if spec:
            raise ValueError(f"The identity embedding takes no options, got {sorted(spec)}.")
        return _Flatten(), math.prod(x_shape)
    if kind not in BUILTIN_EMBEDDINGS:
        raise ValueError(f"Unknown embedding type {kind!r}; use one of identity, "
                         f"{', '.join(BUILTIN_EMBEDDINGS)}, or pass your own nn.Module.")
    spec = {**_BEFORE_RECORDED.get(kind, {}), **spec}
    try:
        net = BUILTIN_EMBEDDINGS[kind](tuple(x_shape), **spec)
    except TypeError as err:
        raise ValueError(f"Bad options for embedding {kind!r}: {err}") from err
    return net, _probe(net, x_shape)


def prepare_embedding(value: Any, x_shape: tuple[int, ...]
                      ) -> tuple[dict[str, Any] | None, nn.Module | None]:
    """Split the ``embedding=`` option of ``fit`` into what the config stores and a module.

    Args:
        value: None, a built-in spec (dict or type name), or your own embedding: an
            ``nn.Module`` instance, an ``nn.Module`` class, or a zero-argument factory.

    Returns:
        ``(spec, None)`` for built-ins (the normalized plain spec), or ``(record, module)``
        for a user module: ``record = {"type": "user", "class": "pkg.mod.Name",
        "output_dim": C}`` (shown, never imported) and a copy of the module (so one module
        object passed to two ``fit`` calls never shares weights between two posteriors).
        ``C`` comes from one forward pass on zeros ``(2, *x_shape)`` (the mean of z-scored x).
    """
    if value is None or isinstance(value, (str, Mapping)):
        spec = _normalize(value)
        if spec is not None:
            build_embedding(spec, x_shape)  # fail now, with the option's name, not mid-fit
            kind = spec.get("type")
            spec = {**_RECORDED.get(kind, {}), **spec}
        return spec, None
    module = _instantiate(value, "fit(..., embedding=...)")
    try:
        module = copy.deepcopy(module)
    except Exception as err:  # noqa: BLE001 - any failure: train the given object itself
        warnings.warn(f"Could not copy the embedding module ({err}); it is trained in place "
                      "and shared with the returned posterior.", stacklevel=3)
    out = _probe(module, x_shape)
    record = {"type": "user", "class": _class_name(module), "output_dim": out}
    spec = getattr(value, "cli_spec", None)  # set by the CLI's --embedding FILE.py:function
    if isinstance(spec, str):
        record["cli_spec"] = spec
    return record, module


def user_embedding_module(record: Mapping[str, Any], embedding: Any,
                          saved_state: Mapping[str, Tensor], x_shape: tuple[int, ...],
                          source: str) -> nn.Module:
    """The module to load a model's user embedding into, checked against the saved weights.

    Args:
        record: the ``{"type": "user", ...}`` record of the model file.
        embedding: what the caller passed as ``load(..., embedding=...)``: an ``nn.Module``,
            a class or a zero-argument factory (None: error naming the recorded class).
        saved_state: the file's estimator ``state_dict`` (keys ``"embedding.*"`` are checked).
        source: the file, for messages.
    """
    if embedding is None:
        raise UserEmbeddingError(_missing_message(record, source))
    if isinstance(embedding, (str, Mapping)):  # a built-in spec cannot hold the user's weights
        raise UserEmbeddingError(
            f"load(..., embedding=...) got the built-in spec {embedding!r}, but the model in "
            f"{source} was trained with your own embedding {shown(record.get('class'))}; pass that "
            "nn.Module's class, an instance or a zero-argument factory (e.g. "
            "embedding=lambda: MyNet(32)).")
    module = _instantiate(embedding, "load(..., embedding=...)")
    want = {k[len("embedding."):]: tuple(v.shape) for k, v in saved_state.items()
            if k.startswith("embedding.")}
    have = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    problems = [f"missing in your module: {k} {want[k]}" for k in sorted(set(want) - set(have))]
    problems += [f"not in the file: {k} {have[k]}" for k in sorted(set(have) - set(want))]
    problems += [f"{k}: file {want[k]} vs your module {have[k]}"
                 for k in sorted(set(want) & set(have)) if want[k] != have[k]]
    if problems:
        listed = "; ".join(problems[:6]) + (f"; ... ({len(problems)} in all)"
                                            if len(problems) > 6 else "")
        raise UserEmbeddingError(
            f"The embedding you passed does not match the weights saved in {source} (saved "
            f"from {shown(record.get('class'))}): {shown(listed, MESSAGE_LIMIT)}. Pass a module built with the same "
            "architecture and options as the one you trained.")
    out = _probe(module, x_shape)
    if out != int(record.get("output_dim", out)):
        raise UserEmbeddingError(
            f"The embedding you passed returns {out} features but the model in {source} was "
            f"trained with {record.get('output_dim')}; pass the module you trained with.")
    return module


# ---------------------------------------------------------------------------- helpers
def _normalize(spec: Mapping[str, Any] | str | None) -> dict[str, Any] | None:
    if spec is None:
        return None
    if isinstance(spec, str):
        return {"type": spec}
    spec = dict(spec)
    if spec.get("type") == "user":
        raise ValueError("embedding={'type': 'user'} is what a model file records for your own "
                         "module; pass the nn.Module itself as embedding=.")
    spec.setdefault("type", "identity")
    return spec


def _instantiate(value: Any, where: str) -> nn.Module:
    """An ``nn.Module`` from an instance, a class or a zero-argument factory."""
    if isinstance(value, nn.Module):
        return value
    if callable(value):
        try:
            module = value()
        except TypeError as err:
            raise UserEmbeddingError(
                f"{where} got {getattr(value, '__name__', value)!r}, which cannot be called "
                f"without arguments ({err}); pass a module instance or a zero-argument factory, "
                "e.g. embedding=lambda: MyNet(32).") from err
        if isinstance(module, nn.Module):
            return module
        raise UserEmbeddingError(f"{where}: the factory returned {type(module).__name__}, not a "
                                 "torch.nn.Module.")
    raise UserEmbeddingError(
        f"{where} got a {type(value).__name__}; give a built-in spec ('cnn1d', "
        "{'type': 'mlp', ...}), or an nn.Module instance, class or zero-argument factory.")


def _class_name(module: nn.Module) -> str:
    return class_label(type(module))


def _probe(module: nn.Module, x_shape: tuple[int, ...]) -> int:
    """Output size of ``module`` from one forward pass on zeros ``(2, *x_shape)``."""
    was_training = module.training
    module.eval()
    try:
        p = next(module.parameters(), None)
        x = torch.zeros(2, *x_shape, device=p.device if p is not None else None)
        with torch.no_grad():
            out = module(x)
    except Exception as err:  # noqa: BLE001 - any failure: say which shape was fed
        raise UserEmbeddingError(
            f"The embedding {_class_name(module)} failed on a batch of observations of shape "
            f"(2, {', '.join(map(str, x_shape))}) ({type(err).__name__}: {err}). An embedding "
            "must map (N, *x_shape) to (N, C).") from err
    finally:
        module.train(was_training)
    if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != 2:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise UserEmbeddingError(
            f"The embedding {_class_name(module)} returned {shape} for a batch of 2 "
            f"observations of shape {tuple(x_shape)}; it must return (N, C) features, e.g. end "
            "with .flatten(1) or a Linear layer.")
    return int(out.shape[1])


def _missing_message(record: Mapping[str, Any], source: str = "this model") -> str:
    cls = shown(record.get("class", "?"))  # names from the file: escaped, bounded
    short = cls.replace(":", ".").rsplit(".", 1)[-1]
    return (f"{source} has a user embedding {cls} (output_dim {record.get('output_dim')}); its "
            f"weights are in the file but its code is not, and code named in a file is never "
            f"imported. Pass it: load(path, embedding={short}) or "
            f"embedding=lambda: {short}(...), or on the command line --embedding "
            f"module:function or FILE.py:function (a function returning the module)."
            + (f" It was trained with --embedding {shown(record['cli_spec'])} (shown, not "
               f"imported: if you trust that code, pass --embedding "
               f"{shlex.quote(shown(record['cli_spec']))})."
               if isinstance(record.get("cli_spec"), str) else ""))
