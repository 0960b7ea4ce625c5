"""``fit``: from simulations to a trained posterior in one call.

Example::

    sims = simulate(problem, 10_000, seed=0)
    posterior = fit(problem, sims, method="npe", flow="nsf", seed=0)
    samples = posterior.sample((1000,), x=problem.observation(1))
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from sbi_core.display import MESSAGE_LIMIT, shown
from sbi_core.methods import Method, get_method
from sbi_core.posterior import Posterior
from sbi_core.priors import simplex_parameters, support_bounds, within_support
from sbi_core.problem import Problem
from sbi_core.simulation_set import SimulationSet
from sbi_core.training import split_options, train

__all__ = ["fit", "check_theta_in_support", "MIN_DETECTOR_SIMS"]

#: Fewest simulations for which ``fit`` trains the misspecification detector.
MIN_DETECTOR_SIMS = 500


def _discrete_x_options(problem: Problem, m: Method, options: dict[str, Any]) -> dict[str, Any]:
    """Pass the problem's declared discrete x columns to methods that take them; warn when
    a method would treat them as continuous values."""
    declared = getattr(problem, "x_discrete", None)
    if declared is None or "discrete_columns" in options:
        return options
    if m.accepts_discrete_x:
        return {**options, "discrete_columns": list(declared)}
    warnings.warn(f"Problem {problem.name!r} declares discrete x columns {list(declared)}, but "
                  f"method {m.name!r} treats them as continuous values. Use method='mnle' "
                  "(likelihood) or 'npe' (one-hot encoded) to model them as discrete.",
                  stacklevel=3)
    return options


def _x_trials_options(problem: Problem, m: Method, options: dict[str, Any]) -> dict[str, Any]:
    """Pass the problem's declared exchangeable trials (``x_trials``) to methods that use
    them (NPE: permutation-invariant default embedding); ``x_trials=None`` in ``options``
    opts out."""
    declared = getattr(problem, "x_trials", None)
    if declared is None or "x_trials" in options or not m.accepts_x_trials:
        return options
    return {**options, "x_trials": list(declared)}


def fit(problem: Problem, sims: SimulationSet | tuple[Tensor, Tensor] | str | os.PathLike,
        method: str = "npe", seed: int = 0, streaming: bool = False, detector: bool = True,
        preset: str | None = None, **options: Any) -> Posterior:
    """Train an estimator of ``method`` on ``sims`` and return its :class:`Posterior`.

    Args:
        problem: gives the prior, parameter names and ``x_shape``.
        sims: a :class:`SimulationSet` (invalid simulations are excluded with a warning) or a
            ``(theta (N, D), x (N, *x_shape))`` pair, or the path of a simulation file or zarr
            store.
        method: a registered method name (``sbi_core.available_methods()``).
        seed: fixes initialization, the validation split and minibatch order.
        streaming: train from a zarr store chunk by chunk with bounded memory instead of
            loading it (``sims`` must be the store's path; see :mod:`sbi_core.streaming`).
        detector: train the misspecification detector (``posterior.detector``, saved with
            the model; a few seconds; :mod:`diagnostics.misspecification`) on the training x,
            its null from the validation rows; False skips it. Skipped for fewer than
            ``MIN_DETECTOR_SIMS`` (500) simulations (train one with
            ``posterior.fit_detector(sims)``).
        preset: ``"fast"`` or ``"accurate"`` training defaults of methods that offer presets
            (NPE; table in docs/npe.md); ``None`` uses the method's default preset. Options
            given explicitly override the preset's.
        **options: training options (``batch_size``, ``learning_rate``, ``max_epochs``,
            ``max_seconds``, ``device``, ``progress``, ... see :class:`TrainConfig`) and
            estimator options (e.g. ``flow="nsf"``, ``hidden_features=64``, ``embedding=...``).
            ``ensemble=K`` (NPE) trains ``K`` members as one batched model; the posterior is
            their mixture (method ``"npe_ensemble"``, docs/ensembles.md).
    """
    if options.get("ensemble") is not None:  # K members as one batched model (docs/ensembles.md)
        from estimators.ensemble import ensemble_method_name

        method = ensemble_method_name(method, options["ensemble"])
    m = get_method(method)
    options = _with_preset(m, preset, options)
    check_parameters_have_a_density(problem, method)
    if streaming:
        if not isinstance(sims, (str, os.PathLike)):
            raise ValueError("streaming=True needs the path of a zarr store as sims "
                             "(simulate(..., store='sims.zarr')).")
        from sbi_core.streaming import fit_streaming  # optional extra (zarr)

        return fit_streaming(problem, sims, method=method, seed=seed, **options)
    if isinstance(sims, (str, os.PathLike)):
        sims = SimulationSet.load(sims)
    padded = _embeds_padded_sets(method, options)
    if isinstance(sims, SimulationSet):
        _check_sims_parameters(problem, sims)
        if padded:  # sets padded with all-NaN trials are data, not failed simulations
            sims = _padded_sets_valid(sims)
        theta, x = sims.training_data()
    else:
        if not isinstance(sims, (tuple, list)) or len(sims) != 2:
            what = f"a {type(sims).__name__}" + (f" of {len(sims)} items"
                                                 if isinstance(sims, (tuple, list)) else "")
            raise ValueError(
                f"sims must be a SimulationSet, a (theta, x) pair of arrays or the path of a "
                f"simulation file or zarr store; got {what}. E.g. fit(problem, (theta, x)) with "
                "theta (N, D) and x (N, *x_shape), or fit(problem, simulate(problem, N)).")
        theta, x = (_as_float32(a, name) for a, name in zip(sims, ("theta", "x")))
        if theta.shape[:1] == x.shape[:1] and len(theta) and not (
                torch.isfinite(theta).all() and torch.isfinite(x).all()):
            # rows with NaN/inf are left out with a warning, as for a SimulationSet
            arrays = SimulationSet.from_arrays(theta, x)
            theta, x = (_padded_sets_valid(arrays) if padded else arrays).training_data()
    if theta.ndim != 2 or theta.shape[1] != problem.dim:
        raise ValueError(
            f"The simulations' theta has shape {tuple(theta.shape)}, but problem {problem.name!r} "
            f"has D={problem.dim} parameters {problem.param_names}."
        )
    if problem.x_shape is not None and tuple(x.shape[1:]) != tuple(problem.x_shape):
        raise ValueError(
            f"The simulations' x has shape {tuple(x.shape[1:])} per sample, but problem "
            f"{problem.name!r} simulates x of shape {tuple(problem.x_shape)}."
        )
    check_theta_in_support(problem, theta)
    if padded and not bool(torch.isfinite(x).all()):
        detector = False  # the detector's networks take finite x only (no padding)
    elif not (method in ("abc", "smc_abc") and options.get("distance") == "mmd"):
        # the MMD compares raw data sets (no z-scoring): the warning's advice does not apply
        warn_extreme_x(x, getattr(problem, "x_names", None))
    options = _discrete_x_options(problem, m, options)
    options = _x_trials_options(problem, m, options)
    try:
        if m.fit is not None:
            posterior = m.fit(problem, (theta, x), seed=seed, **options)
            return _with_detector(posterior, x, None, seed) \
                if detector and x.shape[0] >= MIN_DETECTOR_SIMS else posterior
        train_config, estimator_options = split_options(
            {**m.training_defaults(options), **options, "seed": seed})
        problem_spec = problem.spec()  # before training: nothing after it may lose the estimator
        torch.manual_seed(seed)
        estimator = m.build(theta, x, problem.prior, **estimator_options)
        history = train(estimator, theta, x, train_config, loss_fn=m.loss_fn)
    except ValueError as err:
        if isinstance(sims, SimulationSet) and 2 * sims.num_invalid >= len(sims):
            # most simulations are invalid: that is the likely cause, say it first
            columns = sims.invalid_summary(getattr(problem, "x_names", None))
            raise ValueError(
                f"Only {len(sims) - sims.num_invalid} of {len(sims)} simulations are valid"
                f" ({columns}); first error: {sims.first_error}. "
                f"Training on the valid ones failed: {err}") from err
        raise
    except TypeError as err:  # "Unknown NPE options ['max_epoch']": name the likely option
        hint = _did_you_mean(str(err), options)
        if hint:
            raise TypeError(f"{err} {hint}") from err
        raise
    from sbi_core.training_sketch import theta_sketch

    record = {**history.to_dict(), "training_theta_sketch": theta_sketch(theta)}
    posterior = m.make_posterior(estimator, problem.prior, problem_spec, record)
    if not detector or x.shape[0] < MIN_DETECTOR_SIMS:
        return posterior
    # the detector's null comes from the rows the training loop held out for validation
    # (same seeded split as training._TensorBatches), never seen by the estimator
    n_val = int(round(train_config.validation_fraction * x.shape[0]))
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    return _with_detector(posterior, x[perm[n_val:]], x[perm[:n_val]], seed)


def _as_float32(values: Any, name: str) -> Tensor:
    """``values`` as float32, refusing finite numbers beyond float32's range (they would turn
    into inf and be taken for failed simulations)."""
    out = torch.as_tensor(values, dtype=torch.float32)
    if not bool(torch.isfinite(out).all()):
        raw = torch.as_tensor(values)
        if raw.is_floating_point() and raw.dtype != torch.float32:
            big = torch.isfinite(raw) & ~torch.isfinite(out)
            if bool(big.any()):
                flat = big.reshape(big.shape[0], -1) if big.ndim > 1 else big.reshape(-1, 1)
                cols = flat.any(0).nonzero().flatten().tolist()
                rows = int(flat.any(1).sum())
                top = float(raw[big].abs().max())
                what = (f"{rows} of {flat.shape[0]} rows of {name} have finite values beyond "
                        f"float32's range (|value| up to {top:.3g} > 3.4e38, flattened "
                        f"column(s) {cols[:10]}); sbi-core trains in float32, where they become "
                        "inf")
                fix = ("Rescale those columns (e.g. divide by a typical value, or take log10) "
                       "if they are real values")
                if 2 * rows >= flat.shape[0]:
                    raise ValueError(f"{what} and could not be trained on. {fix}.")
                warnings.warn(f"{what} and are left out as invalid simulations. {fix}; if they "
                              "are blown-up simulations, return NaN for them.", stacklevel=3)
    return out


def check_parameters_have_a_density(problem: Problem, method: str) -> None:
    """Refuse a prior on a simplex (e.g. Dirichlet) for a method that learns a density over
    all parameters, before anything is simulated or trained (:func:`fit`, sequential runs)."""
    if not method.endswith("abc") and simplex_parameters(problem.prior):
        raise ValueError(
            f"The prior of problem {problem.name!r} puts parameters on a simplex (e.g. a "
            "Dirichlet: they sum to 1), a set of one dimension fewer than the parameters; "
            f"method {method!r} learns a density over all {problem.dim} parameters and cannot "
            "be trained on it (sampling would then reject almost every draw). Fix: give the "
            "problem D-1 free parameters (e.g. stick-breaking fractions in (0, 1) with Beta "
            "priors, or the first D-1 weights) and build the last weight in the simulator, or "
            "use method='abc' / 'smc_abc'.")


def _did_you_mean(message: str, options: dict[str, Any]) -> str:
    """``"Did you mean 'max_epochs'?"`` for options named unknown in ``message`` that are
    close to a training option or to an option the message lists; ``""`` otherwise."""
    import difflib
    import re
    from dataclasses import fields

    from sbi_core.training import TrainConfig

    if not message.startswith("Unknown"):
        return ""
    training = {f.name for f in fields(TrainConfig)}
    known = training | set(re.findall(r"'(\w+)'", message)) - set(options)
    pairs = []
    for key in options:
        if key in training or f"'{key}'" not in message:
            continue
        close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)
        if close:
            pairs.append(f"{close[0]!r} (not {key!r})")
    return f"Did you mean {', '.join(pairs)}?" if pairs else ""


def _embeds_padded_sets(method: str, options: dict[str, Any]) -> bool:
    """NPE (or its ensemble) with a set embedding: all-NaN trials of ``x`` ``(N, n, d)`` are
    padding (a varying number of trials, docs/embeddings.md), not failed simulations."""
    from estimators.embedding import is_set_embedding

    spec = options.get("embedding")
    spec = {"type": spec} if isinstance(spec, str) else spec
    return method in ("npe", "npe_ensemble") and is_set_embedding(spec)


def _padded_sets_valid(sims: SimulationSet) -> SimulationSet:
    """``sims`` with rows that are padded sets (``padded_sets``) counted as valid."""
    from estimators.embedding import padded_sets

    ok = sims.valid | (padded_sets(sims.x) & torch.isfinite(sims.theta).all(-1))
    if bool((ok == sims.valid).all()):
        return sims
    return SimulationSet(sims.theta, sims.x, ok, dict(sims.provenance))


def _with_detector(posterior: Posterior, x: Tensor, x_holdout: Tensor | None,
                   seed: int) -> Posterior:
    """``posterior`` with its misspecification detector trained; when that fails the
    posterior is returned without one and a warning says why (nothing trained is lost)."""
    from diagnostics.misspecification import fit_detector

    try:
        posterior.detector = fit_detector(posterior, x, seed=seed, x_holdout=x_holdout)
        if posterior.detector.config.get("flow_stopped") == "interrupted":
            # a Ctrl-C after the estimator's training: said, not silently absorbed
            posterior.history["detector_stopped"] = "interrupted"
            warnings.warn("Interrupted while training the misspecification detector: its "
                          "density flow keeps the best weights so far (its p-values stay "
                          "calibrated on held-out simulations, with less power to detect "
                          "misspecification; posterior.fit_detector(sims) retrains it).",
                          UserWarning, stacklevel=3)
    except (ValueError, RuntimeError, TypeError) as err:
        warnings.warn(f"The misspecification detector was not trained ({err}); the posterior "
                      "is fine, but sample cannot warn about observations unlike the training "
                      "simulations. Train it with posterior.fit_detector(sims) using more "
                      "simulations, or pass detector=False to fit to skip it (CLI: rerun "
                      "`sbi-core train` with more simulations).", UserWarning,
                      stacklevel=3)
    return posterior


def _with_preset(m: Method, preset: str | None, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` completed with the training settings of ``preset`` (checked); explicit
    options win. Every preset of a method sets the same keys, so the method's own defaults
    applied later by the training path do not mix presets."""
    if preset is None:
        return options
    presets = getattr(m.train_defaults, "presets", None)
    if not presets:
        raise ValueError(f"preset={preset!r}: method {m.name!r} has no training presets (they "
                         "exist for method='npe'); set its training options directly instead, "
                         "e.g. batch_size=, learning_rate=, stop_after_epochs=.")
    if preset not in presets:
        raise ValueError(f"Unknown preset {preset!r}; use one of {sorted(presets)} (or leave "
                         "it out for the default).")
    return {**m.training_defaults({**options, "preset": preset}), **options}


