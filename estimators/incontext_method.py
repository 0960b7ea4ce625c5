r"""The ``"incontext"`` method: posteriors from pretrained weights, with no training.

``fit(problem, sims, method="incontext")`` stores the simulations as the *context* of the
pretrained network (:mod:`estimators.incontext`, weights in
``estimators/weights/incontext_v1.pt``) and returns a posterior at once: the only work is
the per-data-set standardization. ``sample`` and ``log_prob`` run the network with the
observation as query; both are exact for the model:

- sampling is ancestral, one pass per parameter, each factor drawn by its inverse CDF;
- on a bounded side of the prior each factor is truncated to the prior's support and
  renormalized (its CDF at the bounds), so samples never leave the support and
  ``log_prob`` stays normalized;
- ``log_prob`` includes the Jacobian of the standardization.

Pretrained range (:mod:`estimators.incontext_prior`): at most ``D_MAX = 3`` parameters,
``X_DIM_MAX = 10`` data values, ``N_MAX = 1000`` context simulations. Outside it ``fit``
raises :class:`InContextRangeError` naming the fixes (``context_size=`` subsamples the
context; method ``"npe"`` or ``"pfn"`` trains on the problem instead).

Variants (:mod:`estimators.incontext_select`, no retraining, still exact). The candidates
are the plain network, the *residual* parameterization (the network sees ``theta`` minus a
linear regression on ``x``, then shifts back), with several kernel neighbour counts, and the
*nonlinear* one (the standardized residuals of a closed-form kernel ridge regression of
``theta`` on ``x`` and of a scale regression, :mod:`estimators.incontext_adjust`; mapped
back by ``theta = m(x_o) + s(x_o) r``). Each is
scored on held-out pairs of the user's simulations; their *stack* is the mixture of their
posteriors with the weights that maximize the held-out log score. ``variant="auto"``
(default) returns the stack when it beats the best single candidate by more than
``STACK_GAIN_SE`` standard errors on those pairs, else that candidate; ``"stack"`` always
the mixture (:class:`StackedInContextEstimator`), ``"select"`` always the best single one;
``"plain"`` / ``"residual"`` / ``"nonlinear"`` and ``num_neighbors=`` fix them;
``candidates=`` (names such as ``"residual-64"`` or ``"nonlinear-16"``) sets the pool of ``"auto"`` / ``"stack"`` / ``"select"``.

``finetune_steps=k`` optionally continues pretraining for ``k`` steps on the user's own
simulations (random context/query splits of ``sims``), starting from the shipped weights;
it fine-tunes one network, so ``variant="auto"`` then keeps the best single candidate
(``"select"``) instead of a stack.

Inputs are checked by :mod:`estimators.incontext_checks` (exact copies of simulations
dropped; contexts below the pretrained minimum ``N_MIN`` or with a constant parameter
refused; a loaded file's buffers validated). ``fit``'s ``device=`` and ``num_threads=`` apply
as for the trained methods.
"""

from __future__ import annotations

import math
import time
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from estimators.incontext import InContextNet, pretrain_loss, standardize_context
from estimators.incontext_adjust import PARAM_KEYS, apply_adjustment, fit_adjustment, param_shapes
from estimators.incontext_checks import (
    check_estimator_state,
    check_finetune_steps,
    check_num_neighbors,
    check_parameter_spread,
    drop_duplicate_pairs,
)
from estimators.incontext_prior import D_MAX, N_MAX, N_MIN, X_DIM_MAX
from estimators.incontext_select import (
    CANDIDATES,
    STACK_CANDIDATES,
    design,
    kind_of,
    linear_coef,
    min_simulations,
    select_stack,
    select_variant,
    variant_name,
)
from sbi_core.budget import Budget
from sbi_core.methods import Method
from sbi_core.posterior import ObservationError, Posterior, _device
from sbi_core.priors import support_bounds
from sbi_core.problem import Problem
from sbi_core.threads import thread_scope
from sbi_core.training import split_options, training_device

__all__ = ["WEIGHTS_PATH", "InContextRangeError", "InContextEstimator", "InContextPosterior",
           "StackedInContextEstimator", "estimator_from_config",
           "load_pretrained", "build_incontext", "fit_incontext", "check_range", "METHOD"]

WEIGHTS_PATH = Path(__file__).resolve().parent / "weights" / "incontext_v1.pt"
WEIGHTS_FORMAT = "sbi-core-incontext-weights"
ESTIMATOR_OPTIONS = ("context_size", "finetune_steps", "finetune_lr", "weights", "variant",
                     "num_neighbors", "candidates")
