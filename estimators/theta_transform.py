r"""Elementwise bijection from a prior's support onto :math:`\mathbb{R}^D` for NPE.

With ``theta_transform="unconstrained"`` an NPE learns the density of
``u = T(theta)`` instead of ``theta``, where per dimension

- both bounds finite: :math:`u = \log(\theta - l) - \log(h - \theta)` (scaled logit);
- only ``l`` finite: :math:`u = \log(\theta - l)`;
- only ``h`` finite: :math:`u = -\log(h - \theta)`;
- unbounded: :math:`u = \theta`.

The posterior density is :math:`q(\theta|x) = q_u(T(\theta)|x)\,|\det \partial T/\partial
\theta|`, and samples ``T^{-1}(u)`` always lie inside the support: no rejection sampling,
no leakage, and a ``log_prob`` that needs no acceptance-rate correction. The bounds are
buffers (``±inf`` where unbounded), so the module round-trips through ``state_dict``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["UnconstrainedTransform"]


class UnconstrainedTransform(nn.Module):
    """``forward``: support → ``R^D``; ``inverse``: ``R^D`` → support; both ``(..., D)``.

    Args:
        low, high: ``(D,)`` support bounds (``-inf`` / ``+inf`` where unbounded).
    """

    def __init__(self, low: Tensor, high: Tensor):
        super().__init__()
        low, high = torch.as_tensor(low, dtype=torch.float32), torch.as_tensor(high, dtype=torch.float32)
        if low.shape != high.shape or low.ndim != 1:
            raise ValueError(f"low and high must both have shape (D,); got {tuple(low.shape)} and "
                             f"{tuple(high.shape)}.")
        if bool((low >= high).any()):
            raise ValueError("Every lower bound must be smaller than its upper bound.")
        self.register_buffer("low", low.clone())
        self.register_buffer("high", high.clone())

    def _parts(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        has_lo, has_hi = torch.isfinite(self.low), torch.isfinite(self.high)
        lo = torch.where(has_lo, self.low, torch.zeros_like(self.low))
        hi = torch.where(has_hi, self.high, torch.zeros_like(self.high))
        return has_lo, has_hi, has_lo & has_hi, lo, hi

    def _logs(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        """``log(theta - l)`` and ``log(h - theta)`` where the bound exists (0 elsewhere)."""
        has_lo, has_hi, _, lo, hi = self._parts()
        tiny = torch.finfo(theta.dtype).tiny
        a = torch.where(has_lo, theta - lo, torch.ones_like(theta)).clamp(min=tiny)
        b = torch.where(has_hi, hi - theta, torch.ones_like(theta)).clamp(min=tiny)
        return a.log(), b.log()

    def forward(self, theta: Tensor) -> Tensor:
        """``u = T(theta)`` ``(..., D)`` for ``theta`` inside the support."""
        return self.forward_and_log_det(theta)[0]

    def forward_and_log_det(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        """``u = T(theta)`` ``(..., D)`` and ``log |det dT/dtheta|`` ``(...)`` in one pass."""
        has_lo, has_hi, both, lo, hi = self._parts()
        log_a, log_b = self._logs(theta)
        u = torch.where(both, log_a - log_b,
                        torch.where(has_lo, log_a, torch.where(has_hi, -log_b, theta)))
        span = torch.where(both, hi - lo, torch.ones_like(hi)).log()
        per_dim = torch.where(both, span - log_a - log_b,
                              torch.where(has_lo, -log_a, torch.where(has_hi, -log_b, 0.0)))
        return u, per_dim.sum(-1)

    def inverse(self, u: Tensor) -> Tensor:
        """``theta = T^{-1}(u)`` ``(..., D)``, strictly inside the support (float rounding included)."""
        has_lo, has_hi, both, lo, hi = self._parts()
        only_lo, only_hi = has_lo & ~has_hi, has_hi & ~has_lo
        zero = torch.zeros_like(u)
        cap = 0.9 * math.log(torch.finfo(u.dtype).max)  # exp stays finite (and its gradient)
        theta = torch.where(
            both, lo + (hi - lo) * torch.sigmoid(torch.where(both, u, zero)),
            torch.where(only_lo, lo + torch.exp(torch.where(only_lo, u, zero).clamp(max=cap)),
                        torch.where(only_hi,
                                    hi - torch.exp(-torch.where(only_hi, u, zero).clamp(min=-cap)),
                                    u)))
        # sigmoid / exp saturate in float32: keep samples strictly inside open bounds.
        big = torch.finfo(u.dtype).max  # exp overflow on a half-bounded side stays finite
        inner_lo = torch.where(has_lo, torch.nextafter(lo, lo + 1), torch.full_like(lo, -big))
        inner_hi = torch.where(has_hi, torch.nextafter(hi, hi - 1), torch.full_like(hi, big))
        return torch.maximum(torch.minimum(theta, inner_hi.to(theta)), inner_lo.to(theta))

    def log_abs_det(self, theta: Tensor) -> Tensor:
        """``log |det dT/dtheta|`` ``(...)`` at ``theta`` ``(..., D)`` (add it to ``log q_u``)."""
        return self.forward_and_log_det(theta)[1]

    def check_inside(self, theta: Tensor) -> None:
        """Raise if any row of ``theta`` ``(N, D)`` is not strictly inside the bounds."""
        outside = ~((theta > self.low) & (theta < self.high)).all(-1)
        if bool(outside.any()):
            raise ValueError(
                f"theta_transform='unconstrained' needs every training theta strictly inside the "
                f"prior's support, but {int(outside.sum())} of {theta.shape[0]} rows lie on or "
                f"outside the bounds low={self.low.tolist()}, high={self.high.tolist()}. Simulate "
                "from the prior, or train with theta_transform=None."
            )
