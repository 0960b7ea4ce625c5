"""Approximate Bayesian computation: the particle posterior, distances, and rejection ABC.

``fit(problem, sims, method="abc", x_o=x_o)`` keeps the simulations of ``sims`` closest to
the observation ``x_o`` (``quantile``, ``num_accept`` or ``epsilon``). ``method="smc_abc"``
(:mod:`estimators.smc_abc`) refines them by population Monte Carlo. Both need no training
and answer for the one ``x_o`` they were fitted to (another ``x`` is a clear error).

Distances (``distance=``):

- ``"euclidean"`` (default): Euclidean distance between ``x`` and ``x_o``, each column
  divided by its standard deviation over the prior-predictive simulations.
- ``"mmd"``: for ``x_o`` a set of ``n`` iid observations ``(n, *x_shape)``; each parameter
  simulates ``num_draws`` (``m``) iid draws and the distance is their MMD² to ``x_o``
  (Gaussian kernel, median-heuristic lengthscale on ``x_o``). ``estimator="ow"`` (the
  default ``"auto"`` when the problem exposes its random inputs, ``Problem(noise_dim=...)``)
  is the optimally weighted estimator of Bharti et al. (2023): the same scrambled Sobol
  inputs ``u`` for every parameter (common random numbers) and Bayesian-quadrature weights
  computed once (:func:`diagnostics.mmd.bq_weights`). Without exposed inputs ``"auto"``
  falls back to the V-statistic with a warning saying why.

Budgets are counted honestly: ``posterior.history["num_simulations"]`` is every simulator
call, the ``sims`` given included (with ``distance="mmd"`` their ``x`` are not usable, only
their ``theta``, and they still count).

The posterior (:class:`ABCPosterior`) samples the weighted particles (``smooth=True``: a
weighted Gaussian KDE around them); its ``log_prob`` is that KDE's log density, an
approximation marked unnormalized (``normalized_log_prob = False``). Files store the
particles, weights, distances and ``x_o`` as tensors.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from diagnostics.mmd import bq_weights, median_lengthscale, mmd2_weighted, observed_term
from sbi_core.budget import Budget
from sbi_core.methods import Method
from sbi_core.posterior import Posterior, SingleObservationError
from sbi_core.priors import within_support
from sbi_core.problem import Problem

__all__ = ["ABCParticles", "ABCPosterior", "Distance", "fit_abc", "simulate_particles",
           "METHOD", "ABC_OPTIONS"]

#: Options shared by ``abc`` and ``smc_abc`` (``fit(..., key=value)``).
ABC_OPTIONS = {"x_o": None, "distance": "euclidean", "num_draws": 64, "estimator": "auto",
               "chunk_size": 100_000}
_IGNORED = {"device", "progress", "callbacks", "max_epochs", "max_seconds"}


class ABCParticles(nn.Module):
    """Weighted particles ``theta`` ``(N, D)``, ``weights`` ``(N,)`` (sum 1), their
    ``distances`` ``(N,)`` and the observation ``x_o`` they answer, all as buffers."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.config = dict(config)
        n, d = int(config["num_particles"]), int(config["theta_dim"])
        self.register_buffer("theta", torch.zeros(n, d))
        self.register_buffer("weights", torch.full((n,), 1.0 / max(n, 1)))
        self.register_buffer("distances", torch.zeros(n))
        self.register_buffer("x_o", torch.zeros(*config["x_o_shape"]))

    def check_observation(self, x: Tensor) -> None:
        """Raise :class:`SingleObservationError` unless every observation in ``x`` is ``x_o``."""
        ref = self.x_o.reshape(-1).to(x.device, x.dtype)
        rows = x.reshape(-1, ref.numel()) if x.numel() % ref.numel() == 0 else None
        if rows is None or not bool(torch.allclose(rows, ref.expand_as(rows), rtol=1e-5,
                                                   atol=1e-6)):
            raise SingleObservationError(
                f"This {self.config.get('kind', 'abc')} posterior was fitted to one observation "
                f"x_o of shape {tuple(self.x_o.shape)} and answers only for it (ABC simulates "
                "for one observation). Fit again with fit(problem, sims, method="
                f"{self.config.get('kind', 'abc')!r}, x_o=x) for this x, or use an amortized "
                "method (npe).")


