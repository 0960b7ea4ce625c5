r"""Inference-time variants of the in-context posterior and their choice by held-out likelihood.

Two choices change the in-context posterior without retraining, and both keep ``sample`` and
``log_prob`` exact for the model:

- **Residual parameterization.** With the coefficients :math:`(a, B)` of a least-squares
  (ridge) regression of :math:`\theta` on the standardized :math:`x` over the context, the
  network is given the context :math:`\{(r_i, x_i)\}` with :math:`r_i = \theta_i - a - B z_{x_i}`
  and returns :math:`q(r \mid x_o)`; then :math:`\theta = r + a + B z_{x_o}` (a shift for a
  fixed :math:`x_o`: Jacobian 1). For each :math:`x` this is a bijection of :math:`\theta`, so
  :math:`p(r \mid x)` is the exact posterior moved, and the pairs :math:`(r_i, x_i)` are a
  valid data set for it. Where :math:`\theta` depends on :math:`x` roughly linearly (linear-
  Gaussian problems, mixtures, SIR) the residuals are nearly independent of :math:`x` and much
  narrower than the prior, so the per-data-set standardization zooms in on the posterior's
  scale and the network's task becomes easy (the classic regression adjustment of ABC,
  Beaumont et al. 2002, as a reparameterization instead of an approximation).
- **Nonlinear, heteroscedastic regression adjustment** (``"nonlinear"``,
  :mod:`estimators.incontext_adjust`, wave 12): the network is given
  :math:`r_i = (\theta_i - m(x_i)) / s(x_i)` with a kernel ridge regression :math:`m` and a
  scale regression :math:`s` (closed form; leave-one-out residuals as the targets) and
  :math:`\theta = m(x_o) + s(x_o) r` (Blum & François 2010): an affine bijection per
  :math:`x_o`, log-Jacobian :math:`-\sum_j \log s_j(x_o)`. Where :math:`E[\theta \mid x]` is
  nonlinear or the posterior's width varies with :math:`x`, the residuals are closer to
  independent of :math:`x` than the linear ones.
- **Neighbour count** of the network's kernel term (``num_neighbors``; pretrained with 16):
  more neighbours give a smoother first guess when the residuals no longer depend on ``x``.

:func:`select_variant` scores each candidate by the negative log-likelihood of held-out
context pairs (K folds: the network gets the other folds as its context, the regression is
refitted on them) — the same prior-data NLL the network was pretrained on, estimated on the
user's own simulations — and returns the best. No reference posterior is used.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor

from estimators.incontext import InContextNet, standardize_context
from estimators.incontext_adjust import apply_adjustment, fit_adjustment

__all__ = ["CANDIDATES", "KINDS", "kind_of", "min_simulations", "usable_candidates", "STACK_CANDIDATES", "MAX_HELDOUT", "linear_coef", "design",
           "heldout_logprobs", "heldout_nll", "heldout_nlls", "select_variant", "select_stack",
           "stacking_weights", "variant_name"]

#: a candidate: (parameterization, num_neighbors); the parameterization a name of
#: :data:`KINDS`, or ``False`` / ``True`` for ``"plain"`` / ``"residual"``.
Candidate = tuple[bool | str, int]
#: (parameterization, num_neighbors) pairs tried by ``variant="auto"``. ``("nonlinear", 16)``
#: joined the pool in wave 14: over 10 observations x 3-5 simulation seeds x 200/500/1,000
#: simulations it lowered the mean C2ST on sir by 0.024 and on two_moons by 0.007 and changed
#: gaussian_linear / gaussian_mixture by +0.000 / +0.001, with the first posterior still
#: under 1 s on a quiet machine (benchmarks/RESULTS.md, "Issue 21 (wave 14)"; it was opt-in
#: after wave 12's 3-observation, 2-seed grid).
CANDIDATES: tuple[Candidate, ...] = ((False, 16), (True, 16), (True, 64), (True, 256),
                                     ("nonlinear", 16))
#: ridge penalty of the regression (on standardized x; the intercept is not penalized).
RIDGE = 1e-3


#: the parameterizations: ``"plain"`` (theta), ``"residual"`` (linear regression residuals),
#: ``"nonlinear"`` (standardized residuals of the nonlinear, heteroscedastic regression of
#: :mod:`estimators.incontext_adjust`). A candidate is ``(kind, num_neighbors)``; ``False`` /
#: ``True`` as the kind mean ``"plain"`` / ``"residual"`` (the form before ``"nonlinear"``).
KINDS = ("plain", "residual", "nonlinear")


def kind_of(kind: bool | str) -> str:
    """The parameterization's name for a candidate's first entry (``bool`` or a name)."""
    if isinstance(kind, str):
        if kind not in KINDS:
            raise ValueError(f"unknown in-context parameterization {kind!r}; one of {KINDS}.")
        return kind
    return "residual" if kind else "plain"


def min_simulations(kind: bool | str, d: int) -> int:
    """Fewest context simulations a parameterization is tried with (``d`` data values): a
    regression needs several simulations per coefficient, else it overfits."""
    k = kind_of(kind)
    return 0 if k == "plain" else 5 * (d + 1) if k == "residual" else max(50, 5 * (d + 1))


def usable_candidates(candidates: tuple[Candidate, ...], n: int, d: int
                      ) -> list[Candidate]:
    """The candidates with enough simulations (:func:`min_simulations`) for ``n`` context
    simulations of ``d`` data values; when none has, ``plain-16`` with a warning that names
    the pool and the number of simulations each would need (it was silent before wave 14)."""
    usable = [c for c in candidates if n >= min_simulations(c[0], d)]
    if usable:
        return usable
    fallback: Candidate = (False, 16)
    if fallback not in candidates:
        needs = ", ".join(f"{variant_name(*c)} >= {min_simulations(c[0], d)}" for c in candidates)
        warnings.warn(f"None of the in-context candidates can be used with {n} simulations of "
                      f"{d} data values ({needs}: a regression needs several simulations per "
                      f"coefficient); using plain-16 instead. Simulate more, or pass "
                      f"candidates=['plain-16', ...] to choose this yourself.", UserWarning,
                      stacklevel=3)
    return [fallback]


def variant_name(kind: bool | str, num_neighbors: int) -> str:
    return f"{kind_of(kind)}-{num_neighbors}"


def design(zx: Tensor) -> Tensor:
    """``[1, zx]`` ``(N, d + 1)`` for standardized ``zx`` ``(N, d)``."""
    return torch.cat([torch.ones(zx.shape[0], 1, dtype=zx.dtype, device=zx.device), zx], 1)


def linear_coef(theta: Tensor, zx: Tensor, ridge: float = RIDGE) -> Tensor:
    """Ridge coefficients ``(d + 1, D)`` of ``theta`` ``(N, D)`` on ``[1, zx]``."""
    n, d = zx.shape
    x1 = design(zx)
    pen = torch.diag(torch.cat([torch.zeros(1), torch.full((d,), float(ridge))])).to(zx)
    return torch.linalg.solve(x1.T @ x1 / n + pen, x1.T @ theta / n)


#: held-out pairs scored in all (over the folds) by ``variant="auto"``; the 256-neighbour
#: kernel's cost grows with them (300: 0.3-0.8 s for the four candidates at N = 1,000).
MAX_HELDOUT = 300


@torch.no_grad()
def heldout_logprobs(net: InContextNet, theta: Tensor, zx: Tensor,
                     candidates: tuple[Candidate, ...], folds: int = 5, seed: int = 0,
                     max_heldout: int = MAX_HELDOUT, x: Tensor | None = None,
                     adjustment: dict[str, Tensor] | None = None) -> dict[Candidate, Tensor]:
    """``log q(theta_i | x_i)`` ``(M,)`` (in the units of ``theta``) of the same ``M``
    held-out context pairs for each candidate ``(residual, num_neighbors)``: each fold is
    held out in turn and the other folds are the context (the regression is refitted on
    them). ``theta`` ``(N, D)``, ``zx`` ``(N, d)`` (standardized x); at most ``max_heldout``
    pairs in all are scored. The context of each fold is encoded once per parameterization
    and shared by the neighbour counts (the encoding does not depend on them). Prior
    truncation is left out (the same for all variants up to the mass outside the prior,
    which the network rarely puts there)."""
    n = theta.shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    saved = net.config["num_neighbors"]
    parts: dict[Candidate, list[Tensor]] = {c: [] for c in candidates}
    kinds = sorted({kind_of(c[0]) for c in candidates})
    x = zx if x is None else x.reshape(n, -1)
    full = adjustment
    if full is None and "nonlinear" in kinds:
        full = fit_adjustment(theta, x, seed=seed)[0]
    try:
        for f in range(folds):
            test = perm[f::folds][:max(1, max_heldout // folds)]
            train = torch.cat([perm[g::folds] for g in range(folds) if g != f])
            for kind in kinds:
                t, log_jac = theta, torch.zeros(len(test))
                if kind == "residual":
                    t = theta - design(zx) @ linear_coef(theta[train], zx[train])
                elif kind == "nonlinear":  # bandwidths of the full fit, weights refitted
                    params, targets = fit_adjustment(theta[train], x[train], fixed=full)
                    mean, scale = apply_adjustment(params, x[test])
                    t = theta.clone()
                    t[train] = targets
                    t[test] = (theta[test] - mean) / scale
                    log_jac = scale.log().sum(-1)
                st = standardize_context(t[train][None], zx[train][None])
                zt = (t - st["theta_mean"][0]) / st["theta_std"][0]
                zxs = (zx - st["x_mean"][0]) / st["x_std"][0]
                cache = net.encode(zt[train][None], zxs[train][None])
                for c in candidates:
                    if kind_of(c[0]) != kind:
                        continue
                    net.config["num_neighbors"] = int(c[1])
                    logits = net.logits(zxs[test][None], zt[test][None], cache, len(train))
                    lp = net.log_prob_std(logits, zt[test][None]).sum(-1)[0]
                    parts[c].append(lp - st["theta_std"][0].log().sum() - log_jac)
    finally:
        net.config["num_neighbors"] = saved
    return {c: torch.cat(v) for c, v in parts.items()}


def heldout_nlls(net: InContextNet, theta: Tensor, zx: Tensor,
                 candidates: tuple[Candidate, ...], folds: int = 5, seed: int = 0,
                 max_heldout: int = MAX_HELDOUT, x: Tensor | None = None
                 ) -> dict[Candidate, float]:
    """Mean ``-log q(theta_i | x_i)`` of the held-out pairs of :func:`heldout_logprobs` for
    each candidate."""
    lps = heldout_logprobs(net, theta, zx, candidates, folds, seed, max_heldout, x=x)
    return {c: -float(v.mean()) for c, v in lps.items()}


def heldout_nll(net: InContextNet, theta: Tensor, zx: Tensor, residual: bool,
                num_neighbors: int, folds: int = 5, seed: int = 0,
                max_heldout: int = MAX_HELDOUT) -> float:
    """:func:`heldout_nlls` of one candidate."""
    c = (bool(residual), int(num_neighbors))
    return heldout_nlls(net, theta, zx, (c,), folds, seed, max_heldout)[c]


def select_variant(net: InContextNet, theta: Tensor, zx: Tensor, folds: int = 5,
                   seed: int = 0, candidates: tuple[Candidate, ...] = CANDIDATES,
                   x: Tensor | None = None, adjustment: dict[str, Tensor] | None = None
                   ) -> tuple[Candidate, dict[str, Any]]:
    """The candidate ``(residual, num_neighbors)`` with the lowest held-out NLL, and a record
    ``{"scores": {name: nll}, "chosen": name, "folds": folds}``. Residual candidates need at
    least ``5 (d + 1)`` simulations (else the regression overfits); with fewer than
    ``4 folds`` simulations per fold, or one candidate left, the first candidate is taken."""
    n, d = zx.shape
    usable = usable_candidates(candidates, n, d)
    if n < 4 * folds or len(usable) == 1:
        chosen = usable[0]
        return chosen, {"scores": {}, "chosen": variant_name(*chosen), "folds": 0}
    lps = heldout_logprobs(net, theta, zx, tuple(usable), folds=folds, seed=seed, x=x,
                           adjustment=adjustment)
    nlls = {c: -float(v.mean()) for c, v in lps.items()}
    scores = {variant_name(*c): nlls[c] for c in usable}
    finite = {k: v for k, v in scores.items() if math.isfinite(v)}
    best = min(finite, key=finite.get) if finite else variant_name(*usable[0])
    chosen = next(c for c in usable if variant_name(*c) == best)
    return chosen, {"scores": {k: round(v, 4) for k, v in scores.items()}, "chosen": best,
                    "folds": folds}


#: candidates of ``variant="stack"``: the four of ``"auto"`` plus more neighbour counts
#: (the stacking weights, not a single pick, decide how much each contributes).
STACK_CANDIDATES: tuple[Candidate, ...] = CANDIDATES
#: components whose stacking weight falls below this are dropped (and the rest renormalized).
MIN_WEIGHT = 0.01


def stacking_weights(logp: Tensor, iters: int = 5000, tol: float = 1e-10) -> Tensor:
    r"""Weights ``w`` ``(K,)`` on the simplex maximizing the held-out log score of the
    mixture, :math:`\sum_i \log \sum_k w_k q_k(\theta_i \mid x_i)`, for per-pair log
    densities ``logp`` ``(M, K)`` (Bayesian stacking of predictive distributions, Yao et al.
    2018). The objective is concave in ``w``; it is maximized by EM (the mixture-weight
    update :math:`w_k \leftarrow \frac1M \sum_i r_{ik}`, which never decreases it), from
    uniform weights, so the result is deterministic (float64 numpy: a few ms)."""
    if logp.ndim != 2 or logp.shape[1] < 1:
        raise ValueError(f"logp must be (M, K) with K >= 1, got shape {tuple(logp.shape)}.")
    lp = logp.detach().double().cpu().numpy()
    lik = np.exp(lp - lp.max(1, keepdims=True))  # (M, K), each row's largest entry 1
    w = np.full(lp.shape[1], 1.0 / lp.shape[1])
    for _ in range(iters):
        r = lik * w
        r /= r.sum(1, keepdims=True)
        new = r.mean(0)
        done = np.abs(new - w).max() < tol
        w = new
        if done:
            break
    return torch.as_tensor(w / w.sum(), dtype=torch.float32)


def select_stack(net: InContextNet, theta: Tensor, zx: Tensor, folds: int = 5, seed: int = 0,
                 candidates: tuple[Candidate, ...] = STACK_CANDIDATES,
                 min_weight: float = MIN_WEIGHT, x: Tensor | None = None,
                 adjustment: dict[str, Tensor] | None = None
                 ) -> tuple[list[Candidate], Tensor, dict[str, Any]]:
    """The candidates and weights of the stacked in-context posterior (a mixture of the
    candidates' posteriors), chosen on the held-out pairs :func:`select_variant` scores:
    :func:`stacking_weights` of their per-pair log densities, components below
    ``min_weight`` dropped and the rest renormalized. Returns ``(components, weights (K,),
    record)`` with the record ``{"scores": {name: nll}, "weights": {name: w}, "chosen":
    "stack", "stack_nll": nll, "best": name, "gain": g, "gain_se": se, "folds": folds}``
    (``stack_nll``: the mixture's held-out NLL with the final weights; ``gain``: its mean
    held-out log score minus that of the best single candidate ``best``, on the same pairs,
    and ``gain_se`` the standard error of that paired difference). With too few simulations
    to score (as in :func:`select_variant`) the first usable candidate gets weight 1."""
    n, d = zx.shape
    usable = usable_candidates(candidates, n, d)
    if n < 4 * folds or len(usable) == 1:
        c = usable[0]
        return [c], torch.ones(1), {"scores": {}, "weights": {variant_name(*c): 1.0},
                                    "chosen": "stack", "folds": 0}
    lps = heldout_logprobs(net, theta, zx, tuple(usable), folds=folds, seed=seed, x=x,
                           adjustment=adjustment)
    finite = [c for c in usable if bool(torch.isfinite(lps[c]).all())] or usable[:1]
    logp = torch.stack([lps[c] for c in finite], 1)  # (M, K)
    w = stacking_weights(logp)
    keep = w >= min(min_weight, float(w.max()))
    comps = [c for c, k in zip(finite, keep.tolist()) if k]
    w = w[keep] / w[keep].sum()
    mix = torch.logsumexp(logp[:, keep].double() + w.double().log(), 1)  # (M,)
    best = int(logp.mean(0).argmax())
    gain = mix - logp[:, best].double()  # paired: the same held-out pairs
    record = {"scores": {variant_name(*c): round(-float(lps[c].mean()), 4) for c in usable},
              "weights": {variant_name(*c): round(float(v), 4) for c, v in zip(comps, w)},
              "chosen": "stack", "stack_nll": round(-float(mix.mean()), 4),
              "best": variant_name(*finite[best]), "gain": round(float(gain.mean()), 4),
              "gain_se": round(float(gain.std() / math.sqrt(len(gain))), 4), "folds": folds}
    return comps, w, record
