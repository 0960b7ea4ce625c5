r"""Neural ratio estimation (NRE): a classifier for the likelihood-to-evidence ratio.

A residual MLP :math:`g_\phi(\theta, x)` on z-scored :math:`\theta` and (embedded, z-scored)
:math:`x` learns :math:`\log r(\theta, x) = \log p(x \mid \theta) - \log p(x)` by telling
joint pairs from shuffled ones (losses in :mod:`estimators.nre_losses`). The posterior given
``n`` iid observations is :math:`p(\theta) \prod_i r(\theta, x_i)` up to a constant, sampled
by MCMC (:class:`sbi_core.mcmc_posterior.MCMCPosterior`).

Registered methods (one estimator, different losses):

============  ======================================================================
``"nre"``     NRE-C with ``num_classes=5``, ``gamma=1`` (choose another with ``loss=``)
``"nre_a"``   binary NRE-A (AALR)
``"nre_b"``   NRE-B / SRE, softmax over ``num_classes`` atoms (default 10)
``"nre_c"``   NRE-C (contrastive, ``num_classes``, ``gamma``)
``"bnre"``    balanced NRE, ``regularization_strength=100``
============  ======================================================================

NRE-C is the default because, unlike NRE-B, its optimum is the exact ratio and, unlike
NRE-A, it sees several negatives per pair. Invalid simulations (NaN/inf) are dropped by
``fit`` with a warning; where the simulator fails often this biases the ratio.
"""

from __future__ import annotations

from typing import Any

import torch
from nflows.nn.nets import ResidualNet
from torch import Tensor, nn
from torch.distributions import Distribution

from estimators.embedding import build_embedding, prepare_embedding
from estimators.nre_losses import LOSSES, nre_loss
from estimators.standardize import StandardizedEstimator
from sbi_core.mcmc_posterior import MCMCPosterior, mcmc_defaults
from sbi_core.methods import Method

__all__ = ["NREEstimator", "build_nre", "METHOD", "METHODS"]

DEFAULTS: dict[str, Any] = {
    "loss": "nre_c",
    "hidden_features": 50,
    "num_blocks": 2,
    "num_classes": 5,
    "gamma": 1.0,
    "regularization_strength": 100.0,
    "embedding": None,
    "mcmc": None,
}


class NREEstimator(StandardizedEstimator):
    """Ratio classifier ``g(theta, x)``; ``log_likelihood`` returns the log-ratio.

    Args:
        config: plain-value dict with ``theta_dim``, ``x_shape`` and the keys of ``DEFAULTS``.
        embedding: the user's embedding module of ``x`` when ``config["embedding"]`` records
            one (see :func:`estimators.embedding.prepare_embedding`).
    """

    def __init__(self, config: dict[str, Any], embedding: nn.Module | None = None):
        super().__init__()
        cfg = {**DEFAULTS, **config}
        if cfg["loss"] not in LOSSES:
            raise ValueError(f"Unknown NRE loss {cfg['loss']!r}; use one of {LOSSES}.")
        if not float(cfg["gamma"]) > 0:
            raise ValueError(f"gamma must be positive, got {cfg['gamma']}.")
        if int(cfg["num_classes"]) < 1:
            raise ValueError(f"num_classes must be at least 1, got {cfg['num_classes']}.")
        self.config = cfg
        d, x_shape = int(cfg["theta_dim"]), tuple(cfg["x_shape"])
        self.theta_dim, self.x_shape = d, x_shape
        self._init_scaling(d, x_shape)
        self.embedding, context_dim = build_embedding(cfg["embedding"], x_shape, embedding)
        self.classifier = ResidualNet(d + context_dim, 1, hidden_features=int(cfg["hidden_features"]),
                                      num_blocks=int(cfg["num_blocks"]), activation=torch.relu)

    def context(self, x: Tensor) -> Tensor:
        """Embedded, standardized observations ``(N, C)``."""
        return self.embedding(self.x_norm(x))

    def logits(self, theta: Tensor, context: Tensor) -> Tensor:
        """``g`` of paired rows: z-scored inputs ``theta`` ``(N, D)``, ``context`` ``(N, C)`` → ``(N,)``."""
        return self.classifier(torch.cat([self.theta_norm(theta), context], dim=-1))[:, 0]

    def log_likelihood(self, theta: Tensor, x: Tensor) -> Tensor:
        """Log-ratio ``log r(theta, x)`` (a log-likelihood up to a constant in theta) → ``(N,)``."""
        return self.logits(theta, self.context(x))

    def loss(self, theta: Tensor, x: Tensor) -> Tensor:
        """Per-pair classification loss ``(N,)``; negatives come from shuffling ``theta``."""
        n = theta.shape[0]
        ctx = self.context(x)  # embed each x once

        def pair_logits(idx: Tensor) -> Tensor:
            m = idx.shape[1]
            th = theta[idx.reshape(-1)]
            c = ctx.unsqueeze(1).expand(n, m, ctx.shape[-1]).reshape(n * m, -1)
            return self.logits(th, c).reshape(n, m)

        # validation draws the same negatives every epoch so its loss is comparable
        gen = None if self.training else torch.Generator().manual_seed(0)
        cfg = self.config
        return nre_loss(cfg["loss"], pair_logits, n, int(cfg["num_classes"]), float(cfg["gamma"]),
                        float(cfg["regularization_strength"]), generator=gen, device=theta.device)


