r"""The pretraining prior over *problems* of the in-context posterior (``method="incontext"``).

One call of :func:`sample_problems` draws ``B`` independent SBI problems and ``n`` joint
draws :math:`(\theta_i, x_i) \sim p(\theta)\,p(x \mid \theta)` of each, all in batched
torch. The in-context network (:mod:`estimators.incontext`) is pretrained to predict
:math:`\theta_q` from :math:`x_q` given the other pairs of the same problem as context; its
minimizer is the posterior of every problem the prior can produce.

Ranges (chosen to fit what 2 shared CPU cores can pretrain in about an hour):
``1 <= D <= 3`` parameters, ``1 <= d <= 10`` data dimensions, contexts of
``N_MIN = 8`` to ``N_MAX = 1000`` simulations (the pretraining script draws the context size
log-uniformly between them).

Priors over :math:`\theta` (one family per problem, drawn uniformly):

- box uniform ``U(-1, 1)^D``;
- Gaussian with a random correlation (``theta = L z``, ``L`` a random Cholesky factor);
- two-component Gaussian mixture (centres ``±c`` along a random direction, ``c ~ U(0.6, 2)``);
- log-normal ``exp(s z)`` with ``s ~ U(0.2, 0.7)`` (skewed, positive, like rate parameters).

Simulators (one family per problem, drawn with the weights of ``SIMULATOR_WEIGHTS``):

- ``linear``: :math:`x = A\theta + b + \sigma\varepsilon`;
- ``mlp``: a random one-hidden-layer MLP (width 32) with a random nonlinearity
  (tanh, relu, sin, abs, square, sigmoid);
- ``ring``: distances :math:`x_j = \lVert \theta - c_j \rVert` to random centres (ring-shaped
  posteriors in 2-D, two modes in 1-D);
- ``moons``: the two-moons map on the first two parameters (a crescent plus
  :math:`(-|\theta_1+\theta_2|/\sqrt2, (\theta_2-\theta_1)/\sqrt2)`, at a random noise
  scale), further ``x`` dimensions linear in :math:`\theta`; 1-D problems use ``|θ|``;
- ``mixture``: with probability ``p`` one linear map, otherwise another (or the same map at
  a 10x smaller noise, like ``gaussian_mixture``);
- ``timeseries``: summary statistics (mean, std, lag-1/2 autocorrelations, quantiles, ...)
  of an AR(1) series of 40 steps whose persistence, scale and level are set by θ, or
  noisy counts of a logistic-growth / SIR-like epidemic curve at ``d`` times.

Noise (per problem): scale :math:`\sigma \sim \log U(0.02, 1.5)` relative to the spread of
the noise-free output, heteroscedastic with probability 1/2
(:math:`\sigma(\theta) = \sigma\, e^{\,c \tanh(v^\top\theta)}`), and of a random type:
Gaussian, Student-t (3 dof), Laplace, uniform, or a Gaussian scale mixture.
Finally each ``x`` dimension is, with probability 0.1, replaced by pure noise (uninformative
features).

Every draw comes from the ``torch.Generator`` passed in, so a seed fixes the data exactly.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["D_MAX", "X_DIM_MAX", "N_MIN", "N_MAX", "SIMULATOR_WEIGHTS", "PRIOR_FAMILIES",
           "sample_problems", "prior_description"]

D_MAX = 3
X_DIM_MAX = 10
N_MAX = 1000
#: smallest context the shipped weights were pretrained on (``--n-min`` of
#: ``benchmarks/pretrain_incontext.py``; recorded in the weights' ``train_args``). Below it the
#: posteriors are overconfident (docs/incontext.md, "Limits").
N_MIN = 8
PRIOR_FAMILIES = ("box", "gaussian", "mixture", "lognormal")
SIMULATOR_WEIGHTS = {"linear": 1.0, "mlp": 2.0, "ring": 1.0, "moons": 1.0, "mixture": 1.0,
                     "timeseries": 1.0}


def prior_description() -> dict:
    """Plain-value record of the problem prior (stored next to the weights)."""
    return {"D_max": D_MAX, "x_dim_max": X_DIM_MAX, "n_max": N_MAX,
            "prior_families": list(PRIOR_FAMILIES), "simulator_weights": SIMULATOR_WEIGHTS,
            "noise": "log U(0.02, 1.5) relative scale; gaussian/student-t(3)/laplace/uniform/"
                     "scale-mixture; heteroscedastic with prob 0.5; 10% pure-noise x dims",
            "module": "estimators/incontext_prior.py"}


def _u(g: torch.Generator, *shape: int) -> Tensor:
    return torch.rand(shape, generator=g)


def _n(g: torch.Generator, *shape: int) -> Tensor:
    return torch.randn(shape, generator=g)


def _log_uniform(g: torch.Generator, lo: float, hi: float, *shape: int) -> Tensor:
    return torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * _u(g, *shape))


def _sample_theta(g: torch.Generator, b: int, n: int, d: int) -> Tensor:
    """Parameters ``(b, n, d)`` from one random prior family per problem."""
    family = torch.randint(len(PRIOR_FAMILIES), (b,), generator=g)
    box = 2 * _u(g, b, n, d) - 1
    z = _n(g, b, n, d)
    corr = torch.tril(0.5 * _n(g, b, d, d), -1) + torch.eye(d)
    gauss = torch.einsum("bij,bnj->bni", corr, z)
    direction = _n(g, b, 1, d)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    centre = (0.6 + 1.4 * _u(g, b, 1, 1)) * direction
    sign = torch.where(_u(g, b, n, 1) < 0.5, -1.0, 1.0)
    mix = sign * centre + 0.5 * _n(g, b, n, d)
    lognormal = torch.exp((0.2 + 0.5 * _u(g, b, 1, d)) * _n(g, b, n, d))
    stacked = torch.stack([box, gauss, mix, lognormal])  # (4, b, n, d)
    return stacked[family, torch.arange(b)]


def _standardized(y: Tensor) -> Tensor:
    """Each problem's outputs ``(b, n, k)`` scaled to unit spread (noise-free part)."""
    return (y - y.mean(1, keepdim=True)) / y.std(1, keepdim=True).clamp(min=1e-3)


