"""Save and load trained posteriors as one safe file.

The file is a ``torch.save`` of plain values only: format tag and version, the problem
spec (names, prior spec, x_shape), the method and its estimator config, the
``state_dict``, the training history and any diagnostics. :func:`load` reads it with
``torch.load(weights_only=True)``, so no code from the file ever runs, and rebuilds the
estimator from the method registry.
"""

from __future__ import annotations

import inspect
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch.distributions import Distribution

from sbi_core.methods import get_method
from sbi_core.posterior import Posterior
from sbi_core.priors import (
    UserPriorRequired,
    as_prior,
    prior_from_spec,
    prior_spec,
    same_prior_spec,
    user_prior_class,
)
from sbi_core.simulation_set import _plain

__all__ = ["save", "load", "load_model", "ModelFileError", "PriorRequiredError", "MODEL_FORMAT",
           "MODEL_FORMAT_VERSION"]

MODEL_FORMAT = "sbi-core-model"
MODEL_FORMAT_VERSION = 1


class ModelFileError(ValueError):
    """A model file is missing, corrupted, not ours, or of an incompatible version."""


class PriorRequiredError(ModelFileError):
    """The model's prior is a user-written class: pass it with ``load(path, prior=...)``."""


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
        "problem": _plain(_problem_spec(posterior)),
        "estimator_config": _plain(estimator.config),
        "posterior_config": _plain(getattr(posterior, "config", {})),
        "state_dict": {k: v.detach().cpu() for k, v in estimator.state_dict().items()},
        "history": _plain(posterior.history),
        "diagnostics": _plain(posterior.diagnostics),
    }
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(payload, tmp)
    except Exception as err:
        tmp.unlink(missing_ok=True)
        raise ModelFileError(
            f"Could not write the model to {path} ({type(err).__name__}: {err}). The posterior "
            "in memory is intact: fix the cause and call save again.") from err
    tmp.replace(path)
    return path


def _problem_spec(posterior: Posterior) -> dict[str, Any]:
    """The posterior's problem spec, with the prior's spec filled in if it is missing."""
    spec = dict(posterior.problem_spec or {})
    if spec.get("prior") is None:
        spec["prior"] = prior_spec(posterior.prior)
    return spec


def load(path: str | Path, device: str = "cpu", prior: Any = None) -> Posterior:
    """Load a posterior written by :func:`save`; no code in the file is executed.

    Args:
        path: the model file.
        device: where to put the estimator.
        prior: the prior (a ``Distribution``, frozen scipy distributions, or a
            :class:`~sbi_core.Problem`). Required when the model was trained with a
            user-written prior class: the file stores only its name, which is never imported.
            For a prior the file stores in full it is optional; if it differs from the saved
            one a warning says so and the given prior is used.
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
    problem = dict(payload["problem"])
    dim = len(problem.get("param_names") or []) or \
        int(dict(payload.get("estimator_config") or {}).get("theta_dim", 0))
    prior = resolve_saved_prior(path, problem.get("prior"), prior, dim)
    try:
        method = get_method(payload["method"])
        estimator = _from_config(method, dict(payload["estimator_config"]), prior)
        estimator.load_state_dict(payload["state_dict"])
    except (KeyError, RuntimeError, TypeError, ValueError) as err:
        raise ModelFileError(f"{path} is damaged: its weights do not match its config ({err}).") \
            from err
    estimator.to(device)
    posterior = method.make_posterior(estimator, prior, problem, dict(payload.get("history") or {}),
                                      **dict(payload.get("posterior_config") or {}))
    posterior.diagnostics = dict(payload.get("diagnostics") or {})
    return posterior


def load_model(path: str | Path, problem: Any = None, device: str = "cpu") -> Posterior:
    """:func:`load` for the command line: ``problem`` (a :class:`~sbi_core.Problem` or a
    PROBLEM string given by the user, e.g. ``--problem my_model.py:make_problem``) is resolved
    and its prior used only when the file's prior is a user-written class that cannot be
    rebuilt from data."""
    try:
        return load(path, device=device)
    except PriorRequiredError:
        if problem is None:
            raise
    from sbi_core.problem import Problem

    if not isinstance(problem, Problem):
        from sbi_core.resolve import resolve_problem

        problem = resolve_problem(problem)
    return load(path, device=device, prior=problem)


def _from_config(method: Any, config: dict[str, Any], prior: Distribution) -> Any:
    """``method.from_config(config)``, passing the prior to estimators that take one."""
    try:
        takes_prior = "prior" in inspect.signature(method.from_config).parameters
    except (TypeError, ValueError):
        takes_prior = False
    return method.from_config(config, prior=prior) if takes_prior else method.from_config(config)


def resolve_saved_prior(path: str | Path, spec: Any, given: Any, dim: int) -> Distribution:
    """The prior of a model file: rebuilt from ``spec`` (data only), or ``given`` (checked
    against the saved spec). Raises :class:`ModelFileError` for a user-written prior when
    ``given`` is None; the CLI passes the prior of ``--problem`` as ``given``."""
    if given is None:
        try:
            return prior_from_spec(spec)
        except UserPriorRequired as err:
            raise PriorRequiredError(f"{path}: {err}") from None
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as err:
            raise ModelFileError(
                f"{path} is damaged: its prior spec cannot be rebuilt ({err}). Pass the prior "
                "with load(path, prior=...) or --problem, or retrain.") from err
    from sbi_core.problem import Problem

    prior = as_prior(given.prior if isinstance(given, Problem) else given)
    if dim and tuple(prior.event_shape) != (dim,):
        raise ModelFileError(
            f"The prior given to load has event shape {tuple(prior.event_shape)}, but the model "
            f"in {path} was trained on D={dim} parameters. Pass the prior it was trained with.")
    if isinstance(spec, dict) and not same_prior_spec(prior_spec(prior), spec):
        saved = user_prior_class(spec) or spec.get("class") or spec.get("type")
        warnings.warn(
            f"The prior given to load ({type(prior).__name__}) differs from the one saved in "
            f"{path} ({saved}); using the given prior. Samples, support checks and MCMC "
            "follow it, while the estimator was trained with the saved one.",
            UserWarning, stacklevel=3)
    return prior


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("sbi-core")
    except Exception:
        return "unknown"
