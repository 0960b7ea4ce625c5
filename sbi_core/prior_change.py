r"""A new prior at query time, without retraining: sampling-importance-resampling.

A posterior trained under the prior :math:`p_{train}` approximates
:math:`q(\theta \mid x) \approx p(x \mid \theta) p_{train}(\theta) / p(x)`. Under a new prior
:math:`p_{new}` the posterior is

.. math:: p_{new}(\theta \mid x) \propto q(\theta \mid x)\, \frac{p_{new}(\theta)}{p_{train}(\theta)}.

:class:`ReweightedPosterior` (``posterior.with_prior(new_prior)``) draws ``M`` proposals from
the trained posterior, weights them by :math:`w = p_{new} / p_{train}` and resamples. It works
for every posterior (NPE, NLE/NRE via MCMC, NPSE, PFN, ...) and every prior the project
accepts (torch distributions, :mod:`sbi_core.priors`, frozen scipy distributions), since only
the two priors' densities are evaluated.

Two things break it, and both raise instead of returning something wrong:

- the new prior puts mass where the training prior had none (the trained posterior never
  proposes there): :class:`PriorSupportError` when more than ``max_outside_mass`` of the new
  prior lies outside the training prior's support (the result is the new posterior
  truncated to the training support; the fraction outside is in ``info``);
- the new prior is far from the training one, so few proposals carry all the weight: the
  effective sample size :math:`ESS = (\sum w)^2 / \sum w^2` falls below ``min_ess`` and a
  :class:`LowESSError` names the fix (more proposals, or a prior-conditioned estimator,
  ``method="prior_npe"``, docs/prior_change.md).

``log_prob`` is normalized by an importance-sampling estimate of
:math:`Z(x) = E_q[p_{new}/p_{train}]` from ``num_proposals`` proposals (``normalize=False``:
the unnormalized :math:`\log q + \log p_{new} - \log p_{train}`). When the trained
posterior's own ``log_prob`` is unnormalized (MCMC posteriors), so is this one's
(``normalized_log_prob`` is False).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution

from sbi_core.budget import Budget, SamplingError
from sbi_core.posterior import Posterior, seeded
from sbi_core.priors import as_prior, prior_log_prob, within_support

__all__ = ["ReweightedPosterior", "PriorSupportError", "LowESSError", "reweight",
           "effective_sample_size", "check_new_prior"]

#: Default smallest effective sample size accepted per observation.
MIN_ESS = 100.0
#: Default number of proposals drawn per observation (at least ``oversample`` × samples asked).
NUM_PROPOSALS = 20_000


class PriorSupportError(ValueError):
    """The new prior puts mass where the training prior had none."""


class LowESSError(SamplingError):
    """Importance weights collapsed: too few proposals carry the weight."""


def effective_sample_size(log_w: Tensor, dim: int = 0) -> Tensor:
    """Kish's effective sample size ``(sum w)^2 / sum w^2`` of log-weights along ``dim``
    (``-inf`` weights count as zero; all zero gives 0)."""
    a = torch.logsumexp(log_w, dim)
    b = torch.logsumexp(2 * log_w, dim)
    ess = torch.exp(2 * a - b)
    return torch.nan_to_num(ess, nan=0.0)


def check_new_prior(new_prior: Distribution, train_prior: Distribution,
                    max_outside_mass: float = 1e-3, num: int = 20_000,
                    seed: int = 0) -> float:
    """Fraction of ``new_prior``'s mass outside ``train_prior``'s support (Monte Carlo with
    ``num`` draws); raises :class:`PriorSupportError` above ``max_outside_mass``."""
    dim = int(train_prior.event_shape[0]) if train_prior.event_shape else 1
    if tuple(new_prior.event_shape) != (dim,):
        raise ValueError(f"The new prior has event shape {tuple(new_prior.event_shape)}, but the "
                         f"posterior is over D={dim} parameters; give a prior with event shape "
                         f"({dim},).")
    with seeded(seed), torch.no_grad():
        draws = new_prior.sample((num,)).reshape(num, dim).float()
    inside = within_support(train_prior, draws) & torch.isfinite(prior_log_prob(train_prior, draws))
    outside = 1.0 - float(inside.float().mean())
    if outside > max_outside_mass:
        lo = draws[~inside].amin(0).tolist() if bool((~inside).any()) else []
        hi = draws[~inside].amax(0).tolist() if bool((~inside).any()) else []
        raise PriorSupportError(
            f"{outside:.2%} of the new prior's mass lies outside the training prior's support "
            f"(draws there span {[round(v, 3) for v in lo]} .. {[round(v, 3) for v in hi]}). The "
            "trained posterior never proposes there, so reweighting cannot reach it. Restrict "
            "the new prior to the training support (e.g. truncate it), retrain with a prior "
            "covering it, or accept the truncation with max_outside_mass="
            f"{math.ceil(outside * 1000) / 1000:g}.")
    return outside


class ReweightedPosterior(Posterior):
    """``base`` re-targeted to ``new_prior`` by sampling-importance-resampling.

    Args:
        base: the trained posterior (any :class:`~sbi_core.posterior.Posterior`).
        new_prior: the new prior (torch ``Distribution``, frozen scipy distribution(s)).
        num_proposals: proposals per observation (at least ``oversample`` × the samples
            asked for); the ESS grows with it.
        oversample: minimum ratio of proposals to requested samples.
        min_ess: smallest accepted effective sample size per observation
            (:class:`LowESSError` below it; 0 disables the check).
        max_outside_mass: largest accepted fraction of the new prior outside the training
            prior's support (:class:`PriorSupportError` above it).

    Attributes:
        info: after each call, ``{"ess": (B,) tensor, "num_proposals": M, "ess_fraction":
            (B,), "outside_mass": float}``; ``last_ess`` is ``info["ess"]``.
    """

    _forwards_options = frozenset({"log_prob"})  # the base posterior checks them

    method = "reweighted"
    not_savable = ("A reweighted posterior (posterior.with_prior) is not saved: save the "
                   "trained posterior and call with_prior(new_prior) again after loading.")

    def __init__(self, base: Posterior, new_prior: Any, num_proposals: int = NUM_PROPOSALS,
                 oversample: int = 10, min_ess: float = MIN_ESS,
                 max_outside_mass: float = 1e-3, seed: int = 0):
        if isinstance(base, ReweightedPosterior):  # reweight from the trained posterior
            base = base.base
        new_prior = as_prior(new_prior)
        if int(num_proposals) < 1 or int(oversample) < 1:
            raise ValueError("num_proposals and oversample must be positive integers.")
        outside = check_new_prior(new_prior, base.prior, max_outside_mass, seed=seed)
        super().__init__(base.estimator, new_prior, base.problem_spec, base.history,
                         range_check=base.range_check)
        self.base = base
        self.train_prior = base.prior
        self.num_proposals = int(num_proposals)
        self.oversample = int(oversample)
        self.min_ess = float(min_ess)
        self.max_outside_mass = float(max_outside_mass)
        self.supports_iid = base.supports_iid
        self.normalized_log_prob = base.normalized_log_prob
        self.detector, self.misspecification = base.detector, base.misspecification
        self.max_seconds = base.max_seconds
        self.info: dict[str, Any] = {"outside_mass": outside}
        self._default_x = base._default_x
        self._log_z: dict[tuple, Tensor] = {}

    @property
    def last_ess(self) -> Tensor | None:
        """Effective sample sizes ``(B,)`` of the last call, or None before any."""
        return self.info.get("ess")

    def _log_weights(self, theta: Tensor) -> Tensor:
        """``log p_new - log p_train`` for ``theta`` ``(..., D)`` → ``(...)``."""
        flat = theta.reshape(-1, self.dim)
        lw = prior_log_prob(self.prior, flat) - prior_log_prob(self.train_prior, flat)
        return torch.nan_to_num(lw, nan=-torch.inf).reshape(theta.shape[:-1])

    def _proposals(self, m: int, xs: Tensor, budget: Budget | None) -> tuple[Tensor, Tensor]:
        """``m`` proposals ``(m, B, D)`` from the trained posterior and their log-weights
        ``(m, B)``; records the ESS and raises :class:`LowESSError` below ``min_ess``."""
        theta = self.base.sample_batched((m,), xs, max_seconds=budget, _checked=True)
        lw = self._log_weights(theta)
        ess = effective_sample_size(lw, 0)
        self.info.update(ess=ess, num_proposals=m, ess_fraction=ess / m)
        low = (ess < self.min_ess).nonzero().flatten().tolist()
        if low:
            raise LowESSError(
                f"Reweighting to the new prior collapsed: effective sample size "
                f"{float(ess.min()):.1f} of {m:,} proposals (min_ess={self.min_ess:g}) for "
                f"observation(s) {low[:10]}. The new prior is far from the training prior where "
                "the posterior lies. Draw more proposals (with_prior(..., num_proposals="
                f"{10 * m:,})), or train a prior-conditioned estimator (fit(..., "
                "method='prior_npe'), docs/prior_change.md) whose with_prior needs no "
                "reweighting. min_ess=0 returns the degenerate resample anyway.")
        return theta, lw

    def _sample_batched(self, n: int, xs: Tensor, budget: Budget | None = None,
                        **kwargs: Any) -> Tensor:
        m = max(self.num_proposals, self.oversample * n)
        theta, lw = self._proposals(m, xs, budget)  # (m, B, D), (m, B)
        probs = torch.softmax(lw.T.double(), dim=-1)  # (B, m)
        idx = torch.multinomial(probs, n, replacement=True)  # (B, n)
        return theta.gather(0, idx.T.unsqueeze(-1).expand(n, -1, self.dim))

    def log_normalizer(self, xs: Tensor, seed: int = 0) -> Tensor:
        """IS estimate ``(B,)`` of ``log E_q[p_new / p_train]`` at observations ``xs``
        (``num_proposals`` proposals; cached per observation)."""
        key = (tuple(xs.shape), hash(xs.cpu().numpy().tobytes()))
        if key not in self._log_z:
            with seeded(seed):
                _, lw = self._proposals(self.num_proposals, xs, None)
            self._log_z[key] = torch.logsumexp(lw, 0) - math.log(lw.shape[0])
        return self._log_z[key]

    def _log_prob_batched(self, theta: Tensor, xs: Tensor, normalize: bool = True,
                          **kwargs: Any) -> Tensor:
        base_kwargs = {"normalize": True} if self.base.normalized_log_prob else {}
        lp = self.base.log_prob_batched(theta, xs, _checked=True, **base_kwargs, **kwargs)
        lp = lp + self._log_weights(theta)
        if normalize and self.normalized_log_prob:
            lp = lp - self.log_normalizer(xs)[None, :]
        return lp

    def _differentiable_log_prob(self, theta: Tensor, xs: Tensor) -> Tensor | None:
        base = self.base._differentiable_log_prob(theta, xs)
        if base is None:
            return None
        lw = prior_log_prob(self.prior, theta) - prior_log_prob(self.train_prior, theta)
        return base + lw

    def with_prior(self, new_prior: Any, **options: Any) -> Posterior:
        """Reweight the trained posterior (not this one) to another prior."""
        return self.base.with_prior(new_prior, **options)


def reweight(posterior: Posterior, new_prior: Any, **options: Any) -> ReweightedPosterior:
    """``posterior`` re-targeted to ``new_prior`` by importance resampling
    (:class:`ReweightedPosterior`; options as there)."""
    return ReweightedPosterior(posterior, new_prior, **options)


def with_prior(posterior: Posterior, new_prior: Any, method: str = "auto",
               **options: Any) -> Posterior:
    """What :meth:`Posterior.with_prior` does: ``method="reweight"`` (or ``"auto"`` for
    posteriors that are not prior-conditioned) returns a :class:`ReweightedPosterior`."""
    if method not in ("auto", "reweight"):
        raise ValueError(f"with_prior(method={method!r}): this {type(posterior).__name__} "
                         "supports method='reweight' (or 'auto'); method='conditioned' needs a "
                         "prior-conditioned estimator (fit(..., method='prior_npe')).")
    return ReweightedPosterior(posterior, new_prior, **options)
