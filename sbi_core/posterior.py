"""Posteriors: the one interface every estimator answers through.

Shapes (``D`` parameters, ``x_shape`` one simulation, ``B`` observations):

- ``sample(sample_shape, x)``: ``x`` ``x_shape`` → ``(*sample_shape, D)``
- ``sample_batched(sample_shape, xs)``: ``xs`` ``(B, *x_shape)`` → ``(*sample_shape, B, D)``
- ``log_prob(theta, x)``: ``theta`` ``(N, D)`` → ``(N,)``
- ``log_prob_batched(theta, xs)``: ``theta`` ``(N, B, D)`` → ``(N, B)``
- ``map(x)`` → ``(D,)``; ``map_batched(xs)`` → ``(B, D)``

``x`` may be left out once :meth:`Posterior.set_default_x` has fixed an observation, and
:meth:`Posterior.condition` returns a ``torch.distributions.Distribution`` for one
observation (:mod:`sbi_core.conditioned`).

Samples always lie inside the prior's support. Observations are checked: wrong
shape, NaN/inf, or values far outside the range seen in training raise a
:class:`ObservationError` that says what is wrong and how to proceed. Every sampling call
has a wall-clock budget (``max_seconds``, default :attr:`Posterior.default_max_seconds`)
and ends with a :class:`SamplingTimeoutError` saying how far it got, never runs on for
minutes (:mod:`sbi_core.budget`).
"""

from __future__ import annotations

import contextlib
import inspect
import math
import operator
import os
import time
from collections.abc import Iterator
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from sbi_core.budget import Budget, SamplingError, SamplingTimeoutError
from sbi_core.priors import support_bounds, support_is_real, within_support
from sbi_core.rejection import proposal_count
from sbi_core.threads import auto_threads, thread_scope

__all__ = ["Posterior", "DirectPosterior", "ObservationError", "SingleObservationError", "SamplingError",
           "SamplingTimeoutError", "seeded", "MAP_BUDGET_ADVICE"]

RangeCheck = Literal["error", "warn", "off"]
#: What ``sample`` does when the misspecification detector rejects an observation.
MisspecificationCheck = Literal["error", "warn", "off"]
#: ``max_seconds`` argument: seconds, ``None`` (no limit), a running :class:`Budget`, or
#: ``"default"`` (the posterior's ``max_seconds``).
MaxSeconds = float | None | Budget | Literal["default"]
MAP_BUDGET_ADVICE = ("Pass fewer steps (steps=0 returns the best initial sample) or a smaller "
                     "num_init.")


class ObservationError(ValueError):
    """An observation has the wrong shape, non-finite values, or lies outside the training range."""


