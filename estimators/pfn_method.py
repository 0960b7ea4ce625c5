"""The ``"pfn"`` method: training sets of iid observations, the posterior, and registration.

``fit(problem, sims, method="pfn", n_max=10)`` uses each simulated ``theta_j`` of ``sims``
as the parameter of one training set: its simulated ``x_j`` is the set's first
observation and ``n_max - 1`` more are simulated with ``problem.simulator``. The run
therefore costs ``N * (n_max - 1)`` simulations on top of the ``N`` in ``sims``
(``n_max=1`` uses exactly the given pairs). Training goes through the shared loop
:func:`sbi_core.training.train` on ``x`` of shape ``(N, n_max, *x_shape)``; the estimator's
loss draws one set size per minibatch.

The posterior accepts one observation ``x_shape``, a set ``(n, *x_shape)``, or batches
``(B, *x_shape)`` / ``(B, n, *x_shape)``. Its ``log_prob`` is exact and normalized and its
samples always lie in the prior support (bounded sides use bounded buckets).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution

from estimators.bar_distribution import BarDistribution, quantile_borders
from estimators.embedding import prepare_embedding
from estimators.pfn import PFN_DEFAULTS, PFNEstimator
from sbi_core.budget import Budget
from sbi_core.methods import Method
from sbi_core.posterior import ObservationError, Posterior, _device, seeded
from sbi_core.priors import support_bounds
from sbi_core.problem import Problem
from sbi_core.training import split_options, train

__all__ = ["build_pfn", "simulate_sets", "fit_pfn", "PFNPosterior", "METHOD"]

#: ``ema_decay``: the posterior uses an exponential moving average of the weights (issue 21:
#: with the raw weights, step-to-step noise in the predicted location cost C2ST 0.54 -> 0.64
#: for 10 iid observations on 10-D gaussian_linear; benchmarks/pfn_iid_diagnose.py).
TRAIN_DEFAULTS: dict[str, Any] = {"batch_size": 64, "learning_rate": 1e-3,
                                  "stop_after_epochs": 15, "ema_decay": 0.995}


def build_pfn(theta: Tensor, x: Tensor, prior: Distribution, **options: Any) -> PFNEstimator:
    """An untrained :class:`PFNEstimator` for ``theta`` ``(N, D)`` and ``x`` ``(N, *x_shape)``
    or sets ``(N, n, *x_shape)`` (give ``x_shape`` then, as the set shape is ambiguous).

    Bucket borders are prior quantiles from ``num_border_samples`` prior draws (bounded
    buckets on bounded sides, half-normal tails on unbounded ones); ``x`` is z-scored with
    statistics over all observations. ``embedding`` (a built-in spec or your own module)
    is applied to each observation before the transformer.
    """
    x_shape = options.pop("x_shape", None)
    unknown = set(options) - set(PFN_DEFAULTS)
    if unknown:
        raise TypeError(f"Unknown PFN options {sorted(unknown)}; valid: {sorted(PFN_DEFAULTS)} "
                        "and the training options of sbi_core.TrainConfig.")
    x_shape = tuple(x.shape[1:]) if x_shape is None else tuple(x_shape)
    if int(options.get("n_max", PFN_DEFAULTS["n_max"])) < 1:
        raise ValueError("n_max must be at least 1 (the largest set size seen in training).")
    spec, module = prepare_embedding(options.get("embedding"), x_shape)
    config = {**PFN_DEFAULTS, **options, "theta_dim": int(theta.shape[1]),
              "x_shape": list(x_shape), "embedding": spec}
    est = PFNEstimator(config, embedding=module)
    with torch.no_grad():
        rows = x.reshape(-1, *x_shape)
        est.x_mean.copy_(rows.mean(0))
        est.x_std.copy_(rows.std(0).clamp(min=1e-8))
        est.x_min.copy_(rows.min(0).values)
        est.x_max.copy_(rows.max(0).values)
        draws = prior.sample((int(config["num_border_samples"]),)).float()
        low, high = support_bounds(prior)
        borders = quantile_borders(draws, int(config["num_buckets"]), low, high,
                                   uniform_share=float(config["border_uniform_share"]))
        est.bar = BarDistribution(borders, ~torch.isfinite(low), ~torch.isfinite(high))
        if est.log_prior_mass is not None:  # prior mass per bucket, from the same draws
            inner = borders[:, 1:-1].T.contiguous()  # (K - 1, D)
            idx = torch.searchsorted(inner.T.contiguous(), draws.T.contiguous(), right=True)
            counts = torch.zeros_like(est.log_prior_mass).scatter_add_(
                1, idx, torch.ones_like(draws.T))
            est.log_prior_mass.copy_((counts.clamp(min=1) / draws.shape[0]).log())
        est.theta_mean.copy_(draws.mean(0))
        est.theta_std.copy_(draws.std(0).clamp(min=1e-8))
    return est


def simulate_sets(problem: Problem, theta: Tensor, x: Tensor, n_max: int,
                  chunk_size: int = 100_000) -> Tensor:
    """Sets ``(N, n_max, *x_shape)``: ``x`` first, then ``n_max - 1`` new simulations per row.

    Rows whose new simulations are not finite are returned with NaN (callers drop them).
    """
    if n_max == 1:
        return x.unsqueeze(1)
    if problem.simulator is None:
        raise ValueError("PFN training with n_max > 1 simulates extra iid observations per "
                         "theta, but this problem has no simulator; pass n_max=1.")
    reps = theta.repeat_interleave(n_max - 1, dim=0)
    parts = [problem.simulator(reps[i:i + chunk_size]).float()
             for i in range(0, reps.shape[0], chunk_size)]
    extra = torch.cat(parts).reshape(theta.shape[0], n_max - 1, *x.shape[1:])
    return torch.cat([x.unsqueeze(1), extra], dim=1)


def fit_pfn(problem: Problem, sims: tuple[Tensor, Tensor], seed: int = 0,
            **options: Any) -> PFNPosterior:
    """Train a PFN on sets built from ``sims`` (see the module docstring for the cost)."""
    theta, x = sims
    train_config, est_options = split_options({**TRAIN_DEFAULTS, **options, "seed": seed})
    n_max = int(est_options.get("n_max", PFN_DEFAULTS["n_max"]))
    with seeded(seed):
        sets = simulate_sets(problem, theta, x, n_max)
    ok = torch.isfinite(sets.reshape(sets.shape[0], -1)).all(-1)
    if not bool(ok.all()):
        warnings.warn(f"Dropped {int((~ok).sum())} of {len(ok)} training sets with non-finite "
                      "simulations.", stacklevel=2)
        theta, sets = theta[ok], sets[ok]
    torch.manual_seed(seed)
    estimator = build_pfn(theta, sets, problem.prior, x_shape=tuple(x.shape[1:]), **est_options)
    history = train(estimator, theta, sets, train_config)
    out = history.to_dict()
    out["num_simulations"] = int(theta.shape[0] * n_max)
    return _make_posterior(estimator, problem.prior, problem.spec(), out)


class PFNPosterior(Posterior):
    """Posterior of a trained :class:`PFNEstimator`; ``x`` may be a set of iid observations.

    Sets larger than the training ``n_max`` are extrapolation: they raise
    :class:`ObservationError` (``range_check="warn"`` or ``"off"`` lets them through).
    """

    method = "pfn"
    supports_iid = True

    def _sets(self, xs: Tensor) -> Tensor:
        sets = xs if self.is_iid_batch(xs, self.x_shape) else xs.unsqueeze(1)
        n, n_max = sets.shape[1], self.estimator.n_max
        if n > n_max and self.range_check != "off":
            msg = (f"The set has n={n} observations but the PFN was trained on sets of at most "
                   f"n_max={n_max}; beyond that its posterior is an extrapolation. Retrain with "
                   "n_max >= n, or pass range_check='warn' to proceed.")
            if self.range_check == "error":
                raise ObservationError(msg)
            warnings.warn(msg, stacklevel=4)
        return sets.to(_device(self.estimator))

    def _sample_batched(self, n: int, xs: Tensor, budget: Budget | None = None,
                        **kwargs: Any) -> Tensor:
        return self.estimator.sample(n, self._sets(xs), budget=budget).cpu()

    def _log_prob_batched(self, theta: Tensor, xs: Tensor, chunk: int = 4096,
                          **kwargs: Any) -> Tensor:
        sets = self._sets(xs)
        cache = self.estimator.encode(sets)
        per = max(1, chunk // max(sets.shape[0], 1))
        out = []
        for i in range(0, theta.shape[0], per):
            t = theta[i:i + per].to(sets.device)
            logits = self.estimator.logits(t, cache, sets.shape[1])
            out.append(self.estimator.bar.log_prob(logits, t).sum(-1).cpu())
        return torch.cat(out)


def _make_posterior(estimator: PFNEstimator, prior: Distribution, problem_spec: dict[str, Any],
                    history: dict[str, Any] | None = None, **kwargs: Any) -> PFNPosterior:
    return PFNPosterior(estimator, prior, problem_spec, history, **kwargs)


METHOD = Method(
    name="pfn",
    build=build_pfn,
    from_config=PFNEstimator,
    make_posterior=_make_posterior,
    train_defaults=TRAIN_DEFAULTS,
    fit=fit_pfn,
    description="PFN-style set transformer: autoregressive bar-distribution posterior for sets "
                "of 1..n_max iid observations.",
)
