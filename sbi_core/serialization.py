"""Save and load trained posteriors as one safe file.

The file is a ``torch.save`` of plain values only: format tag and version, the problem
spec (names, prior spec, x_shape), the method and its estimator config, the
``state_dict``, the training history and any diagnostics. :func:`load` reads it with
``torch.load(weights_only=True)``, so no code from the file ever runs, and rebuilds the
estimator from the method registry.
"""

from __future__ import annotations

import inspect
import math
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch.distributions import Distribution
from torch.utils._python_dispatch import TorchDispatchMode

from sbi_core.atomic import atomic_write, check_suffix
from sbi_core.display import shown
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


def save(posterior: Posterior, path: str | Path, *, any_name: bool = False) -> Path:
    """Write ``posterior`` to ``path`` (one file; written atomically).

    A ``path`` whose ending names another format (``model.csv``, ``.npy``, ...) is refused
    unless ``any_name`` (the CLI's ``--force``).
    """
    path = Path(path)
    if not any_name:
        check_suffix(path, "model", "path")  # model.csv would be a torch archive
    if getattr(posterior, "not_savable", None):  # e.g. a reweighted posterior (with_prior)
        raise ModelFileError(posterior.not_savable)
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
    detector = getattr(posterior, "detector", None)
    if detector is not None and detector.config.get("features") != "module":
        payload["detector"] = detector.state()  # plain values and tensors only
    try:
        with atomic_write(path) as tmp:
            torch.save(payload, tmp)
    except Exception as err:
        raise ModelFileError(
            f"Could not write the model to {path} ({type(err).__name__}: {err}). The posterior "
            "in memory is intact: fix the cause and call save again.") from err
    return path


def _problem_spec(posterior: Posterior) -> dict[str, Any]:
    """The posterior's problem spec, with the prior's spec filled in if it is missing."""
    spec = dict(posterior.problem_spec or {})
    if spec.get("prior") is None:
        spec["prior"] = prior_spec(posterior.prior)
    return spec


def _refuse_damaged_or_npz(path: Path) -> None:
    """Refuse a numpy ``.npz`` (simulation arrays) and a torch archive whose bytes fail their
    checksums (``torch.load`` would read damaged weights without a word)."""
    from sbi_core.atomic import damaged_entry

    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    if names and all(n.endswith(".npy") and "/" not in n for n in names):
        raise ModelFileError(
            f"{path} is a numpy .npz archive (arrays {[n[:-4] for n in names][:6]}), not a model "
            f"file. Simulations in an .npz are trained on with `sbi-core train --sims {path} "
            "--problem ... --out model.pt`; pass the model file that writes.")
    bad = damaged_entry(path)
    if bad is not None:
        raise ModelFileError(
            f"{path} is damaged: its entry {bad.split('/', 1)[-1]} fails its checksum (bytes "
            "changed on disk or in a copy), so the weights it would load are wrong. Copy the "
            "file again from its source, or retrain.")


