r"""Prior-conditioned NPE (``method="prior_npe"``): the prior is an input of the network.

After the Distribution Transformers paper (methods.md A.8): priors are drawn from a
*family* of Gaussian mixtures, parameters from each drawn prior, simulations from those
parameters, and one conditional flow learns

.. math:: q(\theta \mid x, \phi) \approx p_\phi(\theta \mid x) \propto p(x \mid \theta)\, p_\phi(\theta)

for every prior :math:`p_\phi` of the family. ``posterior.with_prior(new_prior)`` for a
prior in the family is then one forward pass: no resampling and no effective-sample-size
collapse, however far the new prior is from the problem's prior.

The family (plain data, saved in the model file's estimator config, never code):
mixtures of ``1..max_components`` diagonal Gaussians, weights ``Dirichlet(1)``, each
component mean uniform in the box ``[mean_low, mean_high]`` and each standard deviation
log-uniform in ``[std_low, std_high]`` (per dimension). The prior is encoded as a *set* of
component tokens ``(log w, standardized mean, log std)``: an MLP embeds each token, one
self-attention layer lets the components attend to each other (no positions: the order
of components does not matter; padded slots are masked), and the masked mean of the
tokens is the prior's embedding, concatenated with the standardized observation as the
flow's context. (The paper also outputs a GMM posterior; here the posterior is a fused
MAF, sbi-core's NPE density, which is more flexible than a mixture.)

Training goes through the one loop (:func:`sbi_core.training.train`): the "x" it sees is
the observation packed with the prior's tokens ``(N, x_dim + K (1 + 2 D) + K)``.
``fit(problem, sims, method="prior_npe", family=...)`` simulates ``num_simulations``
(default ``len(sims)``) new ``(prior, theta, x)`` triples with :func:`sbi_core.simulate`
(``sims`` themselves come from one prior only and are not used for training). Parameters
are drawn inside the problem prior's support only, so every training prior, and so every
``with_prior`` answer, is a family member truncated to that support (as reweighting does).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import (
    Categorical,
    Distribution,
    Independent,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
)

from estimators.flows import build_flow
from sbi_core.budget import Budget
from sbi_core.methods import Method
from sbi_core.posterior import Posterior, _device, seeded
from sbi_core.priors import as_prior
from sbi_core.problem import Problem
from sbi_core.training import split_options, train

__all__ = ["PriorConditionedNPE", "PriorConditionedPosterior", "PriorOutsideFamilyError",
           "gmm_family", "default_family", "sample_family", "gmm_params", "gmm_prior",
           "fit_prior_conditioned", "METHOD"]

DEFAULTS: dict[str, Any] = {"hidden_features": 64, "num_transforms": 5, "num_blocks": 2,
                            "prior_features": 32, "num_heads": 4, "family": None,
                            "num_simulations": None}
TRAIN_DEFAULTS: dict[str, Any] = {"batch_size": 256, "learning_rate": 1e-3,
                                  "stop_after_epochs": 20}


class PriorOutsideFamilyError(ValueError):
    """``with_prior`` got a prior the prior-conditioned estimator was not trained on."""


# ---------------------------------------------------------------------- the family (data)
def gmm_family(dim: int, max_components: int = 2, mean_low: Any = -1.0, mean_high: Any = 1.0,
               std_low: Any = 0.1, std_high: Any = 1.0) -> dict[str, Any]:
    """A family of diagonal Gaussian-mixture priors as plain data (see the module docstring);
    scalars are broadcast to ``dim``. Checked: ``mean_low < mean_high``, ``0 < std_low <=
    std_high``, ``max_components >= 1``."""
    def vec(v: Any, name: str) -> list[float]:
        t = torch.as_tensor(v, dtype=torch.float64).reshape(-1)
        if t.numel() == 1:
            t = t.expand(dim)
        if t.numel() != dim or not bool(torch.isfinite(t).all()):
            raise ValueError(f"family {name} must be a finite number or {dim} numbers, got {v!r}.")
        return [float(a) for a in t]

    fam = {"type": "gmm", "dim": int(dim), "max_components": int(max_components),
           "mean_low": vec(mean_low, "mean_low"), "mean_high": vec(mean_high, "mean_high"),
           "std_low": vec(std_low, "std_low"), "std_high": vec(std_high, "std_high")}
    return check_family(fam, dim)


def check_family(fam: Any, dim: int) -> dict[str, Any]:
    """``fam`` validated (a dict from :func:`gmm_family`), else a ValueError naming the fix."""
    fix = "Build it with estimators.prior_conditioned.gmm_family(dim, ...)."
    if not isinstance(fam, dict) or fam.get("type") != "gmm":
        raise ValueError(f"family must be a dict with type 'gmm', got {fam!r:.100}. {fix}")
    if int(fam.get("dim", -1)) != dim:
        raise ValueError(f"family has dim={fam.get('dim')}, the problem has D={dim}. {fix}")
    if int(fam.get("max_components", 0)) < 1:
        raise ValueError(f"family max_components must be >= 1. {fix}")
    lo, hi = torch.tensor(fam["mean_low"]), torch.tensor(fam["mean_high"])
    slo, shi = torch.tensor(fam["std_low"]), torch.tensor(fam["std_high"])
    if not bool((hi > lo).all()):
        raise ValueError(f"family mean_high must exceed mean_low in every dimension. {fix}")
    if not bool((slo > 0).all() and (shi >= slo).all()):
        raise ValueError(f"family needs 0 < std_low <= std_high in every dimension. {fix}")
    return fam


def default_family(prior: Distribution, max_components: int = 2,
                   num: int = 20_000) -> dict[str, Any]:
    """A family around ``prior``: component means within its mean ± 2 std, standard
    deviations from 0.1 to 1.5 times its std (from ``num`` prior draws)."""
    with seeded(0):
        draws = prior.sample((num,)).float()
    m, s = draws.mean(0), draws.std(0).clamp(min=1e-6)
    return gmm_family(int(draws.shape[1]), max_components, m - 2 * s, m + 2 * s, 0.1 * s,
                      1.5 * s)


def _box(fam: dict[str, Any]) -> tuple[Tensor, ...]:
    return tuple(torch.tensor(fam[k], dtype=torch.float32)
                 for k in ("mean_low", "mean_high", "std_low", "std_high"))


def sample_family(fam: dict[str, Any], n: int) -> dict[str, Tensor]:
    """``n`` priors of the family: ``weights`` ``(n, K)`` (0 in unused slots), ``means`` and
    ``stds`` ``(n, K, D)``, ``mask`` ``(n, K)`` (True for used components)."""
    k, d = int(fam["max_components"]), int(fam["dim"])
    lo, hi, slo, shi = _box(fam)
    used = torch.randint(1, k + 1, (n,))
    mask = torch.arange(k)[None, :] < used[:, None]
    w = torch.distributions.Gamma(torch.ones(n, k), 1.0).sample() * mask
    w = w / w.sum(-1, keepdim=True)
    means = lo + (hi - lo) * torch.rand(n, k, d)
    stds = torch.exp(slo.log() + (shi.log() - slo.log()) * torch.rand(n, k, d))
    return {"weights": w, "means": means, "stds": stds, "mask": mask}


def sample_theta(params: dict[str, Tensor]) -> Tensor:
    """One ``theta`` ``(n, D)`` from each of ``n`` mixture priors."""
    n = params["weights"].shape[0]
    comp = torch.multinomial(params["weights"], 1).squeeze(-1)
    rows = torch.arange(n)
    mu, sd = params["means"][rows, comp], params["stds"][rows, comp]
    return mu + sd * torch.randn_like(mu)


def gmm_prior(params: dict[str, Tensor]) -> Distribution:
    """The mixture of one prior's parameters (``weights`` ``(K,)``, ``means``/``stds``
    ``(K, D)``, ``mask``) as a torch distribution with event shape ``(D,)``."""
    keep = params["mask"].bool()
    w, mu, sd = params["weights"][keep], params["means"][keep], params["stds"][keep]
    return MixtureSameFamily(Categorical(probs=w), Independent(Normal(mu, sd), 1),
                             validate_args=False)


def _components(prior: Distribution, dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """Weights ``(C,)``, means and stds ``(C, D)`` of a diagonal Gaussian (mixture) prior."""
    if isinstance(prior, MixtureSameFamily):
        w = prior.mixture_distribution.probs
        comp = prior.component_distribution
        if isinstance(comp, Independent) and isinstance(comp.base_dist, Normal):
            return w, comp.base_dist.loc, comp.base_dist.scale
        if isinstance(comp, MultivariateNormal):
            cov = comp.covariance_matrix
            _check_diagonal(cov)
            return w, comp.loc, torch.diagonal(cov, dim1=-2, dim2=-1).sqrt()
    elif isinstance(prior, Independent) and isinstance(prior.base_dist, Normal):
        return torch.ones(1), prior.base_dist.loc[None], prior.base_dist.scale[None]
    elif isinstance(prior, MultivariateNormal):
        _check_diagonal(prior.covariance_matrix)
        return torch.ones(1), prior.loc[None], prior.covariance_matrix.diagonal().sqrt()[None]
    raise PriorOutsideFamilyError(
        f"A {type(prior).__name__} prior is not in this estimator's family of diagonal "
        "Gaussian mixtures. Give a Gaussian or a mixture of diagonal Gaussians "
        "(sbi_core.gaussian, torch MixtureSameFamily of Independent Normals), or use "
        "with_prior(new_prior, method='reweight') (importance resampling) instead.")


def _check_diagonal(cov: Tensor) -> None:
    off = cov - torch.diag_embed(torch.diagonal(cov, dim1=-2, dim2=-1))
    if float(off.abs().max()) > 1e-6 * float(cov.abs().max()):
        raise PriorOutsideFamilyError(
            "The new prior has correlated dimensions (a full covariance); the family has "
            "diagonal components. Use with_prior(new_prior, method='reweight'), or retrain.")


def gmm_params(prior: Any, fam: dict[str, Any], rtol: float = 1e-4) -> dict[str, Tensor]:
    """``prior``'s parameters padded to the family's ``K`` slots (as in
    :func:`sample_family`, batch of one); :class:`PriorOutsideFamilyError` when it is not a
    member (wrong type, too many components, a mean or std outside the family's ranges)."""
    prior = as_prior(prior)
    d, k = int(fam["dim"]), int(fam["max_components"])
    if tuple(prior.event_shape) != (d,):
        raise PriorOutsideFamilyError(f"The new prior has event shape "
                                      f"{tuple(prior.event_shape)}; the posterior is over D={d}.")
    w, mu, sd = (t.detach().float().reshape(-1, *t.shape[1:]) for t in _components(prior, d))
    mu, sd = mu.expand(w.shape[0], d), sd.expand(w.shape[0], d)
    lo, hi, slo, shi = _box(fam)

    def r(t: Tensor) -> list:
        return torch.round(t, decimals=4).tolist()

    problems = []
    if w.shape[0] > k:
        problems.append(f"{w.shape[0]} components (the family has at most {k})")
    span = hi - lo
    if bool(((mu < lo - rtol * span) | (mu > hi + rtol * span)).any()):
        problems.append(f"component means {r(mu)} outside the family's mean box "
                        f"[{r(lo)}, {r(hi)}]")
    if bool(((sd < slo * (1 - rtol)) | (sd > shi * (1 + rtol))).any()):
        problems.append(f"standard deviations {r(sd)} outside the family's range "
                        f"[{r(slo)}, {r(shi)}]")
    if problems:
        raise PriorOutsideFamilyError(
            "The new prior is outside the family the estimator was trained on: "
            + "; ".join(problems) + ". Its posterior would be an extrapolation. Use "
            "with_prior(new_prior, method='reweight') (importance resampling from this "
            "posterior), or retrain with a wider family (gmm_family(...)).")
    c = w.shape[0]
    pad = k - c
    return {"weights": torch.cat([w / w.sum(), torch.zeros(pad)])[None],
            "means": torch.cat([mu, mu[:1].expand(pad, d)])[None],
            "stds": torch.cat([sd, sd[:1].expand(pad, d)])[None],
            "mask": (torch.arange(k) < c)[None]}


# ---------------------------------------------------------------------- the estimator
class PriorConditionedNPE(nn.Module):
    """``q(theta | x, prior)``: a fused MAF whose context is the standardized ``x`` and the
    attention-pooled embedding of the prior's component tokens.

    Inputs ``xa`` ``(N, F)`` pack ``x`` (flattened), the tokens and the mask
    (:meth:`pack`); the training loop and :meth:`loss` see only these packed rows.
    """

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        cfg = {**DEFAULTS, **config}
        self.config = cfg
        self.family = check_family(cfg["family"], int(cfg["theta_dim"]))
        d, self.x_shape = int(cfg["theta_dim"]), tuple(cfg["x_shape"])
        self.theta_dim, self.k = d, int(self.family["max_components"])
        self.x_dim = int(math.prod(self.x_shape))
        h, hp = int(cfg["hidden_features"]), int(cfg["prior_features"])
        for name, shape in (("theta_mean", (d,)), ("theta_std", (d,)), ("x_mean", (self.x_dim,)),
                            ("x_std", (self.x_dim,)), ("x_min", self.x_shape),
                            ("x_max", self.x_shape)):
            self.register_buffer(name, torch.zeros(shape) if "std" not in name
                                 else torch.ones(shape))
        self.token_net = nn.Sequential(nn.Linear(1 + 2 * d, hp), nn.GELU(), nn.Linear(hp, hp))
        self.attention = nn.MultiheadAttention(hp, int(cfg["num_heads"]), batch_first=True)
        self.norm = nn.LayerNorm(hp)
        self.pool_net = nn.Sequential(nn.Linear(hp, hp), nn.GELU(), nn.Linear(hp, hp))
        self.density = build_flow("fmaf", d, self.x_dim + hp, h, int(cfg["num_transforms"]),
                                  int(cfg["num_blocks"]))

    # packing -------------------------------------------------------------------
    def pack(self, x: Tensor, params: dict[str, Tensor]) -> Tensor:
        """``x`` ``(N, *x_shape)`` and ``N`` priors (or one, broadcast) → ``(N, F)``."""
        n = x.shape[0]
        w, mu, sd, mask = (params[k].to(x.device) for k in ("weights", "means", "stds", "mask"))
        tokens = torch.cat([w.unsqueeze(-1), mu, sd], -1).reshape(w.shape[0], -1)
        return torch.cat([x.reshape(n, -1).float(), tokens.float().expand(n, -1),
                          mask.float().expand(n, -1)], -1)

    def _unpack(self, xa: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        d, k = self.theta_dim, self.k
        x = xa[:, :self.x_dim]
        tok = xa[:, self.x_dim:self.x_dim + k * (1 + 2 * d)].reshape(-1, k, 1 + 2 * d)
        mask = xa[:, self.x_dim + k * (1 + 2 * d):] > 0.5
        return x, tok, mask

    def embed(self, xa: Tensor) -> Tensor:
        """Flow context ``(N, x_dim + prior_features)`` of packed rows ``xa``."""
        x, tok, mask = self._unpack(xa)
        w, mu, sd = tok[..., :1], tok[..., 1:1 + self.theta_dim], tok[..., 1 + self.theta_dim:]
        feats = torch.cat([torch.where(mask[..., None], w.clamp(min=1e-12).log(),
                                       torch.zeros_like(w)),
                           (mu - self.theta_mean) / self.theta_std,
                           (sd / self.theta_std).log()], -1)
        e = self.token_net(feats)  # (N, K, H)
        att, _ = self.attention(e, e, e, key_padding_mask=~mask, need_weights=False)
        e = self.norm(e + att)
        m = mask.float().unsqueeze(-1)
        pooled = self.pool_net((e * m).sum(1) / m.sum(1).clamp(min=1.0))
        return torch.cat([(x - self.x_mean) / self.x_std, pooled], -1)

    def fit_standardization(self, theta: Tensor, x: Tensor) -> None:
        """z-scoring of ``theta`` ``(N, D)`` and ``x`` ``(N, *x_shape)``, and the x range."""
        with torch.no_grad():
            flat = x.reshape(x.shape[0], -1)
            self.theta_mean.copy_(theta.mean(0))
            self.theta_std.copy_(theta.std(0).clamp(min=1e-6))
            self.x_mean.copy_(flat.mean(0))
            self.x_std.copy_(flat.std(0).clamp(min=1e-6))
            self.x_min.copy_(x.amin(0))
            self.x_max.copy_(x.amax(0))

    def prior_moments(self, xa: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and standard deviation ``(N, D)`` of each row's mixture prior. The flow works
        in ``theta`` standardized by them, so posteriors under narrow and wide priors alike
        are of order one there (the posterior is never much wider than its prior)."""
        _, tok, mask = self._unpack(xa)
        w = tok[..., :1] * mask[..., None]
        w = w / w.sum(1, keepdim=True).clamp(min=1e-12)
        mu, sd = tok[..., 1:1 + self.theta_dim], tok[..., 1 + self.theta_dim:]
        mean = (w * mu).sum(1)
        var = (w * (sd ** 2 + mu ** 2)).sum(1) - mean ** 2
        return mean, var.clamp(min=1e-12).sqrt()

    def log_prob(self, theta: Tensor, xa: Tensor) -> Tensor:
        """``log q(theta | x, prior)`` ``(N,)`` for paired rows ``theta`` ``(N, D)``, ``xa``."""
        mean, std = self.prior_moments(xa)
        z = (theta - mean) / std
        return self.density.log_prob(z, context=self.embed(xa)) - std.log().sum(-1)

    def loss(self, theta: Tensor, xa: Tensor) -> Tensor:
        return -self.log_prob(theta, xa)

    def sample(self, n: int, xa: Tensor) -> Tensor:
        """``n`` samples for each of ``B`` packed rows → ``(n, B, D)``."""
        mean, std = self.prior_moments(xa)
        z = self.density.sample(n, context=self.embed(xa))  # (B, n, D)
        return (z * std[:, None] + mean[:, None]).transpose(0, 1)


def build_prior_npe(theta: Tensor, x: Tensor, prior: Distribution,
                    **options: Any) -> PriorConditionedNPE:
    """An untrained :class:`PriorConditionedNPE` standardized on ``theta`` and raw ``x``
    ``(N, *x_shape)`` (``options["family"]`` required, see :func:`gmm_family`)."""
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"Unknown prior_npe options {sorted(unknown)}; valid: "
                        f"{sorted(DEFAULTS)} and the training options of sbi_core.TrainConfig.")
    config = {**DEFAULTS, **options, "theta_dim": int(theta.shape[1]),
              "x_shape": list(x.shape[1:])}
    config.pop("num_simulations", None)
    est = PriorConditionedNPE(config)
    est.fit_standardization(theta, x)
    return est


def simulate_family(problem: Problem, fam: dict[str, Any], n: int, seed: int = 0,
                    chunk_size: int | None = None) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """``n`` triples: priors of the family, one ``theta`` from each *inside the problem
    prior's support* (so each training prior is a family member truncated to that support;
    a simulator is never called where the problem's prior has no mass), ``x`` simulated with
    :func:`sbi_core.simulate` (seeded per chunk; failed or non-finite simulations are
    dropped with a warning)."""
    from sbi_core.simulation import DEFAULT_CHUNK_SIZE, simulate

    if problem.simulator is None:
        raise ValueError("Prior-conditioned NPE simulates parameters from many priors, but this "
                         "problem has no simulator. Give the Problem a simulator.")
    params, theta = draw_inside_support(problem.prior, fam, n)
    sims = simulate(problem, theta=theta, seed=seed, progress=False,
                    chunk_size=chunk_size or DEFAULT_CHUNK_SIZE)
    x = sims.x.float()
    ok = sims.valid.bool() & torch.isfinite(x.reshape(n, -1)).all(-1)
    if not bool(ok.all()):
        first = sims.provenance.get("first_error") if isinstance(sims.provenance, dict) else None
        warnings.warn(f"Dropped {int((~ok).sum())} of {n} simulations that failed or returned "
                      f"non-finite x{f' (first error: {first})' if first else ''}.",
                      stacklevel=3)
        theta, x = theta[ok], x[ok]
        params = {k: v[ok] for k, v in params.items()}
    return theta, x, params


def draw_inside_support(prior: Distribution, fam: dict[str, Any], n: int,
                        tries: int = 20) -> tuple[Tensor, dict[str, Tensor]]:
    """``n`` priors of the family and one ``theta`` ``(n, D)`` from each, inside ``prior``'s
    support: rejected draws are redrawn from the same mixture up to ``tries`` times, and
    mixtures with (almost) no mass inside are replaced by new ones. Raises a ValueError
    naming the fix when fewer than 1% of the family's draws fall inside the support."""
    from sbi_core.priors import within_support

    kept_params: list[dict[str, Tensor]] = []
    kept_theta: list[Tensor] = []
    have, drawn = 0, 0
    while have < n:
        m = max(2 * (n - have), 64)
        params = sample_family(fam, m)
        theta = sample_theta(params)
        inside = within_support(prior, theta)
        for _ in range(tries):
            if bool(inside.all()):
                break
            redo = ~inside
            theta[redo] = sample_theta({k: v[redo] for k, v in params.items()})
            inside = within_support(prior, theta)
        drawn += m
        kept_params.append({k: v[inside] for k, v in params.items()})
        kept_theta.append(theta[inside])
        have += int(inside.sum())
        if have < 0.01 * drawn:
            raise ValueError(
                f"Only {have} of {drawn} parameters drawn from the prior family fall inside the "
                "problem prior's support: the family's means/standard deviations "
                f"({ {k: fam[k] for k in ('mean_low', 'mean_high', 'std_low', 'std_high')} }) "
                "lie mostly outside it. Give a family inside the prior's support "
                "(gmm_family(dim, mean_low=..., mean_high=..., std_high=...)).")
    params = {k: torch.cat([p[k] for p in kept_params])[:n] for k in kept_params[0]}
    return params, torch.cat(kept_theta)[:n]


def fit_prior_conditioned(problem: Problem, sims: tuple[Tensor, Tensor] | None = None,
                          seed: int = 0, **options: Any) -> PriorConditionedPosterior:
    """Train a prior-conditioned NPE on ``num_simulations`` new triples (default
    ``len(sims)``) from ``family`` (default :func:`default_family` of the problem's prior)."""
    train_config, est_options = split_options({**TRAIN_DEFAULTS, **options, "seed": seed})
    n = est_options.get("num_simulations") or (None if sims is None else int(sims[0].shape[0]))
    if not n or int(n) < 10:
        raise ValueError("prior_npe needs num_simulations >= 10 (or sims to size the run).")
    fam = est_options.get("family") or default_family(problem.prior)
    fam = check_family(fam, problem.dim)
    est_options["family"] = fam
    with seeded(seed):
        theta, x, params = simulate_family(problem, fam, int(n), seed=seed)
    torch.manual_seed(seed)
    estimator = build_prior_npe(theta, x, problem.prior, **est_options)
    xa = estimator.pack(x, params)
    history = train(estimator, theta, xa, train_config).to_dict()
    history["num_simulations"] = int(n)
    return _make_posterior(estimator, problem.prior, problem.spec(), history)


# ---------------------------------------------------------------------- the posterior
class PriorConditionedPosterior(Posterior):
    """Posterior of a :class:`PriorConditionedNPE` under one prior of its family.

    ``with_prior(new_prior)`` is one forward pass for a prior of the family
    (:class:`PriorOutsideFamilyError` otherwise, naming ``method="reweight"``). Made by
    ``fit`` under the problem's prior when that is in the family; otherwise ``sample``
    asks for ``with_prior`` first. ``log_prob`` is the flow's normalized density.
    """

    method = "prior_npe"

    def __init__(self, estimator: PriorConditionedNPE, prior: Distribution,
                 problem_spec: dict[str, Any], history: dict[str, Any] | None = None,
                 conditioning: dict[str, Any] | None = None, **kwargs: Any):
        params = None
        if conditioning is not None:
            params = {k: torch.as_tensor(v) for k, v in conditioning.items()}
            params["mask"] = params["mask"].bool()
            prior = gmm_prior({k: v[0] for k, v in params.items()})
        else:
            try:
                params = gmm_params(prior, estimator.family)
            except PriorOutsideFamilyError:
                params = None
        super().__init__(estimator, prior, problem_spec, history, **kwargs)
        self.params = params

    @property
    def config(self) -> dict[str, Any]:
        """Saved with the model: the current prior's mixture parameters (plain lists)."""
        if self.params is None:
            return {}
        return {"conditioning": {k: v.tolist() for k, v in self.params.items()}}

    def with_prior(self, new_prior: Any, method: str = "auto", **options: Any) -> Posterior:
        """The posterior under ``new_prior``: one forward pass for a prior of the family
        (``method="auto"`` or ``"conditioned"``), importance resampling for
        ``method="reweight"``."""
        if method == "reweight":
            from sbi_core.prior_change import ReweightedPosterior

            return ReweightedPosterior(self, new_prior, **options)
        if method not in ("auto", "conditioned"):
            raise ValueError(f"with_prior(method={method!r}): use 'auto', 'conditioned' or "
                             "'reweight'.")
        if options:
            raise TypeError(f"with_prior options {sorted(options)} apply to method='reweight' "
                            "only.")
        new_prior = as_prior(new_prior)
        params = gmm_params(new_prior, self.estimator.family)
        post = PriorConditionedPosterior(self.estimator, new_prior, self.problem_spec,
                                         self.history, range_check=self.range_check)
        post.params = params
        post.detector, post.misspecification = self.detector, self.misspecification
        post.max_seconds, post._default_x = self.max_seconds, self._default_x
        return post

    def _packed(self, xs: Tensor) -> Tensor:
        if self.params is None:
            raise ValueError(
                "This prior-conditioned posterior has no prior in its family yet (the "
                "problem's prior is not a diagonal Gaussian mixture inside the family): call "
                "posterior.with_prior(prior) with a prior of the family first "
                f"({self.estimator.family}).")
        dev = _device(self.estimator)
        return self.estimator.pack(xs.to(dev), self.params)

    def _sample_batched(self, n: int, xs: Tensor, budget: Budget | None = None,
                        **kwargs: Any) -> Tensor:
        return self.estimator.sample(n, self._packed(xs)).cpu()

    def _log_prob_batched(self, theta: Tensor, xs: Tensor, **kwargs: Any) -> Tensor:
        n, b, d = theta.shape
        xa = self._packed(xs)
        xa = xa.unsqueeze(0).expand(n, *xa.shape).reshape(n * b, -1)
        return self.estimator.log_prob(theta.reshape(n * b, d).to(xa.device), xa) \
            .reshape(n, b).cpu()

    def _differentiable_log_prob(self, theta: Tensor, xs: Tensor) -> Tensor:
        return self.estimator.log_prob(theta.to(_device(self.estimator)),
                                       self._packed(xs)).cpu()


def _make_posterior(estimator: PriorConditionedNPE, prior: Distribution,
                    problem_spec: dict[str, Any], history: dict[str, Any] | None = None,
                    **kwargs: Any) -> PriorConditionedPosterior:
    return PriorConditionedPosterior(estimator, prior, problem_spec, history, **kwargs)


METHOD = Method(
    name="prior_npe",
    build=build_prior_npe,
    from_config=PriorConditionedNPE,
    make_posterior=_make_posterior,
    train_defaults=TRAIN_DEFAULTS,
    fit=fit_prior_conditioned,
    description="Prior-conditioned NPE: trained over a family of Gaussian-mixture priors, so "
                "with_prior(new_prior) is one forward pass (docs/prior_change.md).",
)
