r"""Non-atomic APT for a mixture density network (Greenberg et al. 2019, Appendix A1).

When ``q_phi(theta | x)`` is a Gaussian mixture (NPE with ``flow="mdn"``, no
``theta_transform``), the proposal ``p~(theta)`` is a Gaussian mixture (e.g. the previous
round's MDN posterior at ``x_o``, :func:`mdn_proposal`) and the prior is Gaussian or a box
uniform, the proposal posterior

.. math:: \tilde q(\theta \mid x) = \frac{q(\theta\mid x)\,\tilde p(\theta)/p(\theta)}
          {\int q\,\tilde p / p\; d\theta}

is again a Gaussian mixture, with one component per pair ``(k, l)`` of ``q``'s and the
proposal's components: precision ``P_kl = P_k + P_l - P_0`` and
``P_kl mu_kl = P_k mu_k + P_l mu_l - P_0 mu_0`` (``P_0 = 0`` for a uniform prior), and
weight ``alpha_k beta_l c_kl`` with the closed-form normalizer ``c_kl``. The loss is the
exact ``-log q~(theta_i | x_i)`` on simulations drawn from that proposal: no atoms, no
leakage within the Gaussian model. :func:`train_apt_mdn` trains, as in sbi, on the latest
round only (rows from one proposal); :func:`apt_mdn_round_loss` (what
``run_sequential(..., method="snpe_c", flow="mdn")`` uses) trains on all rounds, each row
under its own round's proposal and prior rows with the plain NPE loss. A box prior's
truncation is ignored (its density is constant inside).

Everything is computed in parameter space (the MDN's z-scoring is an affine map of each
component), in float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable

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

from sbi_core.priors import BoxUniform
from sbi_core.training import TrainConfig, TrainingHistory, train

__all__ = ["mdn_proposal", "mdn_components", "proposal_posterior_log_prob", "apt_mdn_loss",
           "apt_mdn_round_loss", "train_apt_mdn", "supports_apt_mdn"]

_LOG_2PI = math.log(2 * math.pi)


def _check_mdn(estimator: nn.Module) -> None:
    cfg = getattr(estimator, "config", {}) or {}
    if cfg.get("flow") != "mdn" or getattr(estimator, "theta_transform", None) is not None:
        raise ValueError(
            "The non-atomic APT loss needs an NPE estimator with flow='mdn' and "
            f"theta_transform=None (got flow={cfg.get('flow')!r}, theta_transform="
            f"{cfg.get('theta_transform')!r}); use train_apt (atomic loss) for other estimators.")


def mdn_components(estimator: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``q``'s mixture at observations ``x`` ``(B, *x_shape)`` in parameter space:
    log weights ``(B, K)``, means ``(B, K, D)``, Cholesky factors ``(B, K, D, D)``."""
    _check_mdn(estimator)
    mix = estimator.density._mixture(estimator.context(x))
    comp = mix.component_distribution
    std, mean = estimator.theta_norm.std, estimator.theta_norm.mean
    loc = comp.loc * std + mean
    tril = std[:, None] * comp.scale_tril  # diag(std) @ L
    return torch.log_softmax(mix.mixture_distribution.logits, -1), loc, tril


def mdn_proposal(estimator: nn.Module, x_o: Tensor) -> MixtureSameFamily:
    """The MDN posterior at one observation ``x_o`` ``(*x_shape)`` as a proposal mixture
    (detached: the proposal is fixed while the next round trains)."""
    with torch.no_grad():
        logw, loc, tril = mdn_components(estimator, torch.as_tensor(x_o, dtype=torch.float32)[None])
    return MixtureSameFamily(Categorical(logits=logw[0]),
                             MultivariateNormal(loc[0], scale_tril=tril[0]))