def _check_device(device: Any) -> torch.device:
    """The device ``load`` puts the model on (``cpu:N`` is the CPU); otherwise a ValueError
    about the device (torch.load would fail with a message that made a good file look
    corrupted or damaged)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device={device!r} is not a torch device ({err}); use 'cpu', 'cuda' "
                         "or 'cuda:0'.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}, but CUDA is not available on this machine (the "
                         "model file is fine); load it with device='cpu'.")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device={device!r}, but this machine has {torch.cuda.device_count()} "
                         f"CUDA GPU(s) (cuda:0 to cuda:{torch.cuda.device_count() - 1}; the "
                         "model file is fine); load it with device='cuda' or 'cpu'.")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={device!r}, but MPS is not available on this machine (the "
                         "model file is fine); load it with device='cpu'.")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device={device!r} cannot hold a model sbi-core can run (it holds no "
                         "data or is not a compute device sbi-core supports; the model file is "
                         "fine); use 'cpu', 'cuda' or 'cuda:0'.")
    return torch.device("cpu") if dev.type == "cpu" else dev


def load(path: str | Path, device: str | torch.device = "cpu", prior: Any = None,
         embedding: Any = None) -> Posterior:
    """Load a posterior written by :func:`save`; no code in the file is executed.

    Args:
        path: the model file.
        device: where to put the estimator.
        prior: the prior (a ``Distribution``, frozen scipy distributions, or a
            :class:`~sbi_core.Problem`). Required when the model was trained with a
            user-written prior class: the file stores only its name, which is never imported.
            For a prior the file stores in full it is optional; if it differs from the saved
            one a warning says so and the given prior is used.
        embedding: for a model trained with your own embedding network (the file holds its
            weights and, for display only, its class name): the module again, as an
            ``nn.Module`` instance, its class, or a zero-argument factory
            (``load(path, embedding=lambda: MyNet(32))``). Its ``state_dict`` must have the
            saved keys and shapes. Not allowed for built-in embeddings.
    """
    device = _check_device(device)
    path = Path(path)
    if path.is_dir():
        raise ModelFileError(
            f"{path} is a folder (a simulation store?), not a model file. Pass the .pt file "
            "written by sbi_core.save / `sbi-core train` (a store is trained on with "
            f"`sbi-core train --sims {path} --out model.pt`).")
    if not path.is_file():
        raise ModelFileError(f"No model file at {path}.")
    if not zipfile.is_zipfile(path):
        raise ModelFileError(
            f"{path} is corrupted or not an sbi-core model file (it is not a torch archive). "
            "Use a file written by sbi_core.save / `sbi-core train`, or retrain."
        )
    _refuse_damaged_or_npz(path)
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
    from sbi_core.simulation_set import SIMULATIONS_FORMAT

    if isinstance(payload, dict) and payload.get("format") == SIMULATIONS_FORMAT:
        raise ModelFileError(
            f"{path} is a simulation file (from simulate), not a model. Train a model on it "
            f"first: `sbi-core train --sims {path} --out model.pt` (in Python: fit(problem, "
            "sims)), then pass model.pt.")
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise ModelFileError(
            f"{path} is not an sbi-core model file (no '{MODEL_FORMAT}' format tag). Only files "
            "written by sbi_core.save / `sbi-core train` can be loaded."
        )
    version = payload.get("format_version")
    if version != MODEL_FORMAT_VERSION:
        raise ModelFileError(
            f"{path} has model format version {shown(version)}, but this sbi-core "
            f"({_version()}) reads version {MODEL_FORMAT_VERSION}. Load it with the sbi-core "
            f"version that wrote it ({shown(payload.get('sbi_core_version'))}) or retrain."
        )
    check_payload(payload, path)
    problem = dict(payload["problem"])
    dim = len(problem.get("param_names") or []) or \
        int(dict(payload.get("estimator_config") or {}).get("theta_dim", 0))
    from sbi_core.problem import Problem

    if isinstance(prior, Problem):
        _check_problem_names(problem, prior, path)
    prior = resolve_saved_prior(path, problem.get("prior"), prior, dim)
    try:
        method = get_method(payload["method"])
    except ValueError as err:  # not "weights do not match": the method itself is unknown
        raise ModelFileError(f"{path} records a method this sbi-core ({_version()}) does not "
                             f"have: {err} It was written by sbi-core "
                             f"{shown(payload.get('sbi_core_version'))}.") from err
    try:
        module = _user_embedding(dict(payload["estimator_config"]), payload["state_dict"],
                                 embedding, path)
        estimator = build_checked(lambda cfg: _from_config(method, cfg, prior, module),
                                  dict(payload["estimator_config"]), payload["state_dict"], path)
        estimator.load_state_dict(payload["state_dict"])
    except ModelFileError:
        raise
    except (KeyError, RuntimeError, TypeError, ValueError) as err:
        raise ModelFileError(f"{path} is damaged: its weights do not match its config ({err}).") \
            from err
    estimator.to(device)
    try:
        posterior = method.make_posterior(estimator, prior, problem,
                                          dict(payload.get("history") or {}),
                                          **dict(payload.get("posterior_config") or {}))
        posterior.diagnostics = dict(payload.get("diagnostics") or {})
    except (KeyError, TypeError, ValueError) as err:
        raise ModelFileError(f"{path} is damaged: its problem spec or posterior settings are "
                             f"invalid ({type(err).__name__}: {err}). Re-save the model or "
                             "retrain it.") from err
    if payload.get("detector") is not None:
        _load_detector(posterior, payload["detector"], path)
    return posterior


def _load_detector(posterior: Posterior, state: Any, path: Path) -> None:
    """Rebuild the saved misspecification detector from plain values (nothing imported from
    the file); a damaged one is dropped with a warning, the posterior still loads."""
    from diagnostics.misspecification import MisspecificationDetector, posterior_features

    try:
        if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
            raise ValueError("the detector entry is not a dict of plain values")
        _check_numbers(state["config"], path, "detector.config")
        kind, fn = posterior_features(posterior)
        if state["config"].get("features") == "context" and kind != "context":
            raise ValueError("it was fitted on embedding features this estimator lacks")
        posterior.detector = MisspecificationDetector.from_state(
            state, fn if state["config"].get("features") == "context" else None)
    except (ModelFileError, KeyError, RuntimeError, TypeError, ValueError) as err:
        warnings.warn(f"{path}: its misspecification detector could not be rebuilt ({err}); "
                      "the posterior loads without it. Retrain it with "
                      "posterior.fit_detector(sims) and save the model again (CLI: retrain "
                      "the model with `sbi-core train`).", UserWarning,
                      stacklevel=3)


def load_model(path: str | Path, problem: Any = None, device: str = "cpu",
               embedding: Any = None) -> Posterior:
    """:func:`load` for the command line: ``problem`` (a :class:`~sbi_core.Problem` or a
    PROBLEM string given by the user, e.g. ``--problem my_model.py:make_problem``) is resolved
    and its prior used only when the file's prior is a user-written class that cannot be
    rebuilt from data."""
    try:
        try:
            posterior = load(path, device=device, embedding=embedding)
        except PriorRequiredError:
            if problem is None:
                raise
            posterior = None
        if problem is None:
            return posterior
        from sbi_core.problem import Problem

        if not isinstance(problem, Problem):
            from sbi_core.resolve import resolve_problem

            problem = resolve_problem(problem)
        if posterior is None:
            posterior = load(path, device=device, prior=problem, embedding=embedding)
        _check_problem_parameters(posterior, problem, path)
        return posterior
    except ValueError as err:  # the embedding given on the command line: in its words
        text = str(err)
        if embedding is None or "load(..., embedding=...)" not in text:
            raise
        text = (text.replace("load(..., embedding=...) was given", "--embedding was given")
                .replace("load it without embedding=.", "leave out --embedding.")
                .replace("load(..., embedding=...)", "--embedding"))
        raise type(err)(text) from err


def _check_problem_parameters(posterior: Posterior, problem: Any, path: Path | str) -> None:
    """Stop when the problem given with a model (``--problem``) has other parameters than the
    model's: it is another problem (or the model file is the wrong one), and its prior would be
    used silently, or the mix-up go unnoticed. Default names (``theta_1``, ...) are not compared.
    """
    _check_problem_names(dict(posterior.problem_spec or {},
                              param_names=list(posterior.param_names or [])), problem, path)


def _check_problem_names(spec: dict[str, Any], problem: Any, path: Path | str) -> None:
    """:func:`_check_problem_parameters` on the model's problem ``spec`` (as saved)."""
    ours, theirs = list(spec.get("param_names") or []), list(problem.param_names or [])
    default = [f"theta_{i + 1}" for i in range(len(ours))]
    if not ours or ours == theirs or (len(ours) == len(theirs) and default in (ours, theirs)):
        return
    trained = spec.get("name") or "its problem"
    raise ValueError(
        f"The problem given with {path} ({getattr(problem, 'name', '?')!r}, parameters {theirs}) "
        f"is not the one the model was trained on ({trained!r}, parameters {ours}). Pass the "
        "model's own problem (or the model file for this problem); a problem (--problem, or "
        "load(..., prior=problem)) is needed only for a model trained with a user-written prior "
        "class.")


