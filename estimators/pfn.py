r"""A set-conditioned, PFN-style transformer posterior estimator ("PFN-NPE").

Following "Transformers Can Do Bayesian Inference" (Müller et al. 2022) with the SBI
joint as the prior over datasets: the context is a set of ``n`` iid observations
:math:`x_{1:n}` of one :math:`\theta`, and the network returns
:math:`q(\theta \mid x_{1:n}) = \prod_d q_d(\theta_d \mid \theta_{<d}, x_{1:n})`, each factor
a bar distribution (:mod:`estimators.bar_distribution`). It is trained on the prior-data
negative log-likelihood

.. math:: \ell = \mathbb{E}_{n \sim U\{1..n_{max}\}}\,
          \mathbb{E}_{\theta \sim p(\theta),\, x_i \sim p(x \mid \theta)}
          \Big[-\sum_d \log q_d(\theta_d \mid \theta_{<d}, x_{1:n})\Big],

with one ``n`` per minibatch, whose minimizer is the posterior for every ``n``.

Tokens:

- observation tokens ``MLP(z-scored x_i)`` (or ``MLP(embedding(z-scored x_i))`` with an
  ``embedding``: a built-in spec or your own module, applied to each observation, e.g. a
  CNN for each time series of the set), with **no positional encoding**; they attend
  to each other only, so the output does not depend on their order;
- ``D`` query tokens, one per parameter. Query ``d`` is a learned embedding plus a linear
  encoding of the (standardized) value :math:`\theta_{d-1}` (teacher-forced in training,
  sampled at inference) plus an encoding of :math:`(\log n, 1/\sqrt n, n/n_{max})` plus
  a linear map of the means of the observation codes and of the z-scored observations (a
  DeepSet summary, so the sample mean is available without learning uniform attention
  first); it attends to all
  observation tokens, to itself and to the queries ``< d``, so it sees
  :math:`\theta_{<d}` but never :math:`\theta_d`. Softmax attention averages, so it cannot
  count the observations; the ``n`` encoding tells the queries how many there are.

The logits of dimension ``d`` are free per-bucket logits plus a Gaussian tilt
:math:`-\beta_d (m_k - \mu_d)^2` of the bucket midpoints :math:`m_k` (standardized), with
:math:`\mu_d, \beta_d` predicted by the head. With uniform free logits the bucket masses are
the prior's, so the tilt is "prior times a Gaussian likelihood": the conjugate shape, which
the network otherwise needs many steps to build bucket by bucket for sharp posteriors
(large ``n``). Bucket borders are the quantiles of a prior/uniform mixture
(``border_uniform_share``, so sharp posteriors in the prior's tails are resolved), and a
fixed offset ``log_prior_mass`` (log prior mass of each bucket) keeps uniform free logits
equal to the prior. A zero-initialized linear skip from the mean z-scored observation to
:math:`\mu_d` makes location estimates precise for large ``n``, and a zero-initialized
linear map from the ``n`` features to :math:`(\mu_d, \log \beta_d)` (``n_tilt``) lets the
precision grow like ``n`` (a likelihood of ``n`` iid observations) without passing through
the transformer: with these two paths one setting of the weights is the exact conjugate
posterior for every ``n``. The free logits keep the head fully flexible (multimodal
posteriors).

Blocks are pre-LayerNorm transformer layers whose attention and feed-forward output
projections start at zero (each block starts as the identity). Observation tokens never
depend on the queries, so their keys and values are computed once per set and shared by
all posterior samples drawn for it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from estimators.bar_distribution import BarDistribution
from estimators.embedding import build_embedding
from sbi_core.budget import Budget

__all__ = ["PFNEstimator", "PFN_DEFAULTS", "LEGACY_DEFAULTS"]

PFN_DEFAULTS: dict[str, Any] = {
    "n_max": 10,
    "num_buckets": 100,
    "d_model": 64,
    "num_layers": 4,
    "num_heads": 4,
    "ff_features": 128,
    "num_border_samples": 100_000,
    "border_uniform_share": 0.5,
    "random_subsets": True,
    "n_tilt": True,
    "embedding": None,
}

#: Values of the keys added in issue 21 that reproduce models saved before it (their
#: configs lack these keys): pure prior-quantile borders, prefix subsets in training.
LEGACY_DEFAULTS: dict[str, Any] = {"border_uniform_share": 0.0, "random_subsets": False,
                                   "n_tilt": False}


class _Block(nn.Module):
    """Pre-LN transformer block shared by observation and query tokens."""

    def __init__(self, d_model: int, num_heads: int, ff_features: int):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads}.")
        self.h, self.dh = num_heads, d_model // num_heads
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, ff_features), nn.GELU(),
                                nn.Linear(ff_features, d_model))
        for lin in (self.out, self.ff[2]):  # zero init: the block starts as the identity
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def _split(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = self.qkv(t).chunk(3, dim=-1)
        shape = (*t.shape[:-1], self.h, self.dh)
        return q.reshape(shape), k.reshape(shape), v.reshape(shape)

    def observations(self, hx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Update observation tokens ``(B, n, E)``; returns them and their keys/values."""
        q, k, v = self._split(self.norm1(hx))  # (B, n, H, dh)
        att = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                             v.transpose(1, 2)).transpose(1, 2)
        hx = hx + self.out(att.reshape(hx.shape))
        return hx + self.ff(self.norm2(hx)), k, v

    def queries(self, hq: Tensor, kx: Tensor, vx: Tensor) -> Tensor:
        """Update query tokens ``(S, B, D, E)`` given observation keys/values ``(B, n, H, dh)``."""
        q, k, v = self._split(self.norm1(hq))  # (S, B, D, H, dh)
        scale = 1.0 / math.sqrt(self.dh)
        s_x = torch.einsum("sbdhe,bnhe->sbhdn", q, kx) * scale
        s_q = torch.einsum("sbdhe,sbjhe->sbhdj", q, k) * scale
        d = hq.shape[2]
        causal = torch.ones(d, d, dtype=torch.bool, device=hq.device).tril()
        s_q = s_q.masked_fill(~causal, -math.inf)
        w = torch.softmax(torch.cat([s_x, s_q], dim=-1), dim=-1)
        n = kx.shape[1]
        att = torch.einsum("sbhdn,bnhe->sbdhe", w[..., :n], vx) + \
            torch.einsum("sbhdj,sbjhe->sbdhe", w[..., n:], v)
        hq = hq + self.out(att.reshape(hq.shape))
        return hq + self.ff(self.norm2(hq))


