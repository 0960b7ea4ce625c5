r"""``MCMCPosterior``: a posterior defined by a potential and sampled by MCMC.

The potential of parameters :math:`\theta` given a set of ``n`` iid observations
:math:`x_{1:n}` is

.. math:: U(\theta) = \log p(\theta) + \sum_{i=1}^n \ell(\theta, x_i),

where :math:`\ell` is a learned log-likelihood (NLE) or log likelihood-to-evidence ratio
(NRE); both give the posterior :math:`p(\theta \mid x_{1:n}) \propto e^{U(\theta)}`.
``log_prob`` returns :math:`U` — the log posterior **up to an unknown additive constant**
(``normalized_log_prob = False``), and ``-inf`` outside the prior's support. ``sample``
runs :func:`sbi_core.mcmc.run_mcmc` batched over observations (``method="auto"``: HMC
with step-size and mass-matrix adaptation for differentiable estimators, slice sampling
otherwise; ``init_proposal=`` an NPE posterior starts the chains from it); the last run's R-hat / ESS are in ``last_mcmc``. Each ``sample`` call has a
wall-clock budget (``max_seconds``, default 300 s, :mod:`sbi_core.budget`). ``map`` starts
at the best of ``num_init`` prior draws and climbs the potential by gradient ascent.

Any estimator with ``log_likelihood(theta (N, D), x (N, *x_shape)) -> (N,)`` can use this
class; other methods may subclass it and override :meth:`MCMCPosterior.trial_log_likelihood`.

Example::

    posterior = fit(problem, sims, method="nle")
    samples = posterior.sample((1000,), x=x_trials)        # x_trials (n, *x_shape)
    posterior.last_mcmc.summary()                           # max R-hat, min ESS, seconds
    samples = posterior.sample((1000,), x=x_o, method="hmc", num_chains=50)
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from sbi_core.budget import Budget
from sbi_core.mcmc import MCMCConfig, MCMCResult, initial_chains, run_mcmc
from sbi_core.mcmc.run import MCMC_BUDGET_ADVICE
from sbi_core.posterior import MAP_BUDGET_ADVICE, Posterior, RangeCheck, seeded
from sbi_core.priors import prior_log_prob, unconstrained_transform

__all__ = ["MCMCPosterior", "mcmc_defaults"]


def mcmc_defaults(options: dict[str, Any] | None) -> dict[str, Any]:
    """Validated plain-value MCMC settings (unknown keys or bad values raise right away).

    Methods store these in their estimator config (``fit(..., mcmc={"num_chains": 50})``)
    so a saved model samples the same way after loading.
    """
    if options is not None and not isinstance(options, dict):
        raise TypeError(f"mcmc must be a dict of sbi_core.mcmc.MCMCConfig fields, got "
                        f"{type(options).__name__}.")
    MCMCConfig.from_options(dict(options or {}))
    return dict(options or {})


class MCMCPosterior(Posterior):
    """Posterior ``∝ prior × Π_i likelihood(x_i | θ)`` sampled by MCMC (NLE, NRE, ...).

    Args:
        estimator: module with ``log_likelihood(theta (N, D), x (N, *x_shape)) -> (N,)``.
        prior, problem_spec, history, range_check: as in :class:`~sbi_core.posterior.Posterior`.
        mcmc: default :class:`~sbi_core.mcmc.MCMCConfig` fields (saved with the model);
            ``sample(..., **options)`` overrides them per call.
        chunk_rows: largest number of (θ, x_i) pairs evaluated in one call.
    """

    _forwards_options = frozenset({"sample"})  # MCMC settings, checked by MCMCConfig

    normalized_log_prob = False
    supports_iid = True
    default_max_seconds = 300.0
    budget_advice = MCMC_BUDGET_ADVICE

    def __init__(self, estimator: nn.Module, prior: Distribution, problem_spec: dict[str, Any],
                 history: dict[str, Any] | None = None, range_check: RangeCheck = "error",
                 mcmc: dict[str, Any] | None = None, chunk_rows: int = 200_000):
        super().__init__(estimator, prior, problem_spec, history, range_check)
        mcmc = dict(mcmc or {})
        if mcmc.get("progress") is True:  # files before progress=None stored the old default
            mcmc["progress"] = None
        self.mcmc_config = MCMCConfig.from_options(mcmc)
        self.chunk_rows = chunk_rows
        self.last_mcmc: MCMCResult | None = None
        self._thread_runs = threading.local()  # last run per thread (the server's workers)
        self._center = unconstrained_transform(prior)(torch.zeros(1, self.dim))[0]

    @property
    def config(self) -> dict[str, Any]:
        """Plain-value settings saved with the model and passed back on load."""
        return {"mcmc": self.mcmc_config.to_dict()}

    # ------------------------------------------------------------------ likelihood
    def trial_log_likelihood(self, theta: Tensor, x: Tensor) -> Tensor:
        """Per-trial log-likelihood (or log-ratio) of paired rows ``(N, D)``, ``(N, *x_shape)`` → ``(N,)``."""
        device = _device(self.estimator)
        out = [self.estimator.log_likelihood(theta[i:i + self.chunk_rows].to(device),
                                             x[i:i + self.chunk_rows].to(device)).cpu()
               for i in range(0, theta.shape[0], self.chunk_rows)]
        return torch.cat(out) if out else torch.zeros(0)

    def iid_log_likelihood(self, theta: Tensor, x_sets: Tensor) -> Tensor:
        """Sum over trials: ``theta`` ``(M, D)``, ``x_sets`` ``(M, n, *x_shape)`` → ``(M,)``."""
        m, n = x_sets.shape[:2]
        theta_rep = theta.unsqueeze(1).expand(m, n, self.dim).reshape(m * n, self.dim)
        ll = self.trial_log_likelihood(theta_rep, x_sets.reshape(m * n, *self.x_shape))
        return ll.reshape(m, n).sum(1)

    def potential(self, theta: Tensor, index: Tensor, x_sets: Tensor) -> Tensor:
        """``log p(θ) + Σ_i ℓ(θ, x_i)`` for rows ``theta`` ``(M, D)`` of observation ``index``
        ``(M,)`` in ``x_sets`` ``(B, n, *x_shape)`` → ``(M,)``; ``-inf`` outside the support."""
        lp_prior = prior_log_prob(self.prior, theta).to(theta.dtype)  # float64 priors too
        inside = torch.isfinite(lp_prior)
        safe = torch.where(inside[:, None], theta, self._center.expand_as(theta))
        lp = lp_prior + self.iid_log_likelihood(safe, x_sets[index])
        return torch.where(inside, lp, torch.full_like(lp, -torch.inf))

    def _as_sets(self, xs: Tensor) -> Tensor:
        return xs if self.is_iid_batch(xs, self.x_shape) else xs.unsqueeze(1)

    # ------------------------------------------------------------------ Posterior hooks
    def _sample_batched(self, n: int, xs: Tensor, budget: Budget | None = None,
                        **options: Any) -> Tensor:
        x_sets = self._as_sets(xs)
        proposal = self._proposal(options.pop("init_proposal", None), x_sets)
        cfg = MCMCConfig.from_options({**self.mcmc_config.to_dict(), **options})

        def pot(theta: Tensor, index: Tensor) -> Tensor:
            return self.potential(theta, index, x_sets)
        with torch.enable_grad():  # HMC (and the "auto" check) needs gradients
            result = run_mcmc(pot, self.prior, n, x_sets.shape[0], cfg, max_seconds=budget,
                              proposal=proposal)
        self.last_mcmc = result
        self._thread_runs.last = result
        return result.samples

    def _proposal(self, proposal: Any, x_sets: Tensor) -> Any:
        """``init_proposal`` as ``k -> (theta (B, k, D), log_q (B, k))``: a posterior (e.g.
        NPE) is conditioned on the first trial of each observation; a distribution over theta
        is used as it is (the same for every observation)."""
        if proposal is None:
            return None
        b = x_sets.shape[0]
        if hasattr(proposal, "sample_batched") and hasattr(proposal, "log_prob_batched"):
            first = x_sets[:, 0]

            def draw(k: int) -> tuple[Tensor, Tensor]:
                with torch.no_grad():
                    theta = proposal.sample_batched((k,), first)  # (k, B, D)
                    log_q = proposal.log_prob_batched(theta, first)  # (k, B)
                return theta.transpose(0, 1).contiguous(), log_q.transpose(0, 1)
            return draw
        if hasattr(proposal, "sample") and hasattr(proposal, "log_prob"):
            def draw_dist(k: int) -> tuple[Tensor, Tensor]:
                with torch.no_grad():
                    theta = proposal.sample((b * k,)).reshape(b * k, self.dim)
                    log_q = proposal.log_prob(theta)
                return theta.reshape(b, k, self.dim), log_q.reshape(b, k)
            return draw_dist
        raise TypeError(f"init_proposal must be a posterior (e.g. from method='npe') or a "
                        f"distribution over theta with sample() and log_prob(), got "
                        f"{type(proposal).__name__}.")

    def last_mcmc_in_this_thread(self) -> MCMCResult | None:
        """The last MCMC run started from the calling thread (``last_mcmc`` is the last run of
        any thread; threads sampling the same posterior at once each read their own here)."""
        return getattr(self._thread_runs, "last", None)

    def _log_prob_batched(self, theta: Tensor, xs: Tensor, **kwargs: Any) -> Tensor:
        x_sets = self._as_sets(xs)
        n, b, d = theta.shape
        index = torch.arange(b).repeat(n)
        return self.potential(theta.reshape(n * b, d), index, x_sets).reshape(n, b)

    def _differentiable_log_prob(self, theta: Tensor, xs: Tensor) -> Tensor:
        x_sets = self._as_sets(xs)
        return self.potential(theta, torch.arange(theta.shape[0]), x_sets)

    def _map_batched(self, xs: Tensor, num_init: int, steps: int, seed: int | None,
                     budget: Budget | None = None) -> Tensor:
        """Best of ``num_init`` prior draws, refined by Adam on the potential in the
        unconstrained space (so the estimate stays inside the support)."""
        x_sets = self._as_sets(xs)
        b = x_sets.shape[0]
        with seeded(seed), torch.no_grad():
            start = initial_chains(lambda t, i: self.potential(t, i, x_sets), self.prior, b, 1,
                                   "best", num_init)[:, 0]  # (B, D)
        if steps <= 0:
            return start
        transform = unconstrained_transform(self.prior)
        z = transform.inv(start).detach().clone().requires_grad_(True)
        index = torch.arange(b)
        with seeded(seed), torch.no_grad():
            z_scale = transform.inv(self.prior.sample((1000,)).float()).std(0).nan_to_num(1.0)
        opt = torch.optim.Adam([z], lr=0.02 * float(z_scale.clamp(1e-3, 1e3).mean()))
        best = start.clone()
        with torch.no_grad():
            best_lp = self.potential(start, index, x_sets)
        for step in range(steps):
            if budget is not None:
                budget.check(f"{step} of {steps} gradient steps", task="MAP search",
                             advice=MAP_BUDGET_ADVICE)
            with torch.enable_grad():
                theta = transform(z)
                lp = self.potential(theta, index, x_sets)
                if not lp.requires_grad:  # the estimator is not differentiable
                    return best
                opt.zero_grad()
                (-lp[torch.isfinite(lp)].sum()).backward()
            with torch.no_grad():
                better = lp.detach() > best_lp
                best[better], best_lp[better] = theta.detach()[better], lp.detach()[better]
            opt.step()
        with torch.no_grad():
            theta = transform(z.detach())
            lp = self.potential(theta, index, x_sets)
            better = lp > best_lp
            best[better] = theta[better]
        return best


def _device(module: nn.Module) -> torch.device:
    try:
        return next(module.parameters()).device
    except StopIteration:
        return torch.device("cpu")