def _from_config(method: Any, config: dict[str, Any], prior: Distribution,
                 embedding: torch.nn.Module | None = None) -> Any:
    """``method.from_config(config)``, passing the prior to estimators that take one and the
    user's embedding module when the file records one."""
    try:
        takes_prior = "prior" in inspect.signature(method.from_config).parameters
    except (TypeError, ValueError):
        takes_prior = False
    kwargs: dict[str, Any] = {"prior": prior} if takes_prior else {}
    if embedding is not None:
        kwargs["embedding"] = embedding
    return method.from_config(config, **kwargs)


def _user_embedding(config: dict[str, Any], state: dict[str, Any], embedding: Any,
                    path: Path) -> torch.nn.Module | None:
    """The user's embedding module for a config that records one (``{"type": "user", ...}``:
    its class name is only shown, never imported), checked against the saved weights; None
    for built-in embeddings (rebuilt from the file)."""
    from estimators.embedding import is_user_embedding, user_embedding_module

    record = config.get("embedding")
    if not is_user_embedding(record):
        if embedding is not None:
            raise ModelFileError(
                f"load(..., embedding=...) was given, but {path} has no user embedding (its "
                f"embedding is {record or 'identity'!r}, rebuilt from the file); load it "
                "without embedding=.")
        return None
    if config.get("ensemble"):  # members' weights: "members.K.embedding.*"; check member 0
        state = {k[len("members.0."):]: v for k, v in state.items() if k.startswith("members.0.")}
    try:
        return user_embedding_module(record, embedding, state, tuple(config["x_shape"]),
                                     str(path))
    except (ValueError, KeyError, TypeError) as err:
        raise ModelFileError(str(err)) from err


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