def _proposal_parts(proposal: Distribution) -> tuple[Tensor, Tensor, Tensor]:
    """Log weights ``(L,)``, means ``(L, D)``, precisions ``(L, D, D)`` of a Gaussian mixture
    (or of one Gaussian)."""
    if isinstance(proposal, MixtureSameFamily) and \
            isinstance(proposal.component_distribution, MultivariateNormal):
        comp = proposal.component_distribution
        return (torch.log_softmax(proposal.mixture_distribution.logits, -1).double(),
                comp.loc.double(), comp.precision_matrix.double())
    if isinstance(proposal, MultivariateNormal):
        return (torch.zeros(1, dtype=torch.float64), proposal.loc.double()[None],
                proposal.precision_matrix.double()[None])
    raise ValueError("The non-atomic APT proposal must be a Gaussian mixture "
                     "(torch MixtureSameFamily of MultivariateNormal, e.g. mdn_proposal(...)) or "
                     f"a MultivariateNormal; got {type(proposal).__name__}.")


def _prior_parts(prior: Distribution, d: int) -> tuple[Tensor, Tensor] | None:
    """Mean ``(D,)`` and precision ``(D, D)`` of a Gaussian prior; ``None`` for a box."""
    if isinstance(prior, BoxUniform):
        return None
    if isinstance(prior, MultivariateNormal):
        return prior.loc.double(), prior.precision_matrix.double()
    if isinstance(prior, Independent) and isinstance(prior.base_dist, Normal):
        return prior.mean.double(), torch.diag(1.0 / prior.variance.double())
    raise ValueError(f"The non-atomic APT loss needs a Gaussian or box-uniform prior; got "
                     f"{type(prior).__name__}. Use train_apt (atomic loss) instead.")


def _quad(prec: Tensor, v: Tensor) -> Tensor:
    return (v.unsqueeze(-2) @ prec @ v.unsqueeze(-1))[..., 0, 0]


def proposal_posterior_log_prob(theta: Tensor, logw: Tensor, loc: Tensor, tril: Tensor,
                                proposal: Distribution, prior: Distribution) -> Tensor:
    """``log q~(theta_i | x_i)`` ``(B,)`` for ``theta`` ``(B, D)`` and ``q``'s mixtures
    (``logw (B, K)``, ``loc (B, K, D)``, ``tril (B, K, D, D)``, parameter space)."""
    dt = theta.dtype
    d = theta.shape[-1]
    theta, logw, loc, tril = theta.double(), logw.double(), loc.double(), tril.double()
    eye = torch.eye(d, dtype=torch.float64)
    linv = torch.linalg.solve_triangular(tril, eye.expand_as(tril), upper=False)
    p_k = linv.transpose(-1, -2) @ linv  # (B, K, D, D)
    logdet_k = -2 * torch.diagonal(tril, dim1=-2, dim2=-1).log().sum(-1)  # log|P_k|
    beta, mu_l, p_l = _proposal_parts(proposal)
    logdet_l = torch.linalg.slogdet(p_l)[1]
    h_k, h_l = (p_k @ loc.unsqueeze(-1))[..., 0], (p_l @ mu_l.unsqueeze(-1))[..., 0]
    term_k = -0.5 * _quad(p_k, loc) + 0.5 * logdet_k  # (B, K)
    term_l = -0.5 * _quad(p_l, mu_l) + 0.5 * logdet_l  # (L,)
    prec = p_k[:, :, None] + p_l[None, None]  # (B, K, L, D, D)
    h = h_k[:, :, None] + h_l[None, None]
    term_0 = torch.zeros((), dtype=torch.float64)
    pri = _prior_parts(prior, d)
    if pri is not None:
        mu_0, p_0 = pri
        prec = prec - p_0
        h = h - p_0 @ mu_0
        term_0 = -0.5 * _quad(p_0, mu_0) + 0.5 * torch.linalg.slogdet(p_0)[1]
    chol, info = torch.linalg.cholesky_ex(prec)
    if bool((info != 0).any()):
        raise ValueError(
            "The proposal posterior is not normalizable: for some components q·proposal/prior "
            "is wider than any Gaussian (the proposal or q is broader than the prior in some "
            "direction). Use train_apt (atomic loss), or a proposal narrower than the prior.")
    mu = torch.cholesky_solve(h.unsqueeze(-1), chol)[..., 0]  # (B, K, L, D)
    logdet = 2 * torch.diagonal(chol, dim1=-2, dim2=-1).log().sum(-1)
    log_c = term_k[:, :, None] + term_l[None, None] - term_0 \
        + 0.5 * (h * mu).sum(-1) - 0.5 * logdet
    log_weight = logw[:, :, None] + beta[None, None] + log_c  # (B, K, L)
    diff = theta[:, None, None, :] - mu
    maha = (diff.unsqueeze(-2) @ chol)[..., 0, :].square().sum(-1)  # diff^T P diff, P = C C^T
    log_n = -0.5 * d * _LOG_2PI + 0.5 * logdet - 0.5 * maha
    flat = (log_weight + log_n).flatten(1)
    return (torch.logsumexp(flat, 1) - torch.logsumexp(log_weight.flatten(1), 1)).to(dt)


