r"""Neural likelihood estimation (NLE).

A conditional density estimator :math:`q_\phi(x \mid \theta)` is fitted by maximum
likelihood on pairs from the joint :math:`p(\theta)\, p(x \mid \theta)`:

.. math:: \mathcal{L}(\phi) = -\mathbb{E}_{p(\theta, x)} \log q_\phi(x \mid \theta),

whose minimizer is the likelihood. The posterior given ``n`` iid observations is
:math:`p(\theta) \prod_i q_\phi(x_i \mid \theta)` up to a constant, sampled by MCMC
(:class:`sbi_core.mcmc_posterior.MCMCPosterior`). Because the network sees single
simulations, one trained model serves any number of trials.

The density over (flattened, z-scored) ``x`` is an nflows MAF (``flow="maf"``, default),
sbi-core's fused MAF (``"fmaf"``, :mod:`estimators.fast_maf`, about half the CPU time per
training step) or NSF (``"nsf"``, ``"fnsf"``) with the z-scored ``theta`` as context. MCMC needs the likelihood's gradient in
``theta``; the fused MAF then runs its autograd path (same values and gradients).
``dequantize`` (default ``"auto"``: on when every training ``x`` is an integer) models integer
counts (e.g. binomial or Poisson data): training spreads each count uniformly over
``[x, x + 1)`` and the likelihood is evaluated at ``x + 1/2``, so the flow learns a proper
density instead of spikes on repeated values such as 0 (on sir, SNLE at 5,000 simulations
went from C2ST 0.77 to 0.54 on observation 1; benchmarks/RESULTS.md, "Issue 17: SNLE with
the fused MAF, and dequantized counts").

Invalid simulations (NaN/inf) cannot be modelled by a density over ``x``: ``fit`` drops
them with a warning, which biases the likelihood where the simulator fails often (replace
failures by a sentinel value inside the simulator if their frequency carries information).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution

from estimators.flows import FLOWS, NSF_LAYOUT, build_flow, nsf_layout
from estimators.standardize import StandardizedEstimator
from sbi_core.mcmc_posterior import MCMCPosterior, mcmc_defaults
from sbi_core.methods import Method

__all__ = ["NLEEstimator", "METHOD", "build_nle"]

DEFAULTS: dict[str, Any] = {
    "flow": "maf",
    "hidden_features": 50,
    "num_transforms": 5,
    "num_blocks": 2,
    "num_bins": 10,
    "dequantize": "auto",
    "mcmc": None,
}


class NLEEstimator(StandardizedEstimator):
    """``q(x | theta)``: a conditional flow over flattened ``x`` with ``theta`` as context.

    Args:
        config: plain-value dict with ``theta_dim``, ``x_shape`` and the keys of ``DEFAULTS``.
    """

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        # configs saved before the dequantize option (2026-12-01) had none: False
        cfg = {**DEFAULTS, "dequantize": False, **config}
        if not isinstance(cfg["dequantize"], bool):
            raise ValueError(f"NLEEstimator needs a resolved dequantize (True or False), got "
                             f"{cfg['dequantize']!r}; build it with estimators.nle.build_nle.")
        self.config = cfg
        d, x_shape = int(cfg["theta_dim"]), tuple(cfg["x_shape"])
        if cfg["flow"] not in FLOWS:
            raise ValueError(f"Unknown NLE flow {cfg['flow']!r}; use one of {FLOWS}.")
        self.theta_dim, self.x_shape = d, x_shape
        self.x_dim = math.prod(x_shape)
        self._init_scaling(d, x_shape)
        self.density = build_flow(cfg["flow"], self.x_dim, d, cfg["hidden_features"],
                                  cfg["num_transforms"], cfg["num_blocks"], cfg["num_bins"],
                                      nsf_layout=nsf_layout(cfg))

    def log_likelihood(self, theta: Tensor, x: Tensor) -> Tensor:
        """``log q(x | theta)`` of paired rows ``(N, D)``, ``(N, *x_shape)`` → ``(N,)``.

        With ``dequantize`` the density is evaluated at ``x + 1/2`` (the middle of the unit
        cell its dequantized training data filled), so ``q`` approximates ``P(x | theta)``.
        """
        if self.config["dequantize"]:
            x = x + 0.5
        return self._log_density(theta, x)

    def _log_density(self, theta: Tensor, x: Tensor) -> Tensor:
        z = self.x_norm(x).reshape(x.shape[0], self.x_dim)
        return self.density.log_prob(z, context=self.theta_norm(theta)) - self.x_norm.std.log().sum()

    def loss(self, theta: Tensor, x: Tensor) -> Tensor:
        """``-log q(x | theta)`` ``(N,)``; with ``dequantize``, in training mode the counts are
        spread uniformly over their unit cell ``[x, x + 1)`` (fresh noise per batch)."""
        if self.config["dequantize"] and self.training:
            return -self._log_density(theta, x + torch.rand_like(x))
        return -self.log_likelihood(theta, x)

    def sample(self, n: int, theta: Tensor) -> Tensor:
        """Synthetic data: ``n`` draws of ``x`` for each of ``B`` parameters → ``(n, B, *x_shape)``."""
        z = self.density.sample(n, context=self.theta_norm(theta))  # (B, n, x_dim)
        x = self.x_norm.inverse(z.reshape(*z.shape[:2], *self.x_shape))
        if self.config["dequantize"]:  # back from the unit cells to the counts
            x = x.floor()
        return x.transpose(0, 1)


def resolve_dequantize(value: Any, x: Tensor) -> bool:
    """``dequantize`` for training data ``x`` ``(N, *x_shape)``: ``"auto"`` is True when every
    finite value of ``x`` is an integer (counts, codes), else False; True refuses non-integer
    ``x``. The resolved bool is what the estimator's config saves."""
    if value not in ("auto", True, False) or isinstance(value, (int, float)) \
            and not isinstance(value, bool):
        raise TypeError(f"dequantize must be 'auto', True or False, got {value!r}.")
    finite = x[torch.isfinite(x)]
    integer = finite.numel() > 0 and bool((finite == finite.round()).all())
    if value is True and not integer:
        raise ValueError("dequantize=True spreads integer counts over unit cells, but the "
                         "training x are not all integers; use dequantize=False (or 'auto') "
                         "for continuous x, or round the counts inside the simulator.")
    return integer if value == "auto" else bool(value)


