r"""Adversarially robust NPE training: the FIM-trace regularizer and noise augmentation.

The FIM-trace defense (Glöckler, Deistler & Macke, ICML 2023) adds the trace of the Fisher
information of ``q_phi(theta | x)`` with respect to the observation to the NPE loss:

.. math::

    \mathcal{L}(\phi) = \mathbb{E}_{p(\theta, x)}[-\log q_\phi(\theta \mid x)]
        + \beta\, \mathbb{E}_{p(x)}[\operatorname{tr} I_\phi(x)],\qquad
    \operatorname{tr} I_\phi(x) = \mathbb{E}_{\theta \sim q_\phi(\theta \mid x)}
        \lVert \nabla_x \log q_\phi(\theta \mid x) \rVert^2 .

Since ``KL(q(.|x) || q(.|x + delta)) ~ delta^T I(x) delta / 2``, a small trace bounds how
far any perturbation of size ``eps`` can move the posterior. ``tr I`` is estimated with a
few samples from ``q`` and double backpropagation; its parameter gradient is smoothed by an
exponential moving average ``g <- d * g_new + (1 - d) * g`` (``d = fim_ema``, the weight
on the *new* gradient, as in the reference code) and added to the NLL gradient.

Noise augmentation (the cheap baseline) trains on ``x + delta`` with ``delta`` uniform in
the L2 ball of radius ``noise_eps * x_scale``, where ``x_scale`` is the training data's
spread across features (the same relative scale the attacks use).

Both act through the shared training loop as its ``loss_fn`` (:func:`npe_training_loss`,
registered as the NPE method's ``loss_fn``); the options live in the estimator's config, so
a saved model records how it was trained.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["REGULARIZERS", "fim_trace", "FIMTraceLoss", "npe_training_loss", "l2_ball_noise",
           "relative_scale", "validate_regularizer_options"]

REGULARIZERS = ("fim", "noise")
#: Option defaults; used only when ``regularizer`` selects them.
REGULARIZER_DEFAULTS: dict[str, Any] = {
    "regularizer": None,
    "beta": 0.05,
    "fim_samples": 5,
    "fim_ema": 0.85,
    "noise_eps": 0.2,
}


def relative_scale(x: Tensor) -> float:
    """The data scale attacks are relative to: ``x.std(1).mean()`` over ``x`` ``(N, *x_shape)``.

    That is the spread across features of each observation, averaged over observations (the
    reference code's convention). For a single feature it falls back to the std over rows.
    """
    flat = x.detach().reshape(x.shape[0], -1).float()
    if flat.shape[1] > 1:
        scale = float(flat.std(1).mean())
    elif flat.shape[0] > 1:
        scale = float(flat.std(0).mean())
    else:
        raise ValueError("Cannot derive a data scale from one scalar observation; pass more "
                         "observations or an absolute scale.")
    if not scale > 0:
        raise ValueError("The observations have zero spread, so a relative epsilon is undefined; "
                         "pass an absolute scale instead.")
    return scale


def l2_ball_noise(shape: tuple[int, ...], radius: float | Tensor,
                  generator: torch.Generator | None = None) -> Tensor:
    """Uniform samples in the L2 ball of ``radius`` over all but the first dim of ``shape``."""
    b = shape[0]
    d = int(torch.Size(shape[1:]).numel())
    direction = torch.randn(b, d, generator=generator)
    direction = direction / direction.norm(dim=1, keepdim=True).clamp(min=1e-12)
    r = torch.rand(b, 1, generator=generator) ** (1.0 / d)
    radius = torch.as_tensor(radius, dtype=torch.float32).reshape(-1, 1)
    return (direction * r * radius).reshape(shape)


def fim_trace(estimator: nn.Module, x: Tensor, num_samples: int = 5,
              create_graph: bool = True) -> Tensor:
    """Monte Carlo ``tr I(x)`` ``(B,)`` for observations ``x`` ``(B, *x_shape)``.

    ``num_samples`` draws ``theta ~ q(theta | x)`` (no gradient) and the squared norm of the
    score ``grad_x log q(theta | x)`` in raw ``x`` units; with ``create_graph`` the result is
    differentiable w.r.t. the estimator's parameters (double backpropagation).
    """
    b, m = x.shape[0], int(num_samples)
    with torch.no_grad():
        theta = estimator.sample(m, x.detach())  # (m, B, D)
    xr = x.detach().unsqueeze(0).expand(m, *x.shape).reshape(m * b, *x.shape[1:])
    xr = xr.clone().requires_grad_(True)
    with torch.enable_grad():
        lp = estimator.log_prob(theta.reshape(m * b, -1), xr)
        (score,) = torch.autograd.grad(lp.sum(), xr, create_graph=create_graph)
    return score.reshape(m, b, -1).pow(2).sum(-1).mean(0)


class FIMTraceLoss:
    """Loss ``NLL + beta * tr I(x)`` whose regularizer gradient is an EMA (stateful).

    Called as ``loss(estimator, theta, x) -> (N,)`` by the training loop. With gradients
    enabled it computes ``g_new = grad_phi beta * mean(tr I)``, updates
    ``g_ema <- d * g_new + (1 - d) * g_ema`` and returns ``nll + beta * tr I`` whose
    gradient is ``grad NLL + g_ema`` (a zero-valued surrogate ``<phi, g_ema>`` carries it).
    Without gradients (validation) it returns the same objective value, without the EMA.
    """

    def __init__(self, beta: float = 0.05, num_samples: int = 5, ema: float = 0.85):
        self.beta, self.num_samples, self.ema = float(beta), int(num_samples), float(ema)
        self.g_ema: list[Tensor] | None = None

    def __call__(self, estimator: nn.Module, theta: Tensor, x: Tensor) -> Tensor:
        nll = estimator.loss(theta, x)
        if not torch.is_grad_enabled():
            tr = fim_trace(estimator, x, self.num_samples, create_graph=False)
            return nll + self.beta * tr
        params = [p for p in estimator.parameters() if p.requires_grad]
        tr = fim_trace(estimator, x, self.num_samples, create_graph=True)
        grads = torch.autograd.grad(self.beta * tr.mean(), params, allow_unused=True)
        new = [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, grads)]
        if self.g_ema is None or len(self.g_ema) != len(new):
            self.g_ema = new
        else:
            self.g_ema = [self.ema * g + (1.0 - self.ema) * e for g, e in zip(new, self.g_ema)]
        surrogate = sum((p * g).sum() for p, g in zip(params, self.g_ema))
        return nll + (surrogate - surrogate.detach()) + self.beta * tr.detach()


def validate_regularizer_options(options: dict[str, Any]) -> None:
    """Raise ``ValueError`` for an unknown regularizer, bad values or orphaned options."""
    reg = options.get("regularizer")
    if reg is not None and reg not in REGULARIZERS:
        raise ValueError(f"Unknown regularizer {reg!r}; use one of {REGULARIZERS} or None.")
    own = {"fim": ("beta", "fim_samples", "fim_ema"), "noise": ("noise_eps",)}
    for name, keys in own.items():
        stray = [k for k in keys if k in options and reg != name]
        if stray:
            raise ValueError(f"Options {stray} only apply with regularizer={name!r} "
                             f"(got regularizer={reg!r}).")
    if reg == "fim":
        if not float(options.get("beta", REGULARIZER_DEFAULTS["beta"])) >= 0:
            raise ValueError("beta must be >= 0 (the weight of the FIM-trace regularizer).")
        if int(options.get("fim_samples", 5)) < 1:
            raise ValueError("fim_samples must be a positive integer (Monte Carlo samples).")
        if not 0 < float(options.get("fim_ema", 0.85)) <= 1:
            raise ValueError("fim_ema must lie in (0, 1]: the weight of the newest gradient.")
    if reg == "noise" and not float(options.get("noise_eps", 0.2)) > 0:
        raise ValueError("noise_eps must be > 0 (noise radius relative to the data scale).")


def npe_training_loss(estimator: nn.Module, theta: Tensor, x: Tensor) -> Tensor:
    """The NPE training loss ``(N,)`` with the regularizer named in ``estimator.config``."""
    cfg = getattr(estimator, "config", {}) or {}
    reg = cfg.get("regularizer")
    if reg is None:
        return estimator.loss(theta, x)
    if reg == "noise":
        if estimator.training and torch.is_grad_enabled():
            radius = float(cfg["noise_eps"]) * float(cfg["x_scale"])
            x = x + l2_ball_noise(tuple(x.shape), radius).to(x)
        return estimator.loss(theta, x)
    if reg == "fim":
        loss = getattr(estimator, "_fim_loss", None)
        if loss is None:
            loss = FIMTraceLoss(cfg["beta"], cfg["fim_samples"], cfg["fim_ema"])
            object.__setattr__(estimator, "_fim_loss", loss)
        return loss(estimator, theta, x)
    raise ValueError(f"Unknown regularizer {reg!r} in the estimator config; use one of "
                     f"{REGULARIZERS}.")