def _noise(g: torch.Generator, b: int, n: int, k: int) -> Tensor:
    """Unit-scale noise ``(b, n, k)`` of one random type per problem."""
    kind = torch.randint(5, (b,), generator=g)
    gauss = _n(g, b, n, k)
    student = _n(g, b, n, k) / _chi2_over_dof(g, 3, b, n, k).sqrt().clamp(min=0.05)
    laplace = torch.log(_u(g, b, n, k).clamp(min=1e-12) / _u(g, b, n, k).clamp(min=1e-12))
    laplace = laplace / math.sqrt(2.0)
    uniform = (2 * _u(g, b, n, k) - 1) * math.sqrt(3.0)
    scale_mix = _n(g, b, n, k) * torch.where(_u(g, b, n, k) < 0.5, 1.0, 0.15)
    stacked = torch.stack([gauss, student, laplace, uniform, scale_mix])
    return stacked[kind, torch.arange(b)]


def _chi2_over_dof(g: torch.Generator, dof: int, *shape: int) -> Tensor:
    """Chi-square(dof) / dof by summing squared normals (generator-driven)."""
    return (_n(g, dof, *shape) ** 2).mean(0)


def _activation(g: torch.Generator, h: Tensor) -> Tensor:
    """A random nonlinearity per problem on ``h`` ``(b, n, w)``."""
    kind = torch.randint(6, (h.shape[0],), generator=g)
    acts = torch.stack([torch.tanh(h), torch.relu(h), torch.sin(h), h.abs(), 0.3 * h ** 2,
                        torch.sigmoid(2 * h)])
    return acts[kind, torch.arange(h.shape[0])]