def build_nle(theta: Tensor, x: Tensor, prior: Distribution, **options: Any) -> NLEEstimator:
    """An untrained :class:`NLEEstimator` with standardization fitted on ``theta``, ``x``."""
    if options.get("embedding") is not None:
        raise ValueError(
            "NLE learns the density q(x | theta) of the observations themselves, so x cannot "
            "pass through an embedding network (a learned summary would change, and could "
            "trivially collapse, the density being fitted). Use method='npe', 'nre', 'fmpe' or "
            "'npse' with embedding=..., or compute summary statistics inside the simulator.")
    options.pop("embedding", None)
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"Unknown NLE options {sorted(unknown)}; valid: {sorted(DEFAULTS)} "
                        "(mcmc={...} takes sbi_core.mcmc.MCMCConfig fields) and the training "
                        "options of sbi_core.TrainConfig.")
    options["mcmc"] = mcmc_defaults(options.get("mcmc"))
    options["dequantize"] = dequantize = resolve_dequantize(
        options.get("dequantize", DEFAULTS["dequantize"]), x)
    config = {**DEFAULTS, **options, "theta_dim": int(theta.shape[1]),
              "x_shape": list(x.shape[1:]), "nsf_layout": NSF_LAYOUT}
    est = NLEEstimator(config)
    est.fit_standardization(theta, x)
    if dequantize:  # the training data are x + U(0, 1): centre the z-scoring on the cells
        with torch.no_grad():
            est.x_norm.mean.add_(0.5)
    return est


def likelihood_posterior(method: str) -> Any:
    """``make_posterior`` of a likelihood method: an :class:`MCMCPosterior` over the trained
    likelihood, with the MCMC settings stored in the estimator config."""

    def make(estimator: Any, prior: Distribution, problem_spec: dict[str, Any],
             history: dict[str, Any] | None = None, **kwargs: Any) -> MCMCPosterior:
        kwargs.setdefault("mcmc", estimator.config.get("mcmc"))
        post = MCMCPosterior(estimator, prior, problem_spec, history, **kwargs)
        post.method = method
        return post

    return make


_make_posterior = likelihood_posterior("nle")


METHOD = Method(
    name="nle",
    build=build_nle,
    from_config=NLEEstimator,
    make_posterior=_make_posterior,
    description="Neural likelihood estimation (nflows MAF/NSF for q(x|theta)) + MCMC; "
                "accepts sets of iid observations.",
)
