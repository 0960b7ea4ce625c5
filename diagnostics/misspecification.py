"""Misspecification / out-of-distribution detection for observations ``x_o``.

A posterior trained on simulations is only trustworthy for observations that look like
those simulations. :func:`fit_detector` trains, once, two calibrated tests on the features
of the training ``x`` — the posterior estimator's embedding output (``estimator.context``:
z-scored ``x`` through the embedding net) when it has one, else the z-scored, flattened
``x`` — and :class:`MisspecificationDetector` answers for new observations:

- **density test**: a small normalizing flow (the project's fused MAF, unconditional) or,
  for few simulations, a full-covariance Gaussian, fitted on the features; the p-value of
  ``log q(x_o)`` against the log densities of held-out simulations (never seen by the flow):
  ``p = (1 + #{null <= log q(x_o)}) / (n_null + 1)`` (one-sided: low density is atypical);
- **MMD test** (Schmitt et al. 2023): the biased MMD² between a set of ``m`` observations
  and a reference set of training features, RBF kernel with one fixed bandwidth (median
  heuristic on the reference set, the same for the null and the observation); null from
  held-out simulations (``m = 1``: every held-out row; ``m > 1``: ``num_sets`` random sets
  of ``m`` held-out rows, computed once per ``m`` and cached);
  ``p = (1 + #{null >= T}) / (n_null + 1)``. For a set, the density test combines the
  per-observation p-values by Simes' method (any atypical member).

Both p-values are uniform under the null (held-out simulations are exchangeable with a
fresh well-specified ``x_o``), so each test's false-alarm rate is its level ``alpha``. The
combined verdict for one observation rejects when ``min(p_density, p_mmd) < alpha / 2``
(Bonferroni over the two tests); for a batch of ``B`` observations the per-call warning of
``Posterior.sample`` uses ``alpha / (2 B)`` (family-wise error ``<= alpha``).

The detector is plain values plus tensors (:meth:`MisspecificationDetector.state`), saved
inside the model file and rebuilt by :meth:`MisspecificationDetector.from_state` without
importing anything named in the file. Shapes: ``xs`` ``(B, *x_shape)``; features ``(B, d)``.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from sbi_core.posterior import ObservationError

__all__ = ["fit_detector", "MisspecificationDetector", "MisspecificationResult",
           "MisspecificationWarning", "MisspecificationError", "DETECTOR_FORMAT"]

#: Version of the saved detector layout (``state()["format"]``).
DETECTOR_FORMAT = 1
#: Most feature dimensions tested; wider features are projected on their principal axes.
MAX_FEATURES = 32
#: Fewer fitting rows than this use the Gaussian density instead of the flow.
MIN_FLOW_ROWS = 4000


class MisspecificationWarning(UserWarning):
    """An observation does not look like the training simulations (a test rejected)."""


class MisspecificationError(ObservationError):
    """Raised instead of :class:`MisspecificationWarning` with ``strict=True``."""


@dataclass
class MisspecificationResult:
    """p-values of both tests for ``B`` observations (or one set: ``B = 1``).

    Attributes:
        density_p: ``(B,)`` p-values of the density test.
        mmd_p: ``(B,)`` p-values of the MMD test.
        alpha: the level of each test's verdict.
        set_size: observations per tested set (1: each row on its own).

    The combined verdict of a single observation uses both tests (Bonferroni); that of a set
    (``set_size > 1``) uses the MMD test alone, because the set density p-value (Simes over
    the rows) leans on the far tail of the held-out log densities and its false-alarm rate
    varied from 0.005 to 0.14 between detectors (benchmarks/RESULTS.md); it is reported, not
    used in the verdict.
    """

    density_p: Tensor
    mmd_p: Tensor
    alpha: float
    set_size: int = 1
    #: both tests in the verdict of a set (iid sets of one θ: per-observation p-values
    #: combined by Simes), as for single observations
    both: bool = False

    @property
    def num_tests(self) -> int:
        """Tests in the combined verdict: 2 for single observations and iid sets, 1 (MMD)
        for sets tested as a whole."""
        return 1 if self.set_size > 1 and not self.both else 2

    @property
    def density_reject(self) -> Tensor:
        """``(B,)`` density-test verdicts at level ``alpha``."""
        return self.density_p < self.alpha

    @property
    def mmd_reject(self) -> Tensor:
        """``(B,)`` MMD-test verdicts at level ``alpha``."""
        return self.mmd_p < self.alpha

    def flagged(self, family: int = 1) -> Tensor:
        """``(B,)`` combined verdicts: ``min(p) < alpha / (2 * family)`` (Bonferroni) for
        single observations, ``p_mmd < alpha / family`` for sets."""
        level = self.alpha / (self.num_tests * max(family, 1))
        if self.set_size > 1 and not self.both:
            return self.mmd_p < level
        return torch.minimum(self.density_p, self.mmd_p) < level

    def verdict(self, i: int = 0) -> str:
        """``"misspecified"`` or ``"ok"`` for observation ``i`` (combined, level ``alpha``)."""
        return "misspecified" if bool(self.flagged()[i]) else "ok"

    def to_dict(self, i: int | None = None) -> dict[str, Any]:
        """Plain values: one observation's p-values and verdict, or lists for all."""
        if i is not None:
            return {"density_p": float(self.density_p[i]), "mmd_p": float(self.mmd_p[i]),
                    "verdict": self.verdict(i), "alpha": self.alpha, "set_size": self.set_size}
        flags = self.flagged()
        return {"density_p": self.density_p.tolist(), "mmd_p": self.mmd_p.tolist(),
                "verdict": ["misspecified" if f else "ok" for f in flags.tolist()],
                "alpha": self.alpha, "set_size": self.set_size}

    def message(self, family: int = 1, error: bool = False) -> str:
        """One sentence naming the tests, the worst observation and its p-values, and how to
        change what happens (``error``: the text of the ``MisspecificationError``)."""
        b = int(self.density_p.shape[0])
        worst = int((self.mmd_p if self.set_size > 1 and not self.both else
                     torch.minimum(self.density_p, self.mmd_p)).argmin())
        n_flag = int(self.flagged(family).sum())
        which = "The observation" if b == 1 else \
            f"{n_flag} of {b} observations (worst: row {worst})"
        what = "set of observations" if self.set_size > 1 else "observation"
        return (f"{which} does not look like the training simulations: density test "
                f"p = {float(self.density_p[worst]):.4g}, MMD test p = "
                f"{float(self.mmd_p[worst]):.4g} (reject below "
                f"{self.alpha / (self.num_tests * family):.3g}: level {self.alpha}"
                + (" with Bonferroni over 2 tests" if self.num_tests == 2 else ", MMD test of "
                   f"the set of {self.set_size}")
                + (f" x {family}" + (" sets" if self.set_size > 1 else " observations")
                   if family > 1 else "") + f"). The {what} may "
                "come from a process the simulator lacks (misspecification), and the posterior "
                "there cannot be trusted; see docs/trust.md. "
                + ("To sample anyway (with this warning), drop strict=True (--strict) and "
                   "posterior.misspecification = 'error'." if error else
                   "Pass strict=True (--strict) to make this an error, or set "
                   "posterior.misspecification = 'off' to skip it."))


