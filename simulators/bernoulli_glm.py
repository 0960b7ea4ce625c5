r"""Bernoulli GLM (Lueckmann et al. 2021, sbibm ``bernoulli_glm``).

A neuron spikes in each of 100 time bins with probability
:math:`\sigma(\beta_0 + \sum_{j=1}^{9} f_j I_{t-j+1})`, driven by a fixed white-noise
stimulus :math:`I_t \sim N(0, 1)` (``numpy.random.RandomState(42).randn(100)``, as in sbibm).
Parameters :math:`\theta = (\beta_0, f_1, ..., f_9)`. Prior: :math:`\beta_0 \sim N(0, 2)`,
:math:`f \sim N(0, (F^\top F)^{-1})` with :math:`F = D^2 + \mathrm{diag}(\sqrt{k/9})_{k=0..8}`
and :math:`D` the first-difference matrix (smooth filters).
Data: the sufficient statistics :math:`x = X^\top y` (spike count, then the 9-lag
spike-triggered sum of the stimulus), where :math:`X` is the ``(100, 10)`` design matrix.
Since :math:`x` is sufficient, the exact posterior given :math:`x` is
:math:`p(\theta) \exp(\theta^\top x - \sum_t \log(1 + e^{(X\theta)_t}))`, which is log-concave;
reference samples come from differential-evolution MCMC (``simulators.reference_mcmc``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sbi_core.priors import gaussian
from sbi_core.problem import Problem
from simulators.reference_mcmc import cached_reference, de_mcmc

__all__ = ["bernoulli_glm", "design_matrix", "prior_precision", "bernoulli_glm_log_likelihood"]

NUM_BINS = 100
DIM = 10


def design_matrix() -> Tensor:
    """``(100, 10)``: a column of ones, then the stimulus delayed by 0..8 bins."""
    stim = torch.from_numpy(np.random.RandomState(42).randn(NUM_BINS).astype(np.float32))
    x = torch.zeros(NUM_BINS, DIM)
    x[:, 0] = 1.0
    for j in range(DIM - 1):
        x[j:, j + 1] = stim[: NUM_BINS - j]
    return x


def prior_precision() -> Tensor:
    """``(10, 10)`` prior precision matrix (offset 0.5, smoothness penalty on the filter)."""
    m = DIM - 1
    d = torch.eye(m, dtype=torch.float64) - torch.diag(torch.ones(m - 1, dtype=torch.float64), -1)
    f = d @ d + torch.diag(torch.arange(m, dtype=torch.float64) / m).sqrt()
    prec = torch.zeros(DIM, DIM, dtype=torch.float64)
    prec[0, 0] = 0.5
    prec[1:, 1:] = f.T @ f
    return prec


_X = design_matrix()


def simulate_bernoulli_glm(theta: Tensor) -> Tensor:
    """``theta`` ``(N, 10)`` → sufficient statistics ``(N, 10)``."""
    p = torch.sigmoid(theta.float() @ _X.T)  # (N, 100)
    y = (torch.rand_like(p) < p).float()
    return (y @ _X).to(theta.dtype)


def bernoulli_glm_log_likelihood(theta: Tensor, x_o: Tensor) -> Tensor:
    """``log p(x_o | theta)`` up to a constant in ``theta``; ``(N,)`` for ``theta`` ``(N, 10)``."""
    theta = theta.double()
    psi = theta @ _X.double().T
    return theta @ torch.as_tensor(x_o, dtype=torch.float64) - F.softplus(psi).sum(1)


def bernoulli_glm() -> Problem:
    """The ``bernoulli_glm`` benchmark problem (D = 10, x in R^10)."""
    cov = torch.linalg.inv(prior_precision())
    cov = 0.5 * (cov + cov.T)
    prior = gaussian(torch.zeros(DIM), cov=cov.float())

    def reference(x_o: Tensor, num_samples: int, seed: int = 0) -> Tensor:
        def run() -> Tensor:
            return de_mcmc(lambda t: bernoulli_glm_log_likelihood(t, x_o), prior, num_samples,
                           seed, num_chains=1000, num_init=100_000, warmup=500, thin=20)
        return cached_reference("bernoulli_glm", x_o, num_samples, seed, run)

    return Problem(
        prior,
        simulate_bernoulli_glm,
        param_names=["beta_0"] + [f"f_{j}" for j in range(1, DIM)],
        name="bernoulli_glm",
        x_shape=(DIM,),
        reference_posterior=reference,
        description="Bernoulli GLM neuron with a 9-tap stimulus filter; x = spike count and "
                    "spike-triggered sums (sufficient statistics).",
    )