EXTREME_SPREAD = 1000.0  # column std beyond this many times its interquartile range


def warn_extreme_x(x: Tensor, x_names: Sequence[str] | None = None) -> None:
    """Warn when a few finite but enormous x values (a simulator that blew up to 1e30 instead
    of failing) dominate a column's standard deviation: z-scoring then squeezes every other
    simulation together and the posterior silently ignores x. Flags columns whose std is more
    than ``EXTREME_SPREAD`` times their interquartile range (quartiles from at most a few
    thousand rows, std over all, in float64; a column with IQR 0 is not judged)."""
    n = x.shape[0]
    if n < 20:
        return
    flat = x.reshape(n, -1)
    width = flat.shape[1]
    rows = min(n, max(200, 16_000_000 // max(width, 1)))
    sub = flat[:rows].double()
    lo, mid, hi = torch.quantile(sub, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64), dim=0)
    spread = hi - lo
    std = flat.double().std(0)
    bad = (spread > 0) & (std > EXTREME_SPREAD * spread)
    if not bool(bad.any()):
        return
    far = ((flat.double() - mid).abs() > EXTREME_SPREAD * spread) & bad
    n_rows = int(far.any(1).sum())
    cols = bad.nonzero().flatten().tolist()
    c = cols[0]
    name = f" ({x_names[c]})" if x_names is not None and c < len(x_names) else ""
    shown = ", ".join(map(str, cols[:5])) + (", ..." if len(cols) > 5 else "")
    warnings.warn(
        f"{n_rows:,} of {n:,} simulations have x values far beyond the bulk in {len(cols)} "
        f"column(s) ({shown}; column {c}{name}: values up to "
        f"{float(flat[:, c].double().abs().max()):.3g} while half lie in [{float(lo[c]):.4g}, "
        f"{float(hi[c]):.4g}]). z-scoring x with a standard deviation they dominate squeezes the "
        "other simulations together, so the posterior can ignore x and come out near the "
        "prior. If they are failed simulations, return NaN for them (they are then left out); "
        "otherwise clip or transform x (for NPE e.g. x_transform='log1p').",
        UserWarning, stacklevel=3)


def check_theta_in_support(problem: Problem, theta: Tensor) -> None:
    """Warn when training ``theta`` ``(N, D)`` has rows outside the prior's support (with the
    count and fraction); raise when none is inside."""
    n = int(theta.shape[0])
    if n == 0:
        return
    outside = int((~within_support(problem.prior, theta)).sum())
    if outside == 0:
        return
    low, high = support_bounds(problem.prior)
    where = f"support bounds low={low.tolist()}, high={high.tolist()}"
    if outside == n:
        raise ValueError(
            f"None of the {n:,} training θ lie inside the prior's support ({where}). These "
            f"simulations do not come from problem {problem.name!r}'s prior: simulate with "
            "sbi_core.simulate(problem, ...), or give the Problem the prior the θ were drawn from.")
    warnings.warn(
        f"{outside:,} of {n:,} training θ ({100.0 * outside / n:.1f}%) lie outside the prior's "
        f"support ({where}). The posterior is restricted to the support, so those rows only "
        "distort the estimator (and NPE's theta_transform='unconstrained' refuses them); check "
        f"that the simulations were drawn from problem {problem.name!r}'s prior.", UserWarning, stacklevel=3)


def _check_sims_parameters(problem: Problem, sims: SimulationSet) -> None:
    """Stop when ``sims`` record other parameter names than ``problem``'s: simulations of
    another problem with the same shapes would train a posterior under the wrong prior.
    Files that record no names (older files, ``.npz``) and default names are not compared."""
    check_parameter_names(problem, sims.provenance)


def _warn_other_prior(problem: Problem, provenance: dict[str, Any]) -> None:
    """Warn when the simulations' θ were drawn from another prior than ``problem``'s (the
    problem file edited after simulating): the estimator learns the posterior under the
    prior that drew them, while the model records this one. Files that record no prior
    (older ones, ``.npz``) and simulations at given θ are not compared."""
    from sbi_core.priors import same_prior_spec
    from sbi_core.simulation import prior_text, recorded_prior

    recorded = provenance.get("prior")
    if not isinstance(recorded, dict) or provenance.get("theta_source", "prior") != "prior":
        return
    now = recorded_prior(problem)
    if now is None or same_prior_spec(recorded, now):
        return
    warnings.warn(
        f"These simulations' θ were drawn from another prior ({prior_text(recorded)}) than "
        f"problem {problem.name!r}'s ({prior_text(now)}); the estimator learns the posterior "
        "under the prior that drew them, not under this one. Train with the problem that "
        "made them, or simulate again with this prior (to change the prior of a trained "
        "posterior, see docs/prior_change.md).", UserWarning, stacklevel=4)


def check_parameter_names(problem: Problem, provenance: dict[str, Any]) -> None:
    """:func:`_check_sims_parameters` for the ``provenance`` of a file or store (also used by
    :func:`sbi_core.streaming.fit_streaming`)."""
    _warn_other_prior(problem, provenance)
    recorded = provenance.get("param_names")
    ours = list(problem.param_names)
    if not recorded or list(recorded) == ours or len(recorded) != len(ours):
        return  # a different number of parameters is reported by the shape check
    default = [f"theta_{i + 1}" for i in range(len(ours))]
    if default in (list(recorded), ours):
        return
    made_by = provenance.get("problem") or "another problem"
    raise ValueError(
        f"These simulations were made by problem {shown(repr(made_by))} with parameters "
        f"{shown(list(recorded), MESSAGE_LIMIT)}, but the problem given to fit is {problem.name!r} with parameters "
        f"{ours}. Train with the problem that made them (CLI: --problem), or simulate "
        "this problem.")