class _DensityFlow(nn.Module):
    """Unconditional fused MAF over features ``(N, d)`` (a constant context of size 1)."""

    def __init__(self, dim: int, hidden_features: int, num_transforms: int, seed: int):
        super().__init__()
        from estimators.fast_maf import FusedMAF

        self.flow = FusedMAF(dim, 1, hidden_features, num_transforms, 1, seed)

    def log_prob(self, z: Tensor) -> Tensor:
        return self.flow.log_prob(z, z.new_zeros(z.shape[0], 1))

    def loss(self, theta: Tensor, x: Tensor) -> Tensor:  # the shared training loop's API
        return -self.log_prob(theta)

    def fused_training_step(self, loss_fn: Any = None,
                            ) -> Callable[[Tensor, Tensor], Tensor] | None:
        """The training loop's autograd-free step (the same bits as ``loss(...).mean()
        .backward()``, :class:`estimators.fast_maf.FusedNLLStep`), for the default loss."""
        if loss_fn is not None:
            return None
        from estimators.fast_maf import FusedNLLStep

        nll = FusedNLLStep(self.flow)
        return lambda z, x: nll(z, z.new_zeros(z.shape[0], 1))


class MisspecificationDetector:
    """Density and MMD tests of observations against the training simulations.

    Build it with :func:`fit_detector`; rebuild a saved one with :meth:`from_state`.
    ``features`` maps ``(N, *x_shape)`` to raw features ``(N, C)`` (the posterior's
    ``estimator.context``, or flattening when ``config["features"] == "x"``).
    """

    def __init__(self, config: dict[str, Any], tensors: dict[str, Tensor],
                 flow_state: dict[str, Tensor] | None,
                 features: Callable[[Tensor], Tensor] | None = None):
        self.config = dict(config)
        self.tensors = {k: v.detach().float().cpu() for k, v in tensors.items()}
        self.alpha = float(self.config.get("alpha", 0.05))
        self._features = features
        self.flow: _DensityFlow | None = None
        if self.config["density"] == "flow":
            self.flow = _DensityFlow(int(self.config["dim"]), int(self.config["hidden_features"]),
                                     int(self.config["num_transforms"]), int(self.config["seed"]))
            if flow_state is not None:
                self.flow.load_state_dict(flow_state)
            self.flow.eval()
        t = self.tensors
        self._null_logq = t["null_logq"].sort().values
        self._null_mmd: dict[int, Tensor] = {1: t["null_mmd"].sort().values}

    # ------------------------------------------------------------------ features
    def features(self, xs: Tensor) -> Tensor:
        """Standardized (and projected) features ``(N, d)`` of observations ``(N, *x_shape)``."""
        if xs.dim() < 2:
            raise ValueError(f"The detector tests a batch of observations (B, *x_shape); got one "
                             f"of shape {tuple(xs.shape)}. Pass x[None] (or call "
                             f"posterior.misspecification_test(x), which takes one observation).")
        with torch.no_grad():
            raw = xs.flatten(1).float() if self._features is None else self._features(xs)
            raw = raw.reshape(raw.shape[0], -1).float().cpu()
            z = (raw - self.tensors["mean"]) / self.tensors["std"]
            if "projection" in self.tensors:
                z = z @ self.tensors["projection"]
        return z

    def log_q(self, z: Tensor) -> Tensor:
        """Log density of features ``(N, d)`` under the fitted density → ``(N,)``."""
        with torch.no_grad():
            if self.flow is not None:
                return self.flow.log_prob(z)
            t = self.tensors
            dist = torch.distributions.MultivariateNormal(t["gauss_loc"],
                                                          scale_tril=t["gauss_tril"])
            return dist.log_prob(z)

    def _kernel(self, a: Tensor, b: Tensor) -> Tensor:
        """RBF kernel matrix ``(..., n, m)`` with the stored bandwidth."""
        h = float(self.config["bandwidth"])
        return torch.exp(-torch.cdist(a, b).square() / (2.0 * h * h))

    def _mmd_sets(self, sets: Tensor) -> Tensor:
        """Biased MMD² of sets ``(K, m, d)`` against the reference set → ``(K,)``."""
        ref = self.tensors["reference"]
        out = torch.empty(sets.shape[0])
        chunk = max(1, 2_000_000 // max(sets.shape[1] * ref.shape[0], 1))
        for i in range(0, sets.shape[0], chunk):
            s = sets[i:i + chunk]
            within = self._kernel(s, s).mean((1, 2))
            cross = self._kernel(s.reshape(-1, s.shape[-1]), ref).reshape(
                s.shape[0], s.shape[1], -1).mean((1, 2))
            out[i:i + chunk] = within - 2.0 * cross + float(self.config["ref_kernel_mean"])
        return out

    # ------------------------------------------------------------------ tests
    def test(self, xs: Tensor) -> MisspecificationResult:
        """Test each of ``B`` observations ``(B, *x_shape)`` on its own (batched)."""
        return self.test_features(self.features(xs))

    def test_features(self, z: Tensor) -> MisspecificationResult:
        """:meth:`test` on standardized features ``(B, d)``."""
        lq = self.log_q(z)
        density_p = _p_low(self._null_logq, lq)
        mmd_p = _p_high(self._null_mmd[1], self._mmd_sets(z[:, None, :]))
        return MisspecificationResult(density_p, mmd_p, self.alpha, 1)

    def test_set(self, xs: Tensor) -> MisspecificationResult:
        """Test one set of ``m`` observations ``(m, *x_shape)`` as a whole (``B = 1``).

        MMD: between the set and the reference features, against ``num_sets`` held-out sets
        of the same size (drawn with replacement when ``m`` exceeds half the held-out
        rows). Density: Simes' combination of the ``m`` per-observation density
        p-values, ``min_i m p_(i) / i`` ("some observation of the set is atypical"; valid for
        independent observations, with no resampling of the held-out rows, so heavy lower
        tails of ``log q`` cannot make it anti-conservative)."""
        z = self.features(xs)
        m = int(z.shape[0])
        if m == 1:
            return self.test_features(z)
        self._null_for(m)
        p_rows = _p_low(self._null_logq, self.log_q(z)).sort().values
        simes = (m * p_rows / torch.arange(1, m + 1)).min().clamp(max=1.0)[None]
        return MisspecificationResult(simes, _p_high(self._null_mmd[m], self._mmd_sets(z[None])),
                                      self.alpha, m)

    def test_iid_set(self, xs: Tensor) -> MisspecificationResult:
        """Test ``m`` iid observations of the **same** parameters ``(m, *x_shape)`` (what
        NLE/NRE/PFN/score posteriors condition on), ``B = 1``.

        :meth:`test_set` compares a set with held-out sets of ``m`` simulations at ``m``
        *different* parameters; observations sharing one θ cluster, so that null does not
        hold for them and clean sets were flagged (a 10-observation set from the model itself:
        MMD p = 0.003). Here each observation is tested alone (each is marginally a draw of
        the training distribution) and the ``m`` p-values of each test are combined by Simes'
        method (valid under the positive dependence a shared θ induces): the set is flagged
        when some observation is atypical. A small shift of all observations that no single
        one shows is not detectable without sets simulated at one θ."""
        z = self.features(xs)
        m = int(z.shape[0])
        single = self.test_features(z)
        if m == 1:
            return single
        rank = torch.arange(1, m + 1, dtype=single.mmd_p.dtype)

        def simes(p: Tensor) -> Tensor:
            return (m * p.sort().values / rank).min().clamp(max=1.0)[None]

        return MisspecificationResult(simes(single.density_p), simes(single.mmd_p),
                                      self.alpha, m, both=True)

    def _null_for(self, m: int) -> None:
        """Null MMD statistics of held-out sets of size ``m`` (cached)."""
        if m in self._null_mmd:
            return
        held = self.tensors["holdout"]
        n = held.shape[0]
        k = int(self.config["num_sets"])
        gen = torch.Generator().manual_seed(int(self.config["seed"]) + 7919 * m)
        if m <= n // 2:
            idx = torch.rand(k, n, generator=gen).argsort(1)[:, :m]  # m distinct rows per set
        else:  # sets too large for distinct rows: bootstrap (with replacement), as BayesFlow
            idx = torch.randint(0, n, (k, m), generator=gen)
        self._null_mmd[m] = self._mmd_sets(held[idx]).sort().values

    # ------------------------------------------------------------------ saving
    def state(self) -> dict[str, Any]:
        """Plain values and tensors only (saved inside the model file)."""
        return {"format": DETECTOR_FORMAT, "config": dict(self.config),
                "tensors": dict(self.tensors),
                "flow_state": None if self.flow is None else
                {k: v.detach().cpu() for k, v in self.flow.state_dict().items()}}

    @classmethod
    def from_state(cls, state: dict[str, Any],
                   features: Callable[[Tensor], Tensor] | None = None,
                   ) -> MisspecificationDetector:
        """Rebuild from :meth:`state` (plain values; nothing is imported from the data).

        Raises ``ValueError`` naming what is wrong for a damaged or foreign state."""
        if not isinstance(state, dict) or state.get("format") != DETECTOR_FORMAT:
            got = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"the detector entry has format {got!r}, this sbi-core reads "
                             f"format {DETECTOR_FORMAT}")
        config, tensors = state.get("config"), state.get("tensors")
        if not isinstance(config, dict) or not isinstance(tensors, dict) or \
                not all(isinstance(v, Tensor) for v in tensors.values()):
            raise ValueError("the detector entry has no plain config or tensors")
        need = {"mean", "std", "reference", "holdout", "null_logq", "null_mmd"}
        need |= {"gauss_loc", "gauss_tril"} if config.get("density") == "gaussian" else set()
        missing = sorted(need - set(tensors))
        if missing or config.get("density") not in ("flow", "gaussian"):
            raise ValueError(f"the detector entry is incomplete (missing {missing}, density "
                             f"{config.get('density')!r})")
        dim = int(config.get("dim", 0))
        if not 1 <= dim <= MAX_FEATURES or tensors["reference"].shape[-1] != dim:
            raise ValueError(f"the detector entry has an invalid feature size {dim}")
        flow_state = state.get("flow_state")
        if config["density"] == "flow":
            if not 1 <= int(config.get("hidden_features", 0)) <= 1024 or \
                    not 1 <= int(config.get("num_transforms", 0)) <= 16 or \
                    not isinstance(flow_state, dict):
                raise ValueError("the detector's flow settings are invalid")
        if config.get("features") == "module" and features is None:
            raise ValueError("the detector was fitted on a user embedding's features: pass "
                             "that embedding as features=")
        return cls(config, tensors, flow_state, features)

    def __repr__(self) -> str:
        c = self.config
        return (f"MisspecificationDetector(features={c['features']!r}, dim={c['dim']}, "
                f"density={c['density']!r}, n_null={int(self._null_logq.shape[0])}, "
                f"alpha={self.alpha})")