VARIANTS = ("auto", "stack", "select", "plain", "residual", "nonlinear")
#: ``variant="auto"`` uses the stacked mixture only when its held-out log score beats the
#: best single candidate's by more than this many standard errors of the paired difference
#: (else that candidate alone: a mixture within noise of it only widens the posterior).
STACK_GAIN_SE = 2.0
#: the truncation to the prior's box divides each factor by its mass in the box,
#: ``CDF(high) - CDF(low)``; where that difference is below this fraction of ``CDF(high)``
#: (both CDFs round to 1, or both to 0, in float32) it cannot be computed: draws pile up on
#: a bound and the density integrates to about 0 (an observation far outside the
#: simulations, whose regression shift moves the posterior out of the prior; wave 14).
#: ``sample`` and ``log_prob`` then raise an ``ObservationError``, or warn, or say nothing,
#: as the posterior's ``range_check`` is ``"error"``, ``"warn"`` or ``"off"``. Below
#: ``MIN_PRIOR_MASS`` in all, the factor's density inside the box underflows (measured on a
#: 1-D problem: with a mass of 5e-10 the truncated density integrated to 0.9996, with 1e-12
#: to 0.987, with 3e-16 to 0.0003).
MIN_MASS_RESOLUTION = 1e-4
MIN_PRIOR_MASS = 1e-10


class InContextRangeError(ValueError):
    """The problem lies outside the range the in-context network was pretrained on."""


def check_range(theta_dim: int, x_dim: int, n: int, n_min: int = N_MIN) -> None:
    """Raise :class:`InContextRangeError` (with the fixes) when outside the pretrained range
    (``n_min``: the smallest context the weights were pretrained on)."""
    fallback = ("or train on your problem with method='npe' (or 'pfn'), which have no such "
                "limit.")
    if theta_dim > D_MAX:
        raise InContextRangeError(
            f"The problem has D={theta_dim} parameters, but the in-context model was pretrained "
            f"on problems with at most {D_MAX}. Fix some parameters, {fallback}")
    if x_dim > X_DIM_MAX:
        raise InContextRangeError(
            f"x has {x_dim} values per simulation, but the in-context model was pretrained on at "
            f"most {X_DIM_MAX}. Reduce x to at most {X_DIM_MAX} summary statistics (a problem "
            f"whose simulator returns them), {fallback}")
    if n > N_MAX:
        raise InContextRangeError(
            f"{n} simulations exceed the in-context model's context of at most {N_MAX}. "
            f"Subsample the context with context_size={N_MAX} (CLI: --context-size {N_MAX}), "
            f"{fallback}")
    if n < n_min:
        raise InContextRangeError(
            f"The context has {n} simulation(s), but the in-context model was pretrained on "
            f"contexts of {n_min} to {N_MAX}; with fewer its posteriors are overconfident (with "
            "2-3 simulations 90% intervals held the true parameters only 47-70% of the time). "
            f"Simulate at least {n_min} (a few hundred give useful posteriors).")


