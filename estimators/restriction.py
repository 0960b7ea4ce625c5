r"""Restriction estimator: learn where the simulator succeeds and restrict the prior to it.

Simulators often fail (raise, return NaN/inf) in parts of the prior. ``simulate`` keeps
those rows (``SimulationSet.valid`` is False, ``theta`` still holds their parameters), so
a classifier :math:`c(\theta) \approx P(\text{valid} \mid \theta)` can be trained on
them. :class:`RestrictedPrior` then samples :math:`p(\theta)\,\mathbb{1}[c(\theta) \ge \tau]`
by rejection from the prior, so later simulations are rarely wasted (Deistler et al.,
PNAS 2022; sbi's ``RestrictionEstimator``).

- **Classifier**: an MLP on z-scored ``theta`` with one logit, trained through the shared
  loop :func:`sbi_core.training.train` with a class-balanced binary cross-entropy (each
  class has half the total weight, so a rare failure class is not ignored). The balanced
  logit is shifted by ``log(n_valid / n_invalid)`` so that :meth:`RestrictedPrior.valid_probability`
  is calibrated to the training mix.
- **Threshold** ``tau`` (default): the largest value that keeps at least
  ``1 - allowed_false_negatives`` (default 99%) of the *valid* training simulations, i.e.
  ``tau`` is the ``floor(a * n_valid) + 1``-th smallest ``P(valid | theta)`` over the valid
  rows. High recall on valid parameters matters more than precision: a rejected valid
  region is missing from the posterior for good (the restricted posterior is exact only
  with zero false negatives), while a kept invalid region only costs simulations. Pass
  ``threshold=`` (a probability in ``[0, 1)``) to choose it yourself.
- **Density**: :meth:`RestrictedPrior.log_prob` is the prior's ``log_prob`` minus
  ``log(acceptance)`` inside the kept region and ``-inf`` outside, i.e. normalized by the
  Monte Carlo estimate of the kept prior mass (``acceptance``, from ``num_acceptance``
  seeded prior draws; relative error about ``sqrt((1 - a) / (a * num_acceptance))``).
- **Sampling** is batched rejection from the prior under a wall-clock
  :class:`~sbi_core.budget.Budget` (``max_seconds``); it raises
  :class:`~sbi_core.budget.SamplingError` when the kept mass collapses below
  ``min_acceptance``.
- **Saving**: :meth:`RestrictedPrior.state` is plain values and tensors (loadable with
  ``torch.load(weights_only=True)``); :meth:`RestrictedPrior.from_state` rebuilds it with
  the prior.

Example (before round 1)::

    pilot = simulate(problem, 1000, seed=0)
    restricted = RestrictedPrior.from_sims(problem.prior, pilot)
    sims = simulate(problem, theta=restricted.sample((5000,)), seed=1)
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution

from estimators.standardize import Standardize
from sbi_core.budget import Budget, SamplingError
from sbi_core.priors import prior_log_prob, prior_support, within_support
from sbi_core.training import TrainConfig, TrainingHistory, train

__all__ = ["fit_restriction", "RestrictedPrior", "ValidityClassifier", "RESTRICTION_FORMAT"]

RESTRICTION_FORMAT = "sbi-core-restricted-prior"
_FORMAT_VERSION = 1

#: Training settings of the classifier (``fit_restriction`` options override them).
TRAIN_DEFAULTS: dict[str, Any] = {"batch_size": 128, "learning_rate": 1e-3,
                                  "stop_after_epochs": 20, "validation_fraction": 0.1}


class ValidityClassifier(nn.Module):
    """MLP ``theta (N, D) -> logit (N,)`` of a valid simulation, on z-scored parameters.

    Buffers: the z-scoring of ``theta``, the class weights of the balanced loss and the
    ``log(n_valid / n_invalid)`` offset turning the balanced logit into a calibrated one.
    """

    def __init__(self, theta_dim: int, hidden: int = 64, num_layers: int = 2):
        super().__init__()
        if int(hidden) < 1 or int(num_layers) < 1:
            raise ValueError(f"hidden and num_layers must be >= 1; got {hidden}, {num_layers}.")
        self.theta_dim, self.hidden, self.num_layers = int(theta_dim), int(hidden), int(num_layers)
        layers: list[nn.Module] = []
        width = self.theta_dim
        for _ in range(self.num_layers):
            layers += [nn.Linear(width, self.hidden), nn.ReLU()]
            width = self.hidden
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)
        self.theta_norm = Standardize((self.theta_dim,))
        self.register_buffer("class_weight", torch.ones(2))  # (invalid, valid)
        self.register_buffer("logit_offset", torch.zeros(()))

    def forward(self, theta: Tensor) -> Tensor:
        """Balanced logit ``(N,)`` (training scale)."""
        return self.net(self.theta_norm(theta)).squeeze(-1)

    def loss(self, theta: Tensor, label: Tensor) -> Tensor:
        """Class-balanced BCE ``(N,)``; ``label`` ``(N, 1)`` or ``(N,)`` is 1 for valid."""
        y = label.reshape(-1).to(theta.dtype)
        w = torch.where(y > 0.5, self.class_weight[1], self.class_weight[0])
        return w * F.binary_cross_entropy_with_logits(self(theta), y, reduction="none")

    @torch.no_grad()
    def valid_probability(self, theta: Tensor, chunk: int = 65_536) -> Tensor:
        """Calibrated ``P(valid | theta)`` ``(N,)`` for ``theta`` ``(N, D)``."""
        out = [torch.sigmoid(self(theta[i:i + chunk]) + self.logit_offset)
               for i in range(0, theta.shape[0], chunk)]
        return torch.cat(out) if out else torch.zeros(0)


def _balanced_loss(classifier: nn.Module, theta: Tensor, label: Tensor) -> Tensor:
    return classifier.loss(theta, label)


def fit_restriction(prior: Distribution, theta: Tensor | np.ndarray, valid: Tensor | np.ndarray,
                    seed: int = 0, hidden: int = 64, epochs: int = 300,
                    threshold: float | None = None, *,
                    allowed_false_negatives: float = 0.01, num_layers: int = 2,
                    max_seconds: float | None = None, min_acceptance: float = 1e-3,
                    num_acceptance: int = 100_000, **options: Any) -> RestrictedPrior:
    """Train a validity classifier on simulations and return the prior restricted by it.

    Args:
        prior: the prior the simulations were drawn from (``event_shape (D,)``).
        theta: ``(N, D)`` parameters of all simulations, valid **and** invalid
            (``SimulationSet.theta``).
        valid: ``(N,)`` bool, False where the simulation failed (``SimulationSet.valid``).
        seed: fixes initialization, validation split, minibatches and the acceptance estimate.
        hidden, num_layers: MLP width and depth.
        epochs: the maximum number of epochs (early stopping usually ends sooner).
        threshold: keep ``theta`` with ``P(valid | theta) >= threshold``; ``None`` chooses it
            so that at most ``allowed_false_negatives`` of the valid training simulations
            are rejected (see the module docstring).
        allowed_false_negatives: fraction in ``[0, 1)`` used by the default threshold.
        max_seconds: default wall-clock budget of each :meth:`RestrictedPrior.sample` call.
        min_acceptance: kept prior mass below which sampling raises instead of running on.
        num_acceptance: prior draws for the ``acceptance`` (kept prior mass) estimate.
        **options: training options of :class:`~sbi_core.training.TrainConfig`
            (``batch_size``, ``learning_rate``, ``max_seconds`` of training is
            ``train_max_seconds`` here, ``progress``, ``device``, ...).
    """
    d = int(prior.event_shape[0]) if len(prior.event_shape) == 1 else None
    if d is None:
        raise ValueError(f"The prior must have event_shape (D,); got {tuple(prior.event_shape)}.")
    theta_t = torch.as_tensor(np.asarray(theta) if not isinstance(theta, Tensor) else theta)
    valid_t = torch.as_tensor(np.asarray(valid) if not isinstance(valid, Tensor) else valid)
    theta_t = theta_t.detach().float().cpu()
    if theta_t.ndim != 2 or theta_t.shape[1] != d:
        raise ValueError(f"theta must have shape (N, {d}) to match the prior; got "
                         f"{tuple(theta_t.shape)}.")
    if valid_t.shape != (theta_t.shape[0],):
        raise ValueError(f"valid must have shape ({theta_t.shape[0]},) (one flag per theta row, "
                         f"e.g. SimulationSet.valid); got {tuple(valid_t.shape)}.")
    if valid_t.dtype != torch.bool:
        if not bool(((valid_t == 0) | (valid_t == 1)).all()):
            raise ValueError("valid must hold booleans (or 0/1): True where the simulation "
                             "succeeded.")
        valid_t = valid_t.bool()
    valid_t = valid_t.cpu()
    if not bool(torch.isfinite(theta_t).all()):
        raise ValueError("theta contains NaN or inf; the restriction needs the parameters of every "
                         "simulation (failed ones too), which must be finite.")
    if not 0 <= allowed_false_negatives < 1:
        raise ValueError(f"allowed_false_negatives must lie in [0, 1); got "
                         f"{allowed_false_negatives!r}.")
    if threshold is not None and not (isinstance(threshold, (int, float)) and 0 <= threshold < 1):
        raise ValueError(f"threshold must be a probability in [0, 1) (or None to choose it from "
                         f"allowed_false_negatives); got {threshold!r}.")
    n, n_valid = theta_t.shape[0], int(valid_t.sum())
    n_invalid = n - n_valid
    if n_valid == 0:
        raise ValueError(f"All {n} simulations are invalid, so there is no region to restrict the "
                         "prior to. Fix the simulator or choose a prior where it succeeds.")
    train_kw = {"train_max_seconds": "max_seconds"}
    cfg_kw = {**TRAIN_DEFAULTS, "max_epochs": int(epochs), "seed": int(seed)}
    names = {f.name for f in fields(TrainConfig)} - {"max_seconds", "max_epochs", "seed"}
    for key, value in options.items():
        if key in train_kw:
            cfg_kw[train_kw[key]] = value
        elif key in names:
            cfg_kw[key] = value
        else:
            raise TypeError(f"Unknown fit_restriction option {key!r}; valid: hidden, num_layers, "
                            f"epochs, threshold, allowed_false_negatives, max_seconds, "
                            f"min_acceptance, num_acceptance, train_max_seconds, "
                            f"{', '.join(sorted(names))}.")
    cfg = TrainConfig(**cfg_kw)

    torch.manual_seed(seed)
    clf = ValidityClassifier(d, hidden, num_layers)
    with torch.no_grad():
        from estimators.standardize import fit_standardize

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a constant theta column is harmless here
            fit_standardize(clf.theta_norm, theta_t, "theta")
    history = TrainingHistory()
    trained = n_invalid > 0
    if not trained:
        warnings.warn(f"All {n} simulations are valid: nothing to learn, the restricted prior "
                      "keeps the whole prior.", stacklevel=2)
    else:
        if min(n_valid, n_invalid) < 20:
            warnings.warn(f"Only {min(n_valid, n_invalid)} {'valid' if n_valid < n_invalid else 'invalid'} "
                          f"simulations of {n}: the classifier will be rough; simulate more.",
                          stacklevel=2)
        with torch.no_grad():
            clf.class_weight.copy_(torch.tensor([n / (2.0 * n_invalid), n / (2.0 * n_valid)]))
            clf.logit_offset.fill_(math.log(n_valid / n_invalid))
        history = train(clf, theta_t, valid_t.float()[:, None], cfg, loss_fn=_balanced_loss)
        clf.cpu()
    clf.eval()
    if threshold is None:
        if not trained:
            threshold = 0.0
        else:
            p = clf.valid_probability(theta_t[valid_t]).sort().values
            k = int(math.floor(allowed_false_negatives * n_valid))
            threshold = float(p[min(k, n_valid - 1)])
    info = {"n_valid": n_valid, "n_invalid": n_invalid, "trained": trained,
            "allowed_false_negatives": float(allowed_false_negatives), "seed": int(seed),
            "history": history.to_dict() if trained else {}}
    restricted = RestrictedPrior(prior, clf, float(threshold), max_seconds=max_seconds,
                                 min_acceptance=min_acceptance, info=info)
    restricted.estimate_acceptance(num_acceptance, seed=seed)
    if trained:
        with torch.no_grad():
            kept_valid = float(restricted.accepts(theta_t[valid_t]).float().mean())
            kept_invalid = float(restricted.accepts(theta_t[~valid_t]).float().mean())
        restricted.info.update(kept_valid=kept_valid, kept_invalid=kept_invalid)
    return restricted


class RestrictedPrior(Distribution):
    """The prior restricted to ``{theta: P(valid | theta) >= threshold}`` (a torch Distribution).

    Attributes:
        prior: the unrestricted prior.
        classifier: the :class:`ValidityClassifier`.
        threshold: ``tau``.
        acceptance: estimated fraction of prior mass kept (``estimate_acceptance``).
        max_seconds: default sampling budget (``None``: no limit).
        min_acceptance: sampling raises :class:`SamplingError` below this kept mass.
        info: plain values (training counts, the fraction of valid / invalid training
            simulations kept: ``kept_valid``, ``kept_invalid``, the training history).
    """

    arg_constraints: dict[str, Any] = {}
    has_rsample = False

    def __init__(self, prior: Distribution, classifier: ValidityClassifier, threshold: float,
                 acceptance: float | None = None, max_seconds: float | None = None,
                 min_acceptance: float = 1e-3, info: dict[str, Any] | None = None):
        if not 0 <= float(threshold) < 1:
            raise ValueError(f"threshold must lie in [0, 1); got {threshold!r}.")
        Budget(max_seconds)  # validates
        self.prior, self.classifier = prior, classifier.eval()
        self.threshold = float(threshold)
        self.acceptance = 1.0 if acceptance is None else float(acceptance)
        self.max_seconds, self.min_acceptance = max_seconds, float(min_acceptance)
        self.info = dict(info or {})
        self.last_acceptance_rate: float | None = None
        super().__init__(batch_shape=torch.Size(), event_shape=prior.event_shape,
                         validate_args=False)

    # ------------------------------------------------------------------ distribution API
    @property
    def support(self) -> Any:
        """The prior's support (the kept region is a subset of it)."""
        return prior_support(self.prior)

    @property
    def dim(self) -> int:
        return int(self.event_shape[0])

    def valid_probability(self, theta: Tensor) -> Tensor:
        """Calibrated ``P(valid | theta)`` ``(N,)`` for ``theta`` ``(N, D)``."""
        theta = torch.as_tensor(theta, dtype=torch.float32)
        if not self.info.get("trained", True):
            return torch.ones(theta.shape[0])
        return self.classifier.valid_probability(theta.reshape(-1, self.dim)).reshape(
            theta.shape[:-1])

    def accepts(self, theta: Tensor) -> Tensor:
        """Bool ``(...)``: inside the prior support and ``P(valid | theta) >= threshold``."""
        theta = torch.as_tensor(theta, dtype=torch.float32)
        flat = theta.reshape(-1, self.dim)
        ok = within_support(self.prior, flat)
        safe = torch.where(ok[:, None], flat, torch.zeros_like(flat))
        ok = ok & (self.valid_probability(safe) >= self.threshold)
        return ok.reshape(theta.shape[:-1])

    def log_prob(self, value: Tensor) -> Tensor:
        """``log p(theta) - log(acceptance)`` in the kept region, ``-inf`` elsewhere; ``(...)``."""
        value = torch.as_tensor(value, dtype=torch.float32)
        flat = value.reshape(-1, self.dim)
        lp = prior_log_prob(self.prior, flat) - math.log(max(self.acceptance, 1e-300))
        lp = torch.where(self.accepts(flat), lp, torch.full_like(lp, -torch.inf))
        return lp.reshape(value.shape[:-1])

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = (),
               max_seconds: float | None | Budget = "default") -> Tensor:  # type: ignore[assignment]
        """Samples ``(*sample_shape, D)`` by batched rejection from the prior.

        Args:
            max_seconds: wall-clock budget (default: the object's ``max_seconds``); raises
                :class:`~sbi_core.budget.SamplingTimeoutError` when exceeded.
        """
        shape = torch.Size(sample_shape)
        n = int(shape.numel())
        budget = Budget.of(self.max_seconds if max_seconds == "default" else max_seconds,
                           "Sampling the restricted prior", self._advice())
        if self.acceptance < self.min_acceptance:
            raise SamplingError(self._collapse_message(self.acceptance, "the acceptance estimate"))
        out, filled, proposed, kept = [], 0, 0, 0
        rate = max(self.acceptance, self.min_acceptance, 1e-6)
        while filled < n:
            m = int(min(1_000_000, max(256, math.ceil((n - filled) / rate * 1.2))))
            t0 = time.perf_counter()
            draws = self.prior.sample((m,)).reshape(m, self.dim).float()
            ok = self.accepts(draws)
            good = draws[ok][: n - filled]
            out.append(good)
            filled += good.shape[0]
            proposed += m
            kept += int(ok.sum())
            rate = max(kept / proposed, 1.0 / proposed)
            if proposed >= 10_000 and kept / proposed < self.min_acceptance:
                raise SamplingError(self._collapse_message(kept / proposed, f"{proposed:,} draws"))
            if filled < n:
                budget.check(f"{filled:,} of {n:,} samples after {proposed:,} prior draws "
                             f"(acceptance {kept / proposed:.2%}; last batch "
                             f"{time.perf_counter() - t0:.2f} s)")
        self.last_acceptance_rate = kept / max(proposed, 1)
        samples = torch.cat(out) if out else torch.zeros(0, self.dim)
        return samples.reshape(*shape, self.dim)

    @torch.no_grad()
    def estimate_acceptance(self, num: int = 100_000, seed: int = 0) -> float:
        """Set and return ``acceptance``: the kept fraction of ``num`` seeded prior draws."""
        if int(num) < 1:
            raise ValueError(f"num_acceptance must be >= 1; got {num}.")
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            draws = self.prior.sample((int(num),)).reshape(int(num), self.dim).float()
        self.acceptance = float(self.accepts(draws).float().mean())
        self.info["num_acceptance"] = int(num)
        return self.acceptance

    # ------------------------------------------------------------------ saving
    def state(self) -> dict[str, Any]:
        """Plain values and tensors (``torch.load(weights_only=True)`` reads them back)."""
        return {
            "format": RESTRICTION_FORMAT,
            "format_version": _FORMAT_VERSION,
            "theta_dim": self.dim,
            "hidden": self.classifier.hidden,
            "num_layers": self.classifier.num_layers,
            "threshold": self.threshold,
            "acceptance": self.acceptance,
            "max_seconds": self.max_seconds,
            "min_acceptance": self.min_acceptance,
            "info": _plain(self.info),
            "state_dict": {k: v.detach().cpu().clone()
                           for k, v in self.classifier.state_dict().items()},
        }

    @classmethod
    def from_state(cls, prior: Distribution, state: dict[str, Any]) -> RestrictedPrior:
        """Rebuild from :meth:`state` with the (unrestricted) ``prior``."""
        if not isinstance(state, dict) or state.get("format") != RESTRICTION_FORMAT:
            raise ValueError("Not a restricted-prior state (expected a dict written by "
                             "RestrictedPrior.state()).")
        if state.get("format_version") != _FORMAT_VERSION:
            raise ValueError(f"Restricted-prior state version {state.get('format_version')} is "
                             f"not supported; this sbi-core reads version {_FORMAT_VERSION}.")
        d = int(prior.event_shape[0])
        if int(state["theta_dim"]) != d:
            raise ValueError(f"The restricted prior was fitted for D={state['theta_dim']} "
                             f"parameters but the prior has D={d}; pass the prior it was "
                             "fitted with.")
        clf = ValidityClassifier(d, int(state["hidden"]), int(state["num_layers"]))
        clf.load_state_dict(state["state_dict"])
        return cls(prior, clf, float(state["threshold"]), acceptance=float(state["acceptance"]),
                   max_seconds=state.get("max_seconds"),
                   min_acceptance=float(state.get("min_acceptance", 1e-3)),
                   info=dict(state.get("info") or {}))

    @classmethod
    def from_sims(cls, prior: Distribution, sims: Any, **options: Any) -> RestrictedPrior:
        """:func:`fit_restriction` on a :class:`~sbi_core.simulation_set.SimulationSet`
        (its ``theta`` and ``valid``, failed rows included)."""
        return fit_restriction(prior, sims.theta, sims.valid, **options)

    # ------------------------------------------------------------------ messages
    def _advice(self) -> str:
        return ("The restricted region may be tiny: check restricted.acceptance, lower the "
                "threshold (or raise allowed_false_negatives less), or simulate a larger pilot.")

    def _collapse_message(self, rate: float, source: str) -> str:
        return (
            f"The restricted prior keeps only {rate:.3%} of the prior's mass ({source}; "
            f"min_acceptance={self.min_acceptance:g}), so rejection sampling cannot finish. The "
            f"simulator succeeded in {self.info.get('n_valid', '?')} of "
            f"{self.info.get('n_valid', 0) + self.info.get('n_invalid', 0) or '?'} training "
            f"simulations (threshold {self.threshold:.3g}). Lower the threshold, simulate a "
            "larger pilot so the valid region is learned, or check the simulator and the prior "
            "range; pass min_acceptance to accept a smaller region.")

    def __repr__(self) -> str:
        return (f"RestrictedPrior({type(self.prior).__name__}, threshold={self.threshold:.3g}, "
                f"acceptance={self.acceptance:.3f})")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, Tensor):
        return value.detach().cpu()
    return str(value)