def _builder(fixed_loss: str | None, default_classes: int) -> Any:
    def build(theta: Tensor, x: Tensor, prior: Distribution, **options: Any) -> NREEstimator:
        """An untrained :class:`NREEstimator` with standardization fitted on ``theta``, ``x``."""
        unknown = set(options) - set(DEFAULTS)
        if unknown:
            raise TypeError(f"Unknown NRE options {sorted(unknown)}; valid: {sorted(DEFAULTS)} "
                            "(mcmc={...} takes sbi_core.mcmc.MCMCConfig fields) and the "
                            "training options of sbi_core.TrainConfig.")
        if fixed_loss is not None and options.get("loss", fixed_loss) != fixed_loss:
            raise ValueError(f"Method {fixed_loss!r} trains with loss {fixed_loss!r}; to choose "
                             f"the loss use method='nre' with loss= one of {LOSSES}.")
        loss = fixed_loss or options.get("loss", DEFAULTS["loss"])
        options = {**options, "loss": loss, "mcmc": mcmc_defaults(options.get("mcmc"))}
        options.setdefault("num_classes", 10 if loss == "nre_b" else default_classes)
        spec, module = prepare_embedding(options.get("embedding"), tuple(x.shape[1:]))
        config = {**DEFAULTS, **options, "theta_dim": int(theta.shape[1]),
                  "x_shape": list(x.shape[1:]), "embedding": spec}
        est = NREEstimator(config, embedding=module)
        est.fit_standardization(theta, x)
        return est

    return build


build_nre = _builder(None, 5)


def _posterior_maker(name: str) -> Any:
    def make_posterior(estimator: NREEstimator, prior: Distribution, problem_spec: dict[str, Any],
                       history: dict[str, Any] | None = None, **kwargs: Any) -> MCMCPosterior:
        kwargs.setdefault("mcmc", estimator.config.get("mcmc"))
        post = MCMCPosterior(estimator, prior, problem_spec, history, **kwargs)
        post.method = name
        return post

    return make_posterior


_DESCRIPTIONS = {
    "nre": "Neural ratio estimation (default NRE-C; loss= nre_a|nre_b|nre_c|bnre) + MCMC.",
    "nre_a": "Binary neural ratio estimation (NRE-A / AALR) + MCMC.",
    "nre_b": "Contrastive neural ratio estimation NRE-B (SRE, softmax over atoms) + MCMC.",
    "nre_c": "Contrastive neural ratio estimation NRE-C (K classes, gamma) + MCMC.",
    "bnre": "Balanced neural ratio estimation (BNRE, lambda=100) + MCMC.",
}

METHODS: dict[str, Method] = {
    name: Method(name=name, build=_builder(None if name == "nre" else name, 5),
                 from_config=NREEstimator, make_posterior=_posterior_maker(name),
                 description=desc)
    for name, desc in _DESCRIPTIONS.items()
}
METHOD = METHODS["nre"]
NRE_A, NRE_B, NRE_C, BNRE = (METHODS[k] for k in ("nre_a", "nre_b", "nre_c", "bnre"))