#: Keys every model file holds, with the type of their value.
_REQUIRED = {"method": str, "problem": dict, "estimator_config": dict, "state_dict": dict}
#: Largest integer accepted anywhere in an estimator config (sizes, counts, seeds).
_MAX_CONFIG_INT = 2**31
#: Memory a model may allocate while being built, beyond twice its weights in the file.
_BUILD_SLACK_BYTES = 64 * 2**20


def check_payload(payload: dict, path: str | Path) -> None:
    """Reject a payload with missing keys, wrong types or non-finite / absurd config numbers.

    Runs before anything is built, so a doctored file costs no memory.
    """
    for key, kind in _REQUIRED.items():
        if key not in payload:
            raise ModelFileError(f"{path} is damaged: it has no {key!r} entry. Re-save the model "
                                 "with sbi_core.save or retrain it.")
        if not isinstance(payload[key], kind):
            raise ModelFileError(f"{path} is damaged: its {key!r} entry is a "
                                 f"{type(payload[key]).__name__}, not a {kind.__name__}.")
    problem = payload["problem"]
    for key in ("prior", "param_names", "x_shape"):
        if key not in problem:
            raise ModelFileError(f"{path} is damaged: its problem spec has no {key!r}. Re-save "
                                 "the model with sbi_core.save or retrain it.")
    for name, value in payload["state_dict"].items():
        if not isinstance(value, torch.Tensor):
            raise ModelFileError(f"{path} is damaged: state_dict entry {name!r} is not a tensor.")
    _check_numbers(payload["estimator_config"], path, "estimator_config")
    if not isinstance(payload.get("posterior_config") or {}, dict):
        raise ModelFileError(f"{path} is damaged: its 'posterior_config' is not a dict.")
    for key in ("history", "diagnostics"):
        if not isinstance(payload.get(key) or {}, dict):
            raise ModelFileError(f"{path} is damaged: its {key!r} entry is a "
                                 f"{type(payload[key]).__name__}, not a dict.")
    _check_problem_spec(problem, payload["estimator_config"], path)


def _check_problem_spec(problem: dict[str, Any], config: dict[str, Any], path: str | Path
                        ) -> None:
    """The names and shapes of a model file's problem spec are what ``save`` writes and agree
    with the estimator's config (a string is not taken for a list of one-letter names, three
    names do not label two parameters)."""
    def damaged(what: str) -> ModelFileError:
        return ModelFileError(f"{path} is damaged: its problem spec's {what}. Re-save the model "
                              "with sbi_core.save or retrain it.")

    def names(value: Any) -> bool:
        return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)

    if not names(problem["param_names"]):
        raise damaged(f"param_names {shown(repr(problem['param_names']))} is not a list of "
                      "names")
    dim = config.get("theta_dim")
    if isinstance(dim, int) and problem["param_names"] and len(problem["param_names"]) != dim:
        raise damaged(f"param_names has {len(problem['param_names'])} names for the "
                      f"estimator's {dim} parameters")
    x_shape = problem["x_shape"]
    if not isinstance(x_shape, (list, tuple)) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in x_shape):
        raise damaged(f"x_shape {shown(repr(x_shape))} is not a list of positive integers")
    if isinstance(config.get("x_shape"), (list, tuple)) and \
            list(config["x_shape"]) != list(x_shape):
        raise damaged(f"x_shape {x_shape} differs from the estimator's {config['x_shape']}")
    if problem.get("name") is not None and not isinstance(problem["name"], str):
        raise damaged(f"name {shown(repr(problem['name']))} is not a string")
    if problem.get("x_names") is not None and not names(problem["x_names"]):
        raise damaged(f"x_names {shown(repr(problem['x_names']))} is not a list of names")