def _linear(g: torch.Generator, t: Tensor, k: int) -> Tensor:
    b, _, d = t.shape
    return t @ (_n(g, b, d, k) / math.sqrt(d)) + _n(g, b, 1, k)


def _sim_linear(g: torch.Generator, t: Tensor, k: int) -> Tensor:
    return _linear(g, t, k)


def _sim_mlp(g: torch.Generator, t: Tensor, k: int) -> Tensor:
    b, _, d = t.shape
    w = 32
    h = t @ (_n(g, b, d, w) * (0.5 + 1.5 * _u(g, b, 1, 1))) + _n(g, b, 1, w)
    h = _activation(g, h)
    return h @ (_n(g, b, w, k) / math.sqrt(w)) + 0.3 * _linear(g, t, k) * (_u(g, b, 1, 1) < 0.5)


def _sim_ring(g: torch.Generator, t: Tensor, k: int) -> Tensor:
    b, _, d = t.shape
    centres = 0.5 * _n(g, b, k, d)  # (b, k, d)
    return (t[:, :, None, :] - centres[:, None]).norm(dim=-1)


def _sim_moons(g: torch.Generator, t: Tensor, k: int) -> Tensor:
    b, n, d = t.shape
    if d == 1:
        first = torch.cat([t.abs(), t.abs()], dim=-1)
    else:
        a = math.pi * (_u(g, b, n) - 0.5)
        r = 0.1 + 0.01 * _n(g, b, n)
        crescent = torch.stack([r * torch.cos(a) + 0.25, r * torch.sin(a)], dim=-1)
        s = 0.5 * _log_uniform(g, 0.3, 3.0, b, 1, 1)  # map scale vs crescent noise
        t1, t2 = t[..., 0], t[..., 1]
        mean = torch.stack([-(t1 + t2).abs() / math.sqrt(2), (t2 - t1) / math.sqrt(2)], -1)
        first = s * mean + crescent
    rest = _linear(g, t, k) if k > 2 else None
    out = first[..., :k] if rest is None else torch.cat([first, rest[..., 2:]], dim=-1)
    return out


def _sim_mixture(g: torch.Generator, t: Tensor, k: int) -> Tensor:
    b, n, _ = t.shape
    y1, y2 = _linear(g, t, k), _linear(g, t, k)
    same_map = (_u(g, b, 1, 1) < 0.5)
    y2 = torch.where(same_map, y1, y2)
    # Same map, other noise scale (like gaussian_mixture) or a second map.
    small = torch.where(same_map, 0.1, 1.0)
    pick = _u(g, b, n, 1) < (0.2 + 0.6 * _u(g, b, 1, 1))
    noise = 0.3 * _n(g, b, n, k)
    return torch.where(pick, y1 + noise, y2 + small * noise)


