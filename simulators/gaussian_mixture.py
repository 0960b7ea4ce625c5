r"""Gaussian mixture (Lueckmann et al. 2021, sbibm ``gaussian_mixture``).

Prior :math:`\theta \sim U([-10, 10]^2)`; simulator
:math:`x \sim 0.5\, N(\theta, I) + 0.5\, N(\theta, 0.01\, I)` (component drawn per simulation).
Because the likelihood is symmetric in :math:`x - \theta`, the posterior is the same mixture
centred on :math:`x_o`, truncated to the prior box; reference samples are exact (rejection).

(sbibm draws one mixture component per *call* of its simulator; we draw it per simulation,
which is the model the paper states.)
"""

from __future__ import annotations

import torch
from torch import Tensor

from sbi_core.priors import box_uniform
from sbi_core.problem import Problem

__all__ = ["gaussian_mixture", "gaussian_mixture_reference"]

_SCALES = (1.0, 0.1)


def _mixture_noise(n: int, d: int, generator: torch.Generator | None = None) -> Tensor:
    scale = torch.where(torch.rand(n, 1, generator=generator) < 0.5, _SCALES[0], _SCALES[1])
    return scale * torch.randn(n, d, generator=generator)


def gaussian_mixture_reference(x_o: Tensor, num_samples: int, seed: int = 0,
                               bound: float = 10.0) -> Tensor:
    """Exact posterior samples ``(num_samples, D)`` given ``x_o`` ``(D,)``."""
    gen = torch.Generator().manual_seed(seed)
    x_o = torch.as_tensor(x_o, dtype=torch.float32).reshape(-1)
    out, have = [], 0
    for _ in range(10_000):
        m = max(4 * (num_samples - have), 10_000)
        z = x_o + _mixture_noise(m, x_o.shape[0], gen)
        ok = (z.abs() <= bound).all(-1)
        out.append(z[ok])
        have += int(ok.sum())
        if have >= num_samples:
            return torch.cat(out)[:num_samples]
    raise RuntimeError("Reference sampling for gaussian_mixture did not finish: x_o is far "
                       "outside the prior box [-10, 10]^D.")


def gaussian_mixture(dim: int = 2, bound: float = 10.0) -> Problem:
    """The ``gaussian_mixture`` benchmark problem (D = 2, x in R^2)."""

    def simulator(theta: Tensor) -> Tensor:
        return theta + _mixture_noise(theta.shape[0], theta.shape[1]).to(theta)

    def reference(x_o: Tensor, num_samples: int, seed: int = 0) -> Tensor:
        return gaussian_mixture_reference(x_o, num_samples, seed, bound)

    return Problem(
        box_uniform(-bound, bound, dim=dim),
        simulator,
        name="gaussian_mixture",
        x_shape=(dim,),
        reference_posterior=reference,
        description="x ~ 0.5 N(theta, I) + 0.5 N(theta, 0.01 I), theta ~ U([-10, 10]^2).",
    )
