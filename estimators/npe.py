r"""Neural posterior estimation (NPE).

A conditional density estimator ``q_phi(theta | x)`` is fitted by maximum likelihood on
pairs drawn from the joint ``p(theta) p(x | theta)``:

.. math:: \mathcal{L}(\phi) = -\mathbb{E}_{p(\theta, x)} \log q_\phi(\theta \mid x),

whose minimizer is the posterior. The density is one of sbi-core's fused flows, the MAF
(``fmaf``) or the NSF (``fnsf``), an nflows MAF (``maf``) or NSF (``nsf``), or a mixture
density network (``mdn``); ``theta`` and ``x`` are z-scored with statistics of the
training data, and ``x`` may pass through an embedding network first.

The default ``flow="auto"`` picks the fused flow by the problem (``AUTO_FLOW``, measured in
benchmarks/RESULTS.md "Issue 18: a single-model default for declared trials"): ``fnsf`` when
x declares exchangeable trials (``Problem(x_trials=...)``, used by NPE) and there are at
most 9 parameters, ``fmaf`` otherwise. Both fused flows train with the ``"accurate"``
preset's warm-up + cosine schedule (``FMAF_ACCURATE_DEFAULTS``); ``preset="fast"`` gives
``FMAF_TRAIN_DEFAULTS``.

``conditional_shift`` (default None: off) gives the flow a head start: with ``"linear_full"``
(or ``"linear"``, a diagonal scale) the standardized theta is regressed (ridge least
squares) on the standardized x before training and the flow models the whitened residual
``u = L^{-1}(z - A s(x) - b)`` (``L``: Cholesky factor of the residual covariance), fixed
once, with the constant log-Jacobian ``-sum log L_ii`` in ``log_prob`` and the inverse map
in sampling (:mod:`estimators.conditional_shift`). It needs the flow's context to be the
standardized x (identity embedding, no discrete columns, flat or sorted trials, a flow).
Measured at 10,000 simulations (benchmarks/RESULTS.md, "Issue 18: a conditional affine
pre-standardization of theta"): for posteriors close to linear-Gaussian in x it trains in
fewer epochs and is more accurate (gaussian_mixture: 92 instead of 211 epochs, C2ST 0.545
instead of 0.603 over 3 seeds; gaussian_linear 0.512 instead of 0.555), but it cost C2ST
on sir (+0.030) and bernoulli_glm (+0.03, 2 seeds) and changed nothing on two_moons and
slcp, so it is not the default. Model files record the choice; files saved before it
existed load without a shift.

``x_transform`` (default ``"none"``; ``"auto"``, ``"log1p"``, ``"sqrt"``) maps nonnegative,
right-skewed x columns before z-scoring (:mod:`estimators.x_transform`); the chosen columns
are stored in the config as ``x_map``. Off by default: on sir it cost C2ST (benchmarks/RESULTS.md,
"Issue 18: a log1p transform of skewed count x").

``regularizer="fim"`` (options ``beta``, ``fim_samples``, ``fim_ema``) adds the FIM-trace
adversarial defense and ``regularizer="noise"`` (``noise_eps``) trains on noise-augmented
observations; see :mod:`estimators.robust_training`. The options are kept in the config.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from estimators.conditional_shift import ShiftedDensity, resolve_shift
from estimators.discrete_x import OneHotX, discrete_config
from estimators.embedding import (
    _Flatten,
    build_embedding,
    is_set_embedding,
    prepare_embedding,
)
from estimators.fast_maf import FusedMAF, FusedNLLStep
from estimators.flows import FLOWS, NSF_LAYOUT, build_flow, nsf_layout
from estimators.flows import sample_and_log_prob as flow_sample_and_log_prob
from estimators.mdn import MixtureDensity
from estimators.robust_training import (
    REGULARIZER_DEFAULTS,
    npe_training_loss,
    relative_scale,
    validate_regularizer_options,
)
from estimators.standardize import StandardizedEstimator, fit_standardize
from estimators.theta_transform import UnconstrainedTransform
from estimators.trials import permute_trials, resolve_trials, sort_trials, trial_statistics
from estimators.x_transform import XTransform, resolve_x_transform
from sbi_core.methods import Method
from sbi_core.posterior import DirectPosterior
from sbi_core.priors import support_bounds

__all__ = ["NPEEstimator", "METHOD", "build_npe"]

DEFAULTS: dict[str, Any] = {
    "flow": "auto",
    "hidden_features": 50,
    "num_transforms": 5,
    "num_blocks": 2,
    "num_bins": 10,
    "num_components": 10,
    "embedding": None,
    "regularizer": None,
    "theta_transform": None,
    "discrete_columns": None,
    "x_trials": None,
    "trial_mode": None,
    "conditional_shift": None,
    "x_transform": "none",
}

THETA_TRANSFORMS = (None, "unconstrained")

# flow="auto" (the default): the fused flow family by whether x declares exchangeable trials
# that NPE uses (Problem(x_trials=...), estimators/trials.py) and by the parameter dimension
# D: (largest D, flow) in order, per case. Evidence (benchmarks/RESULTS.md, "Issue 18: a
# single-model default for declared trials", 10,000 simulations, both flows with the cosine
# preset): slcp (D = 5, 4 trials), observations 1-10: fnsf 0.784 / 0.783 / 0.814 (mean
# 0.794) vs fmaf 0.844 / 0.830 / 0.849 (0.841) on seeds 0 / 1 / 2, at 1.3-1.7x fmaf's
# training time; iid Gaussian trials with the analytic posterior
# (benchmarks/flow_by_dimension.py --trials, seed 0, observations 1-5): fnsf as accurate as fmaf (D x trials = 2 x 5: 0.551 vs 0.546; 3 x 10:
# 0.588 vs 0.586; 5 x 4: 0.583 vs 0.582). Without trials fnsf was worse at D = 5
# (gaussian_linear(dim=5): 0.590 vs 0.576) and at D = 10 (0.595 vs 0.548, plateau preset),
# and costs 2-4x per epoch and per draw at D = 10, so fmaf everywhere else (also for trials
# with D >= 10, not measured).
AUTO_FLOW: dict[str, tuple[tuple[float, str], ...]] = {
    "trials": ((9, "fnsf"), (float("inf"), "fmaf")),
    "flat": ((float("inf"), "fmaf"),),
}


def resolve_flow(flow: str, theta_dim: int, trials: bool = False) -> str:
    """The concrete flow for ``flow``: ``"auto"`` picks from ``AUTO_FLOW`` by whether NPE
    uses declared exchangeable trials (``trials``) and by ``theta_dim``; others are kept."""
    if flow != "auto":
        return flow
    rule = AUTO_FLOW["trials" if trials else "flat"]
    return next(kind for max_dim, kind in rule if theta_dim <= max_dim)

# Training presets, chosen by benchmarks/compare_sbi.py against sbi 0.27 (table and
# commands in docs/performance.md, summary in docs/npe.md). "fast" is the earlier fused-MAF
# default (larger batches and learning rate, early stopping that ignores improvements below
# 0.005 nats): it stops at a coarser optimum. "accurate" (the default, any flow) trains to a
# finer one. Other flows keep TrainConfig's defaults under "fast".
FMAF_TRAIN_DEFAULTS: dict[str, Any] = {"batch_size": 512, "learning_rate": 2e-3,
                                       "min_delta": 0.005, "ema_decay": None,
                                       "stop_after_epochs": 20, "lr_schedule": "plateau",
                                       "schedule_epochs": None, "warmup_epochs": 0.0,
                                       "stall_decay": 0.1, "overfit_rise": None,
                                       "overfit_epochs": 25}
# TrainConfig's own defaults, what other flows use under "fast"
OTHER_FAST_DEFAULTS: dict[str, Any] = {"batch_size": 256, "learning_rate": 1e-3,
                                       "min_delta": 0.0, "ema_decay": None,
                                       "stop_after_epochs": 20, "lr_schedule": "plateau",
                                       "schedule_epochs": None, "warmup_epochs": 0.0,
                                       "stall_decay": 0.1, "overfit_rise": None,
                                       "overfit_epochs": 25}
# "accurate" for flows other than the fused ones (nflows MAF/NSF, mdn): weight averaging
# (EMA 0.99) and patience 40 (gaussian_mixture has a plateau ~70 epochs in that patience 20
# mistakes for convergence) gave the largest C2ST gains (round 3 in docs/performance.md).
ACCURATE_DEFAULTS: dict[str, Any] = {"batch_size": 256, "learning_rate": 1e-3,
                                     "min_delta": 0.0, "ema_decay": 0.99,
                                     "stop_after_epochs": 40, "lr_schedule": "plateau",
                                     "schedule_epochs": None, "warmup_epochs": 0.0,
                                     "stall_decay": 0.1, "overfit_rise": None,
                                     "overfit_epochs": 25}
# "accurate" for the fused flows (fmaf, fnsf, and "auto", the default, which picks one of
# them): for fmaf the same optimum in about half the
# epochs: a fixed budget (300 epochs at 10,000 simulations, scaled by sqrt(10,000 / N),
# sbi_core.training.auto_schedule_epochs) with 5 warm-up epochs and a cosine decay from 3x
# the plateau preset's learning rate ("Issue 18: training speed" in docs/performance.md).
# Batch 512 with lr 6e-3 was cheaper per epoch but overfit slcp (C2ST 0.924 vs 0.900). For fnsf it beat fnsf's former plateau
# preset on slcp (seed 0: 0.784 vs 0.813) and on iid Gaussian trials (0.583 vs 0.593).
# A stall (40 epochs without beating the best validation loss by more than 0.003 nats, or
# 25 when the last 5 validation losses are all more than 0.05 nats above the best:
# overfitting) ends training with the best weights (stall_decay=0): the compressed final
# decay that used to follow it never gave a new best on the six benchmark tasks, and most tasks' best epoch comes long before the schedule
# ends ("Issue 18: the stall ends training" in docs/performance.md: fewer epochs, the same
# best weights on seed 0).
FMAF_ACCURATE_DEFAULTS: dict[str, Any] = {"batch_size": 256, "learning_rate": 3e-3,
                                          "min_delta": 0.003, "ema_decay": 0.99,
                                          "stop_after_epochs": 40, "lr_schedule": "cosine",
                                          "schedule_epochs": "auto", "warmup_epochs": 5.0,
                                          "stall_decay": 0.0, "overfit_rise": 0.05,
                                          "overfit_epochs": 25}
# the fused flows (and "auto", which picks one of them) share both presets' settings
FUSED_FLOWS = ("fmaf", "fnsf", "auto")
PRESETS = ("fast", "accurate")
DEFAULT_PRESET = "accurate"


def train_defaults(options: dict[str, Any]) -> dict[str, Any]:
    """Training defaults for the NPE estimator ``options`` (user options override them);
    ``options["preset"]`` (set by ``fit(..., preset=)``) picks ``"fast"`` or ``"accurate"``
    (default). Every preset sets the same keys."""
    preset = options.get("preset") or DEFAULT_PRESET
    flow = options.get("flow", DEFAULTS["flow"])
    if preset == "accurate":
        return dict(FMAF_ACCURATE_DEFAULTS if flow in FUSED_FLOWS else ACCURATE_DEFAULTS)
    return dict(FMAF_TRAIN_DEFAULTS if flow in FUSED_FLOWS else OTHER_FAST_DEFAULTS)


train_defaults.presets = PRESETS  # type: ignore[attr-defined]


class NPEEstimator(StandardizedEstimator):
    """``q(theta | x)``: standardize, embed ``x``, evaluate a conditional density.

    Args:
        config: plain-value dict with ``theta_dim``, ``x_shape`` and the keys of ``DEFAULTS``.
        embedding: the user's embedding module when ``config["embedding"]`` records one
            (``{"type": "user", ...}``; see :func:`estimators.embedding.prepare_embedding`).
    """

    def __init__(self, config: dict[str, Any], embedding: nn.Module | None = None):
        super().__init__()
        cfg = {**DEFAULTS, **config}
        cfg["flow"] = resolve_flow(cfg["flow"], int(cfg["theta_dim"]), bool(cfg["x_trials"]))
        self.config = cfg
        d, x_shape = int(cfg["theta_dim"]), tuple(cfg["x_shape"])
        self.theta_dim, self.x_shape = d, x_shape
        self._init_scaling(d, x_shape)
        if cfg["theta_transform"] not in THETA_TRANSFORMS:
            raise ValueError(f"Unknown theta_transform {cfg['theta_transform']!r}; use one of "
                             f"{THETA_TRANSFORMS}.")
        # Bounds are filled by build_npe (or loaded with the state_dict).
        self.theta_transform: UnconstrainedTransform | None = (
            UnconstrainedTransform(torch.full((d,), -torch.inf), torch.full((d,), torch.inf))
            if cfg["theta_transform"] == "unconstrained" else None)
        self.discrete_x = OneHotX(x_shape, cfg) if cfg["discrete_columns"] is not None else None
        embed_shape = (self.discrete_x.out_dim,) if self.discrete_x is not None else x_shape
        # declared exchangeable trials (n, d) in the flattened x (estimators/trials.py)
        self.trials = tuple(int(v) for v in cfg["x_trials"]) if cfg["x_trials"] else None
        self.trial_mode = cfg["trial_mode"] if self.trials is not None else None
        if self.trial_mode == "set":
            embed_shape = self.trials
        self.embedding, context_dim = build_embedding(cfg["embedding"], embed_shape, embedding)
        if cfg["flow"] == "mdn":
            self.density: nn.Module = MixtureDensity(d, context_dim, cfg["num_components"],
                                                     cfg["hidden_features"])
        elif cfg["flow"] in FLOWS:
            self.density = build_flow(cfg["flow"], d, context_dim, cfg["hidden_features"],
                                      cfg["num_transforms"], cfg["num_blocks"], cfg["num_bins"],
                                      nsf_layout=nsf_layout(cfg))
        else:
            raise ValueError(f"Unknown flow {cfg['flow']!r}; use one of "
                             f"{FLOWS + ('mdn', 'auto')}.")
        # the conditional affine pre-standardization (estimators/conditional_shift.py), as
        # resolved by build_npe; configs saved before it existed have no key: no shift
        self.shift = config.get("conditional_shift")
        if self.shift not in (None, "linear", "linear_full"):
            raise ValueError(f"conditional_shift={self.shift!r} in an estimator config must be "
                             "None, 'linear' or 'linear_full'.")
        if self.shift is not None:
            self.density = ShiftedDensity(self.density, d, context_dim)
        # log1p / sqrt of skewed nonnegative x columns before z-scoring
        # (estimators/x_transform.py), as resolved by build_npe; no key (older files): none
        self.x_transform = XTransform(x_shape, config.get("x_map"))

    def fit_standardization(self, theta: Tensor, x: Tensor) -> None:
        """Fit the z-scoring of ``theta`` ``(N, D)`` and ``x`` ``(N, *x_shape)``, and the x range.

        For a set embedding, x statistics are per feature over all (non-padding) trials.
        With ``theta_transform``, theta is z-scored in the unconstrained space.
        """
        if self.theta_transform is not None:
            self.theta_transform.check_inside(theta)
            theta = self.theta_transform(theta)
        if self.trials is not None:  # one mean/std per trial feature, shared by all trials
            with torch.no_grad():
                fit_standardize(self.theta_norm, theta, "theta")
                n = self.trials[0]
                for buf, v in zip((self.x_norm.mean, self.x_norm.std, self.x_min, self.x_max),
                                  trial_statistics(x, self.trials[1])):
                    buf.copy_(v.repeat(n).reshape(self.x_shape))
            return
        if not is_set_embedding(self.config.get("embedding")):
            super().fit_standardization(theta, self.x_transform(x))
            if self.x_transform.active:  # the range check works on the raw x
                with torch.no_grad():
                    self.x_min.copy_(x.min(0).values)
                    self.x_max.copy_(x.max(0).values)
            if self.discrete_x is not None:
                self.discrete_x.unscale_discrete(self.x_norm)
                self.discrete_x.discrete.fit(x.reshape(x.shape[0], -1))
            return
        with torch.no_grad():
            fit_standardize(self.theta_norm, theta, "theta")
            rows = x.reshape(-1, x.shape[-1])
            rows = rows[~torch.isnan(rows).all(-1)]
            self.x_norm.mean.copy_(rows.mean(0).expand(self.x_shape))
            self.x_norm.std.copy_(rows.std(0).clamp(min=1e-12).expand(self.x_shape))
            self.x_min.copy_(torch.nan_to_num(rows.min(0).values).expand(self.x_shape))
            self.x_max.copy_(torch.nan_to_num(rows.max(0).values).expand(self.x_shape))

    def context(self, x: Tensor) -> Tensor:
        """Embedded, standardized observations ``(N, C)``."""
        if self.discrete_x is not None:
            return self.embedding(self.discrete_x(x, self.x_norm))
        if self.trial_mode == "sort":
            x = sort_trials(x, *self.trials)
        z = self.x_norm(self.x_transform(x))
        if self.trial_mode == "set":
            z = z.reshape(z.shape[0], *self.trials)
        return self.embedding(z)

    def check_observation(self, x: Tensor) -> None:
        """Called by the posterior on observations ``(N, *x_shape)``: discrete values must
        have occurred in training (:class:`~sbi_core.posterior.ObservationError` otherwise)."""
        if self.discrete_x is not None:
            self.discrete_x.discrete.codes(x.reshape(x.shape[0], -1).to(self.x_min.device))

    @property
    def samples_in_support(self) -> bool:
        """True when samples always lie inside the prior's support (``theta_transform``)."""
        return self.theta_transform is not None

    def _to_z(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        """Parameters ``(..., D)`` → the flow's standardized space, and ``log |det dz/dtheta|``
        ``(...)``."""
        lad = -self.theta_norm.std.log().sum()
        if self.theta_transform is not None:
            theta, lad_u = self.theta_transform.forward_and_log_det(theta)
            lad = lad + lad_u
        return self.theta_norm(theta), lad

    def to_base(self, theta: Tensor, x: Tensor) -> Tensor:
        """The flow's base variable ``T^{-1}(theta; x)`` ``(N, D)`` for paired rows ``theta``
        ``(N, D)``, ``x`` ``(N, *x_shape)``: ``N(0, I)`` when ``theta ~ q(theta | x)``.

        Used by L-C2ST-NF (:mod:`diagnostics.lc2st`). A mixture density network has no such
        invertible map and raises ``NotImplementedError``.
        """
        z, _ = self._to_z(theta)
        ctx = self.context(x)
        density = self.density
        if isinstance(density, ShiftedDensity):  # the flow's input is the shifted u
            z, density = density.to_u(z, ctx), density.flow
        if hasattr(density, "forward_transform"):  # fused MAF
            return density.forward_transform(z, ctx)[0]
        if hasattr(density, "_transform"):  # nflows Flow
            return density._transform(z, context=density._embedding_net(ctx))[0]
        raise NotImplementedError(f"flow={self.config['flow']!r} has no invertible map to a "
                                  "standard normal base (use L-C2ST's general variant).")

    def from_z(self, z: Tensor) -> Tensor:
        """The flow's standardized space ``(..., D)`` → parameters."""
        theta = self.theta_norm.inverse(z)
        return theta if self.theta_transform is None else self.theta_transform.inverse(theta)


    def log_prob(self, theta: Tensor, x: Tensor) -> Tensor:
        """``log q(theta | x)`` for paired rows: ``theta`` ``(N, D)``, ``x`` ``(N, *x_shape)`` → ``(N,)``."""
        z, lad = self._to_z(theta)
        return self.density.log_prob(z, context=self.context(x)) + lad

    def fused_training_step(self, loss_fn: Any = None,
                            ) -> Callable[[Tensor, Tensor], Tensor] | None:
        """For :func:`sbi_core.training.train`: with the fused MAF as the density (no shift,
        no permuted trials, no regularizer, no trainable parameters outside the flow) a
        function ``(theta (N, D), x (N, *x_shape)) -> mean loss`` that also sets the flow's
        gradients, without autograd (:class:`estimators.fast_maf.FusedNLLStep`: the same
        bits as ``loss(theta, x).mean().backward()``); ``None`` otherwise."""
        if loss_fn is not None and not (loss_fn is npe_training_loss
                                        and self.config.get("regularizer") is None):
            return None
        if type(self.density) is not FusedMAF or self.trial_mode == "permute" or any(
                getattr(type(self), name) is not getattr(NPEEstimator, name)
                for name in ("loss", "log_prob", "_to_z", "context")):
            return None  # (a subclass's own loss: autograd)
        flow = {id(p) for p in self.density.parameters()}
        if any(p.requires_grad and id(p) not in flow for p in self.parameters()):
            return None  # e.g. a trainable embedding: its gradients need autograd

        nll = FusedNLLStep(self.density)
        if self.theta_transform is not None:
            def step(theta: Tensor, x: Tensor) -> Tensor:
                z, lad = self._to_z(theta)
                return nll(z, self.context(x), lad)

            return step
        # z-scoring's log-Jacobian is a constant of the run: computed once (the same value)
        with torch.no_grad():
            lad = self._to_z(self.theta_norm.mean[None])[1]
        norm = self.theta_norm

        def fused(theta: Tensor, x: Tensor) -> Tensor:
            return nll(norm(theta), self.context(x), lad)

        if self.discrete_x is None and self.trial_mode not in ("sort", "set") and \
                not self.x_transform.active and type(self.embedding) is _Flatten:
            # the flow's inputs and context are z-scored rows (elementwise, row by row): the
            # loop may compute them once for all training rows (`prepare`) and then step on
            # minibatches of those (`prepared`): the same values, ~4 torch calls and 4
            # module calls fewer per step (docs/performance.md, "Issue 18: sir's margin")
            fused.prepare = lambda theta, x: (norm(theta), self.context(x))  # type: ignore
            fused.prepared = lambda z, c: nll(z, c, lad)  # type: ignore[attr-defined]
        return fused

    def loss(self, theta: Tensor, x: Tensor) -> Tensor:
        if self.trial_mode == "permute" and self.training:
            x = permute_trials(x, *self.trials)  # a fresh order of the trials per minibatch
        return -self.log_prob(theta, x)

    def sample(self, n: int, x: Tensor) -> Tensor:
        """``n`` samples for each of ``B`` observations ``x`` → ``(n, B, D)``."""
        z = self.density.sample(n, context=self.context(x))  # (B, n, D)
        return self.from_z(z).transpose(0, 1)

    def sample_and_log_prob(self, n: int, x: Tensor) -> tuple[Tensor, Tensor]:
        """Differentiable samples ``(n, B, D)`` and their log densities ``(n, B)``."""
        ctx = self.context(x)
        z, lp = flow_sample_and_log_prob(self.density, n, ctx)
        theta = self.from_z(z)
        return theta.transpose(0, 1), (lp + self._to_z(theta)[1]).transpose(0, 1)


def build_npe(theta: Tensor, x: Tensor, prior: Distribution, **options: Any) -> NPEEstimator:
    """An untrained :class:`NPEEstimator` with standardization fitted on ``theta``, ``x``."""
    reg_keys = set(REGULARIZER_DEFAULTS)
    unknown = set(options) - set(DEFAULTS) - reg_keys
    if unknown:
        raise TypeError(f"Unknown NPE options {sorted(unknown)}; valid: "
                        f"{sorted(set(DEFAULTS) | reg_keys)} and the training options of "
                        "sbi_core.TrainConfig.")
    validate_regularizer_options(options)
    x_shape = tuple(x.shape[1:])
    trials, trial_mode, embedding = resolve_trials(
        options.get("x_trials"), options.get("trial_mode"), options.get("embedding"), x_shape)
    if trials is not None and options.get("discrete_columns") is not None:
        raise ValueError("x_trials (exchangeable trials) cannot be combined with "
                         "discrete_columns in NPE; pass x_trials=None to train on the flat x "
                         "with one-hot discrete columns.")
    spec, module = prepare_embedding(embedding, tuple(trials) if trial_mode == "set" else x_shape)
    config = {**DEFAULTS, **{k: v for k, v in options.items() if k not in reg_keys},
              "theta_dim": int(theta.shape[1]), "x_shape": list(x_shape),
              "nsf_layout": NSF_LAYOUT, "embedding": spec, "x_trials": trials,
              "trial_mode": trial_mode}
    # the config records the concrete flow (rebuilt on load) and what was asked for
    config["flow_requested"] = config["flow"]
    config["flow"] = resolve_flow(config["flow"], int(theta.shape[1]), trials is not None)
    reg = options.get("regularizer")
    if reg is not None and is_set_embedding(spec):
        raise ValueError(f"regularizer={reg!r} is not supported with a set embedding (iid "
                         "sets); train without a regularizer or with a fixed-size x.")
    if options.get("discrete_columns") is not None:
        _check_discrete_options(options)
        config.update(discrete_config(x, options["discrete_columns"]))
    if reg == "fim":
        d = REGULARIZER_DEFAULTS
        config.update(regularizer="fim", beta=float(options.get("beta", d["beta"])),
                      fim_samples=int(options.get("fim_samples", d["fim_samples"])),
                      fim_ema=float(options.get("fim_ema", d["fim_ema"])))
    elif reg == "noise":
        config.update(regularizer="noise",
                      noise_eps=float(options.get("noise_eps", REGULARIZER_DEFAULTS["noise_eps"])),
                      x_scale=relative_scale(x))
    ident = spec is None or (isinstance(spec, dict) and spec.get("type") == "identity")
    config["conditional_shift"] = resolve_shift(
        config.get("conditional_shift"), flow=config["flow"], identity_embedding=ident,
        discrete=options.get("discrete_columns") is not None, trial_mode=trial_mode)
    config["x_map"] = resolve_x_transform(
        config.get("x_transform"), x, flat_identity=ident,
        structured=trials is not None or is_set_embedding(spec)
        or options.get("discrete_columns") is not None)
    est = NPEEstimator(config, embedding=module)
    if est.theta_transform is not None:
        low, high = support_bounds(prior)
        est.theta_transform.low.copy_(low)
        est.theta_transform.high.copy_(high)
    est.fit_standardization(theta, x)
    if isinstance(est.density, ShiftedDensity):
        with torch.no_grad():
            z, ctx = est._to_z(theta)[0], est.context(x)
            est.density.fit(z, ctx, full=config["conditional_shift"] == "linear_full")
    return est


def _check_discrete_options(options: dict[str, Any]) -> None:
    kind = (options.get("embedding") or {}).get("type")
    if kind not in (None, "identity", "mlp"):
        raise ValueError(f"discrete_columns (one-hot encoded x columns) work with the identity "
                         f"or mlp embedding on flat x, not embedding type {kind!r}.")
    if options.get("regularizer") is not None:
        raise ValueError(f"regularizer={options['regularizer']!r} perturbs x continuously and "
                         "cannot be combined with discrete_columns; train without it.")


def _make_posterior(estimator: NPEEstimator, prior: Distribution, problem_spec: dict[str, Any],
                    history: dict[str, Any] | None = None, **kwargs: Any) -> DirectPosterior:
    post = DirectPosterior(estimator, prior, problem_spec, history, **kwargs)
    post.method = "npe"
    return post


METHOD = Method(
    name="npe",
    build=build_npe,
    from_config=NPEEstimator,
    make_posterior=_make_posterior,
    loss_fn=npe_training_loss,
    train_defaults=train_defaults,
    accepts_discrete_x=True,
    accepts_x_trials=True,
    description="Neural posterior estimation with sbi-core's fused MAF (default), nflows "
                "MAF/NSF or a mixture density network.",
)