def apt_mdn_loss(prior: Distribution, proposal: Distribution
                 ) -> Callable[[nn.Module, Tensor, Tensor], Tensor]:
    """``loss_fn(estimator, theta (B, D), x (B, ...)) -> (B,)``: ``-log q~(theta | x)``."""
    _proposal_parts(proposal)  # validate early

    def loss_fn(estimator: nn.Module, theta: Tensor, x: Tensor) -> Tensor:
        logw, loc, tril = mdn_components(estimator, x)
        return -proposal_posterior_log_prob(theta, logw, loc, tril, proposal, prior)

    return loss_fn


def train_apt_mdn(estimator: nn.Module, theta: Tensor, x: Tensor, prior: Distribution,
                  proposal: Distribution, config: TrainConfig | None = None) -> TrainingHistory:
    """Retrain an MDN NPE estimator in place with the non-atomic APT loss.

    Args:
        theta, x: the simulations of the **latest round only**, drawn from ``proposal``.
        proposal: that round's proposal as a Gaussian mixture in parameter space
            (:func:`mdn_proposal` of the previous estimator at ``x_o``, or a
            ``MultivariateNormal``).
        prior: Gaussian (``gaussian(...)``, any ``MultivariateNormal``) or ``box_uniform``.
    """
    _check_mdn(estimator)
    _prior_parts(prior, int(prior.event_shape[0]))
    return train(estimator, torch.as_tensor(theta, dtype=torch.float32),
                 torch.as_tensor(x, dtype=torch.float32), config or TrainConfig(),
                 loss_fn=apt_mdn_loss(prior, proposal))


def supports_apt_mdn(options: dict, prior: Distribution) -> bool:
    """Whether NPE estimator ``options`` (``flow``, ``theta_transform``) and ``prior`` allow
    the non-atomic loss: an MDN without a θ transform, a Gaussian or box-uniform prior."""
    if options.get("flow") != "mdn" or options.get("theta_transform") is not None:
        return False
    try:
        _prior_parts(prior, int(prior.event_shape[0]))
    except ValueError:
        return False
    return True


def apt_mdn_round_loss(prior: Distribution, proposals: dict[int, Distribution]
                       ) -> Callable[[nn.Module, Tensor, Tensor], Tensor]:
    """The non-atomic loss on all rounds' rows, for minibatches of one proposal each
    (``sbi_core.sequential``'s per-round batches): ``theta`` ``(B, D + 1)`` carries the
    proposal id last; id 0 (the prior) gets the plain NPE loss ``-log q(θ|x)``, id ``k`` the
    exact ``-log q~(θ|x)`` under ``proposals[k]`` (a Gaussian mixture, e.g.
    :func:`mdn_proposal` of round ``k``'s estimator). Unlike :func:`train_apt_mdn` (latest
    round only, as in sbi), no simulation is dropped: every term is minimized by the true
    posterior."""
    for prop in proposals.values():
        _proposal_parts(prop)

    def loss_fn(estimator: nn.Module, theta: Tensor, x: Tensor) -> Tensor:
        group, theta = theta[:, -1], theta[:, :-1]
        if not bool((group == group[0]).all()):
            raise ValueError("apt_mdn_round_loss needs minibatches whose rows come from one "
                             "proposal (the last theta column is the proposal id).")
        k = int(group[0])
        if k == 0:
            return -estimator.log_prob(theta, x)
        if k not in proposals:
            raise ValueError(f"No proposal was given for proposal id {k}.")
        logw, loc, tril = mdn_components(estimator, x)
        return -proposal_posterior_log_prob(theta, logw, loc, tril, proposals[k], prior)

    return loss_fn
