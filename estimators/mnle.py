r"""Mixed neural likelihood estimation (MNLE, Boelts et al. 2022).

For simulators whose output mixes discrete values ``d`` (choices, counts, categories) with
continuous ones ``c`` (reaction times, amplitudes), the likelihood factorizes as

.. math:: q_\phi(x \mid \theta) = p_\phi(d \mid \theta)\; q_\phi(c \mid \theta, d),

with :math:`p_\phi(d \mid \theta)` an **autoregressive product of categoricals**
:math:`\prod_j p(d_j \mid \theta, d_{<j})` (one small MLP per discrete column giving the
logits of its ``K_j`` categories, restricted to the values seen in training; for one column
it is a plain categorical) and
:math:`q_\phi(c \mid \theta, d)` a conditional flow (NSF by default) over the z-scored
continuous columns with :math:`(\theta, \mathrm{onehot}(d))` as context. Both are fitted
together by maximum likelihood, :math:`\mathcal{L} = -\mathbb{E}\log q_\phi(x\mid\theta)`.
The autoregressive product scales linearly with the number of discrete columns, unlike
one categorical over all joint configurations.

Columns listed in ``log_columns`` (positive data such as reaction times) are modelled as
``log c``; the density includes the Jacobian ``-Σ log c`` so ``log_likelihood`` is a
density of the original ``x``. Discrete columns are never z-scored.

The posterior given ``n`` iid trials is ``p(θ) Π_i q(x_i | θ)`` sampled by MCMC
(:class:`sbi_core.mcmc_posterior.MCMCPosterior`), exactly as for NLE.

Example::

    problem = Problem(prior, simulator, x_discrete=[0])   # column 0: choice
    posterior = fit(problem, sims, method="mnle", log_columns=[1])  # column 1: reaction time
    samples = posterior.sample((1000,), x=trials)          # trials (n, 2) iid
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from estimators.discrete_x import DiscreteColumns, discrete_config
from estimators.flows import FLOWS, NSF_LAYOUT, build_flow, nsf_layout
from estimators.nle import likelihood_posterior
from estimators.standardize import Standardize, fit_standardize
from sbi_core.mcmc_posterior import mcmc_defaults
from sbi_core.methods import Method
from sbi_core.posterior import ObservationError

__all__ = ["MNLEEstimator", "METHOD", "build_mnle"]

DEFAULTS: dict[str, Any] = {
    "discrete_columns": None,
    "log_columns": None,
    "flow": "nsf",
    "hidden_features": 50,
    "num_transforms": 5,
    "num_blocks": 2,
    "num_bins": 10,
    # The spline covers [-5, 5] of the z-scored continuous columns: conditional on theta and
    # d they are shifted from the marginal, so the +-3 of NLE/NPE cuts into their tails.
    "tail_bound": 5.0,
    "categorical_hidden": 50,
    "categorical_layers": 2,
    "mcmc": None,
}


def _mlp(inp: int, hidden: int, out: int, layers: int) -> nn.Sequential:
    mods: list[nn.Module] = []
    for _ in range(layers):
        mods += [nn.Linear(inp, hidden), nn.ReLU()]
        inp = hidden
    mods.append(nn.Linear(inp, out))
    return nn.Sequential(*mods)


class MNLEEstimator(nn.Module):
    """``q(x | theta) = p(d | theta) q(c | theta, d)`` over flattened ``x``.

    Args:
        config: plain-value dict with ``theta_dim``, ``x_shape``, ``discrete_columns``,
            ``discrete_low``, ``num_categories`` (from
            :func:`estimators.discrete_x.discrete_config`), ``log_columns`` and the other keys
            of ``DEFAULTS``.
    """

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        cfg = {**DEFAULTS, **config}
        self.config = cfg
        d, x_shape = int(cfg["theta_dim"]), tuple(cfg["x_shape"])
        if cfg["flow"] not in FLOWS:
            raise ValueError(f"Unknown MNLE flow {cfg['flow']!r}; use one of {FLOWS}.")
        self.theta_dim, self.x_shape = d, x_shape
        self.x_dim = math.prod(x_shape)
        self.discrete = DiscreteColumns(self.x_dim, cfg["discrete_columns"], cfg["discrete_low"],
                                        cfg["num_categories"])
        self.continuous = self.discrete.continuous
        # z-scoring of theta and of the (log-transformed) continuous columns only; x_min /
        # x_max (raw x) serve the posterior's range check. There is deliberately no x_norm:
        # discrete columns are never z-scored.
        self.theta_norm = Standardize((d,))
        self.c_norm = Standardize((len(self.continuous),))
        self.register_buffer("x_min", torch.zeros(x_shape))
        self.register_buffer("x_max", torch.zeros(x_shape))
        log_cols = [int(c) for c in (cfg["log_columns"] or [])]
        self.register_buffer("log_mask", torch.tensor([c in log_cols for c in self.continuous],
                                                      dtype=torch.bool))
        sizes = self.discrete.num_categories
        # net j: (theta, one-hot of the discrete columns before j) -> logits of column j
        self.categorical = nn.ModuleList(
            _mlp(d + sum(sizes[:j]), int(cfg["categorical_hidden"]), k,
                 int(cfg["categorical_layers"])) for j, k in enumerate(sizes))
        self.density = build_flow(
            cfg["flow"], len(self.continuous), d + sum(sizes), cfg["hidden_features"],
            cfg["num_transforms"], cfg["num_blocks"], cfg["num_bins"],
            tail_bound=float(cfg["tail_bound"]), nsf_layout=nsf_layout(cfg)) \
            if self.continuous else None

    # ------------------------------------------------------------------ transforms
    def _transform_continuous(self, c: Tensor) -> tuple[Tensor, Tensor]:
        """Raw continuous columns ``(N, C)`` → flow space (log where declared, z-scored) and
        ``log |det|`` ``(N,)`` of that map."""
        if bool(self.log_mask.any()):
            logged = c[:, self.log_mask]
            if not bool((logged > 0).all()):
                cols = [self.continuous[i] for i in self.log_mask.nonzero().flatten().tolist()]
                raise ObservationError(
                    f"x columns {cols} are modelled on the log scale (log_columns) but the "
                    f"observation has a value <= 0 there ({float(logged.min()):.6g}); such "
                    "values have zero likelihood under this model. Check the observation, or "
                    "retrain without log_columns if the data can be <= 0.")
            c = torch.where(self.log_mask, c.clamp(min=1e-30).log(), c)
            lad = -(torch.where(self.log_mask, c, torch.zeros_like(c))).sum(1)
        else:
            lad = c.new_zeros(c.shape[0])
        return self.c_norm(c), lad - self.c_norm.log_abs_det()

    def _inverse_continuous(self, z: Tensor) -> Tensor:
        c = self.c_norm.inverse(z)
        return torch.where(self.log_mask, c.exp(), c)

    def fit_standardization(self, theta: Tensor, x: Tensor) -> None:
        """z-score ``theta`` ``(N, D)`` and the (log-transformed) continuous columns of ``x``
        ``(N, *x_shape)``; record the x range and the discrete categories seen."""
        flat = x.reshape(x.shape[0], self.x_dim)
        with torch.no_grad():
            fit_standardize(self.theta_norm, theta, "theta")
            self.x_min.copy_(x.min(0).values)
            self.x_max.copy_(x.max(0).values)
            self.discrete.fit(flat)
            if self.continuous:
                c = flat[:, self.continuous]
                fit_standardize(self.c_norm, torch.where(self.log_mask, c.log(), c),
                                "continuous x")

    def check_observation(self, x: Tensor) -> None:
        """Called by the posterior on observations ``(N, *x_shape)`` before any other check:
        :class:`~sbi_core.posterior.ObservationError` if a discrete value never occurred in
        training or a log-scale column is not positive."""
        flat = x.reshape(x.shape[0], self.x_dim).to(self.log_mask.device)
        self.discrete.codes(flat)
        if self.continuous:
            self._transform_continuous(flat[:, self.continuous])

    # ------------------------------------------------------------------ densities
    def _discrete_log_prob(self, t: Tensor, codes: Tensor, one_hot: Tensor) -> Tensor:
        lp = t.new_zeros(t.shape[0])
        start = 0
        for j, net in enumerate(self.categorical):
            logits = self.discrete.mask_logits(net(torch.cat([t, one_hot[:, :start]], dim=1)), j)
            lp = lp + logits.log_softmax(-1).gather(1, codes[:, j:j + 1])[:, 0]
            start += self.discrete.num_categories[j]
        return lp

    def log_likelihood(self, theta: Tensor, x: Tensor) -> Tensor:
        """``log q(x | theta)`` of paired rows ``(N, D)``, ``(N, *x_shape)`` → ``(N,)``.

        Raises :class:`~sbi_core.posterior.ObservationError` when a discrete value never
        occurred in training or a log-scale column is not positive.
        """
        flat = x.reshape(x.shape[0], self.x_dim)
        codes = self.discrete.codes(flat)
        one_hot = self.discrete.one_hot(codes)
        t = self.theta_norm(theta)
        lp = self._discrete_log_prob(t, codes, one_hot)
        if self.density is not None:
            z, lad = self._transform_continuous(flat[:, self.continuous])
            lp = lp + self.density.log_prob(z, context=torch.cat([t, one_hot], 1)) + lad
        return lp

    def loss(self, theta: Tensor, x: Tensor) -> Tensor:
        return -self.log_likelihood(theta, x)

    def sample(self, n: int, theta: Tensor) -> Tensor:
        """Synthetic data: ``n`` draws of ``x`` for each of ``B`` parameters ``(B, D)`` →
        ``(n, B, *x_shape)``."""
        b = theta.shape[0]
        t = self.theta_norm(theta).unsqueeze(0).expand(n, b, self.theta_dim).reshape(n * b, -1)
        parts: list[Tensor] = []
        codes = []
        for j, net in enumerate(self.categorical):
            logits = self.discrete.mask_logits(net(torch.cat([t, *parts], dim=1)), j)
            code = torch.distributions.Categorical(logits=logits).sample()
            codes.append(code)
            parts.append(nn.functional.one_hot(code, self.discrete.num_categories[j]).float())
        flat = t.new_empty(n * b, self.x_dim)
        flat[:, self.discrete.columns] = torch.stack(codes, 1).float() + self.discrete._low
        if self.density is not None:
            z = self.density.sample(1, context=torch.cat([t, *parts], 1))[:, 0]
            flat[:, self.continuous] = self._inverse_continuous(z)
        return flat.reshape(n, b, *self.x_shape)


def build_mnle(theta: Tensor, x: Tensor, prior: Distribution, **options: Any) -> MNLEEstimator:
    """An untrained :class:`MNLEEstimator`: discrete columns validated and their categories
    inferred from ``x``, standardization fitted on ``theta``, ``x``."""
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"Unknown MNLE options {sorted(unknown)}; valid: {sorted(DEFAULTS)} "
                        "(mcmc={...} takes sbi_core.mcmc.MCMCConfig fields) and the training "
                        "options of sbi_core.TrainConfig.")
    if options.get("discrete_columns") is None:
        raise ValueError(
            "MNLE needs to know which columns of x are discrete: declare them in the problem "
            "(Problem(..., x_discrete=[0])) or pass fit(..., method='mnle', "
            "discrete_columns=[0]). For all-continuous x use method='nle'.")
    x_dim = math.prod(x.shape[1:])
    disc = discrete_config(x, options["discrete_columns"])
    log_cols = _log_columns(options.get("log_columns"), x, disc["discrete_columns"], x_dim)
    options["mcmc"] = mcmc_defaults(options.get("mcmc"))
    config = {**DEFAULTS, **options, **disc, "log_columns": log_cols,
              "theta_dim": int(theta.shape[1]), "x_shape": list(x.shape[1:]),
              "nsf_layout": NSF_LAYOUT}
    est = MNLEEstimator(config)
    est.fit_standardization(theta, x)
    return est


def _log_columns(spec: Any, x: Tensor, discrete: list[int], x_dim: int) -> list[int]:
    """Validated ``log_columns``: ``None``, ``"all"`` (every continuous column) or indices."""
    continuous = [c for c in range(x_dim) if c not in discrete]
    if spec is None:
        return []
    cols = continuous if spec == "all" else [int(c) for c in spec]
    wrong = [c for c in cols if c not in continuous]
    if wrong:
        raise ValueError(f"log_columns {wrong} are not continuous columns of the flattened x "
                         f"(continuous: {continuous}, discrete: {discrete}).")
    flat = x.reshape(x.shape[0], x_dim)
    for c in cols:
        low = float(flat[:, c].min())
        if not low > 0:
            raise ValueError(f"log_columns: x column {c} has values <= 0 (min {low:.6g}) in the "
                             "training data, so it cannot be modelled on the log scale; remove "
                             "it from log_columns.")
    return cols


_make_posterior = likelihood_posterior("mnle")


METHOD = Method(
    name="mnle",
    build=build_mnle,
    from_config=MNLEEstimator,
    make_posterior=_make_posterior,
    accepts_discrete_x=True,
    description="Mixed neural likelihood estimation for discrete + continuous x (categorical "
                "net for the discrete columns, flow for the continuous ones) + MCMC; accepts "
                "sets of iid observations.",
)
