r"""Deep ensembles of NPE estimators, trained together as one batched model.

``K`` NPE estimators with the same architecture and standardization but different random
initializations are trained by one call of the shared training loop on the mean of their
losses,

.. math:: \mathcal{L}(\phi_{1:K}) = \frac{1}{K} \sum_{k=1}^K -\log q_{\phi_k}(\theta \mid x),

(the sum divided by ``K``: each member gets its own maximum-likelihood gradient, Adam is
invariant to the common factor, and the recorded losses and ``min_delta`` stay in
per-member nats). All members are evaluated in **one** forward pass: their parameters are
stacked along a leading member dimension and one member module is called under
:func:`torch.func.vmap` with :func:`torch.func.functional_call`. Flows whose operations
``vmap`` cannot batch (the nflows NSF's data-dependent masking, recurrent embeddings) fall
back to evaluating the members one after another, with the same results.

Early stopping watches the mean validation loss of the members: the members are
exchangeable copies of one model trained on the same batches, so their validation curves
move together, and one loop keeps one best-weights snapshot (per-member stopping would
need a snapshot and a frozen optimizer state per member).

The posterior is the uniform mixture :math:`\frac{1}{K}\sum_k q_{\phi_k}(\theta \mid x)`:

- ``log_prob`` = ``logsumexp_k log q_k - log K`` (exact);
- ``sample`` draws a member index per draw, then each member's draws in one batched call
  (exact mixture sampling; the draws come out in random member order).

Deep ensembles are more conservative (better calibrated) than their average member
(Hermans et al., "A Trust Crisis in Simulation-Based Inference?", TMLR 2022); the numbers
for sbi-core are in docs/ensembles.md.

Example::

    posterior = fit(problem, sims, ensemble=5)       # method "npe_ensemble"
    posterior.sample((1000,), x=x_o)
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution
from torch.func import functional_call, vmap

from estimators.npe import NPEEstimator, build_npe, train_defaults
from estimators.robust_training import npe_training_loss
from sbi_core.methods import Method
from sbi_core.posterior import DirectPosterior

__all__ = ["EnsembleEstimator", "build_ensemble", "ensemble_method_name", "METHOD",
           "DEFAULT_MEMBERS"]

#: Members of ``method="npe_ensemble"`` when ``ensemble=`` is not given.
DEFAULT_MEMBERS = 5
#: Methods that ``fit(..., ensemble=K)`` turns into an ensemble.
_ENSEMBLE_OF = {"npe": "npe_ensemble", "npe_ensemble": "npe_ensemble"}


def check_members(k: Any) -> int:
    """``k`` as a number of members (an integer >= 2), or a ValueError saying what to pass."""
    if isinstance(k, bool) or not isinstance(k, (int, float)) or int(k) != k or int(k) < 2:
        raise ValueError(f"ensemble={k!r}: pass the number of members as an integer >= 2 "
                         "(e.g. ensemble=5), or leave ensemble out for a single estimator.")
    return int(k)


def ensemble_method_name(method: str, k: Any) -> str:
    """The registered method that trains ``method`` as an ensemble of ``k`` members (checked)."""
    check_members(k)
    name = _ENSEMBLE_OF.get(str(method).lower())
    if name is None:
        raise ValueError(f"ensemble= works with method='npe' (posterior = mixture of the "
                         f"members), not method={method!r}; train method='npe' or leave "
                         "ensemble out.")
    return name


class EnsembleEstimator(nn.Module):
    """``K`` :class:`~estimators.npe.NPEEstimator` members; the density is their uniform
    mixture.

    Args:
        config: an NPE estimator config plus ``"ensemble"`` (the number of members ``K``).
        members: already built members (:func:`build_ensemble`); default: ``K`` fresh ones
            from ``config`` (their weights are then loaded from a model file).
        embedding: the user's embedding module when ``config["embedding"]`` records one
            (``load(path, embedding=...)``); each member gets its own copy.
    """

    def __init__(self, config: dict[str, Any], members: list[NPEEstimator] | None = None,
                 embedding: nn.Module | None = None):
        super().__init__()
        k = check_members(config.get("ensemble", DEFAULT_MEMBERS))
        member_cfg = {key: v for key, v in config.items() if key != "ensemble"}
        if members is None:
            members = [NPEEstimator(member_cfg, embedding=None if embedding is None
                                    else copy.deepcopy(embedding)) for _ in range(k)]
        if len(members) != k:
            raise ValueError(f"config says ensemble={k} but {len(members)} members were given.")
        self.members = nn.ModuleList(members)
        self.config = {**members[0].config, "ensemble": k}
        self.theta_dim, self.x_shape = members[0].theta_dim, members[0].x_shape
        self._vmap_ok: bool | None = None  # None: not tried yet
        self._template: nn.Module | None = None

    @property
    def num_members(self) -> int:
        return len(self.members)

    # ------------------------------------------------------------------ members as one batch
    def _stacked(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Member parameters stacked along a leading ``(K, ...)`` dimension (differentiable:
        gradients flow back to each member) and the shared buffers of member 0."""
        names = [n for n, _ in self.members[0].named_parameters()]
        per_member = [dict(m.named_parameters()) for m in self.members]
        params = {n: torch.stack([p[n] for p in per_member]) for n in names}
        return params, dict(self.members[0].named_buffers())

    def _member_log_probs(self, theta: Tensor, x: Tensor) -> Tensor:
        """``log q_k(theta | x)`` of every member for paired rows → ``(K, N)``: one vmapped
        pass when the flow allows it, else member by member."""
        if self._vmap_ok is not False:
            try:
                out = self._vmapped_log_probs(theta, x)
                self._vmap_ok = True
                return out
            except (RuntimeError, NotImplementedError):
                if self._vmap_ok:  # vmap worked before: this is a real error
                    raise
                self._vmap_ok = False  # e.g. data-dependent shapes (nflows NSF)
        return torch.stack([m.log_prob(theta, x) for m in self.members])

    def _vmapped_log_probs(self, theta: Tensor, x: Tensor) -> Tensor:
        if self._template is None:
            template = _LogProb(copy.deepcopy(self.members[0]).to("meta"))
            object.__setattr__(self, "_template", template)  # not a submodule: no weights
        params, buffers = self._stacked()
        k = self.num_members
        # buffers batched too (expanded, no copy): nflows accumulates log-dets in place into
        # tensors made from its inputs, which must then carry the member dimension as well
        tensors = {f"member.{n}": v for n, v in params.items()}
        tensors.update({f"member.{n}": v.expand(k, *v.shape) for n, v in buffers.items()})
        template = self._template

        def one(t: dict[str, Tensor]) -> Tensor:
            return functional_call(template, t, (theta, x))

        return vmap(one)(tensors)

    # ------------------------------------------------------------------ estimator interface
    def fit_standardization(self, theta: Tensor, x: Tensor) -> None:
        """Fit every member's z-scoring on ``theta`` ``(N, D)``, ``x`` ``(N, *x_shape)``."""
        for m in self.members:
            m.fit_standardization(theta, x)

    def log_prob(self, theta: Tensor, x: Tensor) -> Tensor:
        """Mixture density ``log (1/K) sum_k q_k(theta | x)`` for paired rows ``theta``
        ``(N, D)``, ``x`` ``(N, *x_shape)`` → ``(N,)``."""
        lps = self._member_log_probs(theta, x)
        return torch.logsumexp(lps, 0) - math.log(self.num_members)

    def loss(self, theta: Tensor, x: Tensor) -> Tensor:
        """Mean of the members' negative log densities ``(N,)`` (their training loss)."""
        return -self._member_log_probs(theta, x).mean(0)

    def sample(self, n: int, x: Tensor) -> Tensor:
        """``n`` mixture draws for each of ``B`` observations ``x`` → ``(n, B, D)``.

        Each draw gets a uniformly random member; each member then draws, in one batched
        call, as many samples as the observation that needs most of them, and the draws
        are put in place (exact mixture sampling; the overshoot is ~sqrt(n / K) per member).
        """
        b, k = x.shape[0], self.num_members
        device = x.device
        member = torch.randint(k, (n, b), device=device)
        onehot = nn.functional.one_hot(member, k)                      # (n, B, K)
        counts = onehot.sum(0)                                         # (B, K)
        rank = (onehot.cumsum(0) - 1).gather(2, member[..., None])[..., 0]  # (n, B)
        cols = torch.arange(b, device=device).expand(n, b)
        out = torch.zeros(n, b, self.theta_dim, device=device)
        for j, m in enumerate(self.members):
            m_j = int(counts[:, j].max())
            if m_j == 0:
                continue
            draws = m.sample(m_j, x)                                   # (m_j, B, D)
            sel = member == j
            out = out.index_put((sel.nonzero(as_tuple=True)), draws[rank[sel], cols[sel]])
        return out

    def sample_and_log_prob(self, n: int, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mixture samples ``(n, B, D)`` and their mixture log densities ``(n, B)``
        (differentiable with respect to ``x`` and the weights)."""
        theta = self.sample(n, x)
        xs = x.unsqueeze(0).expand(n, *x.shape).reshape(n * x.shape[0], *x.shape[1:])
        lp = self.log_prob(theta.reshape(-1, self.theta_dim), xs)
        return theta, lp.reshape(n, x.shape[0])

    def context(self, x: Tensor) -> Tensor:
        """Member 0's embedded, standardized observations ``(N, C)`` (misspecification
        features)."""
        return self.members[0].context(x)

    def check_observation(self, x: Tensor) -> None:
        self.members[0].check_observation(x)

    @property
    def samples_in_support(self) -> bool:
        return self.members[0].samples_in_support

    @property
    def x_min(self) -> Tensor:
        """Training range of ``x`` (shared by the members; the posterior's range check)."""
        return self.members[0].x_min

    @property
    def x_max(self) -> Tensor:
        return self.members[0].x_max

    def to_base(self, theta: Tensor, x: Tensor) -> Tensor:
        raise NotImplementedError("An ensemble is a mixture of flows and has no single "
                                  "invertible map to a standard normal base (use L-C2ST's "
                                  "general variant).")


class _LogProb(nn.Module):
    """``forward`` = the member's ``log_prob`` (what ``functional_call`` calls)."""

    def __init__(self, member: nn.Module):
        super().__init__()
        self.member = member

    def forward(self, theta: Tensor, x: Tensor) -> Tensor:
        return self.member.log_prob(theta, x)


def build_ensemble(theta: Tensor, x: Tensor, prior: Distribution, ensemble: Any = DEFAULT_MEMBERS,
                   **options: Any) -> EnsembleEstimator:
    """An untrained ensemble of ``ensemble`` NPE members built by
    :func:`~estimators.npe.build_npe` with ``options`` (each member drawing its own initial
    weights from torch's generator, seeded by ``fit``)."""
    k = check_members(ensemble)
    if options.get("regularizer") == "fim":
        raise ValueError("regularizer='fim' is not supported for ensembles; train without it "
                         "or with regularizer='noise'.")
    if isinstance(options.get("embedding"), nn.Module) and k > 1:
        warnings.warn(
            f"ensemble={k} with an embedding network given as an instance "
            f"({type(options['embedding']).__name__}(...)): every member starts from a copy of "
            "its weights, so the members differ less than independent ones would (measured: "
            "22% less disagreement in log density on one problem) and the ensemble's spread "
            "understates its uncertainty. Pass the class or a zero-argument factory "
            "(embedding=Net, embedding=lambda: Net(16)) so that each member draws its own "
            "initial weights, unless the shared start is intended (a pre-trained network).",
            UserWarning, stacklevel=4)
    # every member draws its own initial weights from torch's generator (seeded by ``fit``)
    members = [build_npe(theta, x, prior, **options) for _ in range(k)]
    return EnsembleEstimator({**members[0].config, "ensemble": k}, members=members)


def _make_posterior(estimator: EnsembleEstimator, prior: Distribution,
                    problem_spec: dict[str, Any], history: dict[str, Any] | None = None,
                    **kwargs: Any) -> DirectPosterior:
    post = DirectPosterior(estimator, prior, problem_spec, history, **kwargs)
    post.method = "npe_ensemble"
    return post


METHOD = Method(
    name="npe_ensemble",
    build=build_ensemble,
    from_config=EnsembleEstimator,
    make_posterior=_make_posterior,
    loss_fn=npe_training_loss,
    train_defaults=train_defaults,
    accepts_discrete_x=True,
    accepts_x_trials=True,
    description="Deep ensemble of NPE estimators trained as one batched model; the "
                "posterior is the uniform mixture of the members (fit(..., ensemble=K)).",
)
