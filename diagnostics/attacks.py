r"""Adversarial attacks on amortized posteriors: projected gradient ascent on the observation.

For a trained ``q(theta | x)`` and observations ``x`` ``(B, *x_shape)`` the attack finds

.. math:: \tilde x = \arg\max_{\lVert \tilde x - x \rVert_p \le \epsilon_{abs}} D(q(\cdot|x), q(\cdot|\tilde x))

by PGD with a uniform random start in the ball, batched over observations. The budget is
relative to the data scale (Glöckler et al. 2023): ``eps_abs = eps * scale`` with
``scale = xs.std(1).mean()``, the spread across features of each observation averaged over
observations (:func:`estimators.robust_training.relative_scale`). ``x~`` is clipped to the
global range of the training data. Attack losses (``loss=``):

- ``"rkl"`` (default): ``KL(q(.|x~) || q(.|x))``, reparameterized samples from ``q(.|x~)``;
- ``"fkl"``: ``KL(q(.|x) || q(.|x~))``, samples from ``q(.|x)``;
- ``"mmd"``: squared MMD between samples of both (RBF kernel, median bandwidth, in the
  estimator's standardized theta space);
- ``"nll"``: ``-log q(theta_true | x~)`` (needs ``theta``).

:func:`random_perturbation` is the baseline: uniform noise of the same norm (the sphere of
radius ``eps_abs``). The attacked function includes the estimator's z-scoring, so everything
is in raw ``x`` units. Attacks need ``sample_and_log_prob(n, x)`` and ``log_prob(theta, x)``
with gradients w.r.t. ``x`` (all NPE density estimators: MAF, NSF, MDN).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from estimators.robust_training import relative_scale

__all__ = ["ATTACK_LOSSES", "NORMS", "attackable_estimator", "pgd_attack", "random_perturbation",
           "attack_objective", "relative_scale", "clip_bounds"]

ATTACK_LOSSES = ("rkl", "fkl", "mmd", "nll")
NORMS = ("l2", "linf")
#: Reference settings per norm: PGD iterations and Monte Carlo samples per step.
NORM_DEFAULTS = {"l2": {"steps": 200, "mc_samples": 5}, "linf": {"steps": 120, "mc_samples": 1}}


def attackable_estimator(model: Any) -> nn.Module:
    """The estimator of a posterior (or the estimator itself), checked for what attacks need."""
    est = getattr(model, "estimator", model)
    missing = [name for name in ("sample_and_log_prob", "log_prob", "sample")
               if not callable(getattr(est, name, None))]
    if missing:
        method = getattr(model, "method", "") or type(est).__name__
        raise ValueError(
            f"Adversarial attacks need an estimator with differentiable sampling and a "
            f"normalized log density; {method!r} lacks {missing}. Attacks and the robustness "
            "report support NPE posteriors (MAF, NSF, MDN)."
        )
    return est


def clip_bounds(est: nn.Module, xs: Tensor) -> tuple[Tensor, Tensor]:
    """Global scalar range of the training x (or of ``xs``), widened to contain ``xs``."""
    lo_t, hi_t = getattr(est, "x_min", None), getattr(est, "x_max", None)
    if lo_t is not None and hi_t is not None and bool((hi_t > lo_t).any()):
        lo, hi = lo_t.min().cpu(), hi_t.max().cpu()
    else:
        lo, hi = xs.min(), xs.max()
    return torch.minimum(xs, lo), torch.maximum(xs, hi)


def _project(delta: Tensor, eps_abs: float, norm: str) -> Tensor:
    if norm == "linf":
        return delta.clamp(-eps_abs, eps_abs)
    flat = delta.reshape(delta.shape[0], -1)
    factor = (eps_abs / flat.norm(dim=1).clamp(min=1e-12)).clamp(max=1.0)
    return (flat * factor[:, None]).reshape(delta.shape)


def _random_start(shape: tuple[int, ...], eps_abs: float, norm: str) -> Tensor:
    if norm == "linf":
        return (torch.rand(shape) * 2 - 1) * eps_abs
    from estimators.robust_training import l2_ball_noise

    return l2_ball_noise(shape, eps_abs)


def _rbf_mmd2(a: Tensor, b: Tensor) -> Tensor:
    """Biased squared MMD per batch: ``a``, ``b`` ``(B, m, D)`` → ``(B,)`` (median bandwidth)."""
    with torch.no_grad():
        d_bb = torch.cdist(b, b).pow(2)
        bw = d_bb.flatten(1).median(1).values.clamp(min=1e-6)[:, None, None]
    k = lambda u, v: torch.exp(-torch.cdist(u, v).pow(2) / bw)  # noqa: E731
    return k(a, a).mean((1, 2)) + k(b, b).mean((1, 2)) - 2 * k(a, b).mean((1, 2))


def _log_prob(est: nn.Module, theta: Tensor, x: Tensor) -> Tensor:
    """``log q(theta_{i,b} | x_b)`` for ``theta`` ``(m, B, D)``, ``x`` ``(B, *x_shape)`` → ``(m, B)``."""
    m, b, d = theta.shape
    xr = x.unsqueeze(0).expand(m, *x.shape).reshape(m * b, *x.shape[1:])
    return est.log_prob(theta.reshape(m * b, d), xr).reshape(m, b)


def attack_objective(est: nn.Module, x: Tensor, x_adv: Tensor, loss: str = "rkl",
                     num_samples: int = 5, theta: Tensor | None = None) -> Tensor:
    """Per-observation divergence ``(B,)`` between ``q(.|x)`` and ``q(.|x_adv)``.

    Differentiable w.r.t. ``x_adv``; ``x`` is treated as fixed. ``num_samples`` Monte Carlo
    samples per observation (``nll`` uses ``theta`` ``(B, D)`` and no sampling).
    """
    m = int(num_samples)
    if loss == "rkl":
        th, lp_adv = est.sample_and_log_prob(m, x_adv)  # (m, B, D), (m, B)
        return (lp_adv - _log_prob(est, th, x)).mean(0)
    if loss == "fkl":
        with torch.no_grad():
            th, lp_clean = est.sample_and_log_prob(m, x)
        return (lp_clean - _log_prob(est, th, x_adv)).mean(0)
    if loss == "mmd":
        with torch.no_grad():
            th_clean = est.sample(m, x)
        th_adv, _ = est.sample_and_log_prob(m, x_adv)
        norm = getattr(est, "theta_norm", None)
        if norm is not None:
            th_clean, th_adv = norm(th_clean), norm(th_adv)
        return _rbf_mmd2(th_adv.transpose(0, 1), th_clean.transpose(0, 1))
    if loss == "nll":
        if theta is None:
            raise ValueError("The 'nll' attack needs the true parameters: pass theta (B, D).")
        return -est.log_prob(theta, x_adv)
    raise ValueError(f"Unknown attack loss {loss!r}; use one of {ATTACK_LOSSES}.")


def _check(norm: str, loss: str, eps: Any, xs: Tensor, theta: Tensor | None) -> None:
    if norm not in NORMS:
        raise ValueError(f"Unknown norm {norm!r}; use one of {NORMS}.")
    if loss not in ATTACK_LOSSES:
        raise ValueError(f"Unknown attack loss {loss!r}; use one of {ATTACK_LOSSES}.")
    try:
        ok = math.isfinite(float(eps)) and float(eps) >= 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}.")
    if not torch.isfinite(xs).all():
        raise ValueError("The observations contain NaN or inf; attack finite observations only.")
    if theta is not None and theta.shape[0] != xs.shape[0]:
        raise ValueError(f"theta has {theta.shape[0]} rows but there are {xs.shape[0]} "
                         "observations.")


def pgd_attack(model: Any, xs: Tensor, eps: float, norm: str = "l2", loss: str = "rkl",
               theta: Tensor | None = None, steps: int | None = None,
               step_size: float | None = None, mc_samples: int | None = None,
               scale: float | None = None, batch_size: int = 256,
               seed: int | None = 0) -> Tensor:
    """Adversarial observations ``(B, *x_shape)`` within ``||x~ - x||_norm <= eps * scale``.

    Args:
        model: a posterior (its ``estimator`` is attacked) or an estimator.
        xs: clean observations ``(B, *x_shape)``.
        eps: relative budget; ``eps_abs = eps * scale``.
        norm: ``"l2"`` or ``"linf"`` (over all entries of one observation).
        loss: what the attack maximizes: ``"rkl"``, ``"fkl"``, ``"mmd"`` or ``"nll"``.
        theta: true parameters ``(B, D)`` (for ``"nll"``).
        steps: PGD iterations (200 for L2, 120 for L∞).
        step_size: absolute step; default ``min(20 * eps_abs / steps, eps_abs)``.
        mc_samples: Monte Carlo samples per step (5 for L2, 1 for L∞).
        scale: data scale; default :func:`relative_scale` of ``xs``.
        batch_size: observations attacked together.
        seed: fixes the random start and the Monte Carlo samples.
    """
    est = attackable_estimator(model)
    xs = torch.as_tensor(xs, dtype=torch.float32)
    _check(norm, loss, eps, xs, theta)
    steps = int(steps if steps is not None else NORM_DEFAULTS[norm]["steps"])
    m = int(mc_samples if mc_samples is not None else NORM_DEFAULTS[norm]["mc_samples"])
    if steps < 1 or m < 1:
        raise ValueError("steps and mc_samples must be positive integers.")
    eps_abs = float(eps) * float(scale if scale is not None else relative_scale(xs))
    if eps_abs == 0:
        return xs.clone()
    alpha = float(step_size) if step_size is not None else min(20 * eps_abs / steps, eps_abs)
    device = next(est.parameters()).device if any(True for _ in est.parameters()) else "cpu"
    was_training = est.training
    est.eval()
    out = torch.empty_like(xs)
    gen_state = torch.random.get_rng_state()
    if seed is not None:
        torch.manual_seed(seed)
    try:
        for i in range(0, xs.shape[0], batch_size):
            x = xs[i:i + batch_size]
            th = None if theta is None else torch.as_tensor(theta[i:i + batch_size],
                                                            dtype=torch.float32).to(device)
            lo, hi = clip_bounds(est, x)
            delta = _random_start(tuple(x.shape), eps_abs, norm)
            delta = (x + delta).clamp(lo, hi) - x
            x_dev, lo, hi = x.to(device), lo.to(device), hi.to(device)
            delta = delta.to(device)
            for _ in range(steps):
                delta.requires_grad_(True)
                with torch.enable_grad():
                    obj = attack_objective(est, x_dev, x_dev + delta, loss, m, th)
                    (grad,) = torch.autograd.grad(obj.sum(), delta)
                with torch.no_grad():
                    grad = torch.nan_to_num(grad)
                    if norm == "linf":
                        step = grad.sign()
                    else:
                        g = grad.reshape(grad.shape[0], -1)
                        step = (g / g.norm(dim=1, keepdim=True).clamp(min=1e-12)).reshape(
                            grad.shape)
                    delta = _project(delta.detach() + alpha * step, eps_abs, norm)
                    delta = (x_dev + delta).clamp(lo, hi) - x_dev
            out[i:i + batch_size] = (x_dev + delta.detach()).cpu()
    finally:
        if seed is not None:
            torch.random.set_rng_state(gen_state)
        est.train(was_training)
    return out


def random_perturbation(model: Any, xs: Tensor, eps: float, norm: str = "l2",
                        scale: float | None = None, seed: int | None = 0) -> Tensor:
    """Baseline: ``x + delta`` with ``delta`` uniform on the sphere ``||delta||_norm = eps_abs``.

    For L2 the direction is uniform; for L∞ every entry is ``±eps_abs`` with random signs.
    Clipped to the same range as the attack. Shapes as :func:`pgd_attack`.
    """
    est = attackable_estimator(model)
    xs = torch.as_tensor(xs, dtype=torch.float32)
    _check(norm, "rkl", eps, xs, None)
    eps_abs = float(eps) * float(scale if scale is not None else relative_scale(xs))
    gen = torch.Generator()
    gen.manual_seed(0 if seed is None else seed)
    flat = xs.reshape(xs.shape[0], -1)
    if norm == "linf":
        delta = (torch.randint(0, 2, flat.shape, generator=gen) * 2 - 1).float() * eps_abs
    else:
        delta = torch.randn(flat.shape, generator=gen)
        delta = delta / delta.norm(dim=1, keepdim=True).clamp(min=1e-12) * eps_abs
    lo, hi = clip_bounds(est, xs)
    return (xs + delta.reshape(xs.shape)).clamp(lo, hi)