def _sim_timeseries(g: torch.Generator, t: Tensor, k: int) -> Tensor:
    b, n, d = t.shape
    p = torch.cat([t, torch.zeros(b, n, 3 - d)], dim=-1) if d < 3 else t[..., :3]
    mix = _n(g, b, 3, 3) * 0.3 + torch.eye(3)
    p = p @ mix
    # AR(1): persistence, log scale, level.
    rho = 0.95 * torch.tanh(p[..., 0])
    scale = torch.exp(0.5 * p[..., 1])
    level = p[..., 2]
    steps = 40
    eps = _n(g, steps, b, n)
    y = torch.zeros(b, n)
    series = []
    for s in range(steps):
        y = rho * y + scale * eps[s]
        series.append(y)
    ser = torch.stack(series, -1) + level[..., None]  # (b, n, T)
    c = ser - ser.mean(-1, keepdim=True)
    var = (c ** 2).mean(-1).clamp(min=1e-6)
    acf1 = (c[..., 1:] * c[..., :-1]).mean(-1) / var
    acf2 = (c[..., 2:] * c[..., :-2]).mean(-1) / var
    q = torch.quantile(ser, torch.tensor([0.1, 0.5, 0.9]), dim=-1)  # (3, b, n)
    ar = torch.stack([ser.mean(-1), var.sqrt().log(), acf1, acf2, q[0], q[1], q[2],
                      ser.amin(-1), ser.amax(-1), (ser[..., 1:] - ser[..., :-1]).abs().mean(-1)],
                     dim=-1)
    # SIR-like epidemic: infected fraction at k times (Euler), noisy counts.
    beta = 0.4 * torch.exp(0.5 * p[..., 0].clamp(-4, 4))
    gamma = 0.125 * torch.exp(0.3 * p[..., 1].clamp(-4, 4))
    s_, i_ = torch.full((b, n), 1 - 1e-3), torch.full((b, n), 1e-3)
    curve = []
    for _ in range(10):
        for _ in range(8):  # 8 Euler steps of 2 days between observations
            new_inf = beta * s_ * i_ * 2.0
            rec = gamma * i_ * 2.0
            s_, i_ = (s_ - new_inf).clamp(min=0), (i_ + new_inf - rec).clamp(min=0)
        curve.append(i_)
    counts = torch.stack(curve, -1) * 1000
    counts = counts + counts.clamp(min=1).sqrt() * _n(g, b, n, 10)
    which = _u(g, b, 1, 1) < 0.5
    perm = torch.argsort(_u(g, b, 10), dim=-1)[:, :k]
    ar = ar.gather(-1, perm[:, None, :].expand(b, n, k))
    return torch.where(which, ar, counts[..., :k])


_SIMULATORS = {"linear": _sim_linear, "mlp": _sim_mlp, "ring": _sim_ring, "moons": _sim_moons,
               "mixture": _sim_mixture, "timeseries": _sim_timeseries}


def sample_problems(batch: int, n: int, theta_dim: int, x_dim: int,
                    generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``batch`` random problems with ``n`` joint draws each.

    Returns ``theta`` ``(batch, n, theta_dim)`` and ``x`` ``(batch, n, x_dim)`` (float32,
    finite). All problems of one call share ``theta_dim`` and ``x_dim``; the pretraining
    script draws those per step.
    """
    if not (1 <= theta_dim <= D_MAX and 1 <= x_dim <= X_DIM_MAX):
        raise ValueError(f"theta_dim must be in 1..{D_MAX} and x_dim in 1..{X_DIM_MAX}.")
    g = generator
    theta = _sample_theta(g, batch, n, theta_dim)
    names = list(_SIMULATORS)
    weights = torch.tensor([SIMULATOR_WEIGHTS[k] for k in names])
    kind = torch.multinomial(weights, batch, replacement=True, generator=g)
    x = torch.empty(batch, n, x_dim)
    for j, name in enumerate(names):
        idx = (kind == j).nonzero().flatten()
        if idx.numel() == 0:
            continue
        t = theta[idx]
        clean = _standardized(_SIMULATORS[name](g, t, x_dim))
        b = idx.numel()
        sigma = _log_uniform(g, 0.02, 1.5, b, 1, 1)
        hetero = (_u(g, b, 1, 1) < 0.5) * (1.5 * _u(g, b, 1, 1))
        v = _n(g, b, theta_dim, 1)
        sigma = sigma * torch.exp(hetero * torch.tanh(t @ v))
        if name in ("moons", "mixture"):  # these carry their own noise; add a little more
            sigma = 0.1 * sigma
        x[idx] = clean + sigma * _noise(g, b, n, x_dim)
    junk = _u(g, batch, 1, x_dim) < 0.1
    x = torch.where(junk, _n(g, batch, n, x_dim), x)
    x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0).clamp(-1e4, 1e4)
    return theta.float(), x.float()