class ABCPosterior(Posterior):
    """Posterior of weighted ABC particles for one observation ``x_o`` (its default ``x``).

    ``sample`` draws particles by weight (``smooth=True``: from the weighted Gaussian KDE,
    inside the prior support); ``log_prob`` is the KDE's log density (Scott bandwidth on the
    effective sample size, zero mass outside the prior support): an approximation, not
    normalized over the support.
    """

    method = "abc"
    normalized_log_prob = False
    budget_advice = "ABC sampling only resamples stored particles; this should not happen."

    def __init__(self, estimator: ABCParticles, prior: Distribution,
                 problem_spec: dict[str, Any], history: dict[str, Any] | None = None,
                 range_check: str = "off"):
        self.supports_iid = estimator.config.get("distance") == "mmd"
        super().__init__(estimator, prior, problem_spec, history, range_check=range_check)
        self.method = str(estimator.config.get("kind", "abc"))
        x_o = estimator.x_o.float()
        self._default_x = x_o.unsqueeze(0)

    @property
    def single_observation(self) -> Tensor:
        """The one observation ``x_shape`` this posterior answers (others raise
        :class:`~sbi_core.posterior.SingleObservationError`)."""
        return self.estimator.x_o

    # -- KDE
    def _bandwidth_cholesky(self) -> Tensor:
        est = self.estimator
        w = est.weights.double()
        theta = est.theta.double()
        mean = (w[:, None] * theta).sum(0)
        cov = (w[:, None, None] * torch.einsum("ni,nj->nij", theta - mean, theta - mean)).sum(0)
        ess = 1.0 / float(w.square().sum())
        factor = ess ** (-2.0 / (self.dim + 4))
        eye = torch.eye(self.dim, dtype=torch.float64)
        return torch.linalg.cholesky(factor * cov + 1e-10 * eye * cov.diagonal().mean().clamp(min=1e-12))

    def _in_support(self, theta: Tensor) -> Tensor:
        low, high = self._bounds
        ok = ((theta >= low) & (theta <= high)).all(-1)
        return ok & within_support(self.prior, theta)

    def _sample_batched(self, n: int, xs: Tensor, budget: Budget | None = None,
                        smooth: bool = False, **kwargs: Any) -> Tensor:
        est = self.estimator
        total = n * xs.shape[0]
        idx = torch.multinomial(est.weights.double(), total, replacement=True)
        out = est.theta[idx].float()
        if smooth:
            chol = self._bandwidth_cholesky().float()
            todo = torch.ones(total, dtype=torch.bool)
            for _ in range(100):
                k = int(todo.sum())
                if k == 0:
                    break
                j = torch.multinomial(est.weights.double(), k, replacement=True)
                prop = est.theta[j].float() + torch.randn(k, self.dim) @ chol.T
                ok = self._in_support(prop)
                rows = todo.nonzero().flatten()[ok]
                out[rows] = prop[ok]
                todo[rows] = False
        return out.reshape(n, xs.shape[0], self.dim)

    def _log_prob_batched(self, theta: Tensor, xs: Tensor, chunk: int = 2048,
                          **kwargs: Any) -> Tensor:
        est = self.estimator
        chol = self._bandwidth_cholesky()
        flat = theta.reshape(-1, self.dim).double()
        logw = est.weights.double().clamp(min=1e-300).log()
        log_det = 2 * chol.diagonal().log().sum()
        parts = []
        for i in range(0, flat.shape[0], chunk):
            diff = flat[i:i + chunk, None, :] - est.theta.double()[None]  # (c, N, D)
            z = torch.linalg.solve_triangular(chol, diff.reshape(-1, self.dim).T, upper=False)
            maha = z.square().sum(0).reshape(diff.shape[0], -1)
            parts.append(torch.logsumexp(logw - 0.5 * maha, dim=-1)
                         - 0.5 * log_det - 0.5 * self.dim * math.log(2 * math.pi))
        lp = torch.cat(parts).float()
        lp = torch.where(self._in_support(flat.float()), lp, torch.full_like(lp, -math.inf))
        return lp.reshape(theta.shape[:-1])

    @property
    def particles(self) -> tuple[Tensor, Tensor]:
        """``(theta (N, D), weights (N,))`` of the particle population."""
        return self.estimator.theta.clone(), self.estimator.weights.clone()


