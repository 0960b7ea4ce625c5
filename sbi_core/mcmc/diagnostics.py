r"""Convergence diagnostics for parallel MCMC chains: split R-hat and effective sample size.

Both take chains as a tensor ``(C, S, *rest)`` (``C`` chains of ``S`` draws each, any trailing
shape such as ``(B, D)``) and return one value per trailing entry, shape ``rest``.

- :func:`split_rhat`: the potential scale reduction of Gelman et al. (BDA3, ch. 11) computed
  on chains split in halves, so that a drifting chain is caught too. Values near 1 (below
  about 1.01–1.05) mean the chains agree; larger values mean they have not mixed.
- :func:`effective_sample_size`: the multi-chain ESS of BDA3 / Stan with Geyer's initial
  monotone sequence estimator of the autocorrelation sum,
  :math:`\mathrm{ESS} = C S / (1 + 2 \sum_t \hat\rho_t)`.

Chains shorter than 4 draws give NaN (the estimators are undefined there).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["split_rhat", "effective_sample_size"]


def _split(chains: Tensor) -> Tensor:
    """``(C, S, *rest)`` → ``(2C, S // 2, *rest)`` (first and second halves as separate chains)."""
    half = chains.shape[1] // 2
    return torch.cat([chains[:, :half], chains[:, chains.shape[1] - half:]], dim=0)


def split_rhat(chains: Tensor) -> Tensor:
    """Split R-hat ``rest`` of chains ``(C, S, *rest)``; NaN if ``S < 4``."""
    chains = chains.double()
    if chains.shape[1] < 4:
        return torch.full(chains.shape[2:], float("nan"), dtype=torch.float32)
    sp = _split(chains)
    n = sp.shape[1]
    within = sp.var(dim=1, unbiased=True).mean(0)
    between = n * sp.mean(1).var(dim=0, unbiased=True)
    var_plus = (n - 1) / n * within + between / n
    rhat = (var_plus / within).sqrt()
    # identical constant chains: agree perfectly
    rhat = torch.where(within > 0, rhat, torch.ones_like(rhat))
    return rhat.float()


def _autocovariance(chains: Tensor) -> Tensor:
    """Autocovariance along dim 1 of ``(C, S, *rest)`` via FFT (biased, lag 0..S-1)."""
    s = chains.shape[1]
    centered = chains - chains.mean(1, keepdim=True)
    size = 1 << (2 * s - 1).bit_length()
    f = torch.fft.rfft(centered, n=size, dim=1)
    acov = torch.fft.irfft(f * f.conj(), n=size, dim=1)[:, :s]
    return acov / s


def effective_sample_size(chains: Tensor) -> Tensor:
    """Multi-chain effective sample size ``rest`` of chains ``(C, S, *rest)``; NaN if ``S < 4``."""
    chains = chains.double()
    c, s = chains.shape[:2]
    if s < 4:
        return torch.full(chains.shape[2:], float("nan"), dtype=torch.float32)
    acov = _autocovariance(chains)  # (C, S, *rest)
    mean_acov = acov.mean(0)  # (S, *rest)
    chain_var = acov[:, 0] * s / (s - 1.0)
    within = chain_var.mean(0)
    var_plus = within * (s - 1.0) / s
    if c > 1:
        var_plus = var_plus + chains.mean(1).var(dim=0, unbiased=True)
    safe_var = torch.where(var_plus > 0, var_plus, torch.ones_like(var_plus))
    rho = 1.0 - (within - mean_acov) / safe_var  # (S, *rest)
    rho[0] = 1.0
    # Geyer: sums of consecutive pairs, truncated at the first negative pair, made monotone.
    n_pairs = s // 2
    pairs = rho[: 2 * n_pairs].reshape(n_pairs, 2, *rho.shape[1:]).sum(1)  # (P, *rest)
    positive = (pairs > 0).long().cumprod(0).bool()
    pairs = torch.where(positive, pairs, torch.zeros_like(pairs))
    pairs = torch.cummin(pairs, dim=0).values
    pairs = torch.where(positive, pairs, torch.zeros_like(pairs))
    tau = -1.0 + 2.0 * pairs.sum(0)
    tau = torch.clamp(tau, min=1.0 / torch.log10(torch.tensor(float(c * s))))
    ess = c * s / tau
    ess = torch.where(var_plus > 0, ess, torch.full_like(ess, float(c * s)))
    return ess.float()