def _check_numbers(value: Any, path: str | Path, where: str) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _check_numbers(v, path, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_numbers(v, path, f"{where}[{i}]")
    elif isinstance(value, bool) or value is None or isinstance(value, str):
        return
    elif isinstance(value, int):
        if abs(value) > _MAX_CONFIG_INT:
            raise ModelFileError(f"{path} is damaged: {where} = {value} is out of range.")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ModelFileError(f"{path} is damaged: {where} = {value} is not finite.")


def build_checked(build: Any, config: dict, state_dict: dict[str, torch.Tensor],
                  path: str | Path) -> torch.nn.Module:
    """Build an estimator with ``build(config)`` only after checking it fits ``state_dict``.

    First the estimator is built on the ``meta`` device (no memory) and its state-dict keys
    and shapes are compared with the file's tensors; only if they match is it built for real.
    Estimators whose construction needs real values (data-dependent checks) are built for
    real under an allocation budget of twice the file's weights plus a fixed slack, so a
    doctored config (``hidden_features=4000`` in a 3 KB file) is rejected before it costs
    memory.
    """
    weights = sum(t.numel() * t.element_size() for t in state_dict.values())
    try:
        with torch.device("meta"):
            meta = build(dict(config))
    except Exception:
        meta = None  # data-dependent construction: fall back to the budgeted real build
    if meta is not None:
        _compare_state_dicts(meta.state_dict(), state_dict, path)
        meta_bytes = sum(t.numel() * t.element_size()
                         for t in (*meta.parameters(), *meta.buffers()))
        if meta_bytes > 2 * weights + _BUILD_SLACK_BYTES:
            raise ModelFileError(f"{path} is damaged: its config would allocate "
                                 f"{meta_bytes / 2**20:.0f} MiB for {weights / 2**20:.1f} MiB "
                                 "of weights.")
        del meta
    budget = _AllocationBudget(2 * weights + _BUILD_SLACK_BYTES)
    try:
        with budget:
            estimator = build(dict(config))
    except _OverBudget as err:
        raise ModelFileError(f"{path} is damaged: building its estimator needs more than "
                             f"{budget.limit / 2**20:.0f} MiB for {weights / 2**20:.1f} MiB of "
                             "weights; its config does not match its weights.") from err
    _compare_state_dicts(estimator.state_dict(), state_dict, path)
    return estimator


def _compare_state_dicts(built: dict[str, torch.Tensor], stored: dict[str, torch.Tensor],
                         path: str | Path) -> None:
    missing = sorted(set(built) - set(stored))
    extra = sorted(set(stored) - set(built))
    if missing or extra:
        raise ModelFileError(
            f"{path} is damaged: its weights do not match its config (missing "
            f"{missing[:5]}, unexpected {extra[:5]}). Re-save the model or retrain it.")
    for name, tensor in built.items():
        if tuple(tensor.shape) != tuple(stored[name].shape):
            raise ModelFileError(
                f"{path} is damaged: its weights do not match its config ({name!r} has shape "
                f"{tuple(stored[name].shape)} in the file, the config makes "
                f"{tuple(tensor.shape)}). Re-save the model or retrain it.")


class _OverBudget(RuntimeError):
    pass


class _AllocationBudget(TorchDispatchMode):
    """Counts the bytes of new tensors created inside it and raises past ``limit``.

    Factory calls (``empty``, ``zeros``, ``randn``, ...) are checked before they allocate.
    """

    def __init__(self, limit: int):
        super().__init__()
        self.limit = int(limit)
        self.used = 0
        self._seen: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        size = args[0] if args else kwargs.get("size")
        name = func.__name__.split(".")[0]
        if name in _FACTORIES and isinstance(size, (list, tuple)) \
                and all(isinstance(s, int) for s in size):
            dtype = kwargs.get("dtype") or torch.get_default_dtype()
            wanted = math.prod(size) * torch.empty((), dtype=dtype, device="meta").element_size()
            if self.used + wanted > self.limit:
                raise _OverBudget(f"{func.__name__} of {wanted} bytes")
        out = func(*args, **kwargs)
        for t in (out if isinstance(out, (list, tuple)) else (out,)):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                ptr = t.untyped_storage().data_ptr()
                if ptr not in self._seen:
                    self._seen.add(ptr)
                    self.used += t.untyped_storage().nbytes()
        if self.used > self.limit:
            raise _OverBudget(f"{self.used} bytes")
        return out


_FACTORIES = {"empty", "empty_strided", "zeros", "ones", "full", "rand", "randn", "randint",
              "randperm", "new_empty", "new_zeros", "new_ones", "new_full"}


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("sbi-core")
    except Exception:
        return "unknown"