# ---------------------------------------------------------------------------------- distance
class Distance:
    """Distance of simulated ``x`` to ``x_o`` for ABC (see the module docstring).

    Args:
        problem: the problem (its ``noise_simulator`` / ``noise_dim`` enable the OW estimator).
        x_o: ``x_shape`` (euclidean) or a set ``(n, *x_shape)`` (mmd).
        distance: ``"euclidean"`` or ``"mmd"``.
        num_draws: ``m``, simulations per parameter for ``"mmd"``.
        estimator: ``"auto"``, ``"ow"``, ``"v"`` or ``"u"`` (mmd only).
        seed: seeds the scrambled Sobol inputs.
    """

    def __init__(self, problem: Problem, x_o: Tensor, distance: str = "euclidean",
                 num_draws: int = 64, estimator: str = "auto", seed: int = 0):
        self.problem, self.kind = problem, distance
        x_shape = tuple(problem.x_shape or ())
        x_o = torch.as_tensor(x_o, dtype=torch.float32)
        if not torch.isfinite(x_o).all():
            raise ValueError("x_o contains NaN or inf; ABC needs a finite observation.")
        self.x_o = x_o
        self.scale: Tensor | None = None
        self.weights: Tensor | None = None
        self.u: Tensor | None = None
        self.estimator = "none"
        self.m = 1
        if distance == "euclidean":
            if tuple(x_o.shape) != x_shape:
                hint = (" For a set of iid observations use distance='mmd'."
                        if x_o.ndim == len(x_shape) + 1 and tuple(x_o.shape[1:]) == x_shape else "")
                raise ValueError(f"x_o has shape {tuple(x_o.shape)}; distance='euclidean' needs "
                                 f"one observation of shape {x_shape}.{hint}")
            return
        if distance != "mmd":
            raise ValueError(f"distance must be 'euclidean' or 'mmd', got {distance!r}.")
        if x_o.ndim != len(x_shape) + 1 or tuple(x_o.shape[1:]) != x_shape or len(x_o) < 2:
            raise ValueError(f"distance='mmd' compares data sets: x_o must be a set of n >= 2 iid "
                             f"observations (n, *{x_shape}), got {tuple(x_o.shape)}.")
        if int(num_draws) < 2:
            raise ValueError(f"num_draws (m simulations per parameter) must be >= 2, got {num_draws}.")
        self.m = int(num_draws)
        self.y = x_o.reshape(len(x_o), -1).double()
        self.ell = median_lengthscale(self.y)
        self.yy = observed_term(self.y, self.ell)
        has_noise = getattr(problem, "noise_simulator", None) is not None
        if estimator == "auto":
            estimator = "ow" if has_noise else "v"
            if not has_noise:
                warnings.warn(
                    f"Problem {problem.name!r} does not expose its random inputs, so the ABC "
                    "distance uses the V-statistic MMD on iid simulations instead of the "
                    "optimally weighted estimator (which needs them). To use it, give the "
                    "simulator as simulator(theta, u) with Problem(..., noise_dim=k).",
                    UserWarning, stacklevel=3)
        if estimator not in ("ow", "v", "u"):
            raise ValueError(f"estimator must be 'auto', 'ow', 'v' or 'u', got {estimator!r}.")
        if estimator == "ow" and not has_noise:
            raise ValueError(f"estimator='ow' needs the simulator's random inputs, but problem "
                             f"{problem.name!r} has no noise_dim; use estimator='v' or give the "
                             "simulator as simulator(theta, u) with Problem(..., noise_dim=k).")
        self.estimator = estimator
        if has_noise:
            from sbi_core.noise import qmc_uniform

            self.u = qmc_uniform(self.m, problem.noise_dim, seed=seed)
            if estimator == "ow":
                self.weights = bq_weights(self.u)

    def fit_scale(self, x: Tensor) -> None:
        """Column scales (std) from prior-predictive simulations ``x`` ``(N, *x_shape)``."""
        if self.kind != "euclidean":
            return
        flat = x.reshape(len(x), -1).double()
        flat = flat[torch.isfinite(flat).all(-1)]
        if len(flat) < 2:
            raise ValueError("Fewer than 2 valid simulations to standardize the distance with.")
        self.scale = flat.std(0).clamp(min=1e-12)

    def __call__(self, x: Tensor, valid: Tensor) -> Tensor:
        """Distances ``(N,)`` of ``x`` (``(N, *x_shape)`` or sets ``(N, m, *x_shape)``);
        ``inf`` for invalid rows."""
        if self.kind == "euclidean":
            diff = (x.reshape(len(x), -1).double() - self.x_o.reshape(-1).double()) / self.scale
            d = diff.norm(dim=-1)
        else:
            sets = x.reshape(x.shape[0], self.m, -1).double()
            sets = torch.where(valid[:, None, None], sets, torch.zeros_like(sets))
            d = mmd2_weighted(sets, self.y, self.weights, self.ell, self.yy,
                              unbiased=self.estimator == "u")
        return torch.where(valid, d, torch.full_like(d, math.inf))


