r"""Robustness of an amortized posterior to adversarial perturbations of the observation.

:func:`robustness_report` attacks test observations at several budgets ``eps`` (relative to
the data scale, see :mod:`diagnostics.attacks`) and returns plain values:

- the divergence between clean and attacked posteriors (mean and upper quantiles over
  observations; reverse KL ``KL(q(.|x~) || q(.|x))`` by default), and the same for random
  noise of the same norm;
- the expected coverage of the attacked posteriors (HPD ranks of the true parameters) when
  the true parameters are given;
- posterior predictive distances of clean and attacked posteriors to the clean observation
  when a simulator is given;
- a ``status`` (``pass``/``warn``/``fail``) with a ``reason``.

Monte Carlo KL values below ``-1e4`` or non-finite ones are replaced by the median over
observations, as in the reference code.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from diagnostics.attacks import (
    NORMS,
    _log_prob,
    attack_objective,
    attackable_estimator,
    pgd_attack,
    random_perturbation,
    relative_scale,
)

__all__ = ["robustness_report", "robustness_section", "divergence", "expected_coverage", "predictive_distance",
           "summarize"]

METRICS = ("rkl", "fkl", "mmd")
QUANTILES = (0.5, 0.9, 0.95, 0.99)


def divergence(model: Any, xs: Tensor, xs_adv: Tensor, metric: str = "rkl",
               num_samples: int = 256, batch_size: int = 128, seed: int = 1) -> Tensor:
    """``D(q(.|x_b), q(.|x~_b))`` ``(B,)`` with ``num_samples`` Monte Carlo samples, no grad."""
    if metric not in METRICS:
        raise ValueError(f"Unknown metric {metric!r}; use one of {METRICS}.")
    est = attackable_estimator(model)
    device = _device(est)
    out = []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for i in range(0, xs.shape[0], batch_size):
            x, xa = xs[i:i + batch_size].to(device), xs_adv[i:i + batch_size].to(device)
            out.append(attack_objective(est, x, xa, metric, num_samples).cpu())
    return _robust(torch.cat(out))


def _device(est: Any) -> torch.device:
    params = list(est.parameters()) if hasattr(est, "parameters") else []
    return params[0].device if params else torch.device("cpu")


def _robust(values: Tensor) -> Tensor:
    bad = ~torch.isfinite(values) | (values < -1e4)
    if bad.any() and (~bad).any():
        values = torch.where(bad, values[~bad].median(), values)
    return values


def summarize(values: Tensor) -> dict[str, float]:
    """Mean, quantiles ``q50/q90/q95/q99`` and max of ``values`` ``(B,)`` as plain floats."""
    v = values.double()
    out = {"mean": float(v.mean())}
    for q in QUANTILES:
        out[f"q{int(round(q * 100))}"] = float(torch.quantile(v, q))
    out["max"] = float(v.max())
    return out


def expected_coverage(model: Any, xs: Tensor, theta: Tensor, num_samples: int = 200,
                      levels: Sequence[float] = (0.5, 0.8, 0.9, 0.95), prior: Any = None,
                      batch_size: int = 128, seed: int = 2) -> dict[str, Any]:
    """Expected HPD coverage of ``q(.|x_b)`` for the true ``theta`` ``(B, D)``.

    ``rank_b`` is the fraction of posterior samples with higher density than ``theta_b``
    (samples outside the prior's support, when ``prior`` is given, do not count). At level
    ``a`` the coverage is the fraction of observations with ``rank_b < a``; a calibrated
    posterior has coverage ``a``. Returns the levels, coverages, and ``error`` (mean
    ``|coverage - a|`` over ``a`` in 0.01..0.99).
    """
    est = attackable_estimator(model)
    device = _device(est)
    ranks = []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for i in range(0, xs.shape[0], batch_size):
            x, th = xs[i:i + batch_size].to(device), theta[i:i + batch_size].to(device)
            samples = est.sample(num_samples, x)  # (n, B, D)
            lp_s = _log_prob(est, samples, x)
            lp_t = est.log_prob(th, x)
            inside = torch.ones_like(lp_s, dtype=torch.bool)
            if prior is not None:
                from sbi_core.priors import within_support

                d = samples.shape[-1]
                inside = within_support(prior, samples.reshape(-1, d).cpu()).reshape(
                    lp_s.shape).to(lp_s.device)
            higher = (inside & (lp_s > lp_t[None])).float().sum(0)
            ranks.append((higher / inside.float().sum(0).clamp(min=1)).cpu())
    rank = torch.cat(ranks)
    grid = torch.linspace(0.01, 0.99, 99)
    curve = (rank[None, :] < grid[:, None]).float().mean(1)
    return {"levels": [float(a) for a in levels],
            "coverage": [float((rank < a).float().mean()) for a in levels],
            "error": float((curve - grid).abs().mean())}


def predictive_distance(model: Any, xs: Tensor, xs_adv: Tensor,
                        simulator: Callable[[Tensor], Tensor], num_samples: int = 20,
                        prior: Any = None, seed: int = 3) -> dict[str, float]:
    """Posterior predictive misfit to the clean observation, for clean and attacked posteriors.

    Draws ``num_samples`` parameters from ``q(.|x)`` and from ``q(.|x~)``, simulates, and
    measures the RMS distance of the predictive ``x`` to the clean ``x`` in units of the
    training data's per-feature std (z-scored), median over samples, mean over observations.
    Parameters outside the prior's support (when ``prior`` is given) are dropped first.
    """
    est = attackable_estimator(model)
    std = getattr(getattr(est, "x_norm", None), "std", None)
    std = torch.ones(xs.shape[1:]) if std is None else std.cpu()

    def misfit(cond: Tensor) -> float:
        theta = est.sample(num_samples, cond.to(_device(est))).cpu()  # (n, B, D)
        n, b, d = theta.shape
        flat = theta.reshape(n * b, d)
        ok = torch.ones(n * b, dtype=torch.bool)
        if prior is not None:
            from sbi_core.priors import within_support

            ok = within_support(prior, flat)
        x_pred = torch.full((n * b, *xs.shape[1:]), float("nan"))
        if ok.any():
            x_pred[ok] = simulator(flat[ok]).float().reshape(-1, *xs.shape[1:])
        x_ref = xs.unsqueeze(0).expand(n, *xs.shape).reshape(n * b, *xs.shape[1:])
        dist = ((x_pred - x_ref) / std).reshape(n * b, -1).pow(2).mean(1).sqrt().reshape(n, b)
        return float(torch.nanmedian(dist, 0).values.nanmean())

    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        clean = misfit(xs)
        attacked = misfit(xs_adv)
    return {"clean": clean, "attacked": attacked,
            "ratio": attacked / clean if clean > 0 else math.inf}


#: attack / noise divergence ratio below which the attack is "like random noise" (the status
#: text then says the budget, not an adversarial weakness, moves the posterior).
NOISE_LIKE_RATIO = 1.5


def _status(results: list[dict[str, Any]], status_eps: float, kl_warn: float,
            kl_fail: float, metric: str) -> tuple[str, str]:
    row = min(results, key=lambda r: abs(r["eps"] - status_eps))
    mean, q95 = row["attack"]["mean"], row["attack"]["q95"]
    noise = row["noise"]["mean"]
    text = (f"at eps={row['eps']:g} the attack moves the posterior by {metric} mean "
            f"{mean:.3g} (q95 {q95:.3g}) vs {noise:.3g} for random noise of the same norm")
    like_noise = mean < NOISE_LIKE_RATIO * noise  # the attack finds nothing noise does not
    advice = (f"; random noise of the same norm moves it about as much (ratio "
              f"{mean / max(noise, 1e-12):.2f}), so this budget is large for this posterior's "
              "width rather than an adversarial weakness (FIM regularization targets the "
              "latter): judge the smaller budgets" if like_noise else "")
    if mean >= kl_fail:
        fix = advice if like_noise else ("; consider FIM-regularized training "
                                         "(fit(..., regularizer='fim'))")
        return "fail", (f"{text}: perturbations of this budget change the posterior "
                        f"drastically (mean >= {kl_fail:g}){fix}.")
    if mean >= kl_warn or q95 >= kl_fail:
        return "warn", (f"{text}: moderately sensitive (mean >= {kl_warn:g} or q95 >= "
                        f"{kl_fail:g}){advice}.")
    return "pass", f"{text}: robust at this budget (mean < {kl_warn:g})."


def robustness_report(posterior: Any, xs: Tensor, theta: Tensor | None = None,
                      eps: Sequence[float] = (0.1, 0.5, 1.0, 2.0), norm: str = "l2",
                      attack_loss: str = "rkl", metric: str = "rkl", steps: int | None = None,
                      mc_samples: int | None = None, num_samples: int = 256,
                      simulator: Callable[[Tensor], Tensor] | None = None,
                      prior: Any = None, status_eps: float = 1.0, kl_warn: float = 1.0,
                      kl_fail: float = 10.0, seed: int = 0) -> dict[str, Any]:
    """Attack ``xs`` ``(B, *x_shape)`` at each ``eps`` and summarize (plain-value dict).

    Args:
        posterior: an NPE posterior (or its estimator).
        xs: test observations; ``theta`` ``(B, D)`` their true parameters (enables coverage).
        eps: relative budgets; ``eps_abs = eps * xs.std(1).mean()``.
        norm, attack_loss, steps, mc_samples: passed to :func:`~diagnostics.attacks.pgd_attack`.
        metric: evaluated divergence (``rkl``, ``fkl``, ``mmd``) with ``num_samples`` samples.
        simulator: enables posterior predictive distances (``problem.simulator``).
        prior: drops out-of-support samples in coverage/predictives (default: the posterior's).
        status_eps, kl_warn, kl_fail: ``fail`` if the mean divergence at the budget closest to
            ``status_eps`` is ``>= kl_fail``; ``warn`` if it is ``>= kl_warn`` or its q95
            ``>= kl_fail``; else ``pass``.

    Returns:
        ``{"status", "reason", "norm", "attack_loss", "metric", "scale", "num_observations",
        "clean_coverage", "results": [{"eps", "eps_abs", "attack": {mean, q50, q90, q95,
        q99, max}, "noise": {...}, "attack_over_noise", "coverage", "predictive"}], ...}``.
    """
    start = time.perf_counter()
    est = attackable_estimator(posterior)
    if norm not in NORMS:
        raise ValueError(f"Unknown norm {norm!r}; use one of {NORMS}.")
    xs = torch.as_tensor(xs, dtype=torch.float32)
    if theta is not None:
        theta = torch.as_tensor(theta, dtype=torch.float32)
        if theta.shape[0] != xs.shape[0]:
            raise ValueError(f"theta has {theta.shape[0]} rows but xs has {xs.shape[0]}.")
    if attack_loss == "nll" and theta is None:
        raise ValueError("attack_loss='nll' needs the true parameters theta.")
    eps = [float(e) for e in eps]
    if not eps or any(not (math.isfinite(e) and e > 0) for e in eps):
        raise ValueError(f"eps must be a non-empty list of positive numbers, got {eps}.")
    prior = prior if prior is not None else getattr(posterior, "prior", None)
    scale = relative_scale(xs)
    report: dict[str, Any] = {
        "norm": norm, "attack_loss": attack_loss, "metric": metric, "scale": scale,
        "num_observations": int(xs.shape[0]), "num_samples": num_samples,
        "regularizer": (getattr(est, "config", {}) or {}).get("regularizer"),
    }
    if theta is not None:
        report["clean_coverage"] = expected_coverage(est, xs, theta, prior=prior)
    results = []
    for i, e in enumerate(eps):
        x_adv = pgd_attack(est, xs, e, norm=norm, loss=attack_loss, theta=theta, steps=steps,
                           mc_samples=mc_samples, scale=scale, seed=seed + i)
        x_noise = random_perturbation(est, xs, e, norm=norm, scale=scale, seed=seed + i)
        attack = summarize(divergence(est, xs, x_adv, metric, num_samples))
        noise = summarize(divergence(est, xs, x_noise, metric, num_samples))
        row: dict[str, Any] = {"eps": e, "eps_abs": e * scale, "attack": attack, "noise": noise,
                               "attack_over_noise": attack["mean"] / max(noise["mean"], 1e-12)}
        if theta is not None:
            row["coverage"] = expected_coverage(est, x_adv, theta, prior=prior)
        if simulator is not None:
            row["predictive"] = predictive_distance(est, xs, x_adv, simulator, prior=prior)
        results.append(row)
    report["results"] = results
    report["status"], report["reason"] = _status(results, status_eps, kl_warn, kl_fail, metric)
    report["thresholds"] = {"status_eps": status_eps, "kl_warn": kl_warn, "kl_fail": kl_fail}
    report["seconds"] = time.perf_counter() - start
    return report


def robustness_section(posterior: Any, problem: Any, num_observations: int = 100, seed: int = 0,
                       **kwargs: Any) -> dict[str, Any]:
    """:func:`robustness_report` on ``num_observations`` fresh simulations of ``problem``.

    The entry point for report cards: simulates test pairs (seeded), passes the problem's
    simulator for posterior predictives and its prior for support checks; ``kwargs`` go to
    :func:`robustness_report` (``eps``, ``norm``, ``steps``, ...).
    """
    from sbi_core.simulation import simulate

    sims = simulate(problem, num_observations, seed=seed, progress=False)
    theta, x = sims.training_data(warn=False)
    kwargs.setdefault("simulator", problem.simulator)
    kwargs.setdefault("prior", problem.prior)
    return robustness_report(posterior, x, theta, seed=seed, **kwargs)