def _p_low(null_sorted: Tensor, stat: Tensor) -> Tensor:
    """``(1 + #{null <= stat}) / (n + 1)`` for each value of ``stat``."""
    count = torch.searchsorted(null_sorted, stat.contiguous(), right=True)
    return (1.0 + count.float()) / (null_sorted.shape[0] + 1.0)


def _p_high(null_sorted: Tensor, stat: Tensor) -> Tensor:
    """``(1 + #{null >= stat}) / (n + 1)`` for each value of ``stat``."""
    count = null_sorted.shape[0] - torch.searchsorted(null_sorted, stat.contiguous(), right=False)
    return (1.0 + count.float()) / (null_sorted.shape[0] + 1.0)


def posterior_features(posterior: Any) -> tuple[str, Callable[[Tensor], Tensor] | None]:
    """``("context", fn)`` using the posterior estimator's embedding output, or ``("x",
    None)`` when the estimator has no ``context`` (NLE: x is modelled directly)."""
    est = getattr(posterior, "estimator", None)
    if est is None or not callable(getattr(est, "context", None)):
        return "x", None
    device = next((p.device for p in est.parameters()), torch.device("cpu"))

    def fn(xs: Tensor) -> Tensor:
        with torch.no_grad():
            return est.context(xs.to(device, torch.float32)).cpu()

    return "context", fn