@lru_cache(maxsize=4)
def _read_weights(path: str) -> tuple[dict[str, Any], dict[str, Tensor]]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"The in-context weights {p} are missing; reinstall sbi-core, or recreate them with "
            "benchmarks/pretrain_incontext.py (see docs/incontext.md).")
    not_weights = (f"{p} is not an sbi-core in-context weights file (as written by "
                   "benchmarks/pretrain_incontext.py --export); leave weights= out to use the "
                   "shipped ones")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # not a torch file, or one that would need code to load
        raise ValueError(f"{not_weights} ({type(err).__name__}).") from err
    meta = payload.get("meta") if isinstance(payload, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != WEIGHTS_FORMAT or \
            not isinstance(meta.get("config"), dict) or \
            not isinstance(payload.get("state_dict"), dict):
        raise ValueError(f"{not_weights}.")
    return meta, payload["state_dict"]


def load_pretrained(path: str | Path | None = None) -> tuple[InContextNet, dict[str, Any]]:
    """The pretrained network (a fresh copy) and its provenance record; ``weights_only``."""
    p = str(path or WEIGHTS_PATH)
    meta, state = _read_weights(p)
    try:
        net = InContextNet(meta["config"])
        net.load_state_dict(state)
    except (KeyError, RuntimeError, TypeError, ValueError) as err:
        raise ValueError(f"{p} is damaged: its weights do not match its network config "
                         f"({type(err).__name__}: {str(err).splitlines()[0]}). Leave weights= "
                         "out to use the shipped ones, or export them again.") from err
    return net.eval(), meta


def _pretrained_n_min(meta: dict[str, Any]) -> int:
    """The smallest context a weights file was pretrained on (its ``train_args.n_min``;
    :data:`N_MIN` for files that do not record it)."""
    value = dict(meta.get("train_args") or {}).get("n_min")
    return int(value) if isinstance(value, int) and value >= 2 else N_MIN


class InContextEstimator(nn.Module):
    """The pretrained network plus one problem's context (buffers) and its standardization.

    Args:
        config: ``theta_dim``, ``x_shape``, ``n_context``, ``net`` (network config), the
            provenance of the weights, and optionally ``residual`` (the network sees the
            residuals of a linear regression of theta on x: :mod:`estimators.incontext_select`),
            ``adjust`` (``"plain"`` / ``"residual"`` / ``"nonlinear"``: the latter the
            regression adjustment of :mod:`estimators.incontext_adjust`; files from before it
            have only ``residual``), ``adjust_seed`` (its kernel centres' seed)
            and ``num_neighbors`` (the kernel's neighbour count at inference). Buffers are
            filled by :func:`build_incontext` or loaded.
        net: an existing network to use (shared by the components of a stacked posterior)
            instead of a new one built from ``config["net"]``.
    """

    def __init__(self, config: dict[str, Any], net: InContextNet | None = None):
        super().__init__()
        self.config = dict(config)
        d, x_shape, n = int(config["theta_dim"]), tuple(config["x_shape"]), \
            int(config["n_context"])
        x_dim = math.prod(x_shape)
        self.theta_dim, self.x_shape, self.x_dim = d, x_shape, x_dim
        self.net = InContextNet(config["net"]) if net is None else net
        if config.get("num_neighbors") is not None:
            self.net.config["num_neighbors"] = check_num_neighbors(config["num_neighbors"])
        #: this estimator's kernel neighbour count, set on ``net.config`` before each use
        #: (the components of a stacked posterior share one network)
        self.num_neighbors = int(self.net.config["num_neighbors"])
        #: the parameterization: "plain", "residual" or "nonlinear" (config ``adjust``;
        #: files from before it have only ``residual``)
        self.kind = kind_of(config.get("adjust", bool(config.get("residual", False))))
        self.residual = self.kind == "residual"
        if self.residual:  # regression coefficients (d_x + 1, D) on [1, standardized x]
            self.register_buffer("coef", torch.zeros(x_dim + 1, d))
        if self.kind == "nonlinear":  # estimators.incontext_adjust's fit, and the targets
            shapes = {**param_shapes(n, x_dim, d), "targets": (n, d)}
            for name, shape in shapes.items():
                self.register_buffer(f"adj_{name}", torch.zeros(shape))
        self.register_buffer("theta_context", torch.zeros(n, d))
        self.register_buffer("x_context", torch.zeros(n, x_dim))
        for name, k in (("theta_mean", d), ("theta_std", d), ("x_mean", x_dim),
                        ("x_std", x_dim)):
            self.register_buffer(name, torch.zeros(k) if "mean" in name else torch.ones(k))
        self.register_buffer("x_min", torch.zeros(x_shape))
        self.register_buffer("x_max", torch.zeros(x_shape))
        self.register_buffer("low", torch.full((d,), -math.inf))
        self.register_buffer("high", torch.full((d,), math.inf))
        self._cache: dict[str, Any] | None = None

    def set_context(self, theta: Tensor, x: Tensor,
                    adjustment: tuple[dict[str, Tensor], Tensor] | None = None) -> None:
        """Store ``theta`` ``(N, D)`` and ``x`` ``(N, *x_shape)`` and their statistics;
        ``adjustment``: the nonlinear variant's :func:`fit_adjustment` of these pairs, if
        already computed (else it is fitted here)."""
        x = x.reshape(x.shape[0], -1).float()
        theta = theta.float()
        with torch.no_grad():
            self.theta_context.copy_(theta)
            self.x_context.copy_(x)
            x_stats = standardize_context(theta[None], x[None])
            for k in ("x_mean", "x_std"):
                getattr(self, k).copy_(x_stats[k].reshape(-1))
            if self.residual:
                self.coef.copy_(linear_coef(theta, self._zx(x)))
            if self.kind == "nonlinear":
                params, targets = adjustment or fit_adjustment(
                    theta, x, seed=int(self.config.get("adjust_seed", 0)))
                for k, v in {**params, "targets": targets}.items():
                    getattr(self, f"adj_{k}").copy_(v)
            stats = standardize_context(self.context_targets()[None], x[None])
            for k in ("theta_mean", "theta_std"):
                getattr(self, k).copy_(stats[k].reshape(-1))
            self.x_min.copy_(x.min(0).values.reshape(self.x_shape))
            self.x_max.copy_(x.max(0).values.reshape(self.x_shape))
        self._cache = None

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._cache = None
        super()._load_from_state_dict(*args, **kwargs)

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        """``nn.Module.load_state_dict``, then refuse buffers no context can have (a tampered
        file: :func:`estimators.incontext_checks.check_estimator_state`)."""
        out = super().load_state_dict(*args, **kwargs)
        check_estimator_state(self)
        return out

    def affine(self, zx: Tensor) -> tuple[Tensor, Tensor]:
        """``(shift, scale)``, each ``(B, D)``, for standardized ``zx`` ``(B, d)``:
        ``theta = shift + scale * r`` with ``r`` what the network models (plain: 0 and 1;
        residual: ``a + B zx`` and 1; nonlinear: ``m(zx)`` and ``s(zx)``)."""
        if self.kind == "nonlinear":  # on the data itself (its inputs may be log1p(x))
            return apply_adjustment(self._adj_params(), zx * self.x_std + self.x_mean)
        ones = torch.ones(zx.shape[0], self.theta_dim, device=zx.device)
        if not self.residual:
            return torch.zeros_like(ones), ones
        return design(zx) @ self.coef, ones

    def _adj_params(self) -> dict[str, Tensor]:
        return {k: getattr(self, f"adj_{k}") for k in PARAM_KEYS}

    def context_targets(self) -> Tensor:
        """What the network sees as the context's parameters ``(N, D)``: ``theta``, its
        linear regression residuals (residual), or the leave-one-out residuals of the
        nonlinear regression divided by the scale regression (nonlinear)."""
        if self.kind == "nonlinear":
            return self.adj_targets
        return self.theta_context - self.affine(self._zx(self.x_context))[0]

    def cache(self) -> dict[str, Any]:
        """The context's keys/values for the query layers (computed once)."""
        if self._cache is None or self._cache["zt"].device != self.theta_context.device:
            zt = (self.context_targets() - self.theta_mean) / self.theta_std
            zx = (self.x_context - self.x_mean) / self.x_std
            with torch.no_grad():
                self._cache = self.net.encode(zt[None], zx[None])
        return self._cache

    def _logits(self, *args: Any, **kwargs: Any) -> Tensor:
        """``net.logits`` with this estimator's neighbour count, passed to the call (not set
        on the shared network's config: a stack's components share one network, and a
        server computes requests in threads)."""
        return self.net.logits(*args, num_neighbors=self.num_neighbors, **kwargs)

    def _zx(self, xs: Tensor) -> Tensor:
        return (xs.reshape(xs.shape[0], -1) - self.x_mean) / self.x_std  # (B, d)

    def _z_bounds(self, shift: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
        """The prior bounds in the network's standardized units ``(B, D)`` per observation
        (``scale > 0``, so the order is kept)."""
        return ((self.low - shift) / scale - self.theta_mean) / self.theta_std, \
            ((self.high - shift) / scale - self.theta_mean) / self.theta_std

    def _mass(self, logits: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """CDF of each factor at the standardized bounds ``lo``, ``hi`` (shape
        ``logits.shape[:-1]``; infinite where the prior is unbounded)."""
        lo_f = torch.where(torch.isfinite(lo), lo, torch.zeros_like(lo))
        hi_f = torch.where(torch.isfinite(hi), hi, torch.zeros_like(hi))
        c_lo = torch.where(torch.isfinite(lo), self.net.cdf_std(logits, lo_f), torch.zeros(()))
        c_hi = torch.where(torch.isfinite(hi), self.net.cdf_std(logits, hi_f), torch.ones(()))
        return c_lo, c_hi

    @torch.no_grad()
    def log_prob(self, theta: Tensor, xs: Tensor, mass_check: str = "error") -> Tensor:
        """``log q(theta_s | x_b)`` ``(S, B)`` for ``theta`` ``(S, B, D)``, ``xs`` ``(B, *x_shape)``
        (``mass_check``: what an observation whose posterior lies outside the prior's bounds
        gets, :meth:`_check_prior_mass`)."""
        s, b, d = theta.shape
        zx_b = self._zx(xs)
        shift, scale = self.affine(zx_b)  # (B, D)
        zt = (((theta - shift) / scale - self.theta_mean) / self.theta_std).transpose(0, 1)
        zx = zx_b[:, None, :].expand(b, s, -1)
        logits = self._logits(zx.reshape(1, b * s, -1), zt.reshape(1, b * s, d),
                                 self.cache(), self.theta_context.shape[0])[0]
        lp = self.net.log_prob_std(logits, zt.reshape(b * s, d))
        lo, hi = (v[:, None].expand(b, s, d).reshape(b * s, d)
                  for v in self._z_bounds(shift, scale))
        c_lo, c_hi = self._mass(logits, lo, hi)
        self._check_prior_mass(c_lo[:, 0].reshape(b, s), c_hi[:, 0].reshape(b, s), xs,
                               mode=mass_check)
        lp = lp - (c_hi - c_lo).clamp(min=1e-12).log()
        out = (lp.sum(-1) - self.theta_std.log().sum()).reshape(b, s).T \
            - scale.log().sum(-1)  # (S, B): the Jacobian of theta = shift + scale * r
        th = theta
        inside = ((th >= self.low) & (th <= self.high)).all(-1)
        return out.masked_fill(~inside, -math.inf)

    @torch.no_grad()
    def sample(self, num: int, xs: Tensor, generator: torch.Generator | None = None,
               chunk: int = 1024, budget: Budget | None = None,
               mass_check: str = "error") -> Tensor:
        """``num`` exact ancestral draws per observation ``xs`` ``(B, *x_shape)`` → ``(num, B, D)``
        (``mass_check``: as :meth:`log_prob`)."""
        b, d = xs.shape[0], self.theta_dim
        zx = self._zx(xs)
        shift, scale = self.affine(zx)  # (B, D)
        z_lo, z_hi = self._z_bounds(shift, scale)
        cache, n = self.cache(), self.theta_context.shape[0]
        out = torch.empty(num, b, d, device=xs.device)
        # factor 1 does not depend on theta: one pass per observation
        first = self._logits(zx[None, :, :], torch.zeros(1, b, d, device=xs.device), cache, n,
                                dims=[0])[0, :, 0]  # (B, K)
        per = max(1, chunk // max(b, 1))
        for start in range(0, num, per):
            m = min(per, num - start)
            zt = torch.zeros(b, m, d, device=xs.device)
            for j in range(d):
                if budget is not None:
                    budget.check(f"{start * b:,} of {num * b:,} samples drawn",
                                 task="in-context autoregressive sampling")
                if j == 0:
                    logits = first[:, None, None, :].expand(b, m, 1, -1)
                else:
                    logits = self._logits(zx[:, None, :].expand(b, m, -1).reshape(1, b * m, -1),
                                             zt.reshape(1, b * m, d), cache, n,
                                             dims=[j])[0].reshape(b, m, 1, -1)
                c_lo, c_hi = self._mass(logits, z_lo[:, None, j:j + 1].expand(b, m, 1),
                                        z_hi[:, None, j:j + 1].expand(b, m, 1))
                self._check_prior_mass(c_lo[..., 0], c_hi[..., 0], xs, j, mass_check)
                u = torch.rand(b, m, 1, generator=generator, device=xs.device)
                u = c_lo + (c_hi - c_lo) * u
                zt[..., j] = self.net.icdf_std(logits, u)[..., 0]
            theta = (zt * self.theta_std + self.theta_mean) * scale[:, None, :] \
                + shift[:, None, :]
            theta = torch.maximum(torch.minimum(theta, self.high), self.low)
            out[start:start + m] = theta.transpose(0, 1)
        return out


    def _check_prior_mass(self, c_lo: Tensor, c_hi: Tensor, xs: Tensor, j: int = 0,
                          mode: str = "error") -> None:
        """Observations where factor ``j``'s mass in the prior's box cannot be resolved for
        any draw (``c_lo``, ``c_hi``: its CDF at the bounds ``(B, M)``, factor 0 when ``j``
        is not given: it depends on ``x`` only; ``xs`` ``(B, *x_shape)``) get an
        :class:`ObservationError` (``mode="error"``), a warning (``"warn"``) or nothing
        (``"off"``): the posterior's ``range_check`` (the diagnostics sample their test
        observations with it off)."""
        if mode == "off":
            return
        mass = c_hi - c_lo
        ok = (mass > MIN_MASS_RESOLUTION * c_hi) & (mass > MIN_PRIOR_MASS)
        bad = (~ok.any(-1)).nonzero().flatten().tolist()  # no draw resolves it
        if not bad:
            return
        x_bad = xs[bad[0]].reshape(-1)[:10].tolist()
        side = "above" if float(c_hi[bad[0]].max()) <= 0.5 else "below"
        message = (
            f"At observation {bad[0]} (x = {[round(v, 4) for v in x_bad]}) the in-context "
            f"posterior of parameter {j} lies almost entirely {side} the prior's bounds "
            f"[{float(self.low[j]):.4g}, {float(self.high[j]):.4g}]: the observation is far "
            f"outside the simulations (the {self.kind} parameterization extrapolates to it); "
            "its samples pile up on the bound and its log_prob does not integrate to 1. "
            "Simulate with a prior that covers this observation, or use variant='plain' "
            "(which does not extrapolate), or method='npe' (range_check='off' on the "
            "posterior accepts it).")
        if mode == "warn":
            warnings.warn(message, UserWarning, stacklevel=2)
            return
        raise ObservationError(message)


def _from_first_component(name: str) -> property:
    """A read-only attribute of :class:`StackedInContextEstimator` taken from its first
    component (the context tensors and x range, shared by all components)."""
    return property(lambda self: getattr(self.components[0], name))


class StackedInContextEstimator(nn.Module):
    r"""A mixture of in-context posteriors (``variant="stack"``):
    :math:`q(\theta \mid x) = \sum_k w_k q_k(\theta \mid x)`, the components
    :class:`InContextEstimator` variants (plain / residual, neighbour counts) on the same
    context, sharing one network, the weights fitted by stacking on held-out context pairs
    (:func:`estimators.incontext_select.select_stack`). ``log_prob`` is the mixture's
    log-sum-exp and ``sample`` draws each sample's component first, so both stay exact.

    Args:
        config: as :class:`InContextEstimator` (without ``residual`` / ``num_neighbors``) plus
            ``stack``: a list of ``{"residual": bool, "num_neighbors": int}`` (and
            ``"adjust"``: the parameterization's name, since wave 12), one per component. The weights are the buffer ``log_weights`` ``(K,)``.
    """

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.config = dict(config)
        parts = list(config["stack"])
        if not parts:
            raise ValueError("A stacked in-context estimator needs at least one component.")
        base = {k: v for k, v in config.items() if k not in ("stack", "variant")}
        net = InContextNet(config["net"])  # one network for all (stored once in a file)
        comps = [InContextEstimator({**base, "residual": bool(p["residual"]),
                                     "adjust": p.get("adjust", bool(p["residual"])),
                                     "num_neighbors": check_num_neighbors(p["num_neighbors"])},
                                    net=net)
                 for p in parts]
        self.components = nn.ModuleList(comps)
        self.register_buffer("log_weights", torch.full((len(comps),), -math.log(len(comps))))
        first = comps[0]
        self.theta_dim, self.x_shape, self.x_dim = first.theta_dim, first.x_shape, first.x_dim

    # the context and its range are the same for every component
    theta_context = _from_first_component("theta_context")
    x_context = _from_first_component("x_context")
    x_min = _from_first_component("x_min")
    x_max = _from_first_component("x_max")

    def set_context(self, theta: Tensor, x: Tensor, weights: Tensor,
                    adjustment: tuple[dict[str, Tensor], Tensor] | None = None) -> None:
        """Store the context in every component and the mixture ``weights`` ``(K,)``
        (``adjustment``: as :meth:`InContextEstimator.set_context`, fitted once here for all
        nonlinear components when not given)."""
        if adjustment is None and any(c.kind == "nonlinear" for c in self.components):
            adjustment = fit_adjustment(theta.float(), x.reshape(x.shape[0], -1).float(),
                                        seed=int(self.config.get("adjust_seed", 0)))
        for c in self.components:
            c.set_context(theta, x, adjustment)
        with torch.no_grad():
            self.log_weights.copy_(weights.float().clamp(min=1e-30).log())

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        """As :meth:`InContextEstimator.load_state_dict`, for every component and the
        weights."""
        out = super().load_state_dict(*args, **kwargs)
        check_estimator_state(self)
        return out

    def set_bounds(self, low: Tensor, high: Tensor) -> None:
        with torch.no_grad():
            for c in self.components:
                c.low.copy_(low.float())
                c.high.copy_(high.float())

    @torch.no_grad()
    def log_prob(self, theta: Tensor, xs: Tensor, mass_check: str = "error") -> Tensor:
        """``log q(theta_s | x_b)`` ``(S, B)`` of the mixture (``mass_check``: as
        :meth:`InContextEstimator.log_prob`)."""
        lps = torch.stack([c.log_prob(theta, xs, mass_check) for c in self.components],
                          -1)  # (S, B, K)
        return torch.logsumexp(lps + self.log_weights, -1)

    @torch.no_grad()
    def sample(self, num: int, xs: Tensor, generator: torch.Generator | None = None,
               chunk: int = 1024, budget: Budget | None = None,
               mass_check: str = "error") -> Tensor:
        """``num`` exact draws per observation ``xs`` ``(B, *x_shape)`` → ``(num, B, D)``:
        each draw's component from the weights, then that component's ancestral draw."""
        b = xs.shape[0]
        k = torch.multinomial(self.log_weights.softmax(0).cpu(), num * b, replacement=True,
                              generator=generator).reshape(num, b).to(xs.device)
        out = torch.empty(num, b, self.theta_dim, device=xs.device)
        col = torch.arange(b, device=xs.device).expand(num, b)
        for i, comp in enumerate(self.components):
            mask = k == i
            most = int(mask.sum(0).max())
            if most == 0:
                continue
            draws = comp.sample(most, xs, generator=generator, chunk=chunk, budget=budget,
                                mass_check=mass_check)
            rank = mask.long().cumsum(0) - 1  # position of each draw among its component's
            out[mask] = draws[rank[mask], col[mask]]
        return out


def estimator_from_config(config: dict[str, Any]) -> nn.Module:
    """The (untrained) estimator a saved config describes: stacked or single."""
    return StackedInContextEstimator(config) if "stack" in config else \
        InContextEstimator(config)


class InContextPosterior(Posterior):
    """Posterior of the pretrained in-context network given a problem's simulations."""

    method = "incontext"
    budget_advice = "Draw fewer samples per call, or subsample the context (context_size=)."

    def _sample_batched(self, n: int, xs: Tensor, budget: Budget | None = None,
                        **kwargs: Any) -> Tensor:
        dev = _device(self.estimator)
        return self.estimator.sample(n, xs.to(dev), budget=budget,
                                     mass_check=self.range_check).cpu()

    def _log_prob_batched(self, theta: Tensor, xs: Tensor, chunk: int = 1024,
                          **kwargs: Any) -> Tensor:
        dev = _device(self.estimator)
        per = max(1, chunk // max(xs.shape[0], 1))
        parts = [self.estimator.log_prob(theta[i:i + per].to(dev), xs.to(dev),
                                         self.range_check).cpu()
                 for i in range(0, theta.shape[0], per)]
        return torch.cat(parts)


def build_incontext(theta: Tensor, x: Tensor, prior: Distribution,
                    **options: Any) -> InContextEstimator:
    """The estimator for context ``theta`` ``(N, D)``, ``x`` ``(N, *x_shape)`` (no training).

    Options: ``context_size`` (subsample that many simulations, seeded by ``seed``),
    ``weights`` (a weights file other than the shipped one), ``seed``, ``variant``
    (``"auto"``, the default: the stacked mixture of the candidates of
    :mod:`estimators.incontext_select` if its held-out log score beats the best single
    candidate's by more than ``STACK_GAIN_SE`` standard errors, else that candidate;
    ``"stack"``: always the mixture; ``"select"``: the candidate with the lowest held-out NLL;
    ``"plain"``; ``"residual"``; ``"nonlinear"``), ``num_neighbors`` (the kernel's neighbour
    count; with
    ``"auto"`` / ``"stack"`` / ``"select"`` it restricts the candidates to plain and residual
    with it; otherwise the pretrained 16) and ``candidates`` (names ``"plain-K"`` /
    ``"residual-K"`` / ``"nonlinear-K"``: the pool of ``"auto"`` / ``"stack"`` /
    ``"select"``); ``param_names`` only labels the parameters in error messages.

    Exact copies of simulations (same ``theta`` and ``x``) are dropped with a warning before
    ``context_size`` applies (their number is ``config["duplicates_dropped"]``); a context
    smaller than the weights' pretrained minimum (:data:`N_MIN`), or one in which a parameter
    is constant, is refused (:mod:`estimators.incontext_checks`).
    """
    unknown = set(options) - {"context_size", "weights", "seed", "variant", "num_neighbors",
                              "candidates", "param_names"}
    if unknown:
        raise TypeError(f"Unknown in-context options {sorted(unknown)}; valid: "
                        f"{list(ESTIMATOR_OPTIONS)}.")
    x_shape = tuple(x.shape[1:])
    check_range(theta.shape[1], math.prod(x_shape), 2, n_min=2)  # D and d, before any work
    net, meta = load_pretrained(options.get("weights"))
    n_min = _pretrained_n_min(meta)
    theta, x, dropped = drop_duplicate_pairs(theta, x)
    size = options.get("context_size")
    if size is not None:
        size = int(size)
        if size < n_min:
            raise ValueError(f"context_size must be at least {n_min} (the smallest context the "
                             f"in-context model was pretrained on), got {size}.")
        if theta.shape[0] > size:
            g = torch.Generator().manual_seed(int(options.get("seed", 0)))
            keep = torch.randperm(theta.shape[0], generator=g)[:size]
            theta, x = theta[keep], x[keep]
    try:
        check_range(theta.shape[1], math.prod(x_shape), theta.shape[0], n_min=n_min)
    except InContextRangeError as err:
        if not dropped:
            raise
        raise InContextRangeError(f"{err} ({dropped} exact copies of simulations were "
                                  "dropped first.)") from None
    check_parameter_spread(theta, options.get("param_names"))
    variant = options.get("variant") or "auto"
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} is not one of {list(VARIANTS)}; use 'auto' "
                         "(chosen by held-out likelihood on the simulations), 'stack' (always "
                         "the mixture of the candidates weighted on held-out simulations), "
                         "'select' (the best single candidate), 'plain', 'residual' or "
                         "'nonlinear'.")
    nb = options.get("num_neighbors")
    if nb is not None:
        nb = check_num_neighbors(nb)
    low, high = support_bounds(prior)
    theta, x = theta.float(), x.float()
    record: dict[str, Any] = {}
    adjustment = None  # the nonlinear candidates' regression fit, shared
    cands = parse_candidates(options.get("candidates"), nb)
    base = {"theta_dim": int(theta.shape[1]), "x_shape": list(x_shape),
            "n_context": int(theta.shape[0]), "net": dict(net.config),
            "adjust_seed": int(options.get("seed", 0)), "duplicates_dropped": dropped,
            "weights": {"file": Path(options.get("weights") or WEIGHTS_PATH).name,
                        "steps": meta.get("steps"), "seed": meta.get("seed")}}
    if variant in ("auto", "stack", "select"):
        x_flat = x.reshape(x.shape[0], -1)
        st = standardize_context(theta[None], x_flat[None])
        zx = ((x_flat - st["x_mean"][0]) / st["x_std"][0])
        kw: dict[str, Any] = {} if cands is None else {"candidates": cands}
        seed = int(options.get("seed", 0))
        pool = cands if cands is not None else \
            (STACK_CANDIDATES if variant != "select" else CANDIDATES)
        if any(kind_of(c[0]) == "nonlinear" for c in pool) and \
                theta.shape[0] >= min_simulations("nonlinear", zx.shape[1]):
            adjustment = fit_adjustment(theta, x_flat, seed=seed)
            kw["adjustment"] = adjustment[0]
    if variant in ("auto", "stack"):
        comps, weights, record = select_stack(net, theta, zx, seed=seed, x=x_flat, **kw)
        mixed = len(comps) > 1 and (variant == "stack" or record["gain"] > STACK_GAIN_SE
                                    * record["gain_se"])
        if mixed:
            record["chosen"] = "stack(" + ", ".join(
                f"{k} {v:.2f}" for k, v in record["weights"].items()) + ")"
            est: nn.Module = StackedInContextEstimator(
                {**base, "stack": [{"residual": kind_of(r) == "residual",
                                    "adjust": kind_of(r), "num_neighbors": k}
                                   for r, k in comps],
                 "variant": {"requested": variant, **record}})
            est.components[0].net.load_state_dict(net.state_dict())
            est.set_context(theta, x, weights, adjustment)
            est.set_bounds(low, high)
            return est.eval()
        (residual, nb_used), = parse_candidates([record.get("best")]) if "best" in record \
            else (comps[0],)
        record["chosen"] = variant_name(residual, nb_used)
    elif variant == "select":
        (residual, nb_used), record = select_variant(net, theta, zx, seed=seed, x=x_flat, **kw)
    else:
        residual = variant if variant == "nonlinear" else variant == "residual"
        need = min_simulations(residual, math.prod(x_shape))
        if theta.shape[0] < need:
            raise ValueError(
                f"variant={variant!r} fits a regression of theta on x and needs at least "
                f"{need} simulations, got {theta.shape[0]}. Simulate more, or use "
                "variant='plain' (or 'auto', which skips it with too few simulations).")
        nb_used = int(nb) if nb is not None else int(net.config["num_neighbors"])
    config = {**base, "residual": kind_of(residual) == "residual",
              "adjust": kind_of(residual), "num_neighbors": nb_used,
              "variant": {"requested": variant, "chosen": variant_name(residual, nb_used),
                          **record}}
    est = InContextEstimator(config)
    est.net.load_state_dict(net.state_dict())
    est.set_context(theta, x, adjustment)
    with torch.no_grad():
        est.low.copy_(low.float())
        est.high.copy_(high.float())
    return est.eval()


def parse_candidates(names: Any, nb: Any = None) -> tuple[tuple[bool, int], ...] | None:
    """``(residual, num_neighbors)`` pairs from names like ``["plain-16", "residual-64"]``
    (``candidates=`` of ``variant="auto"`` / ``"stack"``); ``None`` (the defaults) when not
    given, or plain and residual with ``nb`` neighbours when only ``num_neighbors`` is."""
    if names is None:
        return None if nb is None else ((False, int(nb)), (True, int(nb)))
    if isinstance(names, str):
        names = names.split(",")
    out = []
    for name in names:
        kind, _, k = str(name).strip().partition("-")
        if kind not in ("plain", "residual", "nonlinear") or not k.isdigit() or int(k) < 1:
            raise ValueError(f"candidate {name!r} is not of the form 'plain-K' or 'residual-K' "
                             "(or 'nonlinear-K'; K a positive neighbour count), e.g. "
                             "candidates=['plain-16', 'residual-64', 'nonlinear-16'].")
        out.append((kind if kind == "nonlinear" else kind == "residual", int(k)))
    if not out:
        raise ValueError("candidates= is empty; give at least one, e.g. ['plain-16'].")
    return tuple(dict.fromkeys(out))


def finetune(est: InContextEstimator, steps: int, lr: float = 1e-4, seed: int = 0,
             queries: int | None = None) -> list[float]:
    """Continue pretraining ``est.net`` on its own context for ``steps`` steps.

    Each step splits a random permutation of the context into context and queries (20%,
    at most 200) and takes an Adam step on the prior-data NLL. Returns the losses.
    """
    theta, x = est.context_targets(), est.x_context
    n = theta.shape[0]
    q = queries or max(1, min(200, n // 5))
    g = torch.Generator().manual_seed(seed)
    net = est.net
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        perm = torch.randperm(n, generator=g).to(theta.device)
        loss = pretrain_loss(net, theta[perm][None], x[perm][None], n - q)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    net.eval()
    est._cache = None
    return losses


def fit_incontext(problem: Problem, sims: tuple[Tensor, Tensor], seed: int = 0,
                  **options: Any) -> InContextPosterior:
    """The in-context posterior for ``sims`` (see the module docstring). Training options of
    other methods (``max_epochs``, ``batch_size``, ...) do not apply and are ignored, except
    ``device``."""
    t0 = time.perf_counter()
    theta, x = sims
    train_config, est_options = split_options(options)
    device = training_device(train_config.device)  # before any work: a clear error
    steps = check_finetune_steps(est_options.pop("finetune_steps", 0))
    lr = est_options.pop("finetune_lr", 1e-4)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
        raise ValueError(f"finetune_lr must be a finite number > 0 (default 1e-4), got {lr!r}.")
    if steps > 0 and est_options.get("variant") == "stack":
        raise ValueError("finetune_steps fine-tunes one network for one variant; it does not "
                         "apply to variant='stack' (a mixture). Use variant='auto' (or "
                         "'plain' / 'residual') with finetune_steps, or finetune_steps=0.")
    if steps > 0 and est_options.get("variant") in (None, "auto"):
        est_options["variant"] = "select"  # one network to fine-tune: the best single variant
    est_options.setdefault("param_names", list(problem.param_names or []))
    with thread_scope(train_config.num_threads):
        est = build_incontext(theta, x, problem.prior, seed=seed, **est_options)
        history: dict[str, Any] = {"num_simulations": int(theta.shape[0]),
                                   "context_size": int(est.theta_context.shape[0]),
                                   "duplicates_dropped": int(est.config["duplicates_dropped"]),
                                   "epochs": 0, "finetune_steps": steps}
        history["variant"] = est.config["variant"]["chosen"]
        est = est.to(device)
        if steps > 0:  # est.net is this posterior's own copy of the pretrained network
            history["finetune_losses"] = finetune(est, steps, lr=lr, seed=seed)
            est.config["weights"]["finetune_steps"] = steps
    history["seconds"] = time.perf_counter() - t0
    return InContextPosterior(est, problem.prior, problem.spec(), history)


def _make_posterior(estimator: InContextEstimator, prior: Distribution,
                    problem_spec: dict[str, Any], history: dict[str, Any] | None = None,
                    **kwargs: Any) -> InContextPosterior:
    return InContextPosterior(estimator, prior, problem_spec, history, **kwargs)


METHOD = Method(
    name="incontext",
    build=build_incontext,
    from_config=estimator_from_config,
    make_posterior=_make_posterior,
    fit=fit_incontext,
    description="In-context posterior: a set transformer pretrained on a prior over problems "
                "(D <= 3, x <= 10 values, <= 1000 simulations); no training.",
)
