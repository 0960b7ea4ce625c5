r"""Classification losses of neural ratio estimation, each per pair ``(N,)``.

A classifier :math:`g(\theta, x)` is trained to tell joint pairs :math:`(\theta_i, x_i)` from
pairs whose :math:`\theta` comes from another simulation of the same minibatch (a sample of
the marginal :math:`p(\theta)`); its optimum is :math:`g = \log r = \log p(x\mid\theta)/p(x)`.
Negatives are made inside the loss by shuffling :math:`\theta` along a random cycle of the
batch (a derangement: no pair is its own negative), so the shared training loop needs no
special data.

- **NRE-A** (Hermans et al. 2020): binary cross-entropy, one negative per pair,
  :math:`-\log\sigma(g(\theta_i, x_i)) - \log(1 - \sigma(g(\theta_{j}, x_i)))`.
- **NRE-C** (Miller et al. 2022), ``K`` contrastive parameters and odds :math:`\gamma`:
  class 0 holds ``K`` marginal :math:`\theta`\ s, class ``k`` has the joint :math:`\theta` at
  slot ``k``. With :math:`Z = 1 + \frac{\gamma}{K}\sum_j e^{g(\theta_j, x)}`,
  :math:`\log q(y{=}k) = \log\frac{\gamma}{K} + g(\theta_k, x) - \log Z` and
  :math:`\log q(y{=}0) = -\log Z`; the loss is
  :math:`-\frac{\gamma}{1+\gamma}\log q(y{=}k \mid \text{joint set}) -
  \frac{1}{1+\gamma}\log q(y{=}0 \mid \text{marginal set})`. Its optimum is the exact
  ratio for every ``K`` and :math:`\gamma`.
- **NRE-B** (Durkan et al. 2020) is the limit :math:`\gamma \to \infty`: a softmax over ``K``
  atoms, one of them joint; its ratio is exact only up to a constant in ``x`` (harmless for
  MCMC, where only differences in :math:`\theta` matter).
- **BNRE** (Delaunoy et al. 2022): NRE-A plus
  :math:`\lambda\,(\overline{\sigma(g)}_{\text{joint}} + \overline{\sigma(g)}_{\text{marginal}} - 1)^2`
  over the batch, which pushes the classifier towards conservative (not overconfident)
  posteriors. The batch term is added to every pair's loss so the mean is the BNRE objective.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LOSSES", "nre_loss", "cyclic_negatives"]

LOSSES = ("nre_a", "nre_b", "nre_c", "bnre")

#: ``g(theta_index (N, K), ) -> (N, K)``: logits of pairs (theta[idx[i, k]], x_i).
PairLogits = Callable[[Tensor], Tensor]


def cyclic_negatives(n: int, k: int, generator: torch.Generator | None = None) -> Tensor:
    """Indices ``(n, k)`` of ``k`` distinct other rows for each row ``i`` (never ``i``), ``k < n``.

    Rows are placed on a random cycle and row ``i`` takes its ``k`` successors.
    """
    perm = torch.randperm(n, generator=generator)
    pos = torch.empty_like(perm)
    pos[perm] = torch.arange(n)
    steps = torch.arange(1, k + 1)
    return perm[(pos[:, None] + steps[None, :]) % n]


def nre_loss(kind: str, pair_logits: PairLogits, n: int, num_classes: int = 5, gamma: float = 1.0,
             regularization_strength: float = 100.0,
             generator: torch.Generator | None = None, device: torch.device | None = None
             ) -> Tensor:
    """Per-pair loss ``(n,)`` of the ratio classifier for a batch of ``n`` joint pairs.

    Args:
        kind: one of :data:`LOSSES`.
        pair_logits: ``f(idx (n, m)) -> (n, m)``, the classifier's logits of
            ``(theta[idx[i, j]], x_i)``.
        n: batch size (at least 2).
        num_classes: ``K`` (NRE-C classes or NRE-B atoms); reduced to fit small batches.
        gamma: NRE-C odds of the dependent classes against the marginal class.
        regularization_strength: BNRE's :math:`\\lambda`.
    """
    if n < 2:
        raise ValueError("Ratio estimation needs batches of at least 2 simulations to form "
                         "negative pairs; raise batch_size or the number of simulations.")
    own = torch.arange(n)[:, None]
    if kind in ("nre_a", "bnre"):
        idx = torch.cat([own, cyclic_negatives(n, 1, generator)], 1).to(device)
        logits = pair_logits(idx)  # (n, 2): joint, marginal
        loss = F.softplus(-logits[:, 0]) + F.softplus(logits[:, 1])
        if kind == "bnre":
            prob = torch.sigmoid(logits)
            balance = prob[:, 0].mean() + prob[:, 1].mean() - 1.0
            loss = loss + regularization_strength * balance ** 2
        return loss
    if kind == "nre_b":
        k = max(min(num_classes, n), 2)
        idx = torch.cat([own, cyclic_negatives(n, k - 1, generator)], 1).to(device)
        logits = pair_logits(idx)  # (n, k), column 0 joint
        return -(logits[:, 0] - torch.logsumexp(logits, dim=1))
    if kind == "nre_c":
        k = max(min(num_classes, n // 2), 1)
        others = cyclic_negatives(n, 2 * k - 1, generator) if 2 * k - 1 > 0 else own[:, :0]
        idx = torch.cat([own, others], 1).to(device)  # joint set: cols 0..k-1, marginal: k..2k-1
        logits = pair_logits(idx)
        log_w = math.log(gamma / k)
        zeros = torch.zeros(n, 1, device=logits.device)
        log_z_joint = torch.logsumexp(torch.cat([zeros, log_w + logits[:, :k]], 1), dim=1)
        log_z_marg = torch.logsumexp(torch.cat([zeros, log_w + logits[:, k:]], 1), dim=1)
        log_q_joint = log_w + logits[:, 0] - log_z_joint
        log_q_marg = -log_z_marg
        return -(gamma / (1 + gamma) * log_q_joint + 1 / (1 + gamma) * log_q_marg)
    raise ValueError(f"Unknown NRE loss {kind!r}; use one of {LOSSES}.")