class PFNEstimator(nn.Module):
    """``q(theta | x_{1:n})`` as an autoregressive product of bar distributions.

    Args:
        config: plain-value dict with ``theta_dim``, ``x_shape`` and the keys of
            ``PFN_DEFAULTS``. Buffers (bucket borders, tails, standardization, x range) are
            filled by :func:`estimators.pfn_method.build_pfn` or loaded with the weights.
        embedding: the user's per-observation embedding module when ``config["embedding"]``
            records one (see :func:`estimators.embedding.prepare_embedding`).
    """

    def __init__(self, config: dict[str, Any], embedding: nn.Module | None = None):
        super().__init__()
        cfg = {**PFN_DEFAULTS, **LEGACY_DEFAULTS, **config}
        self.config = cfg
        d, x_shape = int(cfg["theta_dim"]), tuple(int(s) for s in cfg["x_shape"])
        self.theta_dim, self.x_shape = d, x_shape
        self.n_max = int(cfg["n_max"])
        k, e = int(cfg["num_buckets"]), int(cfg["d_model"])
        x_dim = math.prod(x_shape)
        self.register_buffer("x_mean", torch.zeros(x_shape))
        self.register_buffer("x_std", torch.ones(x_shape))
        self.register_buffer("x_min", torch.zeros(x_shape))
        self.register_buffer("x_max", torch.zeros(x_shape))
        self.register_buffer("theta_mean", torch.zeros(d))
        self.register_buffer("theta_std", torch.ones(d))
        borders = torch.linspace(0, 1, k + 1).expand(d, -1)  # placeholder, set by build_pfn
        self.bar = BarDistribution(borders)
        if float(cfg["border_uniform_share"]) > 0:
            # log prior mass per bucket (set by build_pfn): with non-quantile borders, uniform
            # free logits plus this offset are still the prior (models saved before issue 21
            # have pure quantile borders, a constant offset, and no such buffer)
            self.register_buffer("log_prior_mass", torch.zeros(d, k))
        else:
            self.log_prior_mass = None
        self.embedding: nn.Module | None = None
        feat_dim = x_dim
        if cfg["embedding"] is not None or embedding is not None:
            self.embedding, feat_dim = build_embedding(cfg["embedding"], x_shape, embedding)
        self.x_encoder = nn.Sequential(nn.Linear(feat_dim, e), nn.GELU(), nn.Linear(e, e))
        self.query_embedding = nn.Parameter(0.02 * torch.randn(d, e))
        self.value_encoder = nn.Parameter(0.02 * torch.randn(d, e))  # row d encodes theta_{d-1}
        self.n_encoder = nn.Linear(3, e)
        self.pool_encoder = nn.Linear(e + x_dim, e)
        self.blocks = nn.ModuleList(_Block(e, int(cfg["num_heads"]), int(cfg["ff_features"]))
                                    for _ in range(int(cfg["num_layers"])))
        self.final_norm = nn.LayerNorm(e)
        self.head = nn.Sequential(nn.Linear(e, e), nn.GELU())
        self.head_out = nn.Parameter(torch.zeros(d, e, k))  # uniform bucket masses at init
        self.head_bias = nn.Parameter(torch.zeros(d, k))
        self.tilt_out = nn.Parameter(torch.zeros(d, e, 2))  # (location, log precision)
        self.tilt_bias = nn.Parameter(torch.zeros(d, 2))
        self.tilt_skip = nn.Parameter(torch.zeros(d, x_dim))  # linear skip: mean x -> location
        # linear skip: (log n, 1/sqrt n, n/n_max) -> (location, log precision); a likelihood
        # of n iid observations has log precision ~ log n (older model files lack it)
        self.tilt_n = nn.Parameter(torch.zeros(d, 3, 2)) if cfg["n_tilt"] else None

    # ------------------------------------------------------------------ building blocks
    def as_sets(self, x: Tensor) -> Tensor:
        """``x`` ``(N, *x_shape)`` (sets of one) or ``(N, n, *x_shape)`` → ``(N, n, *x_shape)``."""
        k = len(self.x_shape)
        if tuple(x.shape[1:]) == self.x_shape:
            return x.unsqueeze(1)
        if x.ndim == k + 2 and tuple(x.shape[2:]) == self.x_shape:
            return x
        raise ValueError(f"PFN observations must have shape (N, *{self.x_shape}) or sets "
                         f"(N, n, *{self.x_shape}); got {tuple(x.shape)}.")

    def encode(self, x_sets: Tensor) -> tuple[tuple[Tensor, Tensor], list[tuple[Tensor, Tensor]]]:
        """Cache for the queries of sets ``(B, n, *x_shape)``: the mean-pooled observation
        code ``(B, E)``, the mean z-scored observation ``(B, x_dim)`` and per-layer
        observation keys/values ``(B, n, H, E / H)``."""
        b, n = x_sets.shape[:2]
        z_obs = (x_sets - self.x_mean) / self.x_std
        z = z_obs.reshape(b, n, -1)
        if self.embedding is None:
            hx = self.x_encoder(z)
        else:  # each observation through the embedding, as one batch of B * n
            hx = self.x_encoder(self.embedding(z_obs.reshape(b * n, *self.x_shape))
                                .reshape(b, n, -1))
        z_mean = z.mean(1)
        pooled = self.pool_encoder(torch.cat([hx.mean(1), z_mean], dim=-1))
        layers = []
        for block in self.blocks:
            hx, k, v = block.observations(hx)
            layers.append((k, v))
        return (pooled, z_mean), layers

    def logits(self, theta: Tensor,
               cache: tuple[tuple[Tensor, Tensor], list[tuple[Tensor, Tensor]]],
               n: int) -> Tensor:
        """Bucket logits ``(S, B, D, K)`` of every dimension given ``theta`` ``(S, B, D)``.

        The logits of dimension ``d`` depend on ``theta[..., :d]`` only (causal queries).
        """
        s, b, d = theta.shape
        z = (theta - self.theta_mean) / self.theta_std
        shifted = torch.cat([torch.zeros_like(z[..., :1]), z[..., :-1]], dim=-1)  # theta_{d-1}
        n_feat = torch.tensor([math.log(n), 1.0 / math.sqrt(n), n / self.n_max],
                              device=theta.device)
        (pooled, z_mean), layers = cache
        hq = (self.query_embedding + shifted.unsqueeze(-1) * self.value_encoder
              + self.n_encoder(n_feat) + pooled[:, None, :])
        for block, (kx, vx) in zip(self.blocks, layers):
            hq = block.queries(hq, kx, vx)
        h = self.head(self.final_norm(hq))  # (S, B, D, E)
        free = torch.einsum("sbde,dek->sbdk", h, self.head_out) + self.head_bias
        raw = torch.einsum("sbde,dej->sbdj", h, self.tilt_out) + self.tilt_bias
        if self.tilt_n is not None:
            raw = raw + torch.einsum("f,dfj->dj", n_feat, self.tilt_n)
        skip = (z_mean @ self.tilt_skip.T).unsqueeze(0).unsqueeze(-1)  # (1, B, D, 1)
        loc, precision = 4.0 * raw[..., :1] + skip, torch.exp(8.0 * raw[..., 1:] - 4.0)
        mids = 0.5 * (self.bar.borders[:, 1:] + self.bar.borders[:, :-1])  # (D, K)
        mids = (mids - self.theta_mean[:, None]) / self.theta_std[:, None]
        out = free - precision * (mids - loc) ** 2
        return out if self.log_prior_mass is None else out + self.log_prior_mass

    # ------------------------------------------------------------------ densities
    def log_prob_sets(self, theta: Tensor, x_sets: Tensor) -> Tensor:
        """``log q(theta_s | x_b)`` ``(S, B)`` for ``theta`` ``(S, B, D)``, sets ``(B, n, *x_shape)``."""
        logits = self.logits(theta, self.encode(x_sets), x_sets.shape[1])
        return self.bar.log_prob(logits, theta).sum(-1)

    def log_prob(self, theta: Tensor, x: Tensor) -> Tensor:
        """Paired rows: ``theta`` ``(N, D)``, ``x`` ``(N, *x_shape)`` or ``(N, n, *x_shape)`` → ``(N,)``."""
        return self.log_prob_sets(theta.unsqueeze(0), self.as_sets(x))[0]

    def loss(self, theta: Tensor, x: Tensor) -> Tensor:
        """Prior-data NLL ``(N,)`` on sets ``x`` ``(N, n_max, *x_shape)`` (or single ``x``).

        In training mode one set size ``n ~ U{1..m}`` is drawn per call (per minibatch); with
        ``random_subsets`` (default) each set contributes a fresh random ``n``-subset of its
        ``m`` observations, so every parameter is seen with up to ``C(m, n)`` different sets
        across epochs (e.g. ``m`` different single observations instead of always the
        first), else the first ``n``. In eval mode (validation) the loss is averaged over a
        fixed grid of set-size prefixes, so it is deterministic.
        """
        x_sets = self.as_sets(x)
        m = x_sets.shape[1]
        if self.training:
            n = int(torch.randint(1, m + 1, ()))
            return -self.log_prob(theta, self.training_subset(x_sets, n))
        sizes = sorted({1, max(1, m // 4), max(1, m // 2), m})
        return torch.stack([-self.log_prob(theta, x_sets[:, :n]) for n in sizes]).mean(0)

    def training_subset(self, x_sets: Tensor, n: int) -> Tensor:
        """``n`` observations ``(B, n, *x_shape)`` of each set ``(B, m, *x_shape)``: a uniform
        random subset per set with ``random_subsets``, else the first ``n``."""
        b, m = x_sets.shape[:2]
        if not self.config["random_subsets"] or n >= m:
            return x_sets[:, :n]
        pick = torch.rand(b, m, device=x_sets.device).argsort(1)[:, :n]  # (B, n)
        return x_sets[torch.arange(b, device=x_sets.device)[:, None], pick]

    @torch.no_grad()
    def sample(self, num: int, x_sets: Tensor, chunk: int = 2048,
               budget: Budget | None = None) -> Tensor:
        """``num`` autoregressive draws per set ``(B, n, *x_shape)`` → ``(num, B, D)``.

        ``budget`` (:class:`~sbi_core.budget.Budget`) is checked before every pass.
        """
        cache = self.encode(x_sets)
        n = x_sets.shape[1]
        b = x_sets.shape[0]
        out = []
        per_chunk = max(1, chunk // max(b, 1))
        for start in range(0, num, per_chunk):
            s = min(per_chunk, num - start)
            theta = self.theta_mean.expand(s, b, -1).clone()
            for d in range(self.theta_dim):  # one pass per dimension: theta_d | theta_<d
                if budget is not None:
                    budget.check(f"{start * b:,} of {num * b:,} samples drawn (dimension "
                                 f"{d + 1} of {self.theta_dim} of the next {s * b:,})",
                                 task="PFN autoregressive sampling")
                logits = self.logits(theta, cache, n)
                theta[..., d] = self.bar.sample(logits)[..., d]
            out.append(theta)
        return torch.cat(out)
