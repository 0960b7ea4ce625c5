r"""A fixed conditional affine pre-standardization of theta for NPE's flow.

Before training, standardized parameters ``z`` ``(N, D)`` are regressed (ridge least
squares) on the flow's context ``c`` ``(N, C)`` (the standardized, flattened ``x`` when the
embedding is the identity):

.. math:: z \approx A c + b, \qquad u = L^{-1} (z - A c - b),

with ``L`` the Cholesky factor of the residual covariance (``"linear_full"``) or the
diagonal of residual standard deviations (``"linear"``). The flow then models
``q(u | c)`` and

.. math:: \log q(z \mid c) = \log q_{flow}(u \mid c) - \sum_i \log L_{ii},

a constant log-Jacobian. ``A``, ``b`` and ``L`` are buffers fitted once (not trained), so
the fused flows keep their hand-written backward (inputs that need gradients would switch
them to the slower autograd path). Sampling inverts the map: ``z = A c + b + L u``.

:class:`ShiftedDensity` wraps any density with the ``log_prob`` / ``sample`` /
``sample_and_log_prob`` (and, for flows, ``forward_transform`` / ``inverse_transform``)
interface of :mod:`estimators.fast_maf`, so code that calls ``estimator.density`` (APT's
atomic loss, ensembles, L-C2ST's ``to_base``) sees the shifted density unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from estimators.flows import sample_and_log_prob as flow_sample_and_log_prob

__all__ = ["SHIFT_MODES", "ShiftedDensity", "fit_linear_shift", "resolve_shift"]

# None: no shift (the default: the flow sees the prior-standardized theta); "linear":
# diagonal residual scale; "linear_full": Cholesky factor of the residual covariance.
# There is no "auto": over six benchmark tasks the shift helped gaussian_mixture and
# gaussian_linear a lot, left two_moons and slcp unchanged and cost C2ST on sir and
# bernoulli_glm, and no rule tried (residual kurtosis, heteroscedasticity R^2) told
# bernoulli_glm apart (benchmarks/RESULTS.md, "Issue 18: a conditional affine
# pre-standardization of theta").
SHIFT_MODES = (None, "linear", "linear_full")
# ridge penalty per row on the standardized context (the bias is not penalized)
RIDGE = 1e-3


def resolve_shift(mode: Any, *, flow: str, identity_embedding: bool, discrete: bool,
                  trial_mode: str | None) -> str | None:
    """``mode`` checked against the model: a shift needs the flow's context to be the
    standardized x itself (identity embedding, no one-hot discrete columns, trials flat or
    sorted: not permuted per minibatch and not a set embedding) and a flow (not ``mdn``)."""
    if mode not in SHIFT_MODES:
        raise ValueError(f"Unknown conditional_shift {mode!r}; use one of {SHIFT_MODES}.")
    if mode is not None and (not identity_embedding or discrete
                             or trial_mode not in (None, "sort") or flow == "mdn"):
        raise ValueError(f"conditional_shift={mode!r} needs the flow's context to be the "
                         "standardized x: an identity embedding, no discrete_columns, "
                         "flat or sorted trials and a flow (not mdn). Use "
                         "conditional_shift=None here.")
    return mode


def fit_linear_shift(z: Tensor, ctx: Tensor, full: bool,
                     ridge: float = RIDGE) -> tuple[Tensor, Tensor, Tensor]:
    """Ridge least squares of ``z`` ``(N, D)`` on ``ctx`` ``(N, C)``.

    Returns ``A`` ``(D, C)``, ``b`` ``(D,)`` and the lower-triangular scale ``L`` ``(D, D)``
    of the residuals (diagonal unless ``full``), in float32. Rows with non-finite values are
    left out; a degenerate residual scale is floored at 1e-6.
    """
    z64, c64 = z.double(), ctx.double()
    keep = torch.isfinite(z64).all(1) & torch.isfinite(c64).all(1)
    z64, c64 = z64[keep], c64[keep]
    n, c = c64.shape
    design = torch.cat([c64, c64.new_ones(n, 1)], 1)  # (N, C + 1)
    gram = design.T @ design
    penalty = c64.new_full((c + 1,), ridge * n)
    penalty[-1] = 0.0
    coef = torch.linalg.solve(gram + torch.diag(penalty), design.T @ z64)  # (C + 1, D)
    resid = z64 - design @ coef
    cov = resid.T @ resid / max(n - 1, 1)
    if full:
        jitter = 1e-9 * torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
        scale = torch.linalg.cholesky(cov + jitter)
        d = torch.diagonal(scale)
        scale = scale * (d.clamp(min=1e-6) / d).unsqueeze(0)  # floor the diagonal only
    else:
        scale = torch.diag(cov.diagonal().sqrt().clamp(min=1e-6))
    return coef[:-1].T.float(), coef[-1].float(), scale.float()


class ShiftedDensity(nn.Module):
    """``q(z | c)`` from a density ``q_flow(u | c)`` over ``u = L^{-1}(z - A c - b)``.

    Args:
        density: the inner density (``log_prob(u (N, D), context (N, C)) -> (N,)``,
            ``sample(n, context (B, C)) -> (B, n, D)``).
        dim: ``D``. context_dim: ``C``.

    The buffers ``weight`` ``(D, C)``, ``bias`` ``(D,)`` and ``scale_tril`` ``(D, D)`` start
    as the identity map and are set by :meth:`fit` (then saved in the state_dict).
    """

    def __init__(self, density: nn.Module, dim: int, context_dim: int):
        super().__init__()
        self.flow = density
        self.dim = dim
        self.register_buffer("weight", torch.zeros(dim, context_dim))
        self.register_buffer("bias", torch.zeros(dim))
        self.register_buffer("scale_tril", torch.eye(dim))

    @torch.no_grad()
    def fit(self, z: Tensor, ctx: Tensor, full: bool) -> None:
        """Fit ``A``, ``b``, ``L`` on standardized parameters ``z`` ``(N, D)`` and contexts
        ``ctx`` ``(N, C)`` (:func:`fit_linear_shift`)."""
        a, b, scale = fit_linear_shift(z, ctx, full)
        self.weight.copy_(a)
        self.bias.copy_(b)
        self.scale_tril.copy_(scale)

    def mean(self, context: Tensor) -> Tensor:
        """``A c + b`` ``(N, D)`` for contexts ``(N, C)``."""
        return torch.addmm(self.bias, context, self.weight.T)

    def log_abs_det(self) -> Tensor:
        """``log |det du/dz| = -sum log L_ii`` (a constant)."""
        return -torch.diagonal(self.scale_tril).log().sum()

    def to_u(self, z: Tensor, context: Tensor) -> Tensor:
        """``u = L^{-1}(z - A c - b)`` for paired rows ``(N, D)``, ``(N, C)``."""
        r = z - self.mean(context)
        return torch.linalg.solve_triangular(self.scale_tril, r.T, upper=False).T

    def from_u(self, u: Tensor, context: Tensor) -> Tensor:
        """Inverse of :meth:`to_u` for ``u`` ``(B, n, D)`` and contexts ``(B, C)`` →
        ``(B, n, D)``."""
        return self.mean(context)[:, None, :] + u @ self.scale_tril.T

    def log_prob(self, inputs: Tensor, context: Tensor) -> Tensor:
        """``log q(z | c)``: ``inputs`` ``(N, D)``, ``context`` ``(N, C)`` → ``(N,)``."""
        return self.flow.log_prob(self.to_u(inputs, context), context=context) + self.log_abs_det()

    def sample(self, num_samples: int, context: Tensor) -> Tensor:
        """``(B, n, D)`` draws for contexts ``(B, C)``."""
        return self.from_u(self.flow.sample(num_samples, context=context), context)

    def sample_and_log_prob(self, num_samples: int, context: Tensor) -> tuple[Tensor, Tensor]:
        """Samples ``(B, n, D)`` and their log densities ``(B, n)``."""
        u, lp = flow_sample_and_log_prob(self.flow, num_samples, context)
        return self.from_u(u, context), lp + self.log_abs_det()

    def forward_transform(self, inputs: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """Data → the flow's base: ``(N, D)`` and ``log |det|`` ``(N,)`` (fused flows)."""
        base, log_det = self.flow.forward_transform(self.to_u(inputs, context), context)
        return base, log_det + self.log_abs_det()

    def inverse_transform(self, base: Tensor, context: Tensor) -> Tensor:
        """Base ``(N, D)`` → data (fused flows)."""
        u = self.flow.inverse_transform(base, context)
        return self.from_u(u[:, None, :], context)[:, 0, :]
