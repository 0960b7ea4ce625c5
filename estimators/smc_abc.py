r"""SMC-ABC: population Monte Carlo with an adaptive quantile schedule of tolerances.

``fit(problem, sims, method="smc_abc", x_o=x_o, num_simulations=20_000)`` runs the adaptive
ABC-PMC of Lenormand, Jabot & Deffuant (2013), a batched form of Beaumont et al. (2009)
with Del Moral-style tolerances set by a quantile of the distances:

1. Population 0 is ``sims`` (prior draws): keep the ``num_particles`` closest to ``x_o``
   (uniform weights); :math:`\epsilon_0` is the largest kept distance.
2. Each round draws ``num_particles * (1/alpha - 1)`` parents by weight, perturbs them with
   :math:`N(0, 2\Sigma)` (:math:`\Sigma`: the weighted covariance of the population;
   proposals outside the prior support are redrawn), simulates them all in one batch, and
   gives each the importance ratio
   :math:`p(\theta) / \sum_j w_j\, N(\theta; \theta_j, 2\Sigma)` (prior draws have ratio 1).
3. Old and new particles are pooled; the ``num_particles`` closest are kept, so the new
   :math:`\epsilon_t` is the ``alpha`` quantile of the pooled distances.
4. Stop when the fraction of new particles within :math:`\epsilon_{t-1}` falls below
   ``min_acceptance`` or the next round would exceed ``num_simulations`` (every simulator
   call counted, the given ``sims`` included).

The posterior is an :class:`estimators.abc.ABCPosterior` (``method == "smc_abc"``); its
history lists the tolerances, acceptance rates, simulations per round and the final ESS.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any

import torch
from torch import Tensor

from estimators.abc import (
    ABCParticles,
    ABCPosterior,
    Distance,
    _make_posterior,
    _no_build,
    make_particles,
    simulate_particles,
    split_abc_options,
    start_population,
)
from sbi_core.methods import Method
from sbi_core.priors import prior_log_prob, within_support
from sbi_core.problem import Problem

__all__ = ["fit_smc_abc", "METHOD", "SMC_OPTIONS"]

SMC_OPTIONS = {"num_particles": None, "alpha": 0.5, "num_simulations": None,
               "min_acceptance": 0.02, "max_rounds": 50}


def _weighted_cov(theta: Tensor, w: Tensor) -> Tensor:
    mean = (w[:, None] * theta).sum(0)
    diff = theta - mean
    return (w[:, None] * diff).T @ diff


def _propose(prior: Any, theta: Tensor, w: Tensor, chol: Tensor, n: int,
             gen: torch.Generator) -> Tensor:
    """``n`` perturbed draws inside the prior support (out-of-support ones redrawn)."""
    out = torch.empty(n, theta.shape[1], dtype=torch.float64)
    todo = torch.arange(n)
    for _ in range(1000):
        k = len(todo)
        parents = torch.multinomial(w, k, replacement=True, generator=gen)
        prop = theta[parents] + torch.randn(k, theta.shape[1], generator=gen,
                                            dtype=torch.float64) @ chol.T
        ok = within_support(prior, prop.float())
        out[todo[ok]] = prop[ok]
        todo = todo[~ok]
        if len(todo) == 0:
            return out
    raise ValueError("SMC-ABC could not perturb particles into the prior support after 1000 "
                     "tries; the population sits on the support's edge. Use method='abc'.")


def _log_kernel_mixture(new: Tensor, theta: Tensor, logw: Tensor, chol: Tensor,
                        chunk: int = 1024) -> Tensor:
    r""":math:`\log \sum_j w_j N(new_i; \theta_j, LL^\top)` for ``new`` ``(M, D)`` → ``(M,)``."""
    d = theta.shape[1]
    log_det = 2 * chol.diagonal().log().sum()
    out = []
    for i in range(0, len(new), chunk):
        diff = new[i:i + chunk, None, :] - theta[None]
        z = torch.linalg.solve_triangular(chol, diff.reshape(-1, d).T, upper=False)
        maha = z.square().sum(0).reshape(diff.shape[0], -1)
        out.append(torch.logsumexp(logw - 0.5 * maha, -1))
    return torch.cat(out) - 0.5 * log_det - 0.5 * d * math.log(2 * math.pi)


def fit_smc_abc(problem: Problem, sims: tuple[Tensor, Tensor], seed: int = 0,
                **options: Any) -> ABCPosterior:
    """SMC-ABC (module docstring). Options: ``x_o`` (required), ``distance``, ``num_draws``,
    ``estimator`` (as for ``abc``), ``num_particles`` (kept per round; default a tenth of
    the given simulations, at most 1000: fewer particles give more rounds and a smaller
    final tolerance), ``alpha`` (fraction kept per round, 0.5),
    ``num_simulations`` (total simulator calls, the given ``sims`` included; default 5x
    those), ``min_acceptance`` (0.02) and ``max_rounds`` (50)."""
    start = time.perf_counter()
    o = split_abc_options(options, SMC_OPTIONS, "smc_abc")
    theta0, x0 = sims
    n0 = int(theta0.shape[0])
    alpha = float(o["alpha"])
    if not 0 < alpha < 1:
        raise ValueError(f"alpha (the fraction of particles kept each round) must be in (0, 1), "
                         f"got {alpha}.")
    k = int(o["num_particles"]) if o["num_particles"] is not None else min(1000, n0 // 10)
    if not 2 <= k <= n0:
        raise ValueError(f"num_particles={k} must be between 2 and the {n0} simulations given "
                         "(population 0); simulate more or lower num_particles.")
    dist = Distance(problem, o["x_o"], o["distance"], o["num_draws"], o["estimator"], seed)
    per_round = max(1, int(round(k * (1 / alpha - 1))))
    calls_per_round = per_round * dist.m
    first_calls = n0 * dist.m if dist.kind == "mmd" else 0
    budget = int(o["num_simulations"]) if o["num_simulations"] is not None \
        else 5 * (n0 + first_calls)
    if budget < n0 + first_calls + calls_per_round:
        raise ValueError(
            f"num_simulations={budget} leaves no room for one SMC round: the {n0} given "
            f"simulations{f' (plus {first_calls} draws for the MMD)' if first_calls else ''} "
            f"and {calls_per_round} per round need at least {n0 + first_calls + calls_per_round}."
            " Raise num_simulations, or use method='abc' for rejection only.")
    d0, valid, calls = start_population(problem, theta0, x0, dist, seed, o["chunk_size"])
    n_valid = int(valid.sum())
    if n_valid < k:
        raise ValueError(f"Only {n_valid} of {n0} given simulations are valid, fewer than "
                         f"num_particles={k}; lower num_particles or simulate more.")
    used = n0 + calls
    order = torch.argsort(d0)[:k]
    theta, dists = theta0[order].double(), d0[order]
    w = torch.full((k,), 1.0 / k, dtype=torch.float64)
    ratio = torch.ones(k, dtype=torch.float64)
    eps = [float(dists.max())]
    rates: list[float] = []
    sims_per_round = [used]
    gen = torch.Generator().manual_seed(seed + 101)
    num_invalid = n0 - n_valid
    stop = "max_rounds"
    for r in range(int(o["max_rounds"])):
        if used + calls_per_round > budget:
            stop = "budget"
            break
        cov = 2 * _weighted_cov(theta, w)
        scale = cov.diagonal().mean().clamp(min=1e-12)
        chol = torch.linalg.cholesky(cov + 1e-9 * scale * torch.eye(theta.shape[1],
                                                                   dtype=torch.float64))
        new = _propose(problem.prior, theta, w, chol, per_round, gen)
        x, ok, c = simulate_particles(problem, new.float(), dist, seed + 1 + r, o["chunk_size"])
        used += c
        sims_per_round.append(c)
        num_invalid += int((~ok).sum())
        d_new = dist(x, ok)
        rate = float((d_new <= eps[-1]).double().mean())
        rates.append(rate)
        log_prior = prior_log_prob(problem.prior, new.float()).double()
        # unnormalized importance ratios prior / proposal: 1 for prior draws, so old and
        # new particles are on one scale when pooled
        ratio_new = torch.exp(log_prior - _log_kernel_mixture(new, theta, w.log(), chol))
        pool_theta = torch.cat([theta, new])
        pool_d = torch.cat([dists, d_new])
        pool_ratio = torch.cat([ratio, ratio_new])
        keep = torch.argsort(pool_d)[:k]
        theta, dists, ratio = pool_theta[keep], pool_d[keep], pool_ratio[keep]
        w = ratio / ratio.sum()
        eps.append(float(dists.max()))
        if rate < float(o["min_acceptance"]):
            stop = "min_acceptance"
            break
    if not rates:
        warnings.warn("SMC-ABC ran no round (budget); the result is rejection ABC.", stacklevel=2)
    ess = float(1.0 / w.square().sum())
    history = {"num_simulations": used, "given_simulations": n0, "simulator_calls": used - n0,
               "num_invalid": num_invalid, "rounds": len(rates), "epsilons": eps,
               "acceptance_rates": rates, "simulations_per_round": sims_per_round,
               "ess": ess, "stopped": stop, "distance": dist.kind, "estimator": dist.estimator,
               "num_draws": dist.m, "seconds": time.perf_counter() - start}
    config = {"kind": "smc_abc", "distance": dist.kind, "estimator": dist.estimator,
              "num_draws": dist.m}
    est: ABCParticles = make_particles(problem, theta, w, dists, dist.x_o, config)
    return ABCPosterior(est, problem.prior, problem.spec(), history)


METHOD = Method(
    name="smc_abc",
    build=_no_build,
    from_config=ABCParticles,
    make_posterior=_make_posterior,
    fit=fit_smc_abc,
    description="SMC-ABC (adaptive population Monte Carlo) for one observation x_o.",
)
