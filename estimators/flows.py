"""Conditional normalizing flows: nflows MAF and NSF, and sbi-core's fused MAF and NSF.

``build_flow(kind, dim, context_dim, ...)`` returns an ``nflows.flows.Flow`` (``maf``,
``nsf``) or an :class:`estimators.fast_maf.FusedMAF` (``fmaf``, the same model family as
``maf`` implemented with a few stacked tensors for speed; see docs/performance.md), whose
``log_prob(inputs (N, D), context (N, C))`` and ``sample(n, context (B, C)) -> (B, n, D)``
are used by the estimators. All hyperparameters are plain values, kept in the
estimator's config so a flow is rebuilt exactly on load.
"""

from __future__ import annotations

import warnings

import torch
from nflows.distributions.normal import StandardNormal
from nflows.flows.base import Flow
from nflows.nn.nets import ResidualNet
from nflows.transforms.autoregressive import (
    MaskedAffineAutoregressiveTransform,
    MaskedPiecewiseRationalQuadraticAutoregressiveTransform,
)
from nflows.transforms.base import CompositeTransform
from nflows.transforms.coupling import PiecewiseRationalQuadraticCouplingTransform
from nflows.transforms.lu import LULinear
from nflows.transforms.permutations import Permutation, ReversePermutation
from torch import nn

from estimators.fast_maf import FusedMAF
from estimators.fast_nsf import FusedNSF

__all__ = ["build_flow", "FLOWS", "sample_and_log_prob"]

FLOWS = ("maf", "nsf", "fmaf", "fnsf")

# NSF layer layout: 2 = coupling masks alternating per layer + LU mixing (current); 1 = one
# fixed mask + reverse permutation, as saved before 2026-11-26 (for odd D it never
# transforms the odd features; rebuilt only to load such files, with a warning).
NSF_LAYOUT = 2


def build_flow(kind: str, dim: int, context_dim: int, hidden_features: int = 50,
               num_transforms: int = 5, num_blocks: int = 2, num_bins: int = 10,
               tail_bound: float = 3.0, permutation_seed: int = 0,
               nsf_layout: int = NSF_LAYOUT) -> Flow | FusedMAF | FusedNSF:
    """A conditional flow over ``dim`` (standardized) parameters.

    ``maf``: nflows masked affine autoregressive transforms with random permutations.
    ``fmaf``: the same architecture as one fused module (faster on CPUs; ``num_bins`` unused).
    ``nsf``: rational-quadratic spline coupling transforms on alternating halves, each followed
    by an LU-parametrized linear mixing layer (autoregressive when ``dim == 1``).
    ``fnsf``: spline coupling transforms with LU mixing as one fused module (faster).
    """
    if kind not in FLOWS:
        raise ValueError(f"Unknown flow {kind!r}; use one of {FLOWS} (or 'mdn').")
    if kind == "fmaf":
        return FusedMAF(dim, context_dim, hidden_features, num_transforms, num_blocks,
                        permutation_seed)
    if kind == "fnsf":
        return FusedNSF(dim, context_dim, hidden_features, num_transforms, num_blocks, num_bins,
                        tail_bound)
    # Permutations are part of the architecture: they come from their own generator seeded by
    # ``permutation_seed``. The weights come from the caller's random state, so runs with
    # other seeds (and ensemble members) start from other weights. (Until 2026-12-01 the
    # whole flow was built under ``torch.manual_seed(permutation_seed)``: every maf / nsf
    # started from the same weights whatever the run's seed. Saved models keep their
    # permutations as buffers, so they load unchanged.)
    perm_gen = torch.Generator().manual_seed(permutation_seed)
    layers: list[nn.Module] = []
    for _ in range(num_transforms):
        if kind == "maf":
            layers.append(MaskedAffineAutoregressiveTransform(
                features=dim, hidden_features=hidden_features, context_features=context_dim,
                num_blocks=num_blocks, use_residual_blocks=False, activation=torch.tanh))
            layers.append(Permutation(torch.randperm(dim, generator=perm_gen)) if dim > 1
                          else ReversePermutation(dim))
        elif dim == 1:
            layers.append(MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
                features=dim, hidden_features=hidden_features, context_features=context_dim,
                num_bins=num_bins, tails="linear", tail_bound=tail_bound,
                num_blocks=num_blocks, use_residual_blocks=False, activation=torch.relu))
        else:
            # Alternate which half is transformed (even / odd features), then mix all
            # features with an LU-parametrized linear map (identity at init). A fixed
            # mask with a reverse permutation never transforms the odd features when D
            # is odd (reversal maps even positions to even positions).
            mask = torch.zeros(dim)
            if nsf_layout == 1:
                mask[::2] = 1
            else:
                mask[len(layers) // 2 % 2::2] = 1

            def net(inp: int, out: int) -> nn.Module:
                return ResidualNet(inp, out, hidden_features=hidden_features,
                                   context_features=context_dim, num_blocks=num_blocks,
                                   activation=torch.relu)

            layers.append(PiecewiseRationalQuadraticCouplingTransform(
                mask=mask, transform_net_create_fn=net, num_bins=num_bins, tails="linear",
                tail_bound=tail_bound, apply_unconditional_transform=False))
            layers.append(LULinear(dim, identity_init=True) if nsf_layout != 1
                          else ReversePermutation(dim))
    return Flow(CompositeTransform(layers), StandardNormal((dim,)))


def nsf_layout(config: dict) -> int:
    """The NSF layout of an estimator ``config``: saved models without the key predate
    layout 2 (a warning says to retrain NSF models with an odd number of features)."""
    layout = int(config.get("nsf_layout", 1))
    if layout == 1 and config.get("flow") == "nsf":
        warnings.warn(
            "This NSF model was saved by an sbi-core version whose NSF used one fixed coupling "
            "mask; with an odd number of features some were never transformed. It is loaded "
            "as saved; retrain it for the corrected NSF.", stacklevel=3)
    return layout


def sample_and_log_prob(flow: torch.nn.Module, num_samples: int,
                        context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_samples`` draws ``(B, n, D)`` per context row ``(B, C)`` and their log densities
    ``(B, n)``: the flow's own ``sample_and_log_prob`` where it has one, else a sample
    followed by one batched ``log_prob``."""
    if hasattr(flow, "sample_and_log_prob"):
        return flow.sample_and_log_prob(num_samples, context=context)
    z = flow.sample(num_samples, context=context)
    lp = flow.log_prob(z.reshape(-1, z.shape[-1]),
                       context.repeat_interleave(num_samples, 0)).reshape(z.shape[:2])
    return z, lp
