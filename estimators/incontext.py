r"""The in-context posterior network: a set transformer pretrained on a prior over problems.

Given a problem's simulations :math:`\{(\theta_i, x_i)\}_{i=1..N}` as context and an
observation :math:`x_o` as query, one forward pass returns

.. math:: q(\theta \mid x_o, \mathcal{C}) = \prod_{j=1}^{D}
          q_j(\theta_j \mid \theta_{<j}, x_o, \mathcal{C}),

each factor a bar distribution (:mod:`estimators.bar_distribution`) on the standardized
parameter. Nothing is trained on the user's problem: the weights come from
``benchmarks/pretrain_incontext.py`` on the problem prior of
:mod:`estimators.incontext_prior` (the prior-data NLL of Müller et al. 2022, with the
problem's joint as the prior over data sets).

Layout (all sizes in :data:`NET_DEFAULTS`):

- **Per-data-set standardization.** ``theta`` and ``x`` are z-scored with the mean and
  standard deviation of the context; padded to ``D_MAX`` / ``X_DIM_MAX`` columns with
  zeros, and a presence mask tells the network which columns are real.
- **Context encoder.** Each pair becomes a token ``MLP([z_x, mask_x, z_theta, mask_theta])``
  with no positional encoding; ``ctx_layers`` induced-set-attention blocks (ISAB, Lee et al.
  2019: ``num_inducing`` learned points attend to the context, the context attends back)
  mix information among context points at cost ``O(N m)`` instead of ``O(N^2)``.
- **Queries.** For dimension ``j`` of a query the token is
  ``MLP([z_{x_o}, z_{theta_<j} (zeros at >= j), masks, onehot(j), log N features])``; it
  cross-attends to the context tokens in ``query_layers`` blocks. Queries never attend to
  each other, so the result for one query does not depend on the others (any number of
  posterior samples are drawn in parallel) and ``theta_j`` never leaks into its own factor.
- **Neighbour kernel.** The ``num_neighbors`` context pairs nearest to ``x_q`` (standardized
  Euclidean distance, as in NPE-PF's filtering) give a kernel density of :math:`\theta_j`
  (weights from the distances in ``x`` and in :math:`\theta_{<j}`), an ABC-like first guess;
  the network predicts its bandwidths and its weight and adds it to the logits. This
  inductive bias makes the network useful after far fewer pretraining steps.
- **Head.** Bucket logits are free logits plus the neighbour term plus a Gaussian tilt
  :math:`-\beta (m_k - \mu)^2` of the bucket midpoints (with :math:`\mu, \beta` predicted),
  which gives sharp unimodal posteriors a simple shape while the free logits keep the head
  fully flexible. ``num_buckets`` equal-width buckets on ``[-bound, bound]`` standard
  deviations of the context's ``theta``, with half-normal tails beyond.

Blocks are pre-LayerNorm; attention and feed-forward output projections start at zero, so
each block starts as the identity.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from estimators.bar_distribution import BarDistribution
from estimators.incontext_prior import D_MAX, N_MAX, X_DIM_MAX

__all__ = ["InContextNet", "NET_DEFAULTS", "bucket_borders", "standardize_context",
           "pretrain_loss"]

NET_DEFAULTS: dict[str, Any] = {
    "d_model": 96,
    "num_heads": 4,
    "ff_features": 192,
    "ctx_layers": 2,
    "num_inducing": 16,
    "query_layers": 3,
    "num_buckets": 160,
    "bound": 4.0,
    "num_neighbors": 16,
    "theta_dim_max": D_MAX,
    "x_dim_max": X_DIM_MAX,
    "n_max": N_MAX,
}


class _Attention(nn.Module):
    """Multi-head attention with separate query and key/value sources."""

    def __init__(self, e: int, heads: int):
        super().__init__()
        if e % heads:
            raise ValueError(f"d_model={e} must be divisible by num_heads={heads}.")
        self.h, self.dh = heads, e // heads
        self.q = nn.Linear(e, e)
        self.kv = nn.Linear(e, 2 * e)
        self.out = nn.Linear(e, e)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def keys_values(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values ``(B, H, N, dh)`` of ``src`` ``(B, N, E)``."""
        b, n, _ = src.shape
        k, v = self.kv(src).reshape(b, n, 2, self.h, self.dh).permute(2, 0, 3, 1, 4)
        return k, v

    def attend(self, dst: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Attention output ``(B, T, E)`` for queries ``dst`` ``(B, T, E)``."""
        b, t, e = dst.shape
        q = self.q(dst).reshape(b, t, self.h, self.dh).transpose(1, 2)
        att = F.scaled_dot_product_attention(q, k, v)
        return self.out(att.transpose(1, 2).reshape(b, t, e))


class _FF(nn.Module):
    def __init__(self, e: int, f: int):
        super().__init__()
        self.norm = nn.LayerNorm(e)
        self.lin1, self.lin2 = nn.Linear(e, f), nn.Linear(f, e)
        nn.init.zeros_(self.lin2.weight)
        nn.init.zeros_(self.lin2.bias)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.lin2(F.gelu(self.lin1(self.norm(h))))


class _ISAB(nn.Module):
    """Induced set attention: inducing points read the set, the set reads them back."""

    def __init__(self, e: int, heads: int, f: int, m: int):
        super().__init__()
        self.inducing = nn.Parameter(0.02 * torch.randn(m, e))
        self.norm_i, self.norm_c1, self.norm_c2, self.norm_h = (nn.LayerNorm(e) for _ in range(4))
        self.read, self.write = _Attention(e, heads), _Attention(e, heads)
        self.ff_h, self.ff_c = _FF(e, f), _FF(e, f)

    def forward(self, c: Tensor) -> Tensor:
        b = c.shape[0]
        i = self.inducing.expand(b, -1, -1)
        h = i + self.read.attend(self.norm_i(i), *self.read.keys_values(self.norm_c1(c)))
        h = self.ff_h(h)
        c = c + self.write.attend(self.norm_c2(c), *self.write.keys_values(self.norm_h(h)))
        return self.ff_c(c)


class _CrossBlock(nn.Module):
    """Query tokens attend to the (fixed) context tokens, then a feed-forward layer."""

    def __init__(self, e: int, heads: int, f: int):
        super().__init__()
        self.norm_q, self.norm_c = nn.LayerNorm(e), nn.LayerNorm(e)
        self.att = _Attention(e, heads)
        self.ff = _FF(e, f)

    def context(self, c: Tensor) -> tuple[Tensor, Tensor]:
        return self.att.keys_values(self.norm_c(c))

    def forward(self, q: Tensor, kv: tuple[Tensor, Tensor]) -> Tensor:
        return self.ff(q + self.att.attend(self.norm_q(q), *kv))


def bucket_borders(num_buckets: int, bound: float) -> Tensor:
    """``num_buckets + 1`` borders: ``num_buckets - 4`` equal buckets on ``[-bound, bound]``
    and two wide ones on each side (to ``±(bound + 2.5)`` and ``±(bound + 6.5)``), so the
    half-normal tails beyond have a scale of several standard deviations: values far out
    (heavy-tailed priors) cost a few nats, not hundreds."""
    inner = torch.linspace(-bound, bound, num_buckets - 3)
    far, mid = bound + 6.5, bound + 2.5
    return torch.cat([torch.tensor([-far, -mid]), inner, torch.tensor([mid, far])])


def _pad(z: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """Zero-pad the last dimension to ``width``; returns it and the presence mask."""
    k = z.shape[-1]
    pad = torch.zeros(*z.shape[:-1], width - k, dtype=z.dtype, device=z.device)
    mask = torch.cat([torch.ones(k, device=z.device), torch.zeros(width - k, device=z.device)])
    return torch.cat([z, pad], dim=-1), mask.expand(*z.shape[:-1], width)


def _spread(v: Tensor) -> Tensor:
    """Std over dim 1 ``(B, 1, k)``; 1 for a constant column (no absolute floor: a column on a
    scale of 1e-10 keeps its own spread instead of being flattened by one)."""
    std = v.std(1, keepdim=True)
    return torch.where(std > 0, std, torch.ones_like(std))


def standardize_context(theta: Tensor, x: Tensor) -> dict[str, Tensor]:
    """Per-data-set mean and std ``(B, 1, k)`` of context ``theta`` ``(B, N, D)``, ``x`` ``(B, N, d)``."""
    return {"theta_mean": theta.mean(1, keepdim=True), "theta_std": _spread(theta),
            "x_mean": x.mean(1, keepdim=True), "x_std": _spread(x)}


_X_CLAMP = 12.0
#: head outputs besides the K free logits: tilt location, tilt log precision, and the
#: neighbour-kernel's x bandwidth, theta_<j bandwidth, theta_j bandwidth and weight.
_EXTRA = 6


class InContextNet(nn.Module):
    """The pretrained network (config: plain values, the keys of :data:`NET_DEFAULTS`)."""

    def __init__(self, config: dict[str, Any] | None = None):
        super().__init__()
        cfg = {**NET_DEFAULTS, **(config or {})}
        self.config = cfg
        e, h, f = int(cfg["d_model"]), int(cfg["num_heads"]), int(cfg["ff_features"])
        self.dmax, self.xmax = int(cfg["theta_dim_max"]), int(cfg["x_dim_max"])
        self.n_max = int(cfg["n_max"])
        k = int(cfg["num_buckets"])
        self.ctx_in = nn.Sequential(nn.Linear(2 * self.xmax + 2 * self.dmax, e), nn.GELU(),
                                    nn.Linear(e, e))
        self.ctx_blocks = nn.ModuleList(_ISAB(e, h, f, int(cfg["num_inducing"]))
                                        for _ in range(int(cfg["ctx_layers"])))
        self.ctx_norm = nn.LayerNorm(e)
        q_in = 2 * self.xmax + 3 * self.dmax + self.dmax + 2
        self.query_in = nn.Sequential(nn.Linear(q_in, e), nn.GELU(), nn.Linear(e, e))
        self.query_blocks = nn.ModuleList(_CrossBlock(e, h, f)
                                          for _ in range(int(cfg["query_layers"])))
        self.head = nn.Sequential(nn.LayerNorm(e), nn.Linear(e, e), nn.GELU(),
                                  nn.Linear(e, k + _EXTRA))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)
        self.bar = BarDistribution(bucket_borders(k, float(cfg["bound"])),
                                   torch.tensor([True]), torch.tensor([True]))

    # ------------------------------------------------------------------ context
    def encode(self, zt: Tensor, zx: Tensor) -> dict[str, Any]:
        """Cache for the queries: per-query-layer keys/values of the standardized context
        ``zt`` ``(B, N, D)``, ``zx`` ``(B, N, d)``, and the context itself (neighbours)."""
        zx = zx.clamp(-_X_CLAMP, _X_CLAMP)
        pt, mt = _pad(zt, self.dmax)
        px, mx = _pad(zx, self.xmax)
        c = self.ctx_in(torch.cat([px, mx, pt, mt], dim=-1))
        for block in self.ctx_blocks:
            c = block(c)
        c = self.ctx_norm(c)
        return {"kv": [block.context(c) for block in self.query_blocks], "zt": zt, "zx": zx}

    def _neighbour_log_density(self, zx_q: Tensor, zt_q: Tensor, cache: dict[str, Any],
                               dims: list[int], raw: Tensor,
                               num_neighbors: int | None = None) -> Tensor:
        r"""Log kernel density ``(B, Q, nd, K)`` of ``theta_j`` at the bucket midpoints from the
        ``num_neighbors`` context pairs nearest to ``x_q`` (an ABC-like estimate the network
        corrects): weights :math:`\propto \exp(-\|x_i - x_q\|^2 / 2h_x^2
        - \|\theta_{i,<j} - \theta_{q,<j}\|^2 / 2h_\theta^2)`, Gaussian kernels of width
        :math:`b` in :math:`\theta_j`; the bandwidths scale adaptive defaults by ``exp(raw)``.
        ``num_neighbors``: this call's count (default: ``config["num_neighbors"]``).
        """
        zt_c, zx_c = cache["zt"], cache["zx"]  # (B, N, D), (B, N, d)
        b, q, nd = raw.shape[:3]
        n, d = zt_c.shape[1], zx_c.shape[-1]
        k = min(int(num_neighbors or self.config["num_neighbors"]), n)
        with torch.no_grad():  # inputs only: no gradient needed (and none at distance 0)
            dist = torch.cdist(zx_q, zx_c).pow(2) / d  # (B, Q, N)
        near, idx = torch.topk(dist, k, dim=-1, largest=False)  # (B, Q, k)
        scale_x = near[..., k // 2: k // 2 + 1].clamp(min=1e-4)  # adaptive: median neighbour
        gather = idx.reshape(b, q * k, 1)
        t_nb = zt_c.gather(1, gather.expand(-1, -1, zt_c.shape[-1])).reshape(b, q, k, -1)
        j = torch.tensor(dims, device=raw.device)
        below = (torch.arange(zt_c.shape[-1], device=raw.device)[None, :] < j[:, None]).float()
        dt = ((t_nb[:, :, None] - zt_q[:, :, None, None]) ** 2 * below[:, None]).sum(-1)
        hx = torch.exp(raw[..., 2:3].clamp(-4, 4))  # (B, Q, nd, 1)
        ht = 0.3 * torch.exp(raw[..., 3:4].clamp(-4, 4))
        logw = -near[:, :, None] / (2 * scale_x[:, :, None] * hx ** 2) - dt / (2 * ht ** 2)
        w = torch.softmax(logw, dim=-1)  # (B, Q, nd, k)
        tj = t_nb[..., j].permute(0, 1, 3, 2)  # (B, Q, nd, k)
        mean = (w * tj).sum(-1, keepdim=True)
        std = ((w * (tj - mean) ** 2).sum(-1, keepdim=True) + 1e-6).sqrt()
        k_eff = 1.0 / (w ** 2).sum(-1, keepdim=True)
        bw = (std * k_eff ** -0.2).clamp(min=0.03) * torch.exp(raw[..., 4:5].clamp(-4, 4))
        borders = self.bar.borders[0]
        mids = 0.5 * (borders[1:] + borders[:-1])
        z = (mids - tj[..., None]) / bw[..., None]  # (B, Q, nd, k, K)
        # sum in linear space (an einsum; ~2x faster than a log-sum-exp over k): a kernel
        # below float range only matters under the -30 floor applied below
        dens = torch.einsum("bqnk,bqnkm->bqnm", w, torch.exp(-0.5 * z.square_()))
        dens = dens.clamp(min=1e-38).log() - bw.log() - 0.5 * math.log(2 * math.pi)
        return dens.clamp(min=-30.0) + borders.diff().log()

    # ------------------------------------------------------------------ queries
    def logits(self, zx_q: Tensor, zt_q: Tensor, cache: dict[str, Any],
               n_context: int, dims: list[int] | None = None,
               num_neighbors: int | None = None) -> Tensor:
        """Bucket logits ``(B, Q, len(dims), K)`` of the factors ``q_j(. | theta_<j, x_q)``.

        ``zx_q`` ``(B, Q, d)`` and ``zt_q`` ``(B, Q, D)`` are standardized; only
        ``zt_q[..., :j]`` enters factor ``j`` (the rest is masked out). ``dims`` (default: all)
        selects which factors to compute. ``num_neighbors`` overrides
        ``config["num_neighbors"]`` for this call (components of a stacked posterior share
        one network: passing it, not setting the config, keeps concurrent calls apart).
        """
        b, q, d = zt_q.shape
        dims = list(range(d)) if dims is None else dims
        nd = len(dims)
        px, mx = _pad(zx_q.clamp(-_X_CLAMP, _X_CLAMP), self.xmax)
        pt, mt = _pad(zt_q, self.dmax)
        j = torch.tensor(dims, device=zt_q.device)
        below = (torch.arange(self.dmax, device=zt_q.device)[None, :] < j[:, None]).float()
        onehot = F.one_hot(j, self.dmax).float()  # (nd, dmax)
        nfeat = torch.tensor([math.log(n_context) / math.log(self.n_max),
                              1.0 / math.sqrt(n_context)], device=zt_q.device)
        feats = torch.cat([
            px[:, :, None].expand(b, q, nd, -1), mx[:, :, None].expand(b, q, nd, -1),
            pt[:, :, None] * below, below.expand(b, q, nd, -1), onehot.expand(b, q, nd, -1),
            mt[:, :, None].expand(b, q, nd, -1), nfeat.expand(b, q, nd, -1)], dim=-1)
        h = self.query_in(feats).reshape(b, q * nd, -1)
        for block, kv in zip(self.query_blocks, cache["kv"]):
            h = block(h, kv)
        raw = self.head(h).reshape(b, q, nd, -1)
        free, extra = raw[..., :-_EXTRA], raw[..., -_EXTRA:]
        loc, logprec = 4.0 * extra[..., 0:1], extra[..., 1:2]
        precision = torch.exp((6.0 * logprec - 4.0).clamp(max=12.0))
        borders = self.bar.borders[0]
        mids = 0.5 * (borders[1:] + borders[:-1])
        kde = self._neighbour_log_density(zx_q.clamp(-_X_CLAMP, _X_CLAMP), zt_q, cache, dims,
                                          extra, num_neighbors)
        gamma = torch.exp(extra[..., 5:6].clamp(-4, 2))
        return free + gamma * kde - precision * (mids - loc) ** 2

    def log_prob_std(self, logits: Tensor, zt: Tensor) -> Tensor:
        """Log density ``(..., D)`` of standardized values ``zt`` ``(..., D)``."""
        return self.bar.log_prob(logits.unsqueeze(-2), zt.unsqueeze(-1)).squeeze(-1)

    def cdf_std(self, logits: Tensor, zt: Tensor) -> Tensor:
        return self.bar.cdf(logits.unsqueeze(-2), zt.unsqueeze(-1)).squeeze(-1)

    def icdf_std(self, logits: Tensor, u: Tensor) -> Tensor:
        return self.bar.icdf(logits.unsqueeze(-2), u.unsqueeze(-1)).squeeze(-1)


def pretrain_loss(net: InContextNet, theta: Tensor, x: Tensor, n_context: int) -> Tensor:
    """Prior-data NLL (mean over queries, summed over dimensions) for problems ``theta``
    ``(B, N + Q, D)``, ``x`` ``(B, N + Q, d)``: the first ``n_context`` pairs are the context,
    the rest are the queries."""
    stats = standardize_context(theta[:, :n_context], x[:, :n_context])
    zt = (theta - stats["theta_mean"]) / stats["theta_std"]
    zx = (x - stats["x_mean"]) / stats["x_std"]
    cache = net.encode(zt[:, :n_context], zx[:, :n_context])
    zt_q, zx_q = zt[:, n_context:], zx[:, n_context:]
    logits = net.logits(zx_q, zt_q, cache, n_context)
    return -net.log_prob_std(logits, zt_q).sum(-1).mean()