class SingleObservationError(ObservationError):
    """The posterior answers only the one observation it was fitted to (rejection / SMC-ABC;
    such posteriors expose it as ``posterior.single_observation``): asked about another ``x``. Diagnostics that need posteriors at many test observations
    (TARP, SBC, coverage) report themselves *not applicable* (skip) on this error."""


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Fix torch's RNG inside the block when ``seed`` is given, restoring it afterwards."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class Posterior:
    """Base class: observation checks, batching helpers and shared documentation.

    Subclasses implement ``_sample_batched(n, xs) -> (n, B, D)`` and
    ``_log_prob_batched(theta (N, B, D), xs) -> (N, B)``.

    Attributes:
        estimator: the trained ``nn.Module``.
        prior: the prior distribution.
        problem_spec: plain-value problem description (names, prior spec, x_shape).
        history: training history dict (epochs, losses, seconds).
        method: registry name of the method (``"npe"``, ...).
        diagnostics: results attached by ``diagnostics`` (saved with the model).
    """

    method: str = ""
    #: hooks (``"sample"``, ``"log_prob"``) whose ``**kwargs`` carry real options on to
    #: something that checks them (MCMC settings, a base posterior); in the others an option
    #: the hook does not name is refused instead of silently ignored.
    _forwards_options: frozenset[str] = frozenset()
    #: True when ``log_prob`` is normalized; False for MCMC-based (unnormalized) posteriors.
    normalized_log_prob: bool = True
    #: True when a set of iid observations can be passed as ``x`` (``(n, *x_shape)``).
    supports_iid: bool = False
    #: False when ``log_prob`` (and so ``map`` and ``correct="is"``) is not available for a
    #: set of more than one iid observation (score-based posteriors: a sampler only).
    iid_log_prob: bool = True
    #: Wall-clock budget of one ``sample`` / ``map`` call in seconds (``None``: no limit);
    #: each instance copies it into ``max_seconds``, which users may change.
    default_max_seconds: float | None = 60.0
    #: What to do when the budget runs out (appended to the timeout error).
    budget_advice: str = "Check that the observation resembles the training simulations."
    #: ESS and weights summary of the last ``sample(..., correct="is")`` (sbi_core.importance)
    last_importance: Any = None

    def __init__(self, estimator: nn.Module, prior: Distribution, problem_spec: dict[str, Any],
                 history: dict[str, Any] | None = None, range_check: RangeCheck = "error"):
        self.estimator = estimator.eval()
        self.prior = prior
        self.problem_spec = problem_spec
        self.history = history or {}
        self.diagnostics: dict[str, Any] = {}
        self.range_check: RangeCheck = range_check
        self.x_shape = tuple(problem_spec.get("x_shape") or ())
        self.param_names = list(problem_spec.get("param_names") or [])
        self.dim = int(prior.event_shape[0])
        self._bounds = support_bounds(prior)
        self.max_seconds: float | None = self.default_max_seconds
        self._default_x: Tensor | None = None
        #: Misspecification detector (:mod:`diagnostics.misspecification`), saved with the
        #: model; ``sample`` tests each observation with it (``misspecification``).
        self.detector: Any = None
        self.misspecification: MisspecificationCheck = "warn"

    @property
    def method_label(self) -> str:
        """The method that made this posterior, for report cards and exports: ``method``
        (``"npe"``, ...), or for a sequential run (``run_sequential`` / ``sbi-core run``) the
        sequential method and that it was trained for one observation, e.g.
        ``"tsnpe (sequential, for one x_o; estimator npe)"``."""
        record = (self.problem_spec or {}).get("sequential")
        if isinstance(record, dict) and record.get("method"):
            return f"{record['method']} (sequential, for one x_o; estimator {self.method})"
        return self.method

    # ------------------------------------------------------------------ default observation
    def set_default_x(self, x: Tensor | None) -> Posterior:
        """Fix the observation used when ``x`` is left out of ``sample`` / ``log_prob`` / ``map``.

        ``x`` is checked now (shape, finite values, training range); ``None`` clears it.
        Returns the posterior, so ``posterior.set_default_x(x_o).sample((1000,))`` works.
        """
        self._default_x = None if x is None else self._check_x(x, batched=False)
        return self

    @property
    def default_x(self) -> Tensor | None:
        """The observation set by :meth:`set_default_x` (``x_shape`` or an iid set), or None."""
        return None if self._default_x is None else self._default_x[0]

    def condition(self, x: Tensor | None = None, validate_args: bool | None = None):
        """This posterior at one observation ``x`` (default: :attr:`default_x`) as a
        ``torch.distributions.Distribution``
        (:class:`sbi_core.conditioned.ConditionedPosterior`)."""
        from sbi_core.conditioned import ConditionedPosterior

        return ConditionedPosterior(self, x, validate_args=validate_args)

    def given_uncertain_x(self, evidence: Any, rule: str = "jeffrey", **kwargs: Any):
        """This posterior when the observation is known only up to a distribution:
        ``evidence`` is a set of plausible observations ``(M, *x_shape)`` or a
        ``torch.distributions.Distribution`` over ``x``; ``rule`` is ``"jeffrey"``,
        ``"virtual"`` or ``"distributional"`` (docs/uncertain_evidence.md). Returns a
        :class:`sbi_core.uncertain.UncertainEvidencePosterior` (``sample``, ``log_prob``)."""
        from sbi_core.uncertain import UncertainEvidencePosterior

        return UncertainEvidencePosterior(self, evidence, rule, **kwargs)

    def with_prior(self, new_prior: Any, method: str = "auto", **options: Any) -> Posterior:
        """This posterior under a new prior, without retraining (docs/prior_change.md):
        importance resampling with the effective sample size in ``.info``
        (:class:`sbi_core.prior_change.ReweightedPosterior`; ``options`` go there), or one
        forward pass for a prior-conditioned estimator (``method="prior_npe"``)."""
        from sbi_core.prior_change import with_prior

        return with_prior(self, new_prior, method, **options)

    def _single_x(self, x: Tensor | None) -> Tensor:
        """Checked ``(1, ...)`` batch of ``x``, or of the default observation when ``x`` is None."""
        if x is not None:
            return self._check_x(x, batched=False)
        if self._default_x is None:
            raise ValueError("No observation given: pass x=..., or fix one with "
                             "posterior.set_default_x(x_o).")
        return self._default_x

    # ------------------------------------------------------------------ export
    def to_inference_data(self, x: Tensor | None = None, num: int = 1000, problem: Any = None,
                          seed: int | None = 0, **options: Any) -> Any:
        """Samples at ``x`` as an ``arviz.InferenceData`` (named parameters, prior draws, the
        observation; MCMC chains kept; posterior predictive only given ``problem``).
        Needs ``pip install 'sbi-core[arviz]'``; see :mod:`sbi_core.export_arviz`."""
        from sbi_core.export_arviz import to_inference_data

        return to_inference_data(self, x, num=num, problem=problem, seed=seed, **options)

    # ------------------------------------------------------------------ public API
    def sample(self, sample_shape: tuple[int, ...] | int = (), x: Tensor | None = None,
               seed: int | None = None, max_seconds: MaxSeconds = "default",
               strict: bool = False, correct: str | None = None, log_likelihood: Any = None,
               **kwargs: Any) -> Tensor:
        """Draw samples for one observation ``x`` (``x_shape``) → ``(*sample_shape, D)``.

        ``max_seconds`` bounds the call's wall time (``"default"``: :attr:`max_seconds`;
        ``None``: no limit); past it a :class:`SamplingTimeoutError` says how far it got.
        With a misspecification :attr:`detector`, an observation unlike the training
        simulations gets a ``MisspecificationWarning`` naming the tests and p-values
        (``strict=True``: a ``MisspecificationError``; docs/trust.md).
        ``correct="is"`` with ``log_likelihood=`` (a function ``(theta, x) -> (N,)`` or a
        trained NLE posterior) resamples these draws by importance weights toward the exact
        posterior; the effective sample size is in ``last_importance``
        (:mod:`sbi_core.importance`; options ``oversampling=``, ``min_ess=``).
        """
        shape = _shape(sample_shape)
        xs = self._single_x(x)
        if correct is not None or log_likelihood is not None:
            from sbi_core.importance import corrected_sample

            return corrected_sample(self, shape, xs, correct, log_likelihood, seed=seed,
                                    max_seconds=max_seconds, strict=strict, **kwargs)
        self._check_misspecification(xs, strict)
        return self.sample_batched(shape, xs, seed=seed, max_seconds=max_seconds,
                                   _checked=True, **kwargs)[..., 0, :]

    def sample_batched(self, sample_shape: tuple[int, ...] | int, xs: Tensor,
                       seed: int | None = None, max_seconds: MaxSeconds = "default",
                       _checked: bool = False, strict: bool = False, **kwargs: Any) -> Tensor:
        """Draw samples for each of ``B`` observations → ``(*sample_shape, B, D)``.

        Observations are tested for misspecification as in :meth:`sample` (one warning per
        call; Bonferroni over the ``B`` observations)."""
        shape = _shape(sample_shape)
        if not _checked:
            xs = self._check_x(xs, batched=True)
            self._check_misspecification(xs, strict)
        n = math.prod(shape)
        if n == 0:
            return torch.empty(*shape, xs.shape[0], self.dim)
        _check_fits_in_memory(n, xs.shape[0], self.dim)
        self._check_options("sample", self._sample_batched, kwargs)
        budget = self._budget(max_seconds)
        with seeded(seed), torch.no_grad(), thread_scope("auto"):
            samples = self._sample_batched(n, xs, budget=budget, **kwargs)
        return samples.reshape(*shape, xs.shape[0], self.dim)

    def log_prob(self, theta: Tensor, x: Tensor | None = None, **kwargs: Any) -> Tensor:
        """Log density of ``theta`` ``(N, D)`` (or ``(D,)``, or ``(*S, D)`` as returned by
        ``sample(S)``) given one ``x`` → ``(N,)`` (``()``, ``S``)."""
        xs = self._single_x(x)
        theta = self._check_theta(theta)
        lp = self.log_prob_batched(theta.reshape(-1, 1, self.dim), xs, _checked=True, **kwargs)[:, 0]
        return lp.reshape(theta.shape[:-1])

    def log_prob_batched(self, theta: Tensor, xs: Tensor, _checked: bool = False,
                         **kwargs: Any) -> Tensor:
        """Log density of ``theta`` ``(N, B, D)`` under each of ``B`` observations → ``(N, B)``."""
        xs = xs if _checked else self._check_x(xs, batched=True)
        theta = self._check_theta(theta)
        if theta.ndim != 3 or theta.shape[1] != xs.shape[0]:
            raise ValueError(
                f"theta must have shape (N, B={xs.shape[0]}, D={self.dim}), got {tuple(theta.shape)}."
            )
        self._check_options("log_prob", self._log_prob_batched, kwargs)
        if theta.shape[0] == 0:  # no parameter sets: nothing to evaluate
            return torch.empty(0, xs.shape[0])
        with torch.no_grad(), thread_scope("auto"):
            return self._log_prob_batched(theta, xs, **kwargs)

    def _check_options(self, call: str, hook: Any, kwargs: dict[str, Any]) -> None:
        """Refuse options ``hook`` (``_sample_batched`` / ``_log_prob_batched``) does not name,
        unless this class forwards them (``_forwards_options``); ``normalize`` and ``progress``
        are always accepted (``map`` and the diagnostics pass them to every posterior; they
        mean nothing where a posterior has no such choice)."""
        if not kwargs or call in self._forwards_options:
            return
        params = inspect.signature(hook).parameters.values()
        named = {q.name for q in params
                 if q.kind in (q.POSITIONAL_OR_KEYWORD, q.KEYWORD_ONLY)}
        accepted = (named | {"normalize", "progress"}) - {"n", "xs", "theta", "budget"}
        unknown = sorted(set(kwargs) - accepted)
        if not unknown:
            return
        hint = ""
        if "range_check" in unknown:
            hint = (" range_check is a setting of the posterior, not of one call: "
                    "posterior.range_check = 'warn' (or 'off').")
        options = ", ".join(sorted(accepted - {"normalize", "progress"})) or "none"
        raise TypeError(f"{type(self).__name__}.{call}() got unknown option(s) "
                        f"{', '.join(unknown)}; its options are: {options} (besides x, seed, "
                        f"max_seconds{', strict, correct' if call == 'sample' else ''}).{hint}")

    @auto_threads
    def map(self, x: Tensor | None = None, num_init: int = 1000, steps: int = 100,
            seed: int | None = 0, max_seconds: MaxSeconds = "default") -> Tensor:
        """Maximum a posteriori estimate ``(D,)`` for one observation."""
        xs = self._single_x(x)
        _check_map_options(num_init, steps)
        return self._map_batched(xs, num_init, steps, seed, self._budget(max_seconds, "MAP"))[0]

    @auto_threads
    def map_batched(self, xs: Tensor, num_init: int = 1000, steps: int = 100,
                    seed: int | None = 0, max_seconds: MaxSeconds = "default") -> Tensor:
        """MAP estimates ``(B, D)`` for ``B`` observations."""
        _check_map_options(num_init, steps)
        return self._map_batched(self._check_x(xs, batched=True), num_init, steps, seed,
                                 self._budget(max_seconds, "MAP"))

    def _budget(self, max_seconds: MaxSeconds, task: str = "Sampling") -> Budget:
        """The call's :class:`Budget` (``"default"``: this posterior's ``max_seconds``)."""
        if isinstance(max_seconds, str):
            if max_seconds != "default":
                raise ValueError(f"max_seconds must be a number of seconds, None (no limit) or "
                                 f"'default', got {max_seconds!r}.")
            max_seconds = self.max_seconds
        return Budget.of(max_seconds, f"{task} ({type(self).__name__})", self.budget_advice)

    # ------------------------------------------------------------------ subclass hooks
    def _sample_batched(self, n: int, xs: Tensor, budget: Budget | None = None,
                        **kwargs: Any) -> Tensor:
        raise NotImplementedError

    def _log_prob_batched(self, theta: Tensor, xs: Tensor, **kwargs: Any) -> Tensor:
        raise NotImplementedError

    def _map_batched(self, xs: Tensor, num_init: int, steps: int, seed: int | None,
                     budget: Budget | None = None) -> Tensor:
        """Best of ``num_init`` posterior samples, refined by gradient ascent inside the support."""
        budget = Budget.of(budget, "MAP")
        with seeded(seed):
            init = self.sample_batched((num_init,), xs, max_seconds=budget,
                                       _checked=True)  # (num_init, B, D)
        lp = self.log_prob_batched(init, xs, _checked=True, normalize=False) \
            if self.normalized_log_prob else self.log_prob_batched(init, xs, _checked=True)
        box = self._map_search_box(init)
        if box is not None:
            inside = ((init >= box[0]) & (init <= box[1])).all(-1)  # (num_init, B)
            lp = torch.where(inside, lp, torch.full_like(lp, -torch.inf))
        best = init.gather(0, lp.argmax(0)[None, :, None].expand(1, -1, self.dim))[0]
        return self._refine_map(best, xs, steps, box, budget)

    def _map_search_box(self, init: Tensor) -> tuple[Tensor, Tensor] | None:
        """Optional per-observation bounds ``(B, D)`` for the MAP search, from its initial
        samples ``(num_init, B, D)``; None searches the whole prior support."""
        return None

    def _refine_map(self, theta: Tensor, xs: Tensor, steps: int,
                    box: tuple[Tensor, Tensor] | None = None,
                    budget: Budget | None = None) -> Tensor:
        if steps <= 0:
            return theta
        low, high = (b.to(theta) for b in self._bounds)
        if box is not None:
            low, high = torch.maximum(low, box[0]), torch.minimum(high, box[1])
        theta = theta.clone().requires_grad_(True)
        opt = torch.optim.Adam([theta], lr=0.01 * float(self.prior_scale().mean()))
        best = theta.detach().clone()
        best_lp = torch.full((theta.shape[0],), -torch.inf)
        for step in range(steps):
            if budget is not None:
                budget.check(f"{step} of {steps} gradient steps", task="MAP search",
                             advice=MAP_BUDGET_ADVICE)
            with torch.enable_grad():
                lp = self._differentiable_log_prob(theta, xs)
            if lp is None:
                return best if torch.isfinite(best_lp).any() else theta.detach()
            better = lp.detach() > best_lp
            best[better], best_lp[better] = theta.detach()[better], lp.detach()[better]
            opt.zero_grad()
            (-lp.sum()).backward()
            opt.step()
            with torch.no_grad():
                theta.copy_(torch.maximum(torch.minimum(theta, high), low))
        return best

    def _differentiable_log_prob(self, theta: Tensor, xs: Tensor) -> Tensor | None:
        """``log q(theta_b | x_b)`` ``(B,)`` with gradients, or None if unavailable."""
        return None

    # ------------------------------------------------------------------ checks
    def fit_detector(self, sims: Any, seed: int = 0, **options: Any) -> Any:
        """Train (or retrain) the misspecification :attr:`detector` on simulations ``sims``
        (a ``SimulationSet``, ``(theta, x)`` pair or ``x`` ``(N, *x_shape)``; best: ones the
        estimator was not trained on); options go to
        :func:`diagnostics.misspecification.fit_detector`. Returns the detector."""
        from diagnostics.misspecification import fit_detector
        from sbi_core.simulation_set import SimulationSet

        if isinstance(sims, SimulationSet):
            x = sims.training_data()[1]
        elif isinstance(sims, (tuple, list)):
            x = torch.as_tensor(sims[1], dtype=torch.float32)
        else:
            x = torch.as_tensor(sims, dtype=torch.float32)
        if tuple(x.shape[1:]) != self.x_shape:
            raise ValueError(f"fit_detector needs simulations x of shape (N, *{self.x_shape}), "
                             f"got {tuple(x.shape)}.")
        self.detector = fit_detector(self, x, seed=seed, **options)
        return self.detector

    def misspecification_test(self, x: Tensor) -> Any:
        """p-values of the detector's tests for one observation or an iid set (``x_shape`` /
        ``(n, *x_shape)``), or for a batch ``(B, *x_shape)`` → ``MisspecificationResult``."""
        if self.detector is None:
            raise ValueError("This posterior has no misspecification detector: train one with "
                             "posterior.fit_detector(sims) (fit trains it unless "
                             "detector=False).")
        x = _as_numbers(x, "x", str(self.x_shape), ObservationError)
        if tuple(x.shape) == self.x_shape:
            x = x.unsqueeze(0)
        if tuple(x.shape[1:]) != self.x_shape:
            raise ObservationError(f"The observations have shape {tuple(x.shape)}; expected "
                                   f"{self.x_shape} or (B, *{self.x_shape}).")
        return self.detector.test(self._check_values(x))

    def _check_misspecification(self, xs: Tensor, strict: bool) -> None:
        """Warn (``strict``: raise) when the detector rejects observations ``xs`` (a batch
        ``(B, *x_shape)`` or of iid sets ``(B, n, *x_shape)``); Bonferroni over the batch."""
        mode = "error" if strict else self.misspecification
        if self.detector is None or mode == "off":
            return
        from diagnostics.misspecification import MisspecificationError, MisspecificationWarning

        if self.is_iid_batch(xs, self.x_shape):
            results = [self.detector.test_iid_set(s) for s in xs]
            if len(results) == 1:
                res = results[0]
            else:
                res = type(results[0])(torch.cat([r.density_p for r in results]),
                                       torch.cat([r.mmd_p for r in results]),
                                       results[0].alpha, results[0].set_size, results[0].both)
        else:
            res = self.detector.test(xs)
        family = int(res.density_p.shape[0])
        if not bool(res.flagged(family).any()):
            return
        if mode == "error":
            raise MisspecificationError(res.message(family, error=True))
        import warnings

        warnings.warn(res.message(family), MisspecificationWarning, stacklevel=4)

    def prior_scale(self) -> Tensor:
        low, high = self._bounds
        finite = torch.isfinite(low) & torch.isfinite(high)
        try:
            std = self.prior.variance.sqrt().reshape(self.dim).float()
        except (NotImplementedError, AttributeError):  # your own prior class without variance
            with seeded(0), torch.no_grad():
                std = self.prior.sample((1000,)).float().std(0)
        std = torch.where(torch.isfinite(std) & (std > 0), std, torch.ones_like(std))
        return torch.where(finite, (high - low) / math.sqrt(12.0), std)

    def _check_theta(self, theta: Tensor) -> Tensor:
        """``theta`` as float32 with ``D`` values in its last dimension and no NaN."""
        theta = _as_numbers(theta, "theta", f"(N, {self.dim})", ValueError)
        if theta.ndim == 0 or theta.shape[-1] != self.dim:
            got = "a scalar" if theta.ndim == 0 else f"{theta.shape[-1]} values"
            raise ValueError(
                f"theta has {got} in its last dimension; the posterior is over "
                f"D={self.dim} parameters {self.param_names}."
            )
        bad = torch.isnan(theta).any(-1)
        if bool(bad.any()):
            rows = bad.reshape(-1).nonzero().flatten().tolist()
            raise ValueError(
                f"theta contains NaN in {len(rows)} row(s) (flat row index {rows[:10]}"
                + (" ..." if len(rows) > 10 else "") + "); a density at NaN is undefined. "
                "Drop or fix those rows before calling log_prob."
            )
        return theta

    def _check_x(self, x: Tensor, batched: bool) -> Tensor:
        """Validate observations and return a batch.

        Returns ``(B, *x_shape)``, or ``(B, n, *x_shape)`` for sets of ``n`` iid observations
        (only when ``supports_iid``). Not batched: ``x_shape`` → ``(1, *x_shape)`` and an iid
        set ``(n, *x_shape)`` → ``(1, n, *x_shape)``.
        """
        x = _as_numbers(x, "x", str(self.x_shape), ObservationError)
        xs = self.x_shape
        k = len(xs)
        if not batched:
            if x.ndim == 0 and xs == (1,):  # one number for a one-number observation: x=0.5
                x = x.reshape(1)
            if tuple(x.shape) == xs:
                x = x.unsqueeze(0)
            elif self.supports_iid and x.ndim == k + 1 and tuple(x.shape[1:]) == xs:
                if x.shape[0] == 0:
                    raise ObservationError("The set of iid observations is empty.")
                x = x.unsqueeze(0)
            else:
                raise ObservationError(
                    f"The observation has shape {tuple(x.shape)}; this posterior expects one "
                    f"observation of shape {xs}"
                    + (f" or a set of n iid observations (n, *{xs})" if self.supports_iid else "")
                    + f". For several observations at once use sample_batched with shape "
                    f"(B, *{xs})."
                    + ("" if self.supports_iid else f" Method {self.method!r} does not accept sets "
                       "of iid observations.")
                )
        elif not (tuple(x.shape[1:]) == xs or
                  (self.supports_iid and x.ndim == k + 2 and tuple(x.shape[2:]) == xs)):
            raise ObservationError(
                f"Batched observations have shape {tuple(x.shape)}; expected (B, *{xs})"
                + (f" or sets (B, n, *{xs})." if self.supports_iid else ".")
            )
        return self._check_values(x)

    @staticmethod
    def is_iid_batch(xs: Tensor, x_shape: tuple[int, ...]) -> bool:
        """True when ``xs`` is a batch of iid sets ``(B, n, *x_shape)``."""
        return xs.ndim == len(x_shape) + 2

    def _pads_sets(self, x: Tensor) -> bool:
        """Whether ``x`` is (a batch of) sets padded with all-NaN trials that this posterior's
        set embedding ignores (docs/embeddings.md: a varying number of trials)."""
        from estimators.embedding import is_set_embedding, padded_sets

        spec = (getattr(self.estimator, "config", None) or {}).get("embedding")
        if not is_set_embedding(spec) or len(self.x_shape) != 2:
            return False
        return bool(padded_sets(x.reshape(-1, *self.x_shape)).all())

    def _check_values(self, x: Tensor) -> Tensor:
        if not torch.isfinite(x).all() and not self._pads_sets(x):
            where = ""
            if x.ndim > len(self.x_shape) and x.shape[0] > 1:  # several observations (or trials)
                bad = (~torch.isfinite(x)).reshape(x.shape[0], -1).any(1).nonzero().flatten()
                where = (f" (in {len(bad)} of {x.shape[0]} rows; first: row {int(bad[0])}, "
                         "counting from 0)")
            raise ObservationError(
                f"The observation contains NaN or inf{where}. Remove or impute the missing "
                "values; the posterior was trained on finite simulations only."
            )
        check = getattr(self.estimator, "check_observation", None)
        if check is not None:  # estimator-specific checks (e.g. discrete columns) come first
            check(x.reshape(-1, *self.x_shape) if self.x_shape else x.reshape(-1))
        if (self.problem_spec or {}).get("sequential"):  # trained for one x_o only
            from sbi_core.sequential import check_observation

            check_observation(self.problem_spec["sequential"], x)
        if self.range_check != "off":
            self._check_range(x)
        return x

    def outside_training_range(self, x: Tensor) -> str | None:
        """Where ``x`` (``x_shape`` or ``(B, *x_shape)``) lies more than 10% beyond the
        training simulations' [min, max] (e.g. ``"1 coordinate(s): x[0] = 9 (training [0,
        1])"``), or None when it lies inside (or the estimator records no range)."""
        lo = getattr(self.estimator, "x_min", None)
        hi = getattr(self.estimator, "x_max", None)
        if lo is None or hi is None or tuple(x.shape[-lo.ndim:] if lo.ndim else ()) != \
                tuple(lo.shape):
            return None
        lo, hi = lo.cpu(), hi.cpu()
        several = x.ndim == lo.ndim + 1 and x.shape[0] > 1  # (B, *x_shape): name the rows
        x = x.detach().cpu().reshape(-1, *lo.shape)
        margin = 0.1 * (hi - lo)
        outside = (x < lo - margin) | (x > hi + margin)
        if not outside.any():
            return None
        where = _describe_outside(x, outside, lo, hi)
        if several:
            rows = outside.reshape(x.shape[0], -1).any(1).nonzero().flatten().tolist()
            shown = ", ".join(map(str, rows[:10])) + (", ..." if len(rows) > 10 else "")
            where += (f", in {len(rows)} of {x.shape[0]} observations (row(s) {shown}, "
                      "counting from 0)")
        return where

    def _check_range(self, x: Tensor) -> None:
        where = self.outside_training_range(x)
        if where is not None:
            msg = (
                f"The observation lies outside the range of the training simulations at "
                f"{where} (more than 10% beyond [min, max] of the training x). "
                "The posterior there is an extrapolation and cannot be trusted. Simulate with a "
                + ("wider prior, or pass range_check='warn' (or 'off') to the posterior to "
                   "proceed (CLI: sbi-core sample --range-check warn)."
                   if self.range_check == "error" else
                   "wider prior to cover it (range_check='off' silences this warning).")
            )
            if self.range_check == "error":
                raise ObservationError(msg)
            import warnings

            warnings.warn(msg, stacklevel=4)


