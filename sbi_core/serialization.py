"""Save and load trained posteriors as one safe file.

The file is a ``torch.save`` of plain values only: format tag and version, the problem
spec (names, prior spec, x_shape), the method and its estimator config, the
``state_dict``, the training history and any diagnostics. :func:`load` reads it with
``torch.load(weights_only=True)``, so no code from the file ever runs, and rebuilds the
estimator from the method registry.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import torch

from sbi_core.methods import get_method
from sbi_core.posterior import Posterior
from sbi_core.priors import prior_from_spec
from sbi_core.simulation_set import _plain

__all__ = ["save", "load", "ModelFileError", "MODEL_FORMAT", "MODEL_FORMAT_VERSION"]

MODEL_FORMAT = "sbi-core-model"
MODEL_FORMAT_VERSION = 1


class ModelFileError(ValueError):
    """A model file is missing, corrupted, not ours, or of an incompatible version."""


def save(posterior: Posterior, path: str | Path) -> Path:
    """Write ``posterior`` to ``path`` (one file; written atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    estimator = posterior.estimator
    payload: dict[str, Any] = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "sbi_core_version": _version(),
        "method": posterior.method,
        "problem": _plain(posterior.problem_spec),
        "estimator_config": _plain(estimator.config),
        "posterior_config": _plain(getattr(posterior, "config", {})),
        "state_dict": {k: v.detach().cpu() for k, v in estimator.state_dict().items()},
        "history": _plain(posterior.history),
        "diagnostics": _plain(posterior.diagnostics),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load(path: str | Path, device: str = "cpu", embedding: Any = None) -> Posterior:
    """Load a posterior written by :func:`save`; no code in the file is executed.

    Args:
        path: the model file.
        device: where to put the estimator.
        embedding: for a model trained with your own embedding network (the file holds its
            weights and, for display only, its class name): the module again, as an
            ``nn.Module`` instance, its class, or a zero-argument factory
            (``load(path, embedding=lambda: MyNet(32))``). Its ``state_dict`` must have the
            saved keys and shapes. Not allowed for built-in embeddings.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"No model file at {path}.")
    if not zipfile.is_zipfile(path):
        raise ModelFileError(
            f"{path} is corrupted or not an sbi-core model file (it is not a torch archive). "
            "Use a file written by sbi_core.save / `sbi-core train`, or retrain."
        )
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except (zipfile.BadZipFile, RuntimeError, EOFError, OSError) as err:
        raise ModelFileError(
            f"{path} is corrupted or not a model file ({type(err).__name__}: {err}). Re-save the "
            "model or retrain it."
        ) from err
    except Exception as err:  # e.g. UnpicklingError: the file would run code
        raise ModelFileError(
            f"{path} is not an sbi-core model file: it holds objects that would need code to "
            f"load ({type(err).__name__}). Only files written by sbi_core.save are accepted."
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise ModelFileError(
            f"{path} is not an sbi-core model file (no '{MODEL_FORMAT}' format tag). Only files "
            "written by sbi_core.save / `sbi-core train` can be loaded."
        )
    version = payload.get("format_version")
    if version != MODEL_FORMAT_VERSION:
        raise ModelFileError(
            f"{path} has model format version {version}, but this sbi-core "
            f"({_version()}) reads version {MODEL_FORMAT_VERSION}. Load it with the sbi-core "
            f"version that wrote it ({payload.get('sbi_core_version')}) or retrain."
        )
    try:
        method = get_method(payload["method"])
        estimator = _estimator_from_config(method, dict(payload["estimator_config"]),
                                           payload["state_dict"], embedding, path)
        estimator.load_state_dict(payload["state_dict"])
    except ModelFileError:
        raise
    except (KeyError, RuntimeError, TypeError, ValueError) as err:
        raise ModelFileError(f"{path} is damaged: its weights do not match its config ({err}).") \
            from err
    estimator.to(device)
    problem = dict(payload["problem"])
    prior = prior_from_spec(problem["prior"])
    posterior = method.make_posterior(estimator, prior, problem, dict(payload.get("history") or {}),
                                      **dict(payload.get("posterior_config") or {}))
    posterior.diagnostics = dict(payload.get("diagnostics") or {})
    return posterior


def _estimator_from_config(method: Any, config: dict[str, Any], state: dict[str, Any],
                           embedding: Any, path: Path) -> torch.nn.Module:
    """``method.from_config(config)``, given the user's embedding module when the config
    records one (``{"type": "user", ...}``: its class name is only shown, never imported)."""
    from estimators.embedding import is_user_embedding, user_embedding_module

    record = config.get("embedding")
    if not is_user_embedding(record):
        if embedding is not None:
            raise ModelFileError(
                f"load(..., embedding=...) was given, but {path} has no user embedding (its "
                f"embedding is {record or 'identity'!r}, rebuilt from the file); load it "
                "without embedding=.")
        return method.from_config(config)
    try:
        module = user_embedding_module(record, embedding, state, tuple(config["x_shape"]),
                                       str(path))
    except ValueError as err:
        raise ModelFileError(str(err)) from err
    return method.from_config(config, embedding=module)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("sbi-core")
    except Exception:
        return "unknown"
