"""Plain-value descriptions of a served posterior: what the ``/api/models/{name}`` endpoint returns."""

from __future__ import annotations

from typing import Any

import torch

from sbi_core.display import MESSAGE_LIMIT, shown, shown_names
from sbi_core.posterior import Posterior
from sbi_core.priors import support_bounds
from sbi_core.server.schemas import plain

__all__ = ["model_info", "history_summary", "observation_range", "shown_label", "shown_values"]


def shown_label(value: Any) -> Any:
    """A name read from a model file as the API shows it: escaped and bounded
    (``sbi_core.display.shown``); ``None`` stays ``None``."""
    return None if value is None else shown(value)


def shown_values(value: Any) -> Any:
    """``value`` (plain JSON values, e.g. a saved report card) with every string escaped and
    bounded for display; keys too."""
    if isinstance(value, str):
        return shown(value, MESSAGE_LIMIT)
    if isinstance(value, dict):
        return {shown(k): shown_values(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [shown_values(v) for v in value]
    return value


def observation_range(posterior: Posterior) -> dict[str, Any] | None:
    """Range of the training observations, each ``x_shape``, plus a default observation.

    Uses the estimator's ``x_min``/``x_max`` buffers (set from the training data) and, as
    default, its ``x_norm.mean`` (the training mean); ``None`` when the estimator has no range.
    """
    est = posterior.estimator
    lo, hi = getattr(est, "x_min", None), getattr(est, "x_max", None)
    if not isinstance(lo, torch.Tensor) or not isinstance(hi, torch.Tensor) or \
            tuple(lo.shape) != tuple(posterior.x_shape) or not bool((hi > lo).any()):
        return None
    mean = getattr(getattr(est, "x_norm", None), "mean", None)
    x_transform = getattr(est, "x_transform", None)
    if isinstance(mean, torch.Tensor) and callable(getattr(x_transform, "inverse", None)):
        mean = x_transform.inverse(mean)  # x_norm's mean is of transformed x (log1p columns)
    default = mean if isinstance(mean, torch.Tensor) and mean.shape == lo.shape else (lo + hi) / 2
    default = torch.minimum(torch.maximum(default, lo), hi)
    return {"min": plain(lo), "max": plain(hi), "default": plain(default)}


def history_summary(history: dict[str, Any]) -> dict[str, Any]:
    """Epochs, best/final losses, stop reason, time and data sizes of a training run."""
    train = list(history.get("train_loss") or [])
    val = list(history.get("validation_loss") or [])
    keys = ("best_epoch", "best_validation_loss", "stopped", "seconds", "num_train",
            "num_validation")
    out = {k: history[k] for k in keys if k in history}
    out["epochs"] = history.get("epochs", len(train))
    out["final_train_loss"] = train[-1] if train else None
    out["final_validation_loss"] = val[-1] if val else None
    return plain(out)


def focus(posterior: Posterior) -> dict[str, Any] | None:
    """The one observation a non-amortized posterior answers: ABC's ``x_o`` (other x are
    refused) or a sequential run's ``x_o`` (other x warn); ``None`` for amortized ones."""
    seq = (posterior.problem_spec or {}).get("sequential")
    if isinstance(seq, dict) and seq.get("x_o") is not None:
        return plain({"kind": "sequential", "method": shown_label(seq.get("method")), "x_o": seq["x_o"],
                      "others": "answered with a warning when far from x_o"})
    x_o = getattr(posterior, "single_observation", None)
    if x_o is not None:
        return plain({"kind": "single_observation", "method": posterior.method,
                      "x_o": x_o.reshape(-1).tolist(), "others": "refused (422)"})
    return None


def model_info(name: str, posterior: Posterior, max_samples: int) -> dict[str, Any]:
    """Everything the explorer needs about one model (plain JSON values; ±inf → null)."""
    low, high = support_bounds(posterior.prior)
    spec = posterior.problem_spec
    return {
        "name": name,  # the key of this model in the URLs (from the command line, not a file)
        "problem": shown_label(spec.get("name")),
        "method": shown(posterior.method),
        # "tsnpe (sequential, for one x_o; estimator npe)": what the explorer shows
        "method_label": shown(getattr(posterior, "method_label", posterior.method)),
        "param_names": shown_names(posterior.param_names),
        "dim": posterior.dim,
        "x_shape": list(posterior.x_shape),
        "prior": {"spec": plain(getattr(posterior.prior, "spec", None)),
                  "low": plain(low), "high": plain(high)},
        "x_range": observation_range(posterior),
        "focus": focus(posterior),
        "history": shown_values(history_summary(posterior.history)),
        "diagnostics": shown_values(plain(posterior.diagnostics)),
        "supports_iid": bool(posterior.supports_iid),
        "normalized_log_prob": bool(posterior.normalized_log_prob),
        "max_samples": int(max_samples),
    }