def _finite_rows(x: Tensor, name: str) -> Tensor:
    """``x`` ``(N, *x_shape)`` without rows holding NaN/inf (failed simulations), with a
    warning that says how many were left out: the detector's features, z-scoring and flow
    need finite values (before, NaN rows made every feature look constant)."""
    if x.ndim == 0 or x.shape[0] == 0:
        return x
    finite = torch.isfinite(x.reshape(x.shape[0], -1)).all(1)
    if bool(finite.all()):
        return x
    import warnings

    from estimators.embedding import padded_sets

    padded = int((padded_sets(x) & ~finite).sum()) if x.ndim == 3 else 0
    failed = int((~finite).sum()) - padded
    what = " and ".join(part for part in (
        f"{failed} with NaN/inf values (failed simulations)" if failed else "",
        f"{padded} set(s) padded with all-NaN trials (the detector scores whole sets only)"
        if padded else "") if part)
    warnings.warn(f"Misspecification detector: leaving out {int((~finite).sum())} of "
                  f"{x.shape[0]} rows of {name}: {what}; it is trained on the finite ones.",
                  UserWarning, stacklevel=3)
    return x[finite]


def fit_detector(source: Any, x_train: Tensor, seed: int = 0, x_holdout: Tensor | None = None,
                 alpha: float = 0.05, density: str = "auto", holdout_fraction: float = 0.2,
                 max_holdout: int = 2000, num_reference: int = 1000, num_sets: int = 1000,
                 hidden_features: int = 32, num_transforms: int = 3, max_epochs: int = 40,
                 max_fit_rows: int = 4096,
                 max_seconds: float | None = 60.0) -> MisspecificationDetector:
    """Train a :class:`MisspecificationDetector` on training simulations ``x_train``.

    Args:
        source: a :class:`~sbi_core.Posterior` (features: its estimator's embedding output
            when it has one), a callable embedding ``(N, *x_shape) -> (N, C)``, or None
            (features: flattened ``x``).
        x_train: simulations ``(N, *x_shape)`` (the training ``x``).
        seed: fixes the split, the flow and the null sets.
        x_holdout: simulations never used to train the estimator (``fit`` passes its
            validation rows); the null distributions come from them. Default: a random
            ``holdout_fraction`` of ``x_train`` (at most ``max_holdout`` rows).
        alpha: level of the verdicts.
        density: ``"flow"`` (fused MAF), ``"gaussian"`` or ``"auto"`` (flow from
            ``MIN_FLOW_ROWS`` fitting rows on, else Gaussian).
        num_reference: training rows in the MMD reference set.
        num_sets: null sets per set size for :meth:`MisspecificationDetector.test_set`.
        hidden_features, num_transforms, max_epochs: the density flow. ``max_epochs=40``
            (100 until wave 10): the same power and false-alarm rates in
            benchmarks/misspecification_power.py at ~half the CPU of ``fit``'s detector
            (docs/performance.md, "Issue 18: the cost of the whole default fit").
        max_fit_rows: the flow trains on at most this many of the fitting rows (a seeded
            subset), so its cost does not grow with the simulation budget; the null
            distributions come from the held-out rows either way, so the verdicts stay
            calibrated.
        max_seconds: a safety cap on the flow's training wall time only. The flow normally
            stops by its epoch budget and early stopping, so a fixed seed gives the same
            detector on a busy machine as on an idle one (a wall-clock stop would not).
    """
    from sbi_core.posterior import Posterior

    if isinstance(source, Posterior):
        kind, fn = posterior_features(source)
    elif source is None:
        kind, fn = "x", None
    elif callable(source):
        kind, fn = "module", source
    else:
        raise TypeError(f"fit_detector takes a Posterior, an embedding callable or None, got "
                        f"{type(source).__name__}.")
    if density not in ("auto", "flow", "gaussian"):
        raise ValueError(f"density must be 'auto', 'flow' or 'gaussian', got {density!r}.")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}.")
    x_train = _finite_rows(torch.as_tensor(x_train, dtype=torch.float32), "x_train")
    if x_holdout is not None:
        x_holdout = _finite_rows(torch.as_tensor(x_holdout, dtype=torch.float32), "x_holdout")
    gen = torch.Generator().manual_seed(seed)
    if x_holdout is None:
        n = x_train.shape[0]
        n_hold = min(max_holdout, int(round(holdout_fraction * n)))
        perm = torch.randperm(n, generator=gen)
        x_holdout, x_train = x_train[perm[:n_hold]], x_train[perm[n_hold:]]
    x_holdout = torch.as_tensor(x_holdout, dtype=torch.float32)[:max_holdout]
    if x_holdout.shape[0] < 50 or x_train.shape[0] < 50:
        raise ValueError(f"A misspecification detector needs at least 50 training and 50 "
                         f"held-out simulations, got {x_train.shape[0]} and "
                         f"{x_holdout.shape[0]}; simulate more, or fit with detector=False.")

    def raw(xs: Tensor) -> Tensor:
        chunks = [(xs[i:i + 4096].flatten(1) if fn is None else fn(xs[i:i + 4096]))
                  for i in range(0, xs.shape[0], 4096)]
        return torch.cat([c.reshape(c.shape[0], -1).float().cpu() for c in chunks])

    with torch.no_grad():
        f_fit, f_hold = raw(x_train), raw(x_holdout)
    mean, std = f_fit.mean(0), f_fit.std(0).clamp(min=1e-6)
    tensors: dict[str, Tensor] = {"mean": mean, "std": std}
    z_fit, z_hold = (f_fit - mean) / std, (f_hold - mean) / std
    keep = f_fit.std(0) > 1e-6 * (1.0 + mean.abs())  # constant features carry no information
    if int(keep.sum()) == 0:
        raise ValueError("Every feature of the training x is constant; there is nothing to "
                         "test observations against.")
    if int(keep.sum()) < z_fit.shape[1] or z_fit.shape[1] > MAX_FEATURES:
        z_kept = z_fit[:, keep]
        k = min(MAX_FEATURES, z_kept.shape[1])
        _, s, v = torch.linalg.svd(z_kept[:20_000] - z_kept[:20_000].mean(0), full_matrices=False)
        proj = torch.zeros(z_fit.shape[1], k)
        proj[keep] = v[:k].T / (s[:k] / math.sqrt(max(min(z_kept.shape[0], 20_000) - 1, 1))
                                ).clamp(min=1e-6)[None, :]  # whitened principal axes
        tensors["projection"] = proj
        z_fit, z_hold = z_fit @ proj, z_hold @ proj
    dim = int(z_fit.shape[1])
    if density == "auto":
        density = "flow" if z_fit.shape[0] >= MIN_FLOW_ROWS else "gaussian"
    config: dict[str, Any] = {"features": kind, "dim": dim, "density": density,
                              "alpha": float(alpha), "seed": int(seed),
                              "num_sets": int(num_sets), "hidden_features": int(hidden_features),
                              "num_transforms": int(num_transforms),
                              "num_fit": int(z_fit.shape[0]), "num_holdout": int(z_hold.shape[0])}
    start = time.perf_counter()
    flow_state = None
    if density == "flow":
        from sbi_core.training import TrainConfig, train

        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Reached max_epochs")
            # a Ctrl-C here is reported by `fit` (flow_stopped below), in its own words
            warnings.filterwarnings("ignore", message="Training interrupted")
            torch.manual_seed(seed)
            flow = _DensityFlow(dim, hidden_features, num_transforms, seed)
            z_flow = z_fit
            if z_fit.shape[0] > max_fit_rows:
                pick = torch.randperm(z_fit.shape[0], generator=gen)[:max_fit_rows]
                z_flow = z_fit[pick]
            config["num_flow_fit"] = int(z_flow.shape[0])
            hist = train(flow, z_flow, torch.zeros(z_flow.shape[0], 1),
                         TrainConfig(max_epochs=max_epochs, max_seconds=max_seconds, seed=seed,
                                     stop_after_epochs=10, progress=False,
                                     learning_rate=2e-3))
            config["flow_stopped"] = hist.stopped  # "interrupted" after a Ctrl-C
        flow_state = {k: v.detach().cpu() for k, v in flow.state_dict().items()}
    else:
        cov = torch.cov(z_fit.T.double()).reshape(dim, dim) + 1e-6 * torch.eye(dim,
                                                                            dtype=torch.float64)
        tensors["gauss_loc"] = z_fit.mean(0)
        tensors["gauss_tril"] = torch.linalg.cholesky(cov).float()
    ref = z_fit[torch.randperm(z_fit.shape[0], generator=gen)[:num_reference]]
    d_ref = torch.cdist(ref, ref)
    bandwidth = float(d_ref[~torch.eye(ref.shape[0], dtype=torch.bool)].median())
    config["bandwidth"] = max(bandwidth, 1e-3)
    config["ref_kernel_mean"] = float(torch.exp(-d_ref.square() /
                                                (2 * config["bandwidth"] ** 2)).mean())
    tensors.update({"reference": ref, "holdout": z_hold,
                    "null_logq": torch.zeros(0), "null_mmd": torch.zeros(0)})
    det = MisspecificationDetector(config, tensors, flow_state, fn)
    det.tensors["null_logq"] = det.log_q(z_hold)
    det.tensors["null_mmd"] = det._mmd_sets(z_hold[:, None, :])
    det.config["fit_seconds"] = round(time.perf_counter() - start, 3)
    return MisspecificationDetector(det.config, det.tensors, flow_state, fn)
