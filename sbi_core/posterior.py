"""Posteriors: the one interface every estimator answers through.

Shapes (``D`` parameters, ``x_shape`` one simulation, ``B`` observations):

- ``sample(sample_shape, x)``: ``x`` ``x_shape`` → ``(*sample_shape, D)``
- ``sample_batched(sample_shape, xs)``: ``xs`` ``(B, *x_shape)`` → ``(*sample_shape, B, D)``
- ``log_prob(theta, x)``: ``theta`` ``(N, D)`` → ``(N,)``
- ``log_prob_batched(theta, xs)``: ``theta`` ``(N, B, D)`` → ``(N, B)``
- ``map(x)`` → ``(D,)``; ``map_batched(xs)`` → ``(B, D)``

Samples always lie inside the prior's support. Observations are checked: wrong
shape, NaN/inf, or values far outside the range seen in training raise a
:class:`ObservationError` that says what is wrong and how to proceed.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from sbi_core.priors import support_bounds, within_support

__all__ = ["Posterior", "DirectPosterior", "ObservationError", "SamplingError", "seeded"]

RangeCheck = Literal["error", "warn", "off"]


class ObservationError(ValueError):
    """An observation has the wrong shape, non-finite values, or lies outside the training range."""


class SamplingError(RuntimeError):
    """Sampling cannot finish (e.g. almost all samples fall outside the prior support)."""


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Fix torch's RNG inside the block when ``seed`` is given, restoring it afterwards."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class Posterior:
    """Base class: observation checks, batching helpers and shared documentation.

    Subclasses implement ``_sample_batched(n, xs) -> (n, B, D)`` and
    ``_log_prob_batched(theta (N, B, D), xs) -> (N, B)``.

    Attributes:
        estimator: the trained ``nn.Module``.
        prior: the prior distribution.
        problem_spec: plain-value problem description (names, prior spec, x_shape).
        history: training history dict (epochs, losses, seconds).
        method: registry name of the method (``"npe"``, ...).
        diagnostics: results attached by ``diagnostics`` (saved with the model).
    """

    method: str = ""
    #: True when ``log_prob`` is normalized; False for MCMC-based (unnormalized) posteriors.
    normalized_log_prob: bool = True
    #: True when a set of iid observations can be passed as ``x`` (``(n, *x_shape)``).
    supports_iid: bool = False

    def __init__(self, estimator: nn.Module, prior: Distribution, problem_spec: dict[str, Any],
                 history: dict[str, Any] | None = None, range_check: RangeCheck = "error"):
        self.estimator = estimator.eval()
        self.prior = prior
        self.problem_spec = problem_spec
        self.history = history or {}
        self.diagnostics: dict[str, Any] = {}
        self.range_check: RangeCheck = range_check
        self.x_shape = tuple(problem_spec.get("x_shape") or ())
        self.param_names = list(problem_spec.get("param_names") or [])
        self.dim = int(prior.event_shape[0])
        self._bounds = support_bounds(prior)

    # ------------------------------------------------------------------ public API
    def sample(self, sample_shape: tuple[int, ...] | int, x: Tensor, seed: int | None = None,
               **kwargs: Any) -> Tensor:
        """Draw samples for one observation ``x`` (``x_shape``) → ``(*sample_shape, D)``."""
        xs = self._check_x(x, batched=False)
        return self.sample_batched(sample_shape, xs, seed=seed, _checked=True, **kwargs)[..., 0, :]

    def sample_batched(self, sample_shape: tuple[int, ...] | int, xs: Tensor,
                       seed: int | None = None, _checked: bool = False, **kwargs: Any) -> Tensor:
        """Draw samples for each of ``B`` observations → ``(*sample_shape, B, D)``."""
        shape = _shape(sample_shape)
        xs = xs if _checked else self._check_x(xs, batched=True)
        n = math.prod(shape)
        with seeded(seed), torch.no_grad():
            samples = self._sample_batched(n, xs, **kwargs)
        return samples.reshape(*shape, xs.shape[0], self.dim)

    def log_prob(self, theta: Tensor, x: Tensor, **kwargs: Any) -> Tensor:
        """Log density of ``theta`` ``(N, D)`` (or ``(D,)``) given one ``x`` → ``(N,)``."""
        xs = self._check_x(x, batched=False)
        theta = self._check_theta(theta)
        single = theta.ndim == 1
        lp = self.log_prob_batched(theta.reshape(-1, 1, self.dim), xs, _checked=True, **kwargs)[:, 0]
        return lp[0] if single else lp

    def log_prob_batched(self, theta: Tensor, xs: Tensor, _checked: bool = False,
                         **kwargs: Any) -> Tensor:
        """Log density of ``theta`` ``(N, B, D)`` under each of ``B`` observations → ``(N, B)``."""
        xs = xs if _checked else self._check_x(xs, batched=True)
        theta = self._check_theta(theta)
        if theta.ndim != 3 or theta.shape[1] != xs.shape[0]:
            raise ValueError(
                f"theta must have shape (N, B={xs.shape[0]}, D={self.dim}), got {tuple(theta.shape)}."
            )
        with torch.no_grad():
            return self._log_prob_batched(theta, xs, **kwargs)

    def map(self, x: Tensor, num_init: int = 1000, steps: int = 100, seed: int | None = 0) -> Tensor:
        """Maximum a posteriori estimate ``(D,)`` for one observation."""
        xs = self._check_x(x, batched=False)
        return self._map_batched(xs, num_init, steps, seed)[0]

    def map_batched(self, xs: Tensor, num_init: int = 1000, steps: int = 100,
                    seed: int | None = 0) -> Tensor:
        """MAP estimates ``(B, D)`` for ``B`` observations."""
        return self._map_batched(self._check_x(xs, batched=True), num_init, steps, seed)

    # ------------------------------------------------------------------ subclass hooks
    def _sample_batched(self, n: int, xs: Tensor, **kwargs: Any) -> Tensor:
        raise NotImplementedError

    def _log_prob_batched(self, theta: Tensor, xs: Tensor, **kwargs: Any) -> Tensor:
        raise NotImplementedError

    def _map_batched(self, xs: Tensor, num_init: int, steps: int, seed: int | None) -> Tensor:
        """Best of ``num_init`` posterior samples, refined by gradient ascent inside the support."""
        with seeded(seed):
            init = self.sample_batched((num_init,), xs, _checked=True)  # (num_init, B, D)
        lp = self.log_prob_batched(init, xs, _checked=True, normalize=False) \
            if self.normalized_log_prob else self.log_prob_batched(init, xs, _checked=True)
        box = self._map_search_box(init)
        if box is not None:
            inside = ((init >= box[0]) & (init <= box[1])).all(-1)  # (num_init, B)
            lp = torch.where(inside, lp, torch.full_like(lp, -torch.inf))
        best = init.gather(0, lp.argmax(0)[None, :, None].expand(1, -1, self.dim))[0]
        return self._refine_map(best, xs, steps, box)

    def _map_search_box(self, init: Tensor) -> tuple[Tensor, Tensor] | None:
        """Optional per-observation bounds ``(B, D)`` for the MAP search, from its initial
        samples ``(num_init, B, D)``; None searches the whole prior support."""
        return None

    def _refine_map(self, theta: Tensor, xs: Tensor, steps: int,
                    box: tuple[Tensor, Tensor] | None = None) -> Tensor:
        if steps <= 0:
            return theta
        low, high = (b.to(theta) for b in self._bounds)
        if box is not None:
            low, high = torch.maximum(low, box[0]), torch.minimum(high, box[1])
        theta = theta.clone().requires_grad_(True)
        opt = torch.optim.Adam([theta], lr=0.01 * float(self.prior_scale().mean()))
        best = theta.detach().clone()
        best_lp = torch.full((theta.shape[0],), -torch.inf)
        for _ in range(steps):
            with torch.enable_grad():
                lp = self._differentiable_log_prob(theta, xs)
            if lp is None:
                return best if torch.isfinite(best_lp).any() else theta.detach()
            better = lp.detach() > best_lp
            best[better], best_lp[better] = theta.detach()[better], lp.detach()[better]
            opt.zero_grad()
            (-lp.sum()).backward()
            opt.step()
            with torch.no_grad():
                theta.copy_(torch.maximum(torch.minimum(theta, high), low))
        return best

    def _differentiable_log_prob(self, theta: Tensor, xs: Tensor) -> Tensor | None:
        """``log q(theta_b | x_b)`` ``(B,)`` with gradients, or None if unavailable."""
        return None

    # ------------------------------------------------------------------ checks
    def prior_scale(self) -> Tensor:
        low, high = self._bounds
        finite = torch.isfinite(low) & torch.isfinite(high)
        std = self.prior.variance.sqrt() if hasattr(self.prior, "variance") else torch.ones(self.dim)
        return torch.where(finite, (high - low) / math.sqrt(12.0), std)

    def _check_theta(self, theta: Tensor) -> Tensor:
        theta = torch.as_tensor(theta, dtype=torch.float32)
        if theta.shape[-1] != self.dim:
            raise ValueError(
                f"theta has {theta.shape[-1]} values in its last dimension; the posterior is over "
                f"D={self.dim} parameters {self.param_names}."
            )
        return theta

    def _check_x(self, x: Tensor, batched: bool) -> Tensor:
        """Validate observations and return a batch.

        Returns ``(B, *x_shape)``, or ``(B, n, *x_shape)`` for sets of ``n`` iid observations
        (only when ``supports_iid``). Not batched: ``x_shape`` → ``(1, *x_shape)`` and an iid
        set ``(n, *x_shape)`` → ``(1, n, *x_shape)``.
        """
        x = torch.as_tensor(x, dtype=torch.float32)
        xs = self.x_shape
        k = len(xs)
        if not batched:
            if tuple(x.shape) == xs:
                x = x.unsqueeze(0)
            elif self.supports_iid and x.ndim == k + 1 and tuple(x.shape[1:]) == xs:
                if x.shape[0] == 0:
                    raise ObservationError("The set of iid observations is empty.")
                x = x.unsqueeze(0)
            else:
                raise ObservationError(
                    f"The observation has shape {tuple(x.shape)}; this posterior expects one "
                    f"observation of shape {xs}"
                    + (f" or a set of n iid observations (n, *{xs})" if self.supports_iid else "")
                    + f". For several observations at once use sample_batched with shape "
                    f"(B, *{xs})."
                    + ("" if self.supports_iid else f" Method {self.method!r} does not accept sets "
                       "of iid observations.")
                )
        elif not (tuple(x.shape[1:]) == xs or
                  (self.supports_iid and x.ndim == k + 2 and tuple(x.shape[2:]) == xs)):
            raise ObservationError(
                f"Batched observations have shape {tuple(x.shape)}; expected (B, *{xs})"
                + (f" or sets (B, n, *{xs})." if self.supports_iid else ".")
            )
        return self._check_values(x)

    @staticmethod
    def is_iid_batch(xs: Tensor, x_shape: tuple[int, ...]) -> bool:
        """True when ``xs`` is a batch of iid sets ``(B, n, *x_shape)``."""
        return xs.ndim == len(x_shape) + 2

    def _check_values(self, x: Tensor) -> Tensor:
        if not torch.isfinite(x).all():
            raise ObservationError(
                "The observation contains NaN or inf. Remove or impute the missing values; the "
                "posterior was trained on finite simulations only."
            )
        check = getattr(self.estimator, "check_observation", None)
        if check is not None:  # estimator-specific checks (e.g. discrete columns) come first
            check(x.reshape(-1, *self.x_shape) if self.x_shape else x.reshape(-1))
        if self.range_check != "off":
            self._check_range(x)
        return x

    def _check_range(self, x: Tensor) -> None:
        lo = getattr(self.estimator, "x_min", None)
        hi = getattr(self.estimator, "x_max", None)
        if lo is None or hi is None or tuple(x.shape[-lo.ndim:] if lo.ndim else ()) != \
                tuple(lo.shape):
            return
        lo, hi = lo.cpu(), hi.cpu()
        x = x.reshape(-1, *lo.shape)
        margin = 0.1 * (hi - lo)
        outside = (x < lo - margin) | (x > hi + margin)
        if outside.any():
            dims = outside.reshape(x.shape[0], -1).any(0).nonzero().flatten().tolist()
            msg = (
                f"The observation lies outside the range of the training simulations in "
                f"dimension(s) {dims[:10]} (more than 10% beyond [min, max] of the training x). "
                "The posterior there is an extrapolation and cannot be trusted. Simulate with a "
                "wider prior, or pass range_check='warn' (or 'off') to the posterior to proceed."
            )
            if self.range_check == "error":
                raise ObservationError(msg)
            import warnings

            warnings.warn(msg, stacklevel=4)


def _shape(sample_shape: tuple[int, ...] | int | torch.Size) -> tuple[int, ...]:
    if isinstance(sample_shape, int):
        return (sample_shape,)
    return tuple(sample_shape)


class DirectPosterior(Posterior):
    """Posterior of an estimator that samples and evaluates ``q(theta | x)`` directly (NPE).

    The estimator provides ``sample(n, xs) -> (n, B, D)`` and
    ``log_prob(theta (N, D), xs (N, *x_shape)) -> (N,)``. Samples outside the prior's
    support are rejected in batches; ``last_acceptance_rate`` reports the rate, and a rate
    below ``min_acceptance`` raises :class:`SamplingError` instead of looping forever.
    ``log_prob`` is renormalized by the acceptance rate (``normalize=True``). An estimator
    whose ``samples_in_support`` is true (NPE with ``theta_transform="unconstrained"``)
    never leaks: sampling draws exactly ``n`` and ``log_prob`` needs no correction.
    """

    def __init__(self, *args: Any, min_acceptance: float = 1e-3, max_batch: int = 100_000,
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.min_acceptance = min_acceptance
        self.max_batch = max_batch
        self.last_acceptance_rate: float | None = None
        self._bounded = bool(torch.isfinite(self._bounds[0]).any() or
                             torch.isfinite(self._bounds[1]).any())

    @property
    def _samples_in_support(self) -> bool:
        """The estimator samples inside the support by construction (no leakage)."""
        return bool(getattr(self.estimator, "samples_in_support", False))

    def _raw_sample(self, n: int, xs: Tensor) -> Tensor:
        return self.estimator.sample(n, xs)

    def _map_search_box(self, init: Tensor) -> tuple[Tensor, Tensor] | None:
        """A flow on the unconstrained space can have a near-massless density spike next to a
        bound (docs/npe.md): search only inside the central 99% of the samples."""
        if not self._samples_in_support:
            return None
        lo, hi = torch.quantile(init, torch.tensor([0.005, 0.995], dtype=init.dtype), dim=0)
        return lo, hi

    def _sample_batched(self, n: int, xs: Tensor, **kwargs: Any) -> Tensor:
        device = _device(self.estimator)
        xs = xs.to(device)
        b = xs.shape[0]
        if not self._bounded:
            self.last_acceptance_rate = 1.0
            return self._raw_sample(n, xs).cpu()
        out = torch.empty(n, b, self.dim)
        filled = torch.zeros(b, dtype=torch.long)
        proposed = torch.zeros(b, dtype=torch.long)
        accepted = torch.zeros(b, dtype=torch.long)
        rate = torch.ones(b)
        # An estimator that maps into the support (theta_transform) needs no oversampling;
        # the loop then only replaces the rare non-finite draw.
        in_support = self._samples_in_support
        margin, floor = (1.0, 1) if in_support else (1.2, 64)
        while bool((filled < n).any()):
            need = (n - filled).clamp(min=0)
            active = (need > 0).nonzero().flatten()
            m = int(min(self.max_batch,
                        max(floor, math.ceil(float((need[active] / rate[active]).max()) * margin))))
            draws = self._raw_sample(m, xs[active.to(device)]).cpu()  # (m, A, D)
            ok = within_support(self.prior, draws.reshape(-1, self.dim)).reshape(m, -1)
            proposed[active] += m
            accepted[active] += ok.sum(0)
            rank = ok.long().cumsum(0)  # position among accepted draws, per observation
            take = ok & (rank <= need[active][None, :])
            cols = active[None, :].expand(m, -1)[take]
            rows = filled[cols] + rank[take] - 1
            out[rows, cols] = draws[take]
            filled[active] += take.sum(0)
            rate = (accepted.float() / proposed.clamp(min=1)).clamp(min=1e-6)
            worst = float(rate[active].min())
            if int(proposed[active].min()) >= 1000 and worst < self.min_acceptance:
                raise SamplingError(
                    f"Only {worst:.2%} of the posterior's samples fall inside the prior support, "
                    "so sampling cannot finish. The observation is probably far from the training "
                    "data, or the estimator is undertrained: check the observation, train longer "
                    "or simulate more."
                )
        self.last_acceptance_rate = float(accepted.sum() / proposed.clamp(min=1).sum())
        return out

    def _log_prob_batched(self, theta: Tensor, xs: Tensor, normalize: bool = True,
                          **kwargs: Any) -> Tensor:
        device = _device(self.estimator)
        n, b, d = theta.shape
        flat_x = xs.to(device).unsqueeze(0).expand(n, *xs.shape).reshape(n * b, *xs.shape[1:])
        lp = self.estimator.log_prob(theta.reshape(n * b, d).to(device), flat_x).reshape(n, b).cpu()
        inside = within_support(self.prior, theta.reshape(-1, d)).reshape(n, b)
        lp = torch.where(inside, lp, torch.full_like(lp, -torch.inf))
        if normalize and self._bounded and not self._samples_in_support:
            lp = lp - self.acceptance_rate(xs).log()[None, :]
        return lp

    def acceptance_rate(self, xs: Tensor, num: int = 10_000, seed: int = 0) -> Tensor:
        """Fraction ``(B,)`` of unconstrained samples inside the prior support (leakage)."""
        with seeded(seed), torch.no_grad():
            draws = self._raw_sample(num, xs.to(_device(self.estimator))).cpu()
        ok = within_support(self.prior, draws.reshape(-1, self.dim)).reshape(num, -1)
        return ok.float().mean(0).clamp(min=1.0 / num)

    def _differentiable_log_prob(self, theta: Tensor, xs: Tensor) -> Tensor:
        return self.estimator.log_prob(theta.to(_device(self.estimator)),
                                       xs.to(_device(self.estimator))).cpu()


def _device(module: nn.Module) -> torch.device:
    try:
        return next(module.parameters()).device
    except StopIteration:
        return torch.device("cpu")
