r"""SLCP: simple likelihood, complex posterior (Papamakarios et al. 2019; sbibm ``slcp``).

Prior :math:`\theta \sim U([-3, 3]^5)`. With :math:`m = (\theta_1, \theta_2)`,
:math:`s_1 = \theta_3^2`, :math:`s_2 = \theta_4^2`, :math:`\rho = \tanh \theta_5`,

.. math:: S = \begin{pmatrix} s_1^2 + 10^{-6} & \rho s_1 s_2 \\ \rho s_1 s_2 & s_2^2 + 10^{-6}
          \end{pmatrix},

the data are 4 iid draws :math:`x_j \sim N(m, S)`, flattened to
``x = (x_{1,1}, x_{1,2}, x_{2,1}, ..., x_{4,2})`` (8 values). The posterior has four
symmetric modes (the signs of :math:`\theta_3` and :math:`\theta_4` are not identified).
Reference samples: exact Gaussian likelihood with differential-evolution MCMC initialized by
sampling-importance-resampling from the prior (``simulators.reference_mcmc``), cached on disk.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sbi_core.priors import box_uniform
from sbi_core.problem import OBSERVATION_SEED_BASE, Problem
from simulators.reference_mcmc import cached_reference, de_mcmc

__all__ = ["slcp", "simulate_slcp", "slcp_log_likelihood"]

NUM_DRAWS = 4
_EPS = 1e-6


#: Observation k uses seed OBSERVATION_SEED_BASE + OBSERVATION_OFFSETS[k - 1]: the first ten
#: offsets whose draw has both variances s_1^2, s_2^2 above 0.01 (no extremely spiked posteriors), as the SBI benchmark also skips degenerate draws.
OBSERVATION_OFFSETS = [1, 2, 3, 4, 5, 8, 9, 10, 12, 13]


def _mean_cov(theta: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Mean ``(N, 2)`` and the entries ``s11, s12, s22`` ``(N,)`` of the covariance."""
    s1, s2 = theta[:, 2] ** 2, theta[:, 3] ** 2
    rho = torch.tanh(theta[:, 4])
    return theta[:, :2], s1**2 + _EPS, rho * s1 * s2, s2**2 + _EPS


def simulate_slcp(theta: Tensor) -> Tensor:
    """``theta`` ``(N, 5)`` → ``x`` ``(N, 8)`` (4 two-dimensional draws, flattened)."""
    m, s11, s12, s22 = _mean_cov(theta.double())
    # Cholesky factor of the 2x2 covariance, batched.
    l11 = s11.sqrt()
    l21 = s12 / l11
    l22 = (s22 - l21**2).clamp(min=0).sqrt()
    e = torch.randn(theta.shape[0], NUM_DRAWS, 2, dtype=torch.float64)
    x1 = m[:, None, 0] + l11[:, None] * e[..., 0]
    x2 = m[:, None, 1] + l21[:, None] * e[..., 0] + l22[:, None] * e[..., 1]
    return torch.stack([x1, x2], -1).reshape(theta.shape[0], 2 * NUM_DRAWS).to(theta.dtype)


def slcp_log_likelihood(theta: Tensor, x_o: Tensor) -> Tensor:
    """Exact ``log p(x_o | theta)`` ``(N,)`` for ``theta`` ``(N, 5)`` and ``x_o`` ``(8,)``."""
    theta = theta.double()
    m, s11, s12, s22 = _mean_cov(theta)
    det = s11 * s22 - s12**2
    d = torch.as_tensor(x_o, dtype=torch.float64).reshape(NUM_DRAWS, 2)[None] - m[:, None]
    quad = (s22[:, None] * d[..., 0] ** 2 - 2 * s12[:, None] * d[..., 0] * d[..., 1]
            + s11[:, None] * d[..., 1] ** 2) / det[:, None]
    return -0.5 * quad.sum(1) - NUM_DRAWS * (0.5 * det.log() + math.log(2 * math.pi))


def slcp() -> Problem:
    """The ``slcp`` benchmark problem (D = 5, x in R^8)."""
    prior = box_uniform(-3.0, 3.0, dim=5)

    def reference(x_o: Tensor, num_samples: int, seed: int = 0) -> Tensor:
        def run() -> Tensor:
            return de_mcmc(lambda t: slcp_log_likelihood(t, x_o), prior, num_samples, seed,
                           num_chains=1000, num_init=1_000_000, warmup=500, thin=20)
        return cached_reference("slcp", x_o, num_samples, seed, run)

    return Problem(
        prior,
        simulate_slcp,
        name="slcp",
        x_shape=(2 * NUM_DRAWS,),
        x_trials=(NUM_DRAWS, 2),
        reference_posterior=reference,
        observation_seeds=[OBSERVATION_SEED_BASE + k for k in OBSERVATION_OFFSETS],
        description="SLCP: 4 draws of a 2-D Gaussian whose mean and covariance depend on 5 "
                    "parameters; 4-modal posterior.",
    )