def simulate_particles(problem: Problem, theta: Tensor, dist: Distance, seed: int,
                       chunk_size: int = 100_000) -> tuple[Tensor, Tensor, int]:
    """Simulate ``theta`` ``(N, D)`` for ``dist``: ``(x, valid (N,), simulator calls)``.

    ``x`` is ``(N, *x_shape)`` (euclidean) or ``(N, m, *x_shape)`` (mmd). Runs through
    :func:`sbi_core.simulation.simulate` (failures recorded as invalid rows), except the
    common-random-numbers path, which calls ``problem.noise_simulator(theta, u)`` in chunks.
    """
    from sbi_core.simulation import simulate

    n, m = theta.shape[0], dist.m
    x_shape = tuple(problem.x_shape or ())
    if dist.u is not None:  # the same QMC inputs for every parameter
        reps = theta.repeat_interleave(m, dim=0)
        u = dist.u.repeat(n, 1)
        parts = []
        for i in range(0, reps.shape[0], chunk_size):
            try:
                parts.append(problem.noise_simulator(reps[i:i + chunk_size], u[i:i + chunk_size])
                             .float())
            except Exception as err:
                raise ValueError(f"simulator(theta, u) raised on {len(reps[i:i + chunk_size])} "
                                 f"parameters: {type(err).__name__}: {err}") from err
        x = torch.cat(parts).reshape(n, m, *x_shape)
        valid = torch.isfinite(x.reshape(n, -1)).all(-1)
        return x, valid, n * m
    reps = theta if m == 1 else theta.repeat_interleave(m, dim=0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*outside.*support.*")
        sims = simulate(problem, theta=reps, seed=seed, progress=False, chunk_size=chunk_size)
    if m == 1:
        return sims.x, sims.valid, n
    valid = sims.valid.reshape(n, m).all(-1)
    return sims.x.reshape(n, m, *x_shape), valid, n * m


# ---------------------------------------------------------------------------------- shared
def split_abc_options(options: dict[str, Any], own: dict[str, Any], kind: str
                      ) -> dict[str, Any]:
    """``options`` merged over ``ABC_OPTIONS`` and ``own`` defaults; unknown keys are errors
    (training options such as ``device`` are ignored: ABC trains nothing)."""
    allowed = {**ABC_OPTIONS, **own}
    unknown = set(options) - set(allowed) - _IGNORED
    if unknown:
        raise TypeError(f"Unknown {kind} options {sorted(unknown)}; valid: {sorted(allowed)}.")
    out = {**allowed, **{k: v for k, v in options.items() if k in allowed}}
    if out["x_o"] is None:
        raise ValueError(f"method={kind!r} fits one observation: pass it as fit(problem, sims, "
                         f"method={kind!r}, x_o=x_o) (on the command line: --x FILE).")
    return out


def start_population(problem: Problem, theta: Tensor, x: Tensor, dist: Distance, seed: int,
                     chunk_size: int) -> tuple[Tensor, Tensor, int]:
    """Distances ``(N,)`` of the given simulations and the simulator calls this made."""
    if len(theta) == 0:
        raise ValueError("ABC got 0 simulations; simulate a population from the prior first "
                         "(sbi_core.simulate(problem, N)).")
    valid = torch.isfinite(x.reshape(len(x), -1)).all(-1)
    calls = 0
    if dist.kind == "mmd":  # sims give theta; each needs m iid draws
        x, valid, calls = simulate_particles(problem, theta, dist, seed, chunk_size)
    else:
        dist.fit_scale(x[valid])
    d = dist(x, valid)
    if not bool(torch.isfinite(d).any()):
        raise ValueError(f"All {len(theta)} simulations of the first ABC population are invalid "
                         "(NaN/inf); fix the simulator or the prior range.")
    return d, valid, calls


def make_particles(problem: Problem, theta: Tensor, weights: Tensor, distances: Tensor,
                   x_o: Tensor, config: dict[str, Any]) -> ABCParticles:
    est = ABCParticles({**config, "num_particles": int(theta.shape[0]),
                        "theta_dim": int(theta.shape[1]), "x_o_shape": list(x_o.shape)})
    with torch.no_grad():
        est.theta.copy_(theta.float())
        est.weights.copy_((weights / weights.sum()).float())
        est.distances.copy_(distances.float())
        est.x_o.copy_(x_o.float())
    return est


# ---------------------------------------------------------------------------------- rejection
REJECTION_OPTIONS = {"quantile": None, "num_accept": None, "epsilon": None}


def fit_abc(problem: Problem, sims: tuple[Tensor, Tensor], seed: int = 0,
            **options: Any) -> ABCPosterior:
    """Rejection ABC: keep the simulations of ``sims`` closest to ``x_o``.

    Options: ``x_o`` (required), ``distance``, ``num_draws``, ``estimator`` (module
    docstring) and one of ``quantile`` (fraction kept, default 0.01), ``num_accept`` (number
    kept) or ``epsilon`` (distance threshold).
    """
    o = split_abc_options(options, REJECTION_OPTIONS, "abc")
    theta, x = sims
    n = int(theta.shape[0])
    chosen = [k for k in ("quantile", "num_accept", "epsilon") if o[k] is not None]
    if len(chosen) > 1:
        raise ValueError(f"Give one of quantile, num_accept or epsilon, not {chosen}.")
    if o["quantile"] is not None and not 0 < float(o["quantile"]) <= 1:
        raise ValueError(f"quantile must be in (0, 1], got {o['quantile']}.")
    if o["num_accept"] is not None and not 2 <= int(o["num_accept"]) <= n:
        raise ValueError(f"num_accept must be between 2 and the {n} simulations given, got "
                         f"{o['num_accept']}; simulate more or accept fewer.")
    dist = Distance(problem, o["x_o"], o["distance"], o["num_draws"], o["estimator"], seed)
    d, valid, calls = start_population(problem, theta, x, dist, seed, o["chunk_size"])
    n_valid = int(valid.sum())
    if o["epsilon"] is not None:
        keep = torch.nonzero(d <= float(o["epsilon"])).flatten()
        if len(keep) < 2:
            raise ValueError(f"Only {len(keep)} of {n} simulations lie within epsilon="
                             f"{o['epsilon']} of x_o (smallest distance {float(d.min()):.4g}); "
                             "raise epsilon, use quantile=..., or simulate more.")
    else:
        k = int(o["num_accept"]) if o["num_accept"] is not None else \
            int(math.floor(float(o["quantile"] or 0.01) * n))
        if k < 2:
            raise ValueError(f"quantile={o['quantile'] or 0.01} of {n} simulations keeps {k} "
                             f"particle(s); ABC needs at least 2. Simulate at least "
                             f"{math.ceil(2 / float(o['quantile'] or 0.01))} or raise quantile.")
        if k > n_valid:
            raise ValueError(f"Asked to keep {k} particles but only {n_valid} of {n} simulations "
                             "are valid; lower quantile/num_accept or simulate more.")
        keep = torch.argsort(d)[:k]
    total = n + calls
    history = {"num_simulations": total, "given_simulations": n, "simulator_calls": calls,
               "num_invalid": n - n_valid, "epsilon": float(d[keep].max()),
               "acceptance_rate": len(keep) / n, "distance": dist.kind,
               "estimator": dist.estimator, "num_draws": dist.m, "seconds": 0.0}
    config = {"kind": "abc", "distance": dist.kind, "estimator": dist.estimator,
              "num_draws": dist.m}
    est = make_particles(problem, theta[keep], torch.ones(len(keep), dtype=torch.float64),
                         d[keep], dist.x_o, config)
    return ABCPosterior(est, problem.prior, problem.spec(), history)


def _make_posterior(estimator: ABCParticles, prior: Distribution, problem_spec: dict[str, Any],
                    history: dict[str, Any] | None = None, **kwargs: Any) -> ABCPosterior:
    return ABCPosterior(estimator, prior, problem_spec, history)


def _no_build(*args: Any, **kwargs: Any) -> nn.Module:
    raise TypeError("ABC trains no estimator; use fit(problem, sims, method='abc', x_o=x_o).")


METHOD = Method(
    name="abc",
    build=_no_build,
    from_config=ABCParticles,
    make_posterior=_make_posterior,
    fit=fit_abc,
    description="Rejection ABC for one observation x_o (Euclidean distance on standardized x, "
                "or MMD for iid data sets with the optimally weighted estimator).",
)

