r"""Local calibration at one observation: L-C2ST (Linhart, Gramfort, Rodrigues, NeurIPS 2023).

A classifier ``d(u, x)`` is trained *once* on calibration pairs ``(theta_i, x_i)`` from the
joint (held-out simulations) to tell two classes apart; evaluated at the user's
observation ``x_o`` it says whether the posterior is right *there*, not only on average.

Variants (``variant=``):

``"nf"`` (L-C2ST-NF; default when the posterior is a normalizing flow with an accessible
inverse, ``estimator.to_base``, and no truncation to the prior support): ``u = z_i =
T^{-1}(theta_i; x_i)``. If ``q`` is the posterior, ``z`` is ``N(0, I)`` independent of ``x``.
Class 1: ``(z'_i ~ N(0, I), x_i)``; class 0: ``(z_i, x_i)``. At ``x_o`` the classifier is
evaluated on fixed base draws ``z_j ~ N(0, I)`` paired with ``x_o``: no posterior sampling at
test time, and the null (classifiers trained on ``N(0, I)`` vs ``N(0, I)`` with the same
``x_i``) does not depend on the estimator, so it can be reused (``null_from=``).

``"general"`` (any posterior that samples): class 1 ``(Q_i ~ q(. | x_i), x_i)``, class 0
``(theta_i, x_i)``; at ``x_o`` evaluated on ``Q*_j ~ q(. | x_o)``; the null classifiers are
trained on the same pooled rows with permuted labels. Extra cost: one posterior draw per
calibration pair plus ``num_eval`` draws per ``x_o``.

Statistic: ``T(x_o) = mean_j (d(u_j, x_o) - 1/2)^2`` (``d`` = predicted probability of
class 1); ``p = (1 + #{T_h >= T}) / (H + 1)`` over ``H = num_null`` null classifiers. The
observed and all null classifiers train together as one batched MLP (``torch.bmm``), so
``H = 50`` costs about as much as a few separate small trainings.

PP-plot data: the empirical CDF of the ``num_eval`` predicted probabilities at ``x_o`` on a
grid of levels, with the 95% band of the null classifiers' CDFs. Under ``H0`` the
probabilities cluster at 1/2 (a step at 1/2); a curve outside the band means ``q`` differs
from the posterior at ``x_o``. No rejection does not prove ``q`` right: a weak classifier
(few calibration pairs) loses power without raising false alarms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from sbi_core.posterior import Posterior

__all__ = ["LC2ST", "LC2STResult", "local_c2st", "nf_available"]

#: fewest held-out calibration pairs L-C2ST accepts (1,000 or more recommended)
MIN_PAIRS = 50

Variant = Literal["auto", "nf", "general"]


@dataclass
class LC2STResult:
    """L-C2ST at one observation.

    Attributes:
        statistic: ``T(x_o)`` (0 ideal).
        p_value: ``(1 + #{T_h >= T}) / (H + 1)``.
        null_statistics: ``T_h(x_o)`` of the ``H`` null classifiers.
        probs: predicted class-1 probabilities at ``x_o`` ``(num_eval,)``.
        alpha, pp, null_low, null_high: PP-plot data (grid, ECDF of ``probs``, 95% null band).
        variant: ``"nf"`` or ``"general"``.
    """

    statistic: float
    p_value: float
    null_statistics: list[float]
    probs: Tensor
    alpha: list[float]
    pp: list[float]
    null_low: list[float]
    null_high: list[float]
    variant: str
    num_calibration: int
    meta: dict[str, Any] = field(default_factory=dict)

    def reject(self, level: float = 0.05) -> bool:
        """True when the posterior is rejected at ``x_o`` at significance ``level``."""
        return self.p_value <= level

    def to_dict(self) -> dict[str, Any]:
        """Plain values (JSON- and model-file-safe); ``probs`` left out."""
        return {"statistic": self.statistic, "p_value": self.p_value,
                "null_statistics": self.null_statistics, "alpha": self.alpha, "pp": self.pp,
                "null_low": self.null_low, "null_high": self.null_high, "variant": self.variant,
                "num_calibration": self.num_calibration, **self.meta}


def nf_available(posterior: Posterior) -> bool:
    """True when L-C2ST-NF applies: the estimator maps ``theta`` to a standard normal base
    (``to_base``) and the posterior is not truncated to the prior support by rejection
    (then ``z`` of true posterior draws would not be exactly ``N(0, I)``)."""
    to_base = getattr(posterior.estimator, "to_base", None)
    if to_base is None:
        return False
    if getattr(posterior, "_bounded", False) and not getattr(posterior, "_samples_in_support", False):
        return False
    try:  # MDN estimators define to_base but raise
        with torch.no_grad():
            to_base(torch.zeros(1, posterior.dim), torch.zeros(1, *posterior.x_shape))
    except NotImplementedError:
        return False
    except Exception:
        return True
    return True


class LC2ST:
    """Train the L-C2ST classifiers once on calibration pairs; test any ``x_o`` cheaply.

    Args:
        posterior: the posterior under test.
        theta: calibration parameters ``(N, D)`` and ``xs`` their simulations
            ``(N, *x_shape)``: held out, never the training set.
        variant: ``"auto"`` (``"nf"`` when :func:`nf_available`, else ``"general"``),
            ``"nf"`` or ``"general"``.
        num_null: number ``H`` of null classifiers (p-value resolution ``1/(H+1)``).
        num_eval: evaluation points at each ``x_o``.
        hidden: MLP width (default ``max(32, 10 * D)``), two hidden ReLU layers.
        epochs, batch_size, learning_rate: Adam training of all ``H + 1`` classifiers at once.
        seed: fixes base draws, initialization, minibatch order and permutations.
    """

    def __init__(self, posterior: Posterior, theta: Tensor, xs: Tensor, variant: Variant = "auto",
                 num_null: int = 50, num_eval: int = 2000, hidden: int | None = None,
                 epochs: int = 60, batch_size: int = 256, learning_rate: float = 1e-3,
                 seed: int = 0):
        theta = torch.as_tensor(theta, dtype=torch.float32)
        xs = torch.as_tensor(xs, dtype=torch.float32)
        if theta.ndim != 2 or theta.shape[1] != posterior.dim or xs.shape[0] != theta.shape[0]:
            raise ValueError(f"Calibration data must be theta (N, D={posterior.dim}) and x "
                             f"(N, *{tuple(posterior.x_shape)}) with the same N; got "
                             f"{tuple(theta.shape)} and {tuple(xs.shape)}.")
        if posterior.x_shape and tuple(xs.shape[1:]) != tuple(posterior.x_shape):
            raise ValueError(f"Calibration x has shape {tuple(xs.shape[1:])}; the posterior "
                             f"expects {tuple(posterior.x_shape)}.")
        if theta.shape[0] < MIN_PAIRS:
            raise ValueError(f"L-C2ST needs at least {MIN_PAIRS} held-out calibration pairs (got "
                             f"{theta.shape[0]}; 1,000 or more recommended).")
        if num_null < 1 or num_eval < 1:
            raise ValueError("num_null and num_eval must be >= 1.")
        if variant not in ("auto", "nf", "general"):
            raise ValueError(f"Unknown variant {variant!r}; use 'auto', 'nf' or 'general'.")
        if variant == "auto":
            variant = "nf" if nf_available(posterior) else "general"
        elif variant == "nf" and not hasattr(posterior.estimator, "to_base"):
            raise ValueError(f"variant='nf' needs a flow posterior with estimator.to_base; "
                             f"{type(posterior.estimator).__name__} has none. Use "
                             "variant='general'.")
        self.posterior, self.variant = posterior, variant
        self.theta, self.xs = theta, xs
        self.num_null, self.num_eval = int(num_null), int(num_eval)
        self.hidden = hidden or max(32, 10 * posterior.dim)
        self.epochs, self.batch_size, self.learning_rate = epochs, batch_size, learning_rate
        self.seed = seed
        self._params: list[Tensor] | None = None
        self._x_flat = xs.reshape(xs.shape[0], -1)
        self._x_mean = self._x_flat.mean(0)
        self._x_std = self._x_flat.std(0).clamp(min=1e-8)
        self._u_mean = torch.zeros(posterior.dim)
        self._u_std = torch.ones(posterior.dim)
        if variant == "general":
            self._u_mean, self._u_std = theta.mean(0), theta.std(0).clamp(min=1e-8)

    # ------------------------------------------------------------------ training
    def fit(self, null_from: LC2ST | None = None) -> LC2ST:
        """Train the observed classifier and the ``H`` null classifiers (once).

        ``null_from``: a fitted L-C2ST-NF on the same calibration ``x`` and settings whose
        null classifiers are reused (valid for ``"nf"`` only: its null does not depend on the
        estimator); then only the observed classifier trains.
        """
        gen = torch.Generator().manual_seed(self.seed)
        n, d = self.theta.shape
        x = (self._x_flat - self._x_mean) / self._x_std
        with _range_off(self.posterior), torch.no_grad():
            if self.variant == "nf":
                u_joint = _chunked_to_base(self.posterior, self.theta, self.xs)
            else:
                u_joint = self.posterior.sample_batched(
                    (1,), self.xs, seed=self.seed)[0]  # (N, D): one q draw per x_i
        if not bool(torch.isfinite(u_joint).all()):
            raise ValueError("The posterior gave NaN/inf for some calibration pairs; drop "
                             "invalid simulations or check the estimator.")
        reuse = null_from is not None
        if reuse:
            self._check_null_source(null_from)
        k = 1 if reuse else 1 + self.num_null
        if self.variant == "nf":
            # class 0: (z_i, x_i) from the joint; class 1: (z' ~ N(0, I), x_i).
            # null net h: (z'' ~ N(0, I), x_i) vs (z''' ~ N(0, I), x_i).
            u0 = torch.cat([u_joint[None], torch.randn(k - 1, n, d, generator=gen)])
            u1 = torch.randn(k, n, d, generator=gen)
            u = torch.cat([u0, u1], 1)  # (K, 2N, D)
            labels = torch.cat([torch.zeros(k, n), torch.ones(k, n)], 1)
        else:
            # class 0: (theta_i, x_i); class 1: (Q_i ~ q(. | x_i), x_i); nulls permute labels.
            u = torch.cat([self.theta, u_joint])[None].expand(k, 2 * n, d)
            base = torch.cat([torch.zeros(n), torch.ones(n)])
            labels = torch.stack([base] + [base[torch.randperm(2 * n, generator=gen)]
                                           for _ in range(k - 1)])
        u = (u - self._u_mean) / self._u_std
        inputs = torch.cat([u, x.repeat(2, 1)[None].expand(k, -1, -1)], -1)
        params = _train_batched(inputs, labels, self.hidden, self.epochs, self.batch_size,
                                self.learning_rate, gen)
        if reuse:
            params = [torch.cat([p, q[1:]]) for p, q in zip(params, null_from._params)]
        self._params = params
        return self

    def _check_null_source(self, other: LC2ST) -> None:
        same = (other._params is not None and self.variant == "nf" and other.variant == "nf"
                and other.xs.shape == self.xs.shape and torch.equal(other.xs, self.xs)
                and (other.hidden, other.epochs, other.batch_size, other.learning_rate,
                     other.num_null) == (self.hidden, self.epochs, self.batch_size,
                                         self.learning_rate, self.num_null))
        if not same:
            raise ValueError("null_from must be a fitted L-C2ST-NF with the same calibration x, "
                             "num_null and classifier settings (only the NF null is independent "
                             "of the estimator).")

    # ------------------------------------------------------------------ testing
    def test(self, x_o: Tensor, seed: int | None = None) -> LC2STResult:
        """L-C2ST at one observation ``x_o`` (``x_shape``)."""
        if self._params is None:
            self.fit()
        x_o = self.posterior._check_x(x_o, batched=False)  # (1, *x_shape)
        if Posterior.is_iid_batch(x_o, self.posterior.x_shape):
            raise ValueError("L-C2ST tests one observation x_shape at a time, not an iid set.")
        seed = self.seed + 1 if seed is None else seed
        d = self.posterior.dim
        with torch.no_grad():
            if self.variant == "nf":
                gen = torch.Generator().manual_seed(seed)
                u = torch.randn(self.num_eval, d, generator=gen)
            else:
                u = self.posterior.sample((self.num_eval,), x_o[0], seed=seed)
            u = (u - self._u_mean) / self._u_std
            xo = ((x_o.reshape(1, -1) - self._x_mean) / self._x_std).expand(self.num_eval, -1)
            k = self._params[0].shape[0]
            inputs = torch.cat([u, xo], -1)[None].expand(k, -1, -1)
            probs = torch.sigmoid(_forward(self._params, inputs))  # (K, num_eval)
        stats = (probs - 0.5).square().mean(1)
        t_obs, t_null = float(stats[0]), stats[1:]
        p = (1 + int((t_null >= t_obs).sum())) / (t_null.numel() + 1)
        alpha = torch.linspace(0, 1, 101)
        ecdf = (probs[:, :, None] <= alpha).float().mean(1)  # (K, 101)
        low, high = torch.quantile(ecdf[1:], torch.tensor([0.025, 0.975]), dim=0)
        return LC2STResult(
            statistic=t_obs, p_value=p, null_statistics=t_null.tolist(), probs=probs[0],
            alpha=alpha.tolist(), pp=ecdf[0].tolist(), null_low=low.tolist(),
            null_high=high.tolist(), variant=self.variant, num_calibration=self.theta.shape[0],
            meta={"num_null": int(t_null.numel()), "num_eval": self.num_eval})


def local_c2st(posterior: Posterior, sims: Any, x_o: Tensor, variant: Variant = "auto",
               num: int | None = None, **options: Any) -> LC2STResult:
    """L-C2ST of ``posterior`` at observation ``x_o``.

    Args:
        sims: held-out simulations (a SimulationSet or ``(theta, x)``), never the training set.
        num: use at most this many calibration pairs (default: all valid rows).
        **options: of :class:`LC2ST` (``num_null``, ``num_eval``, ``epochs``, ``seed``, ...).

    To test many observations, build ``LC2ST(...).fit()`` once and call ``.test(x_o)`` per
    observation: the classifiers are not retrained.
    """
    from diagnostics.testset import calibration_pairs

    n_rows = len(sims.theta) if hasattr(sims, "theta") else len(sims[0])
    theta, xs = calibration_pairs(None, sims, num=num or n_rows)
    return LC2ST(posterior, theta, xs, variant=variant, **options).fit().test(x_o)


# ---------------------------------------------------------------------- internals
def _chunked_to_base(posterior: Posterior, theta: Tensor, xs: Tensor, chunk: int = 50_000) -> Tensor:
    est = posterior.estimator
    try:
        device = next(est.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    parts = [est.to_base(theta[i:i + chunk].to(device), xs[i:i + chunk].to(device)).cpu()
             for i in range(0, theta.shape[0], chunk)]
    return torch.cat(parts)


class _range_off:
    def __init__(self, posterior: Posterior):
        self.posterior = posterior

    def __enter__(self) -> None:
        self._old = self.posterior.range_check
        self.posterior.range_check = "off"

    def __exit__(self, *exc: object) -> None:
        self.posterior.range_check = self._old


def _init(k: int, fan_in: int, fan_out: int, gen: torch.Generator) -> list[Tensor]:
    bound = 1.0 / math.sqrt(fan_in)
    w = (torch.rand(k, fan_in, fan_out, generator=gen) * 2 - 1) * bound
    b = (torch.rand(k, 1, fan_out, generator=gen) * 2 - 1) * bound
    return [w.requires_grad_(), b.requires_grad_()]


def _forward(params: list[Tensor], inputs: Tensor) -> Tensor:
    """Logits ``(K, M)`` of ``K`` MLPs on ``inputs`` ``(K, M, F)``."""
    w1, b1, w2, b2, w3, b3 = params
    h = F.relu(torch.baddbmm(b1, inputs, w1))
    h = F.relu(torch.baddbmm(b2, h, w2))
    return torch.baddbmm(b3, h, w3).squeeze(-1)


def _train_batched(inputs: Tensor, labels: Tensor, hidden: int, epochs: int, batch_size: int,
                   learning_rate: float, gen: torch.Generator) -> list[Tensor]:
    """Train ``K`` classifiers at once (cross-entropy, Adam) for a fixed number of epochs;
    every classifier gets the same schedule, so the null ones are trained like the observed."""
    k, m, f = inputs.shape
    params = _init(k, f, hidden, gen) + _init(k, hidden, hidden, gen) + _init(k, hidden, 1, gen)
    opt = torch.optim.Adam(params, lr=learning_rate)
    rows = torch.arange(k)[:, None]
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.argsort(torch.rand(k, m, generator=gen), 1)
            for start in range(0, m, batch_size):
                idx = order[:, start:start + batch_size]
                logits = _forward(params, inputs[rows, idx])
                loss = F.binary_cross_entropy_with_logits(logits, labels[rows, idx])
                opt.zero_grad()
                (loss * k).backward()  # mean over rows of each net, summed over nets
                opt.step()
    return [p.detach() for p in params]

