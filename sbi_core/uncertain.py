r"""Inference from uncertain evidence (Munk, Mead, Wood, ICML 2023), over any posterior.

When the observation ``x_o`` is known only up to a distribution, "conditioning on it" has
three different meanings; :meth:`sbi_core.Posterior.given_uncertain_x` offers all three as a
wrapper around a trained (amortized) posterior ``q(theta | x)``:

``rule="jeffrey"`` (Jeffrey's rule): the evidence ``e(x)`` is a new belief about the
observable that *replaces* its marginal,

.. math:: p_J(\theta) = \int p(\theta \mid x)\, e(x)\, dx,

a mixture of posteriors over evidence draws ``x_m ~ e`` (sampled with ``sample_batched``;
``log_prob`` is the Monte Carlo mixture density over the ``M`` draws).

``rule="virtual"`` (Pearl's virtual evidence): the evidence is a likelihood
``lambda(x) = p(reading | x)`` of a noisy reading of ``x``,

.. math:: p_V(\theta) \propto p(\theta) \int p(x \mid \theta)\, \lambda(x)\, dx .

Sampled by importance sampling: proposals ``theta_i`` from a defensive mixture
``r = (1 - eps) * mean_m q(theta | x_m) + eps * p(theta)`` (``x_m ~ lambda`` normalized),
one simulation ``x_i ~ p(x | theta_i)`` each, weights ``p(theta_i) lambda(x_i) / r(theta_i)``
(at most ``lambda / eps``: bounded), then sampling-importance-resampling with
``oversampling`` candidates per returned sample. Needs the problem's simulator and a
``torch.distributions.Distribution`` over ``x`` whose ``log_prob`` is ``log lambda``.

``rule="distributional"`` (distributional evidence / stochastic conditioning): ``x`` *is
distributed* as ``e`` under the one unknown ``theta``,

.. math:: p_D(\theta) \propto p(\theta) \exp \mathbb{E}_{e(x)} \log p(x \mid \theta)
          \approx \prod_m q(\theta \mid x_m)^{1/M},

the normalized geometric mean of the posteriors at the evidence draws (the prior cancels).
Sampled by importance resampling from the Jeffrey mixture; the weight
``geometric mean / arithmetic mean`` is at most 1. ``log_prob`` uses a Monte Carlo estimate
of the normalizer (cached).

All three are exact for an exact posterior up to Monte Carlo error (checked against the
closed forms of a linear Gaussian model in tests/test_uncertain_evidence.py). See
docs/uncertain_evidence.md for which interpretation fits which situation.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor
from torch.distributions import Distribution

from sbi_core.priors import prior_log_prob

if TYPE_CHECKING:
    from sbi_core.posterior import Posterior

__all__ = ["UncertainEvidencePosterior", "RULES"]

Rule = Literal["jeffrey", "virtual", "distributional"]
RULES = ("jeffrey", "virtual", "distributional")
#: Rows of (theta, evidence draw) pairs evaluated per ``log_prob_batched`` call.
_PAIRS_PER_CALL = 200_000


class UncertainEvidencePosterior:
    """The posterior under uncertain evidence; built by ``posterior.given_uncertain_x``.

    Args:
        posterior: a trained posterior ``q(theta | x)`` with normalized ``log_prob``
            (``virtual`` and ``distributional``; ``jeffrey`` sampling only needs ``sample``).
        evidence: a set of plausible observations ``(M, *x_shape)`` (each equally likely),
            or a ``torch.distributions.Distribution`` over ``x`` (e.g. measurement error
            ``Normal(reading, sigma)``). ``virtual`` needs the distribution: its
            ``log_prob(x)`` is the likelihood ``log lambda(x)`` of the reading.
        rule: ``"jeffrey"``, ``"virtual"`` or ``"distributional"``.
        num_evidence: draws ``M`` from a distribution ``evidence`` (ignored for a set).
        simulator: ``theta (N, D) -> x (N, *x_shape)`` for ``virtual`` (a Problem works too;
            default: the problem recorded in the model when it is a built-in one).
        oversampling: importance-resampling candidates per returned sample.
        defensive: prior share ``eps`` of the ``virtual`` proposal.
        seed: fixes the evidence draws.

    Attributes:
        evidence_samples: the draws ``x_m`` ``(M, *x_shape)``.
        last_ess: effective sample size of the last importance-sampling call (``None`` for
            ``jeffrey``); ``last_num_proposals``: how many proposals it weighed.
    """

    def __init__(self, posterior: Posterior, evidence: Tensor | Distribution, rule: Rule = "jeffrey",
                 num_evidence: int = 64, simulator: Callable[[Tensor], Tensor] | Any = None,
                 oversampling: int = 32, defensive: float = 0.1, seed: int | None = 0):
        if rule not in RULES:
            raise ValueError(f"Unknown rule {rule!r}; use one of {RULES} (docs/uncertain_evidence.md "
                             "explains which fits which situation).")
        if int(num_evidence) < 1 or int(oversampling) < 1:
            raise ValueError("num_evidence and oversampling must be >= 1.")
        if not 0.0 < defensive < 1.0:
            raise ValueError(f"defensive must lie in (0, 1), got {defensive}.")
        self.posterior, self.rule = posterior, rule
        self.oversampling, self.defensive = int(oversampling), float(defensive)
        self.dim = posterior.dim
        self.last_ess: float | None = None
        self.last_num_proposals: int | None = None
        self._log_z: float | None = None
        self._log_lambda: Callable[[Tensor], Tensor] | None = None
        if isinstance(evidence, Distribution):
            from sbi_core.posterior import seeded

            with seeded(seed):
                draws = evidence.sample((int(num_evidence),))
            self._log_lambda = evidence.log_prob
        else:
            if rule == "virtual":
                raise ValueError(
                    "Virtual evidence is a likelihood lambda(x) of a noisy reading, not a set of "
                    "observations: pass a torch.distributions.Distribution over x whose log_prob "
                    "is log lambda (e.g. Normal(reading, noise_std)), or use rule='jeffrey' / "
                    "'distributional' for a set of plausible observations.")
            draws = torch.as_tensor(evidence, dtype=torch.float32)
            if tuple(draws.shape) == tuple(posterior.x_shape):
                raise ValueError(
                    f"The evidence has the shape of one observation {tuple(draws.shape)}; "
                    "uncertain evidence is a set (M, *x_shape) of plausible observations or a "
                    "distribution over x. For one certain observation use posterior.sample(x=...).")
        try:
            self.evidence_samples = posterior._check_x(draws, batched=True)
        except ValueError as err:
            raise type(err)(f"Evidence draws: {err}") from None
        if self.evidence_samples.shape[0] == 0:
            raise ValueError("The evidence set is empty; pass at least one plausible observation.")
        if rule != "jeffrey" and not posterior.normalized_log_prob:
            raise ValueError(f"rule={rule!r} weighs samples by the posterior's density, but this "
                             f"{type(posterior).__name__} has an unnormalized log_prob; use "
                             "rule='jeffrey' or an NPE posterior.")
        self._simulator = None
        if rule == "virtual":
            self._simulator = _resolve_simulator(posterior, simulator)

    @property
    def num_evidence(self) -> int:
        """Number ``M`` of evidence draws."""
        return int(self.evidence_samples.shape[0])

    # ------------------------------------------------------------------ sampling
    def sample(self, sample_shape: tuple[int, ...] | int = (), seed: int | None = None) -> Tensor:
        """Samples ``(*sample_shape, D)`` of the updated belief over ``theta``."""
        from sbi_core.posterior import _shape, seeded

        shape = _shape(sample_shape)
        n = math.prod(shape)
        if n == 0:
            return torch.empty(*shape, self.dim)
        with seeded(seed), torch.no_grad():
            if self.rule == "jeffrey":
                out = self._mixture_sample(n)
            else:
                theta, logw = self._weighted(n * self.oversampling)
                out = self._resample(theta, logw, n)
        return out.reshape(*shape, self.dim)

    def sample_and_log_weights(self, num: int, seed: int | None = None) -> tuple[Tensor, Tensor]:
        """Importance samples ``(num, D)`` and their unnormalized log weights ``(num,)``
        (``virtual`` / ``distributional``; for ``jeffrey`` the weights are all zero)."""
        from sbi_core.posterior import seeded

        with seeded(seed), torch.no_grad():
            if self.rule == "jeffrey":
                theta = self._mixture_sample(num)
                return theta, torch.zeros(num)
            return self._weighted(num)

    def log_prob(self, theta: Tensor) -> Tensor:
        """Log density of ``theta`` ``(N, D)`` → ``(N,)``.

        ``jeffrey``: the mixture density over the ``M`` evidence draws. ``distributional``:
        the normalized geometric mean (normalizer estimated once by importance sampling with
        10,000 proposals, seed 0). ``virtual``: not available (the density involves an
        integral over simulations at each ``theta``); raises ``NotImplementedError``.
        """
        theta = self.posterior._check_theta(theta)
        single = theta.ndim == 1
        theta = theta.reshape(-1, self.dim)
        if self.rule == "virtual":
            raise NotImplementedError(
                "Virtual evidence has no tractable log_prob: p(theta) E_{p(x|theta)}[lambda(x)] "
                "needs simulations at every theta. Use sample(...) or sample_and_log_weights(...).")
        with torch.no_grad():
            lp = self._component_log_probs(theta)  # (N, M)
            if self.rule == "jeffrey":
                out = torch.logsumexp(lp, 1) - math.log(self.num_evidence)
            else:
                out = lp.mean(1) - self._log_normalizer()
        return out[0] if single else out

    # ------------------------------------------------------------------ internals
    def _mixture_sample(self, n: int) -> Tensor:
        """``n`` draws ``(n, D)`` of the uniform mixture of ``q(theta | x_m)`` (stratified:
        ``ceil(n / M)`` per component, shuffled, truncated)."""
        m = self.num_evidence
        per = max(1, math.ceil(n / m))
        draws = self.posterior.sample_batched((per,), self.evidence_samples, _checked=True)
        flat = draws.reshape(per * m, self.dim)
        return flat[torch.randperm(per * m)[:n]]

    def _component_log_probs(self, theta: Tensor) -> Tensor:
        """``log q(theta_i | x_m)`` ``(N, M)``, in chunks of at most ``_PAIRS_PER_CALL`` pairs."""
        m = self.num_evidence
        rows = max(1, _PAIRS_PER_CALL // m)
        parts = []
        for start in range(0, theta.shape[0], rows):
            th = theta[start:start + rows]
            parts.append(self.posterior.log_prob_batched(
                th[:, None, :].expand(-1, m, -1), self.evidence_samples, _checked=True))
        return torch.cat(parts) if parts else torch.empty(0, m)

    def _weighted(self, num: int) -> tuple[Tensor, Tensor]:
        """Proposals ``(num, D)`` and log importance weights ``(num,)``; sets ``last_ess``."""
        if self.rule == "distributional":
            theta = self._mixture_sample(num)
            lp = self._component_log_probs(theta)
            log_r = torch.logsumexp(lp, 1) - math.log(self.num_evidence)
            logw = lp.mean(1) - log_r
        else:
            n_prior = int(torch.distributions.Binomial(num, torch.tensor(self.defensive)).sample())
            theta = torch.cat([self._mixture_sample(num - n_prior),
                               self.posterior.prior.sample((n_prior,)).reshape(n_prior, self.dim)])
            theta = theta[torch.randperm(num)]  # resampling groups must be exchangeable
            lp = self._component_log_probs(theta)
            log_prior = prior_log_prob(self.posterior.prior, theta)
            log_r = torch.logaddexp(
                math.log1p(-self.defensive) + torch.logsumexp(lp, 1) - math.log(self.num_evidence),
                math.log(self.defensive) + log_prior)
            x = torch.as_tensor(self._simulator(theta), dtype=torch.float32)
            log_lam = self._log_lambda(x).reshape(num)
            log_lam = torch.where(torch.isfinite(log_lam), log_lam,
                                  torch.full_like(log_lam, -torch.inf))
            logw = log_prior + log_lam - log_r
        logw = torch.where(torch.isnan(logw), torch.full_like(logw, -torch.inf), logw)
        if not bool(torch.isfinite(logw).any()):
            raise RuntimeError(
                f"Every one of {num} importance weights is zero ({self.rule} evidence): the "
                "evidence is incompatible with the model (e.g. every simulation fails or lies "
                "where lambda is 0). Check the evidence's location and scale against the "
                "training simulations.")
        w = torch.softmax(logw, 0)
        self.last_ess = float(1.0 / w.square().sum())
        self.last_num_proposals = num
        return theta, logw

    def _resample(self, theta: Tensor, logw: Tensor, n: int) -> Tensor:
        """One candidate per group of ``oversampling`` proposals, picked by weight."""
        k = self.oversampling
        groups = logw.reshape(n, k)
        dead = ~torch.isfinite(groups).any(1)
        if bool(dead.any()):  # a group without weight borrows the pooled weights
            pooled = torch.multinomial(torch.softmax(logw, 0), int(dead.sum()), replacement=True)
        pick = torch.multinomial(torch.softmax(groups.masked_fill(dead[:, None], 0.0), 1), 1)[:, 0]
        idx = torch.arange(n) * k + pick
        if bool(dead.any()):
            idx[dead] = pooled
        if self.last_ess is not None and self.last_ess < n:
            warnings.warn(
                f"{self.rule} evidence: only {self.last_ess:.0f} effective proposals for {n} "
                f"samples (of {theta.shape[0]} weighed); samples repeat. Raise oversampling= "
                "or num_evidence=, or check that the evidence is plausible under the model.",
                stacklevel=3)
        return theta[idx]

    def _log_normalizer(self) -> float:
        if self._log_z is None:
            from sbi_core.posterior import seeded

            with seeded(0):
                _, logw = self._weighted(10_000)
            self._log_z = float(torch.logsumexp(logw, 0) - math.log(logw.numel()))
        return self._log_z

    def __repr__(self) -> str:
        return (f"UncertainEvidencePosterior(rule={self.rule!r}, M={self.num_evidence}, "
                f"posterior={type(self.posterior).__name__})")


def _resolve_simulator(posterior: Posterior, simulator: Any) -> Callable[[Tensor], Tensor]:
    """The simulator for virtual evidence: given, a Problem's, or a recorded built-in one."""
    if simulator is not None:
        fn = getattr(simulator, "simulator", simulator)
        if not callable(fn):
            raise ValueError(f"simulator must be a callable theta (N, D) -> x or a Problem, got "
                             f"{type(simulator).__name__}.")
        return fn
    ref = (posterior.problem_spec or {}).get("source")
    problem = None
    if ref:
        from sbi_core.resolve import recorded_problem

        try:
            problem = recorded_problem(ref, "This model")
        except Exception:  # a recorded path is never imported; fall through to the error
            problem = None
    if problem is None:
        raise ValueError("rule='virtual' simulates x ~ p(x | theta) to weigh proposals by "
                         "lambda(x): pass simulator=problem (or a callable theta -> x); this "
                         "model does not record a built-in problem.")
    return problem.simulator
