r"""Riemann ("bar") distributions: piecewise-constant densities on fixed buckets.

The PFN output head (Müller et al. 2022, "Transformers Can Do Bayesian Inference"). For
each of ``D`` dimensions there are ``K`` buckets with borders
:math:`b_0 < b_1 < \dots < b_K`; logits :math:`l \in \mathbb{R}^K` give bucket masses
:math:`P = \mathrm{softmax}(l)` and the density is uniform inside each bucket:

.. math:: \log q(y) = \log P_{k(y)} - \log (b_{k(y)+1} - b_{k(y)}).

On a side where the prior is unbounded, the outermost bucket is replaced by a half-normal
tail that starts at the inner border (:math:`b_1` on the left, :math:`b_{K-1}` on the
right) with scale :math:`s = w_{\text{edge}} / 0.6745`, so half of the tail mass lies
within one edge-bucket width. A bounded side keeps its bucket, with the prior bound as
border, so all mass stays inside the support.

Borders come from prior quantiles (:func:`quantile_borders`): equal prior mass per
bucket. A small share of equal-width spacing is mixed in, so borders are strictly
increasing even when prior samples are tied (discrete priors): no zero-width bucket can
occur.

Example::

    borders = quantile_borders(prior.sample((100_000,)), 100, low, high)  # (D, K + 1)
    bar = BarDistribution(borders, left_tail=~torch.isfinite(low),
                          right_tail=~torch.isfinite(high))
    lp = bar.log_prob(logits, theta)                     # logits (N, D, K) -> (N, D)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["BarDistribution", "quantile_borders"]

#: HalfNormal(1).icdf(0.5) = sqrt(2) * erfinv(0.5).
_HALF_NORMAL_MEDIAN = 0.6744897501960817
_TIES_MIX = 1e-3
_EPS = 1e-7


def quantile_borders(samples: Tensor, num_buckets: int, low: Tensor | None = None,
                     high: Tensor | None = None, uniform_share: float = 0.0) -> Tensor:
    """Bucket borders ``(D, K + 1)`` from prior samples ``(M, D)``, equal mass per bucket.

    Inner borders are the ``k / K`` quantiles of each column. Outer borders are ``low`` /
    ``high`` where these are finite (bounded prior), else the sample min / max. Borders are
    mixed with ``0.1 %`` equal-width spacing over the same range, which makes them strictly
    increasing even for tied samples.

    ``uniform_share`` (in ``[0, 1)``, default 0: pure prior quantiles) takes the quantiles of
    the mixture ``(1 - a) * prior + a * Uniform(outer range)`` instead: equal *mixture* mass
    per bucket. With ``a = 0.5`` buckets in the prior's tails are many times narrower (the
    edge bucket, which also sets the half-normal tail scale, shrinks from about two prior
    standard deviations to a fifth of one for 100 buckets on a Gaussian prior), at the cost
    of central buckets about 1.6x wider. Posteriors much narrower than the prior (many
    observations) can sit anywhere the prior has mass, so they need the finer tails.
    """
    samples = torch.as_tensor(samples, dtype=torch.float64)
    if samples.ndim != 2 or samples.shape[0] < 2:
        raise ValueError(f"quantile_borders needs samples of shape (M >= 2, D), got "
                         f"{tuple(samples.shape)}.")
    if num_buckets < 2:
        raise ValueError(f"num_buckets must be at least 2, got {num_buckets}.")
    if not 0.0 <= float(uniform_share) < 1.0:
        raise ValueError(f"uniform_share must be in [0, 1), got {uniform_share}.")
    if not torch.isfinite(samples).all():
        raise ValueError("The prior samples used for the bucket borders contain NaN or inf.")
    d = samples.shape[1]
    low = torch.full((d,), -math.inf) if low is None else torch.as_tensor(low).double()
    high = torch.full((d,), math.inf) if high is None else torch.as_tensor(high).double()
    probs = torch.linspace(0, 1, num_buckets + 1, dtype=torch.float64)
    q = torch.quantile(samples, probs, dim=0).T  # (D, K + 1)
    lo = torch.where(torch.isfinite(low), low, q[:, 0])
    hi = torch.where(torch.isfinite(high), high, q[:, -1])
    if uniform_share > 0 and bool((hi > lo).all()):
        m = samples.shape[0]
        extra = round(m * uniform_share / (1.0 - uniform_share))
        grid = (torch.arange(extra, dtype=torch.float64) + 0.5) / extra  # (extra,)
        even_rows = lo[None, :] + (hi - lo)[None, :] * grid[:, None]  # (extra, D)
        q = torch.quantile(torch.cat([samples, even_rows]), probs, dim=0).T
    if not bool((hi > lo).all()):
        bad = (hi <= lo).nonzero().flatten().tolist()
        raise ValueError(f"The prior has no spread in dimension(s) {bad}; a bar distribution "
                         "needs a non-degenerate prior in every dimension.")
    q = torch.minimum(torch.maximum(q, lo[:, None]), hi[:, None])
    q[:, 0], q[:, -1] = lo, hi
    even = lo[:, None] + (hi - lo)[:, None] * probs[None, :]
    borders = (1 - _TIES_MIX) * q + _TIES_MIX * even
    borders[:, 0], borders[:, -1] = lo, hi
    return borders.float()


class BarDistribution(nn.Module):
    """A batch of ``D`` independent-border bar distributions (borders as buffers).

    Args:
        borders: ``(D, K + 1)`` strictly increasing per row (or ``(K + 1,)`` for ``D = 1``).
        left_tail, right_tail: ``(D,)`` booleans; True replaces the edge bucket on that side
            by a half-normal tail (unbounded support). Default: no tails (bounded).

    All methods take ``logits`` ``(..., D, K)`` and values ``(..., D)`` with broadcastable
    leading dimensions.
    """

    def __init__(self, borders: Tensor, left_tail: Tensor | None = None,
                 right_tail: Tensor | None = None):
        super().__init__()
        borders = torch.as_tensor(borders, dtype=torch.float32)
        if borders.ndim == 1:
            borders = borders[None]
        d = borders.shape[0]
        widths = borders.diff(dim=-1)
        if borders.shape[-1] < 3 or not bool((widths > 0).all()):
            raise ValueError("Bar distribution borders must be strictly increasing with at least "
                             "2 buckets; build them with quantile_borders.")
        tails = [torch.zeros(d, dtype=torch.bool) if t is None else torch.as_tensor(t).bool()
                 .reshape(d) for t in (left_tail, right_tail)]
        self.register_buffer("borders", borders.clone().contiguous())
        self.register_buffer("left_tail", tails[0])
        self.register_buffer("right_tail", tails[1])

    @property
    def num_buckets(self) -> int:
        return self.borders.shape[-1] - 1

    def _widths(self) -> Tensor:
        return self.borders.diff(dim=-1)  # (D, K)

    def _tail_scales(self) -> tuple[Tensor, Tensor]:
        w = self._widths()
        return w[:, 0] / _HALF_NORMAL_MEDIAN, w[:, -1] / _HALF_NORMAL_MEDIAN

    def bucket(self, y: Tensor) -> Tensor:
        """Bucket index ``(..., D)`` of each value, clamped to ``[0, K - 1]``."""
        inner = self.borders[:, 1:-1]  # (D, K - 1)
        return (y.unsqueeze(-1) >= inner).sum(-1)

    def log_prob(self, logits: Tensor, y: Tensor) -> Tensor:
        """Log density ``(..., D)``; ``-inf`` outside a bounded side."""
        logp = torch.log_softmax(logits, dim=-1)
        k = self.bucket(y)
        lp_k = logp.gather(-1, k.unsqueeze(-1)).squeeze(-1)
        log_w = self._widths().log().expand(*k.shape[:-1], -1, -1)
        out = lp_k - log_w.gather(-1, k.unsqueeze(-1)).squeeze(-1)
        s_left, s_right = self._tail_scales()
        b_in_left, b_in_right = self.borders[:, 1], self.borders[:, -2]
        in_left = self.left_tail & (k == 0)
        in_right = self.right_tail & (k == self.num_buckets - 1)
        out = torch.where(in_left, lp_k + _half_normal_log_pdf(b_in_left - y, s_left), out)
        out = torch.where(in_right, lp_k + _half_normal_log_pdf(y - b_in_right, s_right), out)
        outside = ((y < self.borders[:, 0]) & ~self.left_tail) | \
                  ((y > self.borders[:, -1]) & ~self.right_tail)
        return out.masked_fill(outside, -math.inf)

    def cdf(self, logits: Tensor, y: Tensor) -> Tensor:
        """``P(Y <= y)`` ``(..., D)``."""
        probs = torch.softmax(logits, dim=-1)
        cum = torch.cumsum(probs, dim=-1) - probs  # mass below each bucket
        k = self.bucket(y)
        p_k = probs.gather(-1, k.unsqueeze(-1)).squeeze(-1)
        below = cum.gather(-1, k.unsqueeze(-1)).squeeze(-1)
        left_b = self.borders[:, :-1].expand(*k.shape[:-1], -1, -1).gather(
            -1, k.unsqueeze(-1)).squeeze(-1)
        w = self._widths().expand(*k.shape[:-1], -1, -1).gather(-1, k.unsqueeze(-1)).squeeze(-1)
        out = below + p_k * ((y - left_b) / w).clamp(0, 1)
        s_left, s_right = self._tail_scales()
        in_left = self.left_tail & (k == 0)
        in_right = self.right_tail & (k == self.num_buckets - 1)
        tail_left = p_k * (1 - _half_normal_cdf(self.borders[:, 1] - y, s_left))
        tail_right = below + p_k * _half_normal_cdf(y - self.borders[:, -2], s_right)
        out = torch.where(in_left, tail_left, out)
        out = torch.where(in_right, tail_right, out)
        return out.clamp(0, 1)

    def icdf(self, logits: Tensor, u: Tensor) -> Tensor:
        """Quantile function ``(..., D)`` at ``u`` in ``[0, 1]`` (``u`` ``(..., D)``)."""
        probs = torch.softmax(logits, dim=-1)
        cum = torch.cumsum(probs, dim=-1)
        k = (u.unsqueeze(-1) > cum).sum(-1).clamp(max=self.num_buckets - 1)
        p_k = probs.gather(-1, k.unsqueeze(-1)).squeeze(-1).clamp(min=1e-30)
        below = (cum - probs).gather(-1, k.unsqueeze(-1)).squeeze(-1)
        frac = ((u - below) / p_k).clamp(0, 1)
        left_b = self.borders[:, :-1].expand(*k.shape[:-1], -1, -1).gather(
            -1, k.unsqueeze(-1)).squeeze(-1)
        w = self._widths().expand(*k.shape[:-1], -1, -1).gather(-1, k.unsqueeze(-1)).squeeze(-1)
        out = left_b + frac * w
        s_left, s_right = self._tail_scales()
        in_left = self.left_tail & (k == 0)
        in_right = self.right_tail & (k == self.num_buckets - 1)
        frac_t = frac.clamp(_EPS, 1 - _EPS)
        out = torch.where(in_left, self.borders[:, 1] - _half_normal_icdf(1 - frac_t, s_left), out)
        out = torch.where(in_right, self.borders[:, -2] + _half_normal_icdf(frac_t, s_right), out)
        return out

    def sample(self, logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One draw ``(..., D)`` per row of ``logits`` ``(..., D, K)`` (inverse-CDF sampling)."""
        u = torch.rand(logits.shape[:-1], generator=generator, device=logits.device)
        return self.icdf(logits, u)

    def mean(self, logits: Tensor) -> Tensor:
        """Mean ``(..., D)``: bucket midpoints, and ``b ± s sqrt(2 / pi)`` for the tails."""
        probs = torch.softmax(logits, dim=-1)
        mids = (0.5 * (self.borders[:, 1:] + self.borders[:, :-1])).clone()  # (D, K)
        s_left, s_right = self._tail_scales()
        shift = math.sqrt(2 / math.pi)
        mids[:, 0] = torch.where(self.left_tail, self.borders[:, 1] - s_left * shift, mids[:, 0])
        mids[:, -1] = torch.where(self.right_tail, self.borders[:, -2] + s_right * shift,
                                  mids[:, -1])
        return (probs * mids).sum(-1)


def _half_normal_log_pdf(d: Tensor, scale: Tensor) -> Tensor:
    """Log density of HalfNormal(scale) at ``d >= 0`` (``d`` is clamped at 0)."""
    d = d.clamp(min=0)
    return 0.5 * math.log(2 / math.pi) - scale.log() - 0.5 * (d / scale) ** 2


def _half_normal_cdf(d: Tensor, scale: Tensor) -> Tensor:
    return torch.erf(d.clamp(min=0) / (scale * math.sqrt(2)))


def _half_normal_icdf(p: Tensor, scale: Tensor) -> Tensor:
    return scale * math.sqrt(2) * torch.erfinv(p)