def _describe_outside(x: Tensor, outside: Tensor, lo: Tensor, hi: Tensor, show: int = 5) -> str:
    """The coordinates of ``x`` ``(B, *x_shape)`` beyond the training range, as a user reads them.

    Coordinates are written as indices of one observation (``x[1, 7]`` for a ``(3, 40)`` x, not
    a flattened position), with the observed value and the training range; at most ``show``
    are listed, the rest counted.
    """
    coords = outside.any(0).nonzero().tolist()  # (K, x_ndim) indices into x_shape
    parts = []
    for idx in coords[:show]:
        where = (slice(None), *idx)
        vals = x[where][outside[where]]
        value = vals[vals.abs().argmax()].item()
        parts.append(f"x[{', '.join(map(str, idx))}] = {value:.4g} (training "
                     f"[{lo[tuple(idx)].item():.4g}, {hi[tuple(idx)].item():.4g}])")
    more = f" and {len(coords) - show} more coordinate(s)" if len(coords) > show else ""
    return f"{len(coords)} coordinate(s): " + "; ".join(parts) + more


def _shape(sample_shape: tuple[int, ...] | int | torch.Size) -> tuple[int, ...]:
    """``sample_shape`` as a tuple of non-negative ints; anything else is a clear ValueError."""
    fix = "Pass a number of samples, e.g. sample((1000,), x) or sample(1000, x)."
    if isinstance(sample_shape, (str, bytes)) or isinstance(sample_shape, bool):
        raise ValueError(f"sample_shape must be an int or a tuple of ints, got "
                         f"{sample_shape!r}. {fix}")
    if isinstance(sample_shape, Tensor) and sample_shape.ndim == 0:
        sample_shape = int(sample_shape)
    dims = (sample_shape,) if not isinstance(sample_shape, (tuple, list, torch.Size)) \
        else tuple(sample_shape)
    out = []
    for d in dims:
        try:
            if isinstance(d, bool):
                raise TypeError
            d = operator.index(d)
        except TypeError:
            raise ValueError(f"sample_shape must contain whole numbers, got {sample_shape!r}. "
                             f"{fix}") from None
        if d < 0:
            raise ValueError(f"sample_shape {sample_shape!r} has a negative size; sizes are "
                             f"numbers of samples and must be >= 0. {fix}")
        out.append(d)
    return tuple(out)


