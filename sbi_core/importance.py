r"""Importance-sampling correction of a posterior for one observation (SIR).

Where the likelihood :math:`p(x_o \mid \theta)` can be evaluated — a function the user
writes, or a trained likelihood (NLE) or ratio (NRE) estimator — an amortized posterior
:math:`q(\theta \mid x_o)` serves as the proposal of sampling-importance-resampling:

1. draw ``M`` proposals :math:`\theta_i \sim q(\theta \mid x_o)`;
2. weigh them by :math:`w_i = p(x_o \mid \theta_i)\, p(\theta_i) / q(\theta_i \mid x_o)`;
3. resample ``n`` of them with probabilities :math:`w_i / \sum_j w_j` (with replacement).

As ``M`` grows the resampled draws follow the exact posterior
:math:`p(\theta \mid x_o) \propto p(x_o \mid \theta)\, p(\theta)` whatever the quality of
``q``, as long as ``q`` covers it. How well it worked is told by the effective sample size

.. math:: \mathrm{ESS} = (\textstyle\sum_i w_i)^2 / \sum_i w_i^2 \in [1, M],

reported in :class:`ImportanceInfo` (``posterior.last_importance``). A small ESS means a
few proposals carry all the weight, so the ``n`` resampled draws repeat them: a warning
says so when ``ESS < n``, and :class:`ImportanceSamplingError` is raised when ``ESS <
min_ess`` (default 20). The fix is more proposals (``oversampling=``), or a better proposal
(train longer / simulate more). A ratio estimator (NRE) gives the likelihood up to a
constant in θ, which the normalized weights do not need.

Example::

    samples = posterior.sample((1000,), x=x_o, correct="is", log_likelihood=loglik)
    posterior.last_importance.ess          # effective sample size of the proposals
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from sbi_core.posterior import SamplingError, seeded
from sbi_core.priors import prior_log_prob

__all__ = ["importance_sample", "corrected_sample", "ImportanceInfo",
           "ImportanceSamplingError", "CORRECTIONS", "likelihood_function"]

CORRECTIONS = ("is",)
#: Default number of proposals per requested sample.
DEFAULT_OVERSAMPLING = 32
#: Default smallest effective sample size accepted without an error.
DEFAULT_MIN_ESS = 20.0

LogLikelihood = Callable[[Tensor, Tensor], Tensor]


class ImportanceSamplingError(SamplingError):
    """The importance weights collapsed onto too few proposals (tiny ESS)."""


@dataclass
class ImportanceInfo:
    """Summary of one importance-sampling correction.

    Attributes:
        ess: effective sample size ``(sum w)^2 / sum w^2`` of the ``num_proposals`` weights.
        ess_fraction: ``ess / num_proposals`` (1 when the proposal is the posterior).
        num_proposals: proposals drawn (``oversampling * n``).
        num_samples: draws resampled from them.
        log_evidence: ``log mean(w)``, an estimate of ``log p(x_o)`` when the likelihood
            and the proposal are normalized (up to the likelihood's constant otherwise).
        max_weight: the largest normalized weight.
    """

    ess: float
    ess_fraction: float
    num_proposals: int
    num_samples: int
    log_evidence: float
    max_weight: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (f"ESS {self.ess:,.0f} of {self.num_proposals:,} proposals "
                f"({self.ess_fraction:.1%}); largest weight {self.max_weight:.3g}")


def likelihood_function(log_likelihood: Any) -> LogLikelihood:
    """``f(theta (N, D), x (N, *x_shape)) -> (N,)`` from ``log_likelihood``: a callable
    with that signature, a likelihood-based posterior (NLE/MNLE, or NRE whose log-ratio
    equals the log-likelihood up to a constant in θ: ``trial_log_likelihood``), or an
    estimator with ``log_likelihood(theta, x)``."""
    if hasattr(log_likelihood, "trial_log_likelihood"):
        return _posterior_likelihood(log_likelihood)
    if hasattr(log_likelihood, "log_likelihood") and callable(log_likelihood.log_likelihood):
        est = log_likelihood

        def from_estimator(theta: Tensor, x: Tensor) -> Tensor:
            device = next((p.device for p in est.parameters()), torch.device("cpu")) \
                if hasattr(est, "parameters") else torch.device("cpu")
            return est.log_likelihood(theta.to(device), x.to(device)).cpu()

        return from_estimator
    if callable(log_likelihood):
        return log_likelihood
    raise TypeError(
        f"log_likelihood must be a function log_likelihood(theta (N, D), x (N, *x_shape)) -> "
        f"(N,), a trained NLE/NRE posterior or estimator, got {type(log_likelihood).__name__}.")


def _posterior_likelihood(post: Any) -> LogLikelihood:
    """``f(theta (N, D), x (N, *obs))`` of a likelihood-based posterior: its trials'
    log-likelihood when ``obs`` is its ``x_shape``, their sum over a set of iid trials when
    ``obs`` is ``(n, *x_shape)`` (an NPE trained on sets of trials, corrected by an NLE trained
    on single trials)."""
    trial = tuple(getattr(post, "x_shape", ()) or ())

    def fn(theta: Tensor, x: Tensor) -> Tensor:
        if not trial or tuple(x.shape[1:]) == trial:
            return post.trial_log_likelihood(theta, x)
        return post.iid_log_likelihood(theta, x)

    return fn


def _check_likelihood_parameters(posterior: Any, log_likelihood: Any) -> None:
    """A likelihood-based posterior given as ``log_likelihood=`` must be of the proposal's
    parameters, in the same order (another order would weigh each θ by the likelihood of a
    permuted θ: silently wrong)."""
    if not hasattr(log_likelihood, "trial_log_likelihood"):
        return
    dim, names = getattr(log_likelihood, "dim", None), list(getattr(log_likelihood,
                                                                      "param_names", []) or [])
    mine = list(getattr(posterior, "param_names", []) or [])
    if (dim is not None and dim != posterior.dim) or (names and mine and names != mine):
        raise ValueError(
            f"log_likelihood= is a model of the parameters {names or dim}, but this posterior's "
            f"are {mine or posterior.dim}: the likelihood must take the same parameters in the "
            "same order. Train it on this problem's simulations, or pass a function "
            "log_likelihood(theta, x) that maps the parameters itself.")


def _real_trials(log_likelihood: Any, x: Tensor) -> Tensor:
    """The observation for a likelihood-based posterior of single trials: a set ``(n,
    *x_shape)`` padded with all-NaN trials (a varying number of trials, docs/embeddings.md)
    loses its padding, since the set's likelihood is that of its real trials."""
    trial = tuple(getattr(log_likelihood, "x_shape", ()) or ())
    if not hasattr(log_likelihood, "trial_log_likelihood") or not trial \
            or x.ndim != len(trial) + 1 or tuple(x.shape[1:]) != trial:
        return x
    flat = x.reshape(x.shape[0], -1)
    pad = torch.isnan(flat).all(1)
    if bool(pad.any()) and not bool(pad.all()) and bool(torch.isfinite(flat[~pad]).all()):
        return x[~pad]
    return x


def _check_likelihood_x(log_likelihood: Any, x: Tensor) -> None:
    """A likelihood-based posterior given as ``log_likelihood=`` must take the observation:
    one of its ``x_shape`` or a set ``(n, *x_shape)`` of iid trials, inside its training range
    (its own checks, with the error saying whose they are)."""
    check = getattr(log_likelihood, "_check_x", None)
    if check is None or not hasattr(log_likelihood, "trial_log_likelihood"):
        return
    from sbi_core.posterior import ObservationError

    try:
        check(x, batched=False)
    except ObservationError as err:
        shape = tuple(log_likelihood.x_shape)
        method = getattr(log_likelihood, "method", "")
        raise ValueError(
            f"log_likelihood= is a {type(log_likelihood).__name__}"
            f"{f' ({method})' if method else ''} of x_shape {shape}, which "
            f"cannot score the observation of shape {tuple(x.shape)}: {err} Pass a likelihood "
            f"model trained on this observation's x (one of x_shape {shape}, or sets "
            f"(n, *{shape}) of iid trials), or a function log_likelihood(theta, x).") from None


def _refuse_infinite_weights(log_l: Tensor, log_p: Tensor, log_q: Tensor, theta: Tensor) -> None:
    """An infinite weight (log-likelihood or prior density ``+inf``, or a proposal density
    ``-inf`` at its own draw) cannot be resampled from: name the term and a parameter set
    where it happens (before: ``RuntimeError: invalid multinomial distribution``)."""
    for bad, what in ((log_l == torch.inf, "log_likelihood returned +inf"),
                      (log_p == torch.inf, "the prior's log_prob is +inf"),
                      ((log_q == -torch.inf) & (log_l > -torch.inf) & (log_p > -torch.inf),
                       "the proposal's log_prob is -inf at its own draw")):
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise ImportanceSamplingError(
                f"Importance weights are infinite at {int(bad.sum()):,} of {len(bad):,} "
                f"proposals: {what} (first at theta = {theta[i].tolist()}). An infinite weight "
                "cannot be resampled from; make log_likelihood finite (e.g. a positive noise "
                "scale), or check the prior and the proposal.")


def importance_sample(posterior: Any, n: int, x: Tensor, log_likelihood: Any,
                      oversampling: int = DEFAULT_OVERSAMPLING,
                      min_ess: float = DEFAULT_MIN_ESS, seed: int | None = None,
                      max_seconds: Any = "default", chunk: int = 100_000,
                      strict: bool = False) -> tuple[Tensor, ImportanceInfo]:
    """SIR draws ``(n, D)`` from ``p(theta | x) ∝ exp(log_likelihood(theta, x)) p(theta)``
    with ``posterior`` at ``x`` (one observation, ``x_shape``) as the proposal.

    Args:
        posterior: the proposal: a :class:`~sbi_core.posterior.Posterior` with normalized
            ``sample`` and ``log_prob`` (NPE; an MCMC posterior's unnormalized density is
            refused).
        n: number of resampled draws.
        x: the observation ``x_o`` (``x_shape``).
        log_likelihood: see :func:`likelihood_function`.
        oversampling: proposals per draw (``M = oversampling * n``).
        min_ess: raise :class:`ImportanceSamplingError` below this effective sample size.
        seed: fixes the proposals and the resampling.
        max_seconds: passed to the proposal's ``sample``.
        chunk: rows per likelihood call.
        strict: passed to the proposal's ``sample`` (misspecification check).

    Returns:
        The draws and their :class:`ImportanceInfo`.
    """
    if not getattr(posterior, "normalized_log_prob", True):
        raise ValueError(
            f"correct='is' needs a proposal with a normalized density; {type(posterior).__name__}"
            " (MCMC) has none. Use an NPE posterior as the proposal and pass this posterior as "
            "log_likelihood=.")
    if isinstance(oversampling, bool) or not isinstance(oversampling, int) or oversampling < 1:
        raise ValueError(f"oversampling must be an integer >= 1 (proposals per draw), got "
                         f"{oversampling!r}.")
    fn = likelihood_function(log_likelihood)
    _check_likelihood_parameters(posterior, log_likelihood)
    x_lik = _real_trials(log_likelihood, torch.as_tensor(x))
    _check_likelihood_x(log_likelihood, x_lik)
    if not getattr(posterior, "iid_log_prob", True) and \
            torch.as_tensor(x).ndim > len(posterior.x_shape) and len(x) > 1:  # before sampling
        from estimators.vector_field_posterior import iid_density_message

        raise ValueError(iid_density_message("correct='is'"))
    m = n * oversampling
    with seeded(seed):
        theta = posterior.sample((m,), x=x, max_seconds=max_seconds, strict=strict)        # (M, D)
        log_q = posterior.log_prob(theta, x=x)                              # (M,)
        xs = torch.as_tensor(x_lik, dtype=torch.float32)
        with torch.no_grad():
            log_l = torch.cat([
                torch.as_tensor(fn(theta[i:i + chunk], xs.expand(len(theta[i:i + chunk]),
                                                                 *xs.shape)),
                                dtype=torch.float32).reshape(-1)
                for i in range(0, m, chunk)])
        if log_l.shape != (m,):
            raise ValueError(f"log_likelihood returned shape {tuple(log_l.shape)} for {m} "
                             f"parameter rows; it must return one value per row, ({m},).")
        log_p = prior_log_prob(posterior.prior, theta).to(log_l)
        _refuse_infinite_weights(log_l, log_p, log_q.to(log_l), theta)
        log_w = log_l + log_p - log_q
        log_w = torch.where(torch.isnan(log_w), torch.full_like(log_w, -torch.inf), log_w)
        if not bool(torch.isfinite(log_w).any()):
            raise ImportanceSamplingError(
                f"All {m:,} importance weights are zero (log_likelihood is -inf or NaN at every "
                "proposal): the likelihood and the proposal do not overlap. Check that "
                "log_likelihood matches the observation, or draw more proposals with "
                "oversampling=.")
        w = torch.softmax(log_w, 0)
        ess = float(1.0 / w.square().sum())
        info = ImportanceInfo(ess=ess, ess_fraction=ess / m, num_proposals=m, num_samples=n,
                              log_evidence=float(torch.logsumexp(log_w, 0) - math.log(m)),
                              max_weight=float(w.max()))
        if ess < min_ess:
            raise ImportanceSamplingError(
                f"Importance sampling collapsed: {info.summary()} (min_ess={min_ess:g}). The "
                "proposal puts little mass where the likelihood is high. Draw more proposals "
                f"(oversampling={oversampling * 10}), or improve the proposal (train longer, "
                "simulate more).")
        if ess < n:
            warnings.warn(
                f"Importance sampling: {info.summary()}, fewer than the {n:,} draws requested, "
                "so the resampled draws repeat proposals. Draw more proposals (oversampling="
                f"{int(oversampling * math.ceil(n / ess))}) or improve the proposal.",
                UserWarning, stacklevel=3)
        pick = torch.multinomial(w, n, replacement=True)
    return theta[pick], info


def corrected_sample(posterior: Any, shape: tuple[int, ...], xs: Tensor, correct: str | None,
                     log_likelihood: Any = None, seed: int | None = None,
                     max_seconds: Any = "default", strict: bool = False,
                     **options: Any) -> Tensor:
    """``posterior.sample(shape, x, correct=..., log_likelihood=...)``: the checked entry of
    :meth:`~sbi_core.posterior.Posterior.sample`; stores the :class:`ImportanceInfo` as
    ``posterior.last_importance``. ``xs`` is the checked observation ``(1, *x_shape)``."""
    if correct not in CORRECTIONS:
        raise ValueError(f"Unknown correct={correct!r}; use correct='is' (importance "
                         "sampling with log_likelihood=) or leave both out.")
    if log_likelihood is None:
        raise ValueError("correct='is' needs the likelihood: pass log_likelihood= a function "
                         "log_likelihood(theta (N, D), x (N, *x_shape)) -> (N,), or a trained "
                         "NLE posterior.")
    unknown = set(options) - {"oversampling", "min_ess"}
    if unknown:
        raise TypeError(f"Unknown options {sorted(unknown)} for correct='is'; it takes "
                        "oversampling= and min_ess=.")
    n = math.prod(shape)
    samples, info = importance_sample(posterior, n, xs[0], log_likelihood, seed=seed,
                                      max_seconds=max_seconds, strict=strict, **options)
    posterior.last_importance = info
    return samples.reshape(*shape, posterior.dim)
