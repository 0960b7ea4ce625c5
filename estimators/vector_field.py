r"""The shared estimator of NPSE and FMPE: a conditional vector field in a standardized space.

Parameters are first mapped to the unconstrained space of the prior,
``u = T^{-1}(theta)`` with ``T = sbi_core.priors.unconstrained_transform(prior)`` (the
identity for priors on ``R^D``), then z-scored: ``z = (u - mean) / std``. The networks learn
the field of ``z``, so samples mapped back by ``T`` always lie inside a bounded prior's
support, and densities pick up the Jacobian of ``T``.

Subclasses define ``kind``, the training ``loss`` and how the raw network output becomes the
noise prediction :math:`\hat\varepsilon` (from which the score is
:math:`s = -\hat\varepsilon/\sigma_t`) and the probability-flow velocity.

The z-space prior (the prior pushed through ``T^{-1}`` and the z-scoring) is needed by the
compositional iid methods: its exact log density (autograd score, F-NPSE) and a Gaussian
approximation ``N(prior_mean_z, prior_cov_z)`` (diffused prior and prior denoiser of
GAUSS/JAC). The Gaussian is exact for Gaussian priors and moment-matched otherwise.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, MultivariateNormal, Transform

from estimators.embedding import build_embedding, prepare_embedding
from estimators.score_nets import build_field_net
from estimators.sde import Schedule, build_schedule
from estimators.standardize import Standardize, fit_standardize
from sbi_core.priors import prior_from_spec, prior_spec, support_bounds, unconstrained_transform

__all__ = ["VectorFieldEstimator", "FIELD_DEFAULTS", "make_vector_field_posterior"]

FIELD_DEFAULTS: dict[str, Any] = {
    "net": "ada_mlp",
    "hidden_features": 64,
    "num_layers": 3,
    "time_embedding_dim": 32,
    "embedding": None,
}


class VectorFieldEstimator(nn.Module):
    """Base of :class:`~estimators.npse.NPSEEstimator` and :class:`~estimators.fmpe.FMPEEstimator`.

    Args:
        config: plain values: ``theta_dim``, ``x_shape``, ``prior`` (prior spec or None),
            ``sde``, ``sde_params`` and the keys of ``FIELD_DEFAULTS``.
        prior: the prior, when ``config["prior"]`` is None (priors without a spec).
        embedding: the user's embedding module of ``x`` when ``config["embedding"]`` records
            one (see :func:`estimators.embedding.prepare_embedding`).
    """

    kind = ""

    def __init__(self, config: dict[str, Any], prior: Distribution | None = None,
                 embedding: nn.Module | None = None):
        super().__init__()
        cfg = {**FIELD_DEFAULTS, **config}
        self.config = cfg
        d, x_shape = int(cfg["theta_dim"]), tuple(cfg["x_shape"])
        self.theta_dim, self.x_shape = d, x_shape
        if prior is None:
            if cfg.get("prior") is None:
                raise ValueError("A vector-field estimator needs the prior (config['prior']).")
            prior = prior_from_spec(cfg["prior"])
        self.prior = prior
        self.transform: Transform = unconstrained_transform(prior)
        self.schedule: Schedule = build_schedule(cfg["sde"], **dict(cfg.get("sde_params") or {}))
        self.theta_norm = Standardize((d,))
        self.x_norm = Standardize(x_shape)
        self.register_buffer("x_min", torch.zeros(x_shape))
        self.register_buffer("x_max", torch.zeros(x_shape))
        self.register_buffer("prior_mean_z", torch.zeros(d))
        self.register_buffer("prior_cov_z", torch.eye(d))
        self._gen: torch.Generator | None = None
        self.embedding, context_dim = build_embedding(cfg["embedding"], x_shape, embedding)
        self.net = build_field_net(cfg["net"], d, context_dim, int(cfg["hidden_features"]),
                                   int(cfg["num_layers"]), int(cfg["time_embedding_dim"]))

    # ------------------------------------------------------------ parameter spaces
    def to_z(self, theta: Tensor) -> Tensor:
        """Prior-space ``theta`` ``(..., D)`` → standardized unconstrained ``z``."""
        return self.theta_norm(self.transform.inv(theta))

    def from_z(self, z: Tensor) -> Tensor:
        """Standardized ``z`` ``(..., D)`` → parameters in the prior's support."""
        return self.transform(self.theta_norm.inverse(z))

    def log_abs_det_from_z(self, z: Tensor) -> Tensor:
        """``log |det d theta / d z|`` ``(...)`` of :meth:`from_z`."""
        u = self.theta_norm.inverse(z)
        return self.transform.log_abs_det_jacobian(u, self.transform(u)) + \
            self.theta_norm.std.log().sum()

    def prior_log_prob_z(self, z: Tensor) -> Tensor:
        """Exact log density ``(...)`` of the prior in z-space (differentiable)."""
        return self.prior.log_prob(self.from_z(z)) + self.log_abs_det_from_z(z)

    def prior_gaussian_z(self) -> MultivariateNormal:
        """Gaussian approximation of the z-space prior (exact for Gaussian priors)."""
        return MultivariateNormal(self.prior_mean_z, self.prior_cov_z)

    # ------------------------------------------------------------ fitting
    def fit_standardization(self, theta: Tensor, x: Tensor, num_prior: int = 20_000) -> None:
        """z-score ``transform.inv(theta)`` and ``x`` on training data; z-space prior moments."""
        with torch.no_grad():
            fit_standardize(self.theta_norm, self.transform.inv(theta), "theta")
            fit_standardize(self.x_norm, x, "x")
            self.x_min.copy_(x.min(0).values)
            self.x_max.copy_(x.max(0).values)
            mean, cov = _prior_moments(self.prior)
            if mean is not None and _is_identity(self.prior):
                std = self.theta_norm.std
                self.prior_mean_z.copy_((mean - self.theta_norm.mean) / std)
                self.prior_cov_z.copy_(cov / std[:, None] / std[None, :])
            else:
                with torch.random.fork_rng():
                    torch.manual_seed(0)
                    z = self.to_z(self.prior.sample((num_prior,)).float())  # float64 priors too
                self.prior_mean_z.copy_(z.mean(0))
                self.prior_cov_z.copy_(torch.cov(z.T).reshape(self.theta_dim, self.theta_dim))

    # ------------------------------------------------------------ the field
    def context(self, x: Tensor) -> Tensor:
        """Embedded standardized observations ``(N, C)`` of ``x`` ``(N, *x_shape)``."""
        return self.embedding(self.x_norm(x))

    def raw(self, z: Tensor, context: Tensor, t: Tensor) -> Tensor:
        """Network output ``(N, D)`` for ``z`` ``(N, D)``, ``context`` ``(N, C)``, ``t`` ``(N,)``."""
        return self.net(z, context, t)

    def eps(self, z: Tensor, context: Tensor, t: Tensor) -> Tensor:
        """Predicted noise ``E[eps | z_t, x]`` ``(N, D)``."""
        raise NotImplementedError

    def score(self, z: Tensor, context: Tensor, t: Tensor) -> Tensor:
        """``grad_z log p_t(z | x)`` ``(N, D)``."""
        return -self.eps(z, context, t) / self.schedule.std(t)[:, None]

    def velocity(self, z: Tensor, context: Tensor, t: Tensor) -> Tensor:
        """Probability-flow ODE velocity ``dz/dt`` ``(N, D)``."""
        s = self.schedule
        return s.drift_scale(t)[:, None] * z - 0.5 * s.diffusion_sq(t)[:, None] * \
            self.score(z, context, t)

    def ode_time_range(self) -> tuple[float, float]:
        """``(t_lo, t_hi)`` of the probability-flow ODE used for ``log_prob``."""
        return self.schedule.t_min, self.schedule.t_max

    def sample_times(self, n: int, device: torch.device, t_lo: float, t_hi: float,
                     generator: torch.Generator | None = None) -> Tensor:
        """Training times ``(n,)``: half uniform on ``[t_lo, t_hi]``, half ``t_lo + (t_hi -
        t_lo) u^3`` so that low noise, where posteriors (and their products over iid
        observations) are resolved, gets more weight. Any positive density has the same
        minimizer; this one lowers the error of the score at small ``t``. ``generator``:
        see :meth:`draw_generator` (None: torch's global RNG)."""
        u = torch.rand(n, device=device, generator=generator)
        cube = torch.rand(n, device=device, generator=generator) < 0.5
        u = torch.where(cube, u**3, u)
        return t_lo + (t_hi - t_lo) * u

    def sample_noise(self, like: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Training noise like ``like`` from ``generator`` (None: torch's global RNG)."""
        return torch.randn(like.shape, device=like.device, dtype=like.dtype,
                           generator=generator)

    def draw_generator(self, device: torch.device) -> torch.Generator | None:
        """The generator of one loss call's times and noise: in training mode None (torch's
        global RNG); in eval mode (validation) a generator seeded anew at each call, from
        which the call draws its times and then its noise, so the validation loss is a
        deterministic function of the weights and early stopping compares like with like.
        Seed once per call, never per draw: re-seeding before the noise made it a function
        of the same uniforms as the times (corr(u, eps) = -0.36), a biased validation loss
        that ended NPSE's training too early at small budgets."""
        if self.training:
            return None
        if self._gen is None or self._gen.device != torch.device(device):
            self._gen = torch.Generator(device=device)
        self._gen.manual_seed(12345)
        return self._gen

    def loss(self, theta: Tensor, x: Tensor) -> Tensor:
        raise NotImplementedError


def build_config(kind: str, defaults: dict[str, Any], theta: Tensor, x: Tensor,
                 prior: Distribution, options: dict[str, Any]
                 ) -> tuple[dict[str, Any], bool, nn.Module | None]:
    """The plain config of an estimator, whether the prior has a spec, and the user's
    embedding module (None for built-in embeddings)."""
    valid = set(defaults) | {"sde_params"}
    unknown = set(options) - valid
    if unknown:
        raise TypeError(f"Unknown {kind.upper()} options {sorted(unknown)}; valid: "
                        f"{sorted(valid)} and the training options of sbi_core.TrainConfig.")
    try:
        spec: dict[str, Any] | None = prior_spec(prior)
    except (ValueError, AttributeError):
        spec = None
    emb_spec, module = prepare_embedding(options.get("embedding"), tuple(x.shape[1:]))
    config = {**defaults, **options, "theta_dim": int(theta.shape[1]),
              "x_shape": list(x.shape[1:]), "prior": spec, "embedding": emb_spec}
    return config, spec is not None, module


def make_vector_field_posterior(estimator: VectorFieldEstimator, prior: Distribution,
                                problem_spec: dict[str, Any],
                                history: dict[str, Any] | None = None, **kwargs: Any):
    """The :class:`~estimators.vector_field_posterior.VectorFieldPosterior` of a trained
    NPSE or FMPE estimator (the ``make_posterior`` of both methods)."""
    from estimators.vector_field_posterior import VectorFieldPosterior  # imports this module

    return VectorFieldPosterior(estimator, prior, problem_spec, history, **kwargs)


def _prior_moments(prior: Distribution) -> tuple[Tensor | None, Tensor | None]:
    """Exact mean and covariance for Gaussian-like priors with real support, else None."""
    try:
        mean = prior.mean.detach().float()
        cov = getattr(prior, "covariance_matrix", None)
        cov = cov.detach().float() if cov is not None else torch.diag(prior.variance.float())
    except (NotImplementedError, AttributeError):
        return None, None
    if not (torch.isfinite(mean).all() and torch.isfinite(cov).all()):
        return None, None
    return mean, cov


def _is_identity(prior: Distribution) -> bool:
    """True when the prior's support is all of ``R^D`` (its unconstrained map is the identity)."""
    low, high = support_bounds(prior)
    return bool(torch.isinf(low).all() and torch.isinf(high).all())