def _check_map_options(num_init: Any, steps: Any) -> None:
    """``num_init`` (>= 1 starting samples) and ``steps`` (>= 0 ascent steps) of ``map``."""
    for name, value, least in (("num_init", num_init, 1), ("steps", steps, 0)):
        try:
            ok = not isinstance(value, bool) and operator.index(value) >= least
        except TypeError:
            ok = False
        if not ok:
            raise ValueError(f"map(..., {name}={value!r}): {name} must be a whole number >= "
                             f"{least} (the default is {1000 if name == 'num_init' else 100}).")


def _memory_bytes() -> int | None:
    """This machine's physical memory in bytes (None where the OS does not tell)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _check_fits_in_memory(n: int, b: int, d: int) -> None:
    """Refuse a draw whose result alone, ``(n, b, d)`` float32, exceeds the physical memory
    (it would fail in the allocator, or swap for hours, with no word of the cause)."""
    need, have = 4 * n * b * d, _memory_bytes()
    if have is not None and need > have:
        raise ValueError(
            f"{n:,} samples x {b} observation(s) x {d} parameters need {need / 1e9:,.1f} GB for "
            f"the result alone, more than this machine's {have / 1e9:,.1f} GB of memory. Draw "
            "fewer samples (a few thousand describe a posterior well), or draw in chunks and "
            "keep only the summaries you need.")


def _as_numbers(value: Any, name: str, shape: str, error: type[Exception]) -> Tensor:
    """``value`` (tensor, numpy array, number or nested list) as a float32 tensor.

    Strings and non-numeric values raise ``error`` naming the fix.
    """
    dtype = _bool_dtype(value)
    if dtype is not None:
        raise error(
            f"{name} holds booleans (dtype {dtype}); a posterior takes numbers of shape "
            f"{shape}, and True/False would silently be read as 1/0. Simulators must return "
            f"floating-point values, so cast the way the training simulations were made, e.g. "
            f"{name}.float() (torch) or {name}.astype('float32') (numpy) if 1/0 is meant."
        )
    if isinstance(value, (str, bytes)):
        raise error(
            f"{name} is a string ({value!r:.60}); pass numbers of shape {shape}: a tensor, a "
            f"numpy array or a list such as [0.1, 0.2]. To read text like '0.1,0.2' use "
            "[float(v) for v in text.split(',')]."
        )
    try:
        out = value.to(torch.float32) if isinstance(value, Tensor) else \
            torch.as_tensor(value, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError) as err:
        raise error(f"{name} could not be read as numbers ({err}); pass a tensor, a numpy "
                    f"array or a (nested) list of numbers of shape {shape}.") from None
    if not bool(torch.isfinite(out).all()):  # finite numbers beyond float32 are not "inf"
        raw = torch.as_tensor(value, dtype=torch.float64)
        big = torch.isfinite(raw) & ~torch.isfinite(out)
        if bool(big.any()):
            raise error(f"{name} holds finite values beyond float32's range (|value| up to "
                        f"{float(raw[big].abs().max()):.3g} > 3.4e38); the posterior computes "
                        "in float32, where they would be inf. Rescale the data the way the "
                        "training simulations were scaled.")
    return out


def _bool_dtype(value: Any) -> str | None:
    """The boolean dtype's name when ``value`` holds booleans (a bool tensor or array, or a
    Python/numpy bool anywhere in a nested list), else ``None``."""
    if isinstance(value, Tensor):
        return str(value.dtype) if value.dtype == torch.bool else None
    dtype = getattr(value, "dtype", None)  # numpy arrays and scalars
    if dtype is not None:
        return f"numpy {dtype}" if getattr(dtype, "kind", "") == "b" else None
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (list, tuple)):
        for item in value:
            found = _bool_dtype(item)
            if found is not None:
                return found
    return None


class DirectPosterior(Posterior):
    """Posterior of an estimator that samples and evaluates ``q(theta | x)`` directly (NPE).

    The estimator provides ``sample(n, xs) -> (n, B, D)`` and
    ``log_prob(theta (N, D), xs (N, *x_shape)) -> (N,)``. Samples outside the prior's
    support are rejected in batches; ``last_acceptance_rate`` reports the rate, and a rate
    below ``min_acceptance`` raises :class:`SamplingError` instead of looping forever.
    ``log_prob`` is renormalized by the acceptance rate (``normalize=True``). An estimator
    whose ``samples_in_support`` is true (NPE with ``theta_transform="unconstrained"``)
    never leaks: sampling draws exactly ``n`` and ``log_prob`` needs no correction.

    ``log_prob`` agrees with ``sample``: where the acceptance rate is below
    ``min_acceptance`` (the posterior's mass lies almost entirely outside the support) it
    raises the same :class:`SamplingError` instead of returning a "normalized" density
    that divides by an acceptance it cannot estimate (``normalize=False`` still returns the
    raw estimator density, ``-inf`` outside the support).
    """

    budget_advice = ("Train with theta_transform='unconstrained' (samples then never leave the "
                     "prior support and need no rejection), check that the observation "
                     "resembles the training simulations, or train longer.")

    def __init__(self, *args: Any, min_acceptance: float = 1e-3, max_batch: int = 100_000,
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.min_acceptance = min_acceptance
        self.max_batch = max_batch
        self.last_acceptance_rate: float | None = None
        # anything but R^D (a box, a half-line, a user prior with no or a non-box support)
        # may be left by the estimator's draws: those are rejected and log_prob renormalized
        self._bounded = not support_is_real(self.prior)

    @property
    def _samples_in_support(self) -> bool:
        """The estimator samples inside the support by construction (no leakage)."""
        return bool(getattr(self.estimator, "samples_in_support", False))

    def _raw_sample(self, n: int, xs: Tensor) -> Tensor:
        return self.estimator.sample(n, xs)

    def _map_search_box(self, init: Tensor) -> tuple[Tensor, Tensor] | None:
        """A flow on the unconstrained space can have a near-massless density spike next to a
        bound (docs/npe.md): search only inside the central 99% of the samples."""
        if not self._samples_in_support:
            return None
        lo, hi = torch.quantile(init, torch.tensor([0.005, 0.995], dtype=init.dtype), dim=0)
        return lo, hi

    def _sample_batched(self, n: int, xs: Tensor, budget: Budget | None = None,
                        **kwargs: Any) -> Tensor:
        budget = Budget.of(budget, "Sampling", self.budget_advice)
        device = _device(self.estimator)
        xs = xs.to(device)
        b = xs.shape[0]
        if not self._bounded:
            self.last_acceptance_rate = 1.0
            return self._raw_sample(n, xs).cpu()
        out = torch.empty(n, b, self.dim)
        filled = torch.zeros(b, dtype=torch.long)
        proposed = torch.zeros(b, dtype=torch.long)
        accepted = torch.zeros(b, dtype=torch.long)
        rate = torch.ones(b)
        # An estimator that maps into the support (theta_transform) needs no oversampling;
        # the loop then only replaces the rare non-finite draw.
        in_support = self._samples_in_support
        floor = 1 if in_support else 64
        seconds_per_draw = 0.0
        while bool((filled < n).any()):
            need = (n - filled).clamp(min=0)
            active = (need > 0).nonzero().flatten()
            if in_support:
                m = int(min(self.max_batch, max(floor, math.ceil(
                    float((need[active] / rate[active]).max())))))
            else:  # exactly what is needed first, then binomial headroom (sbi_core.rejection)
                m = min(self.max_batch, proposal_count(need[active], accepted[active],
                                                       proposed[active]))
            if seconds_per_draw > 0:  # a batch should not overrun the budget by much
                fit_in = budget.remaining / (seconds_per_draw * len(active))
                m = int(min(m, max(floor, fit_in)))
            t0 = time.perf_counter()
            draws = self._raw_sample(m, xs[active.to(device)]).cpu()  # (m, A, D)
            seconds_per_draw = (time.perf_counter() - t0) / (m * len(active))
            ok = within_support(self.prior, draws.reshape(-1, self.dim)).reshape(m, -1)
            proposed[active] += m
            accepted[active] += ok.sum(0)
            rank = ok.long().cumsum(0)  # position among accepted draws, per observation
            take = ok & (rank <= need[active][None, :])
            cols = active[None, :].expand(m, -1)[take]
            rows = filled[cols] + rank[take] - 1
            out[rows, cols] = draws[take]
            filled[active] += take.sum(0)
            rate = (accepted.float() / proposed.clamp(min=1)).clamp(min=1e-6)
            worst = float(rate[active].min())
            if int(proposed[active].min()) >= 1000 and worst < self.min_acceptance:
                raise SamplingError(self._leakage_message(worst))
            if bool((filled < n).any()):
                budget.check(
                    f"{int(filled.sum()):,} of {n * b:,} samples drawn, acceptance "
                    f"{float(accepted.sum() / proposed.clamp(min=1).sum()):.2%} (worst "
                    f"observation {worst:.2%})", task="Rejection sampling")
        self.last_acceptance_rate = float(accepted.sum() / proposed.clamp(min=1).sum())
        return out

    def _log_prob_batched(self, theta: Tensor, xs: Tensor, normalize: bool = True,
                          **kwargs: Any) -> Tensor:
        device = _device(self.estimator)
        n, b, d = theta.shape
        flat_x = xs.to(device).unsqueeze(0).expand(n, *xs.shape).reshape(n * b, *xs.shape[1:])
        lp = self.estimator.log_prob(theta.reshape(n * b, d).to(device), flat_x).reshape(n, b).cpu()
        inside = within_support(self.prior, theta.reshape(-1, d)).reshape(n, b)
        lp = torch.where(inside, lp, torch.full_like(lp, -torch.inf))
        if normalize and self._bounded and not self._samples_in_support:
            rate = self.acceptance_rate(xs)
            low = (rate < self.min_acceptance).nonzero().flatten().tolist()
            if low:
                raise SamplingError(self._leakage_message(float(rate.min()), low, "log_prob"))
            lp = lp - rate.log()[None, :]
        return lp

    def _leakage_message(self, rate: float, rows: list[int] | None = None,
                         call: str = "sample") -> str:
        where = f" for observation(s) {rows[:10]}" if rows else ""
        what = ("sampling cannot finish" if call == "sample" else
                "log_prob cannot be normalized by that fraction (and sampling would fail too)")
        return (
            f"Only {rate:.2%} of the posterior's samples fall inside the prior support{where} "
            f"(min_acceptance={self.min_acceptance:g}), so {what}. The observation is probably "
            "far from the training data, or the estimator is undertrained: check the "
            "observation, train longer or simulate more, or train with "
            "theta_transform='unconstrained' so that no mass leaks outside the support."
            + (" log_prob(..., normalize=False) gives the unnormalized estimator density."
               if call == "log_prob" else "")
        )

    def acceptance_rate(self, xs: Tensor, num: int = 10_000, seed: int = 0) -> Tensor:
        """Fraction ``(B,)`` of unconstrained samples inside the prior support (leakage)."""
        with seeded(seed), torch.no_grad():
            draws = self._raw_sample(num, xs.to(_device(self.estimator))).cpu()
        ok = within_support(self.prior, draws.reshape(-1, self.dim)).reshape(num, -1)
        return ok.float().mean(0).clamp(min=1.0 / num)

    def _differentiable_log_prob(self, theta: Tensor, xs: Tensor) -> Tensor:
        return self.estimator.log_prob(theta.to(_device(self.estimator)),
                                       xs.to(_device(self.estimator))).cpu()


def _device(module: nn.Module) -> torch.device:
    try:
        return next(module.parameters()).device
    except StopIteration:
        return torch.device("cpu")
