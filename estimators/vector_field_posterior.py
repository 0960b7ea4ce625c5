"""Posterior of an NPSE or FMPE estimator: samplers, ODE ``log_prob`` and iid composition.

``sample(shape, x, sampler=..., steps=..., iid_method=...)``:

- ``sampler``: ``"sde"`` (reverse SDE, Euler--Maruyama; NPSE default), ``"pc"``
  (predictor--corrector with Langevin), ``"ddim"`` (``eta=1`` ancestral, ``eta=0``
  deterministic), ``"ode"`` (probability-flow ODE, Heun; FMPE default). Flow matching has a
  singular SDE drift at ``t = 1``, so FMPE offers ``"ode"`` and ``"ddim"`` only.
- ``steps``: number of steps (defaults: 500 for sde/pc/ddim, 50 for ode).
- ``x`` of shape ``(n, *x_shape)`` is a set of ``n`` iid observations; ``iid_method`` is
  ``"gauss"`` (default), ``"jac"`` or ``"fnpe"`` (see ``estimators/compositional.py``).

All sampling happens in the standardized unconstrained space, so samples always lie inside
a bounded prior's support. ``log_prob`` integrates the probability-flow ODE (exact trace for
``D <= exact_trace_max_dim``, Hutchinson otherwise) and adds the Jacobian of the map back to
the prior's support; it is available for single observations only.

Every ``sample`` call has a wall-clock budget (``max_seconds``, default 300 s): the score
function is wrapped by :func:`estimators.score_sampling.monitored`, so any sampler stops
within one step of it with a :class:`~sbi_core.budget.SamplingTimeoutError`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution

from estimators import compositional as comp
from estimators import score_sampling as ss
from estimators.vector_field import VectorFieldEstimator
from sbi_core.budget import Budget
from sbi_core.posterior import Posterior, SamplingError
from sbi_core.priors import support_is_mapped, within_support
from sbi_core.progress import progress_bar

__all__ = ["VectorFieldPosterior", "SAMPLERS", "DEFAULT_STEPS"]

SAMPLERS = ("sde", "pc", "ddim", "ode")
DEFAULT_STEPS = {"sde": 500, "pc": 500, "ddim": 500, "ode": 50}


def iid_density_message(what: str) -> str:
    """Why ``what`` (``log_prob``, ``map``, ``correct='is'``) is refused for a set of iid
    observations of a score-based posterior, and what works instead."""
    return (f"{what} for a set of iid observations is not available for {SCORE_METHODS}: the "
            "composed score of a set defines a sampler, not a normalized density (log_prob, "
            "map and correct='is' need one). Sample the set instead (posterior.sample((n,), "
            "x=set); e.g. the samples' mean or mode as a point estimate), or evaluate these "
            "for single observations; a likelihood-based posterior (method='nle') gives "
            "log_prob and map of a set up to a constant.")


SCORE_METHODS = "score-based posteriors (NPSE, FMPE)"


class VectorFieldPosterior(Posterior):
    """Posterior of a :class:`~estimators.vector_field.VectorFieldEstimator`.

    Args:
        sampler, steps, iid_method: defaults of :meth:`sample` (saved with the model).
        log_prob_steps: RK4 steps of the ``log_prob`` ODE.
        exact_trace_max_dim: largest ``D`` with the exact divergence (Hutchinson above).
    """

    supports_iid = True
    iid_log_prob = False  # the composed score of a set is a sampler, not a density
    default_max_seconds = 300.0
    budget_advice = ("Use fewer steps (e.g. sampler='ode', whose default is 50 steps), fewer "
                     "samples per call, or check that the observation resembles the training "
                     "simulations.")

    def __init__(self, estimator: VectorFieldEstimator, prior: Distribution,
                 problem_spec: dict[str, Any], history: dict[str, Any] | None = None,
                 range_check: str = "error", sampler: str | None = None,
                 steps: int | None = None, iid_method: str = comp.DEFAULT_IID_METHOD,
                 log_prob_steps: int = 50, exact_trace_max_dim: int = 10):
        super().__init__(estimator, prior, problem_spec, history, range_check=range_check)
        self.method = estimator.kind
        self.config = {"sampler": sampler, "steps": steps, "iid_method": iid_method,
                       "log_prob_steps": log_prob_steps,
                       "exact_trace_max_dim": exact_trace_max_dim}
        self._resolve_sampler(sampler)
        self._check_iid_method(iid_method)

    # ------------------------------------------------------------------ helpers
    @property
    def _device(self) -> torch.device:
        return next(self.estimator.parameters()).device

    def _resolve_sampler(self, sampler: str | None) -> str:
        name = sampler or self.config["sampler"] or ("ode" if self.method == "fmpe" else "sde")
        if name not in SAMPLERS:
            raise ValueError(f"Unknown sampler {name!r}; use one of {', '.join(SAMPLERS)}.")
        if self.method == "fmpe" and name in ("sde", "pc"):
            raise ValueError(f"Sampler {name!r} needs a diffusion SDE; the flow-matching path "
                             "is singular at t=1. Use sampler='ode' or 'ddim' with FMPE.")
        return name

    @staticmethod
    def _check_iid_method(name: str) -> None:
        if name not in comp.IID_METHODS:
            raise ValueError(f"Unknown iid_method {name!r}; use one of {', '.join(comp.IID_METHODS)}.")

    def _score_fn(self, ctx: Tensor):
        """Score of each single observation: ``z`` ``(N, B, D)`` → ``(N, B, D)`` for
        ``ctx`` ``(B, C)``."""
        est = self.estimator

        def fn(z: Tensor, t: float) -> Tensor:
            n, b, d = z.shape
            c = ctx.expand(n, *ctx.shape).reshape(n * b, -1)
            tt = torch.full((n * b,), t, device=z.device)
            return est.score(z.reshape(n * b, d), c, tt).reshape(n, b, d)

        return fn

    def _single_scores(self, z: Tensor, ctx: Tensor, t: float, jacobian: bool = False
                       ) -> tuple[Tensor, Tensor | None]:
        """Scores ``(N, B, n, D)`` of ``z`` ``(N, B, D)`` under each of ``n`` observations
        (``ctx`` ``(B, n, C)``), and optionally their Jacobians ``(N, B, n, D, D)``."""
        n_s, b, d = z.shape
        k = ctx.shape[1]
        zz = z[:, :, None, :].expand(n_s, b, k, d).reshape(-1, d)
        cc = ctx.expand(n_s, *ctx.shape).reshape(n_s * b * k, -1)
        tt = torch.full((zz.shape[0],), t, device=z.device)
        if not jacobian:
            return self.estimator.score(zz, cc, tt).reshape(n_s, b, k, d), None
        with torch.enable_grad():
            zz = zz.detach().requires_grad_(True)
            s = self.estimator.score(zz, cc, tt)
            rows = [torch.autograd.grad(s[:, i].sum(), zz, retain_graph=i + 1 < d)[0]
                    for i in range(d)]
        jac = torch.stack(rows, dim=-2).reshape(n_s, b, k, d, d)
        return s.detach().reshape(n_s, b, k, d), jac

    def _prior_score_z(self, z: Tensor) -> Tensor:
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            lp = self.estimator.prior_log_prob_z(z)
            return torch.autograd.grad(lp.sum(), z)[0]

    def _run(self, sampler: str, score_fn, z: Tensor, steps: int, eta: float,
             corrector_steps: int, snr: float) -> Tensor:
        sched = self.estimator.schedule
        if sampler == "sde":
            return ss.euler_maruyama(score_fn, sched, z, steps)
        if sampler == "pc":
            return ss.predictor_corrector(score_fn, sched, z, steps, corrector_steps, snr)
        if sampler == "ddim":
            return ss.ddim(score_fn, sched, z, steps, eta)
        return ss.probability_flow(score_fn, sched, z, steps)

    def _to_theta(self, z: Tensor) -> Tensor:
        """Map z-samples ``(N, B, D)`` into the support; non-finite samples raise."""
        if not torch.isfinite(z).all():
            raise SamplingError(
                "The sampler diverged (non-finite samples). Use more steps, another sampler "
                "(e.g. sampler='ode'), or for iid sets iid_method='gauss'; an undertrained "
                "estimator can also cause this.")
        theta = self.estimator.from_z(z).cpu()
        flat = theta.reshape(-1, self.dim)
        ok = within_support(self.prior, flat)
        if not bool(ok.all()):  # float saturation of the sigmoid at the boundary only
            low, high = (b.to(flat) for b in self._bounds)
            inner_lo = torch.nextafter(low, high)
            inner_hi = torch.nextafter(high, low)
            flat = torch.where(ok[:, None], flat, flat.clamp(min=inner_lo, max=inner_hi))
            # a support the unconstrained map does not cover (a prior with no or a non-box
            # support: identity map): such draws are marked NaN and rejected by the caller
            flat = torch.where(within_support(self.prior, flat)[:, None], flat,
                               torch.full_like(flat, torch.nan))
        return flat.reshape(theta.shape)

    # ------------------------------------------------------------------ sampling
    def _sample_batched(self, n: int, xs: Tensor, sampler: str | None = None,
                        steps: int | None = None, iid_method: str | None = None,
                        eta: float = 1.0, corrector_steps: int = 1, snr: float = 0.1,
                        levels: int = 400, steps_per_level: int = 5, tau: float = 0.5,
                        precision_samples: int | None = None, precision_steps: int = 20,
                        nugget: float = 0.01, budget: Budget | None = None,
                        progress: bool | None = None) -> Tensor:
        """Samples ``(n, B, D)``; ``progress`` shows a bar of score evaluations."""
        budget = Budget.of(budget, "Sampling", self.budget_advice)
        b = xs.shape[0]
        out = torch.full((n, b, self.dim), torch.nan)
        filled = torch.zeros(b, dtype=torch.long)
        proposed = accepted = 0
        with progress_bar(progress=progress, desc=f"{self.method} sampling",
                          unit="eval") as bar:
            while bool((filled < n).any()):
                rate = max(accepted / proposed, 1e-3) if proposed else 1.0
                m = n if not proposed else min(int(1.2 * int((n - filled).max()) / rate) + 1,
                                               100 * n)
                draws = self._sample_monitored(m, xs, sampler, steps, iid_method, eta,
                                               corrector_steps, snr, levels, steps_per_level,
                                               tau, precision_samples, precision_steps, nugget,
                                               budget, bar)
                ok = ~torch.isnan(draws).any(-1)  # (m, B): inside the prior's support
                proposed, accepted = proposed + m * b, accepted + int(ok.sum())
                for j in range(b):
                    keep = draws[ok[:, j], j][: n - int(filled[j])]
                    out[int(filled[j]):int(filled[j]) + len(keep), j] = keep
                    filled[j] += len(keep)
                if bool((filled < n).any()) and proposed >= 1000 and accepted < 1e-3 * proposed:
                    raise SamplingError(
                        f"Only {accepted:,} of {proposed:,} samples fell inside the prior's "
                        "support. The prior's class defines no support that maps onto R^D "
                        "(no `support`, or one that is not a box), so samples outside it are "
                        "rejected; check the observation, train longer, or give the prior "
                        "class a `support` (e.g. constraints.independent(constraints."
                        "interval(low, high), 1)).")
        return out

    def _sample_monitored(self, n: int, xs: Tensor, sampler: str | None, steps: int | None,
                          iid_method: str | None, eta: float, corrector_steps: int,
                          snr: float, levels: int, steps_per_level: int, tau: float,
                          precision_samples: int | None, precision_steps: int,
                          nugget: float, budget: Budget, bar: Any) -> Tensor:
        est = self.estimator
        xs = xs.to(self._device)
        b, d = xs.shape[0], self.dim
        var_t = est.schedule.terminal_var()
        if self.is_iid_batch(xs, self.x_shape) and xs.shape[1] > 1:
            k = xs.shape[1]
            ctx = est.context(xs.reshape(b * k, *self.x_shape)).reshape(b, k, -1)
            method = iid_method or self.config["iid_method"]
            self._check_iid_method(method)
            if method == "fnpe":
                if sampler not in (None, "langevin"):
                    raise ValueError("iid_method='fnpe' samples by annealed Langevin; leave "
                                     "sampler unset (or 'langevin').")
                t_max = est.schedule.t_max

                def fnpe(z: Tensor, t: float) -> Tensor:
                    return comp.fnpe_score(self._single_scores(z, ctx, t)[0],
                                           self._prior_score_z(z), t, t_max)

                z0 = torch.randn(n, b, d, device=self._device) * (var_t / k) ** 0.5
                z = comp.annealed_langevin(
                    ss.monitored(fnpe, budget, "Annealed Langevin (iid_method='fnpe')", bar),
                    est.schedule, z0, levels, steps_per_level, tau)
                return self._to_theta(z)
            score_fn = self._composite_score(method, ctx, precision_samples, precision_steps,
                                             nugget, budget)
        else:
            if self.is_iid_batch(xs, self.x_shape):
                xs = xs[:, 0]
            score_fn = self._score_fn(est.context(xs))
        name = self._resolve_sampler(sampler)
        steps = steps or self.config["steps"] or DEFAULT_STEPS[name]
        z0 = torch.randn(n, b, d, device=self._device) * var_t**0.5
        score_fn = ss.monitored(score_fn, budget, f"Sampler {name!r} ({steps} steps)", bar)
        return self._to_theta(self._run(name, score_fn, z0, steps, eta, corrector_steps, snr))

    def _composite_score(self, method: str, ctx: Tensor, precision_samples: int | None,
                         precision_steps: int, nugget: float, budget: Budget | None = None):
        """GAUSS or JAC composite score function for ``ctx`` ``(B, n, C)``."""
        est, sched = self.estimator, self.estimator.schedule
        mean, cov = est.prior_mean_z, est.prior_cov_z
        post_prec = None
        min_prec = float(torch.linalg.eigvalsh(torch.linalg.inv(cov)).min())
        if method == "gauss":
            post_prec = self._posterior_precisions(ctx, precision_samples, precision_steps,
                                                   budget)

        def fn(z: Tensor, t: float) -> Tensor:
            tt = torch.tensor(t)
            m, sd = float(sched.mean_scale(tt)), float(sched.std(tt))
            scores, jac = self._single_scores(z, ctx, t, jacobian=method == "jac")
            prec = comp.gauss_precisions(post_prec, m, sd) if jac is None \
                else comp.jac_precisions(jac, m, sd, min_prec)
            prior_score, prior_prec = comp.diffused_gaussian_prior(mean, cov, m, sd, z)
            return comp.gauss_corrected_score(scores, prec, prior_score, prior_prec, nugget)

        return fn

    def _posterior_precisions(self, ctx: Tensor, num: int | None, steps: int,
                              budget: Budget | None = None) -> Tensor:
        """Precisions ``(B, n, D, D)`` of samples of each single-observation posterior (z-space)."""
        b, k, c = ctx.shape
        d = self.dim
        num = num or min(1000 * d, 5000)
        flat = ctx.reshape(b * k, c)
        z0 = torch.randn(num, b * k, d, device=ctx.device) * self.estimator.schedule.terminal_var() ** 0.5
        score_fn = self._score_fn(flat)
        if budget is not None:
            score_fn = ss.monitored(score_fn, budget, "Posterior precisions (iid_method='gauss')")
        z = ss.probability_flow(score_fn, self.estimator.schedule, z0, steps)
        zc = z - z.mean(0, keepdim=True)
        cov = torch.einsum("nbi,nbj->bij", zc, zc) / (num - 1)
        cov = cov + 1e-6 * torch.eye(d, device=ctx.device)
        return torch.linalg.inv(cov).reshape(b, k, d, d)

    def _map_batched(self, xs: Tensor, num_init: int, steps: int, seed: int | None,
                     budget: Any = None) -> Tensor:
        if self.is_iid_batch(xs, self.x_shape) and xs.shape[1] > 1:  # before any sampling
            raise ValueError(iid_density_message("map"))
        return super()._map_batched(xs, num_init, steps, seed, budget)

    # ------------------------------------------------------------------ densities
    def _log_prob_batched(self, theta: Tensor, xs: Tensor, normalize: bool = True,
                          steps: int | None = None, **kwargs: Any) -> Tensor:
        if self.is_iid_batch(xs, self.x_shape):
            if xs.shape[1] > 1:
                raise ValueError(iid_density_message("log_prob"))
            xs = xs[:, 0]
        est = self.estimator
        n, b, d = theta.shape
        inside = within_support(self.prior, theta.reshape(-1, d)).reshape(n, b)
        safe = torch.where(inside[..., None], theta, self.prior.mean.to(theta).expand_as(theta)
                           if _has_finite_mean(self.prior) else self.prior.sample((n, b)).to(theta))
        z = est.to_z(safe.to(self._device))
        vel_ctx = est.context(xs.to(self._device))
        t_lo, t_hi = est.ode_time_range()
        tt = torch.tensor(t_hi)
        base_var = float(est.schedule.mean_scale(tt) ** 2 + est.schedule.std(tt) ** 2) \
            if est.kind != "fmpe" else 1.0

        def velocity(zz: Tensor, t: float) -> Tensor:
            c = vel_ctx.expand(n, *vel_ctx.shape).reshape(n * b, -1)
            vt = torch.full((n * b,), t, device=zz.device)
            return est.velocity(zz.reshape(n * b, d), c, vt).reshape(n, b, d)

        lp_z = ss.ode_log_prob(velocity, z, t_lo, t_hi, base_var,
                               steps or self.config["log_prob_steps"],
                               exact_trace=d <= self.config["exact_trace_max_dim"])
        lp = (lp_z - est.log_abs_det_from_z(z)).cpu()
        lp = torch.where(inside, lp, torch.full_like(lp, -torch.inf))
        if normalize and not support_is_mapped(self.prior):  # draws outside are rejected
            lp = lp - self.acceptance_rate(xs).log()[None, :]
        return lp

    def acceptance_rate(self, xs: Tensor, num: int = 2000, seed: int = 0) -> Tensor:
        """Fraction ``(B,)`` of probability-flow (ODE) draws for ``xs`` ``(B, *x_shape)``
        inside a support the unconstrained map does not cover (a prior class with no or a
        non-box ``support``): ``sample`` rejects the others, so ``log_prob`` divides by it.

        Estimated from ``num`` seeded draws (``1 / sqrt(num · rate)`` relative error) and
        cached per observation. Raises :class:`SamplingError` below 0.1%.
        """
        from sbi_core.posterior import seeded

        cache = self.__dict__.setdefault("_acceptance_cache", {})
        out = []
        for x in xs:
            key = (tuple(x.shape), x.detach().cpu().numpy().tobytes(), num, seed)
            if key not in cache:
                with seeded(seed), torch.no_grad(), progress_bar(progress=False) as bar:
                    draws = self._sample_monitored(
                        num, x[None], "ode", None, None, 1.0, 1, 0.1, 400, 5, 0.5, None, 20,
                        0.01, Budget.of(None, "log_prob normalization", self.budget_advice),
                        bar)
                if len(cache) > 256:
                    cache.clear()
                cache[key] = float((~torch.isnan(draws).any(-1)).float().mean())
            out.append(cache[key])
        rate = torch.tensor(out)
        if bool((rate < 1e-3).any()):
            raise SamplingError(
                f"Only {float(rate.min()):.2%} of the posterior's draws fall inside the prior's "
                "support, so log_prob cannot be normalized by that fraction (and sampling "
                "would fail too). Check the observation or train longer; "
                "log_prob(..., normalize=False) gives the unnormalized density.")
        return rate


def _has_finite_mean(prior: Distribution) -> bool:
    try:
        return bool(torch.isfinite(prior.mean).all())
    except (NotImplementedError, AttributeError):
        return False
