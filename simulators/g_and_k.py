r"""The univariate g-and-k distribution, a simulator defined by its quantile function.

.. math:: Q(z; A, B, g, k) = A + B\left(1 + c \tanh\tfrac{g z}{2}\right)(1 + z^2)^k z,
          \quad z = \Phi^{-1}(u),\ u \sim \mathcal U(0, 1),\ c = 0.8.

It has no closed-form density but is trivial to simulate, the classic test of ABC and of
MMD-based inference. ``theta = (A, B, g, k)`` with ``k`` used directly (not ``exp(k)``);
prior :math:`\mathcal U([0, 10]^4)` (Fearnhead & Prangle 2012). The problem exposes its
random input (``noise_dim=1``: ``simulate_g_and_k(theta, u)``), so the optimally weighted
MMD estimator (:func:`diagnostics.mmd.bq_weights`) applies. An observation is one draw
``(1,)``; data sets are ``n`` iid draws ``(n, 1)`` (:func:`g_and_k_data`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from sbi_core.priors import box_uniform
from sbi_core.problem import Problem

__all__ = ["g_and_k", "g_and_k_quantile", "simulate_g_and_k", "g_and_k_data", "TRUE_THETA"]

#: The parameters of the OW-MMD paper's g-and-k experiment (Bharti et al. 2023).
TRUE_THETA = (3.0, 1.0, 0.1, 0.1)
_C = 0.8
_EPS = 1e-12


def g_and_k_quantile(theta: Tensor, z: Tensor) -> Tensor:
    """Quantile function at standard-normal ``z`` ``(N, m)`` for ``theta`` ``(N, 4)`` → ``(N, m)``."""
    a, b, g, k = (theta[:, i:i + 1] for i in range(4))
    return a + b * (1 + _C * torch.tanh(g * z / 2)) * (1 + z.square()).pow(k) * z


def simulate_g_and_k(theta: Tensor, u: Tensor) -> Tensor:
    """One draw per row: ``theta`` ``(N, 4)``, uniform inputs ``u`` ``(N, 1)`` → ``x`` ``(N, 1)``."""
    z = torch.special.ndtri(u.to(theta.dtype).clamp(_EPS, 1 - _EPS))
    return g_and_k_quantile(theta, z)


def g_and_k_data(theta: Tensor | tuple[float, ...], n: int, seed: int = 0) -> Tensor:
    """``n`` iid draws ``(n, 1)`` at one ``theta`` ``(4,)`` (iid uniform inputs, fixed seed)."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(n, 1, generator=gen, dtype=torch.float64)
    theta = torch.as_tensor(theta, dtype=torch.float64).reshape(1, 4).expand(n, 4)
    return simulate_g_and_k(theta, u).float()


def g_and_k() -> Problem:
    """The g-and-k problem: prior U([0, 10]^4), one draw per simulation, ``noise_dim=1``."""
    return Problem(box_uniform([0.0] * 4, [10.0] * 4), simulate_g_and_k, noise_dim=1,
                   param_names=["A", "B", "g", "k"], name="g_and_k", x_shape=(1,),
                   description="g-and-k quantile distribution, theta=(A, B, g, k); exposes its "
                               "uniform random input (noise_dim=1).")
