r"""SNPE-C / APT: train an NPE estimator on simulations from any proposals (Greenberg et al. 2019).

In round ``r`` of sequential inference, parameters come from a proposal
:math:`\tilde p(\theta)` (e.g. the current posterior at ``x_o``) instead of the prior.
Maximum likelihood on such pairs would fit the *proposal posterior*
:math:`\tilde p(\theta\mid x) \propto p(\theta\mid x)\,\tilde p(\theta)/p(\theta)`. APT
instead fits :math:`q_\phi(\theta\mid x)` through the **atomic loss**: for each row ``i``
of a minibatch, the atom set is :math:`\theta_i` plus ``num_atoms - 1`` other parameters of
the same batch (drawn without replacement, never row ``i`` itself), and

.. math::

    \ell_{ij} = \log q_\phi(\theta_j \mid x_i) - \log p(\theta_j),\qquad
    \mathcal{L}_i = -\Bigl(\ell_{ii} - \log \sum_{j \in \text{atoms}(i)} e^{\ell_{ij}}\Bigr).

The proposal density never enters, so all rounds' simulations are pooled and trained on
together, whatever proposals produced them; at the optimum ``q_phi`` is the posterior.

Both densities are evaluated in **parameter space**: ``NPEEstimator.log_prob`` already
adds the log-Jacobians of its z-scoring and of ``theta_transform="unconstrained"``, and
``p`` is the prior's ``log_prob``. (z-scoring adds the same constant to every atom and
cancels; the unconstrained transform's Jacobian differs between atoms and does not.)
The estimator's z-scoring is **not** refitted: its weights were learned in that scaling.
Build the estimator on the pooled data (``build_npe(theta_all, x_all, prior, ...)``) if you
want it fitted to all rounds.

Pitfall (leakage): every atom is a simulated parameter inside the prior's support, so the
loss never penalizes mass that ``q`` puts outside a bounded prior. ``DirectPosterior``
rejects such samples and renormalizes ``log_prob``; an estimator with
``theta_transform="unconstrained"`` cannot leak at all (recommended with box priors).
See docs/apt_and_restriction.md. For an MDN estimator with a Gaussian-mixture proposal
the non-atomic variant is in :mod:`estimators.apt_mdn`.

Example (two rounds)::

    est = build_npe(theta1, x1, prior)                 # round 1: prior simulations
    train(est, theta1, x1)
    post = METHOD.make_posterior(est, prior, problem.spec())
    theta2 = post.sample((n,), x=x_o); x2 = simulate(problem, theta=theta2).x
    train_apt(est, cat([theta1, theta2]), cat([x1, x2]), prior)   # all rounds
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from sbi_core.priors import prior_log_prob
from sbi_core.training import TrainConfig, TrainingHistory, train

__all__ = ["train_apt", "apt_loss", "apt_round_loss", "atom_indices", "atomic_log_probs",
           "APT_TRAIN_DEFAULTS"]

LossFn = Callable[[nn.Module, Tensor, Tensor], Tensor]

#: Overrides of the NPE training defaults of the estimator's flow
#: (``estimators.npe.train_defaults``) used when ``train_apt`` gets no config. Empty: APT
#: trains with the same (benchmarked) settings as NPE.
APT_TRAIN_DEFAULTS: dict[str, Any] = {}


def atom_indices(batch_size: int, num_atoms: int,
                 generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> Tensor:
    """Row indices ``(B, num_atoms)`` of the atoms: column 0 is the row itself, columns
    ``1..num_atoms-1`` are distinct other rows of the batch, drawn uniformly without replacement.

    Vectorized Floyd sampling over all rows at once (``num_atoms - 1`` steps, memory
    ``O(B * num_atoms)``): the other atoms of row ``i`` are ``(i + o) mod B`` for a uniform
    random set of distinct offsets ``o`` in ``1..B-1``.
    """
    b, m = int(batch_size), int(num_atoms)
    if m < 1 or m > b:
        raise ValueError(f"num_atoms must lie in [1, batch size {b}]; got {m}.")
    rows = torch.arange(b, device=device)
    n = b - 1  # candidate offsets 1..n
    chosen = torch.empty(b, m - 1, dtype=torch.long, device=device)
    for k, j in enumerate(range(n - (m - 1) + 1, n + 1)):
        # Floyd: t uniform in 1..j; take t unless already chosen, then take j (new for sure).
        t = torch.randint(1, j + 1, (b,), generator=generator, device="cpu").to(rows.device)
        seen = (chosen[:, :k] == t[:, None]).any(1)
        chosen[:, k] = torch.where(seen, torch.full_like(t, j), t)
    others = (rows[:, None] + chosen) % b
    return torch.cat([rows[:, None], others], 1)


def atomic_log_probs(estimator: nn.Module, theta: Tensor, x: Tensor, idx: Tensor) -> Tensor:
    """``log q(theta[idx[i, j]] | x[i])`` ``(B, M)`` for atom indices ``idx`` ``(B, M)``.

    One pass over the ``B * M`` pairs. For an ``NPEEstimator`` the observation is embedded
    once per row (not once per atom); any other estimator with ``log_prob(theta (N, D),
    x (N, *x_shape)) -> (N,)`` gets the repeated observations.
    """
    b, m = idx.shape
    atoms = theta[idx.reshape(-1)]  # (B*M, D)
    if all(hasattr(estimator, a) for a in ("context", "density", "_to_z")):
        ctx = estimator.context(x).repeat_interleave(m, 0)  # embed each x once
        z, lad = estimator._to_z(atoms)
        lq = estimator.density.log_prob(z, context=ctx) + lad
    else:
        lq = estimator.log_prob(atoms, x.repeat_interleave(m, 0))
    return lq.reshape(b, m)


def apt_loss(prior: Distribution, num_atoms: int = 10) -> LossFn:
    """The atomic APT loss as ``loss_fn(estimator, theta (B, D), x (B, *x_shape)) -> (B,)``
    for :func:`sbi_core.training.train`.

    ``num_atoms`` is clamped to the batch size (a batch of one row has loss 0). In training
    mode the atoms are drawn from torch's global RNG (seeded by ``train``); in evaluation
    mode (validation) from a fixed seed, so validation losses of different epochs compare the
    same atom sets and early stopping is not driven by atom noise.
    """
    _check_num_atoms(num_atoms)

    def loss_fn(estimator: nn.Module, theta: Tensor, x: Tensor) -> Tensor:
        b = theta.shape[0]
        m = min(int(num_atoms), b)
        if m < 2:
            return torch.zeros(b, device=theta.device) * estimator.log_prob(theta, x)
        gen = None if estimator.training else torch.Generator().manual_seed(0)
        idx = atom_indices(b, m, gen, device=theta.device)
        lq = atomic_log_probs(estimator, theta, x, idx)  # (B, M)
        lp = prior_log_prob(prior, theta).to(lq)  # (B,), each theta once
        if not bool(torch.isfinite(lp).all()):
            raise ValueError(
                f"{int((~torch.isfinite(lp)).sum())} training parameters have prior density 0 "
                "(outside the prior's support); APT needs every theta inside the support. "
                "Sample proposals that respect the support (DirectPosterior does) or drop "
                "those rows.")
        logits = lq - lp[idx]
        return torch.logsumexp(logits, 1) - logits[:, 0]

    return loss_fn


def apt_round_loss(prior: Distribution, num_atoms: int = 10) -> LossFn:
    """The loss of SNPE-C with **per-proposal atoms** for minibatches that each hold the rows
    of one proposal (``run_sequential(..., apt_loss="atomic_proposal")``;
    ``train_apt(..., per_proposal=True)``).

    ``theta`` is ``(B, D + 1)``: the parameters and, last, the proposal id of the rows (the
    same for the whole batch; 0 = the prior). Prior rows get the plain NPE loss
    ``-log q(θ|x)`` (maximum likelihood: exact, and more informative than any contrast);
    rows of a later proposal get the atomic loss with atoms from the *same* proposal, i.e.
    draws from (about) the posterior, so the contrast is between nearby parameters and
    informs the posterior's shape (with pooled-batch atoms many atoms are prior draws that
    the estimator tells apart at almost no loss). Both terms are minimized by the true
    posterior. Measured on two_moons at 1,000 simulations it is on par with pooled atoms,
    not better (docs/sequential.md, "SNPE-C at small budgets").
    """
    atomic = apt_loss(prior, num_atoms)

    def loss_fn(estimator: nn.Module, theta: Tensor, x: Tensor) -> Tensor:
        group, theta = theta[:, -1], theta[:, :-1]
        if not bool((group == group[0]).all()):
            raise ValueError("apt_round_loss needs minibatches whose rows come from one "
                             "proposal (the last theta column is the proposal id).")
        if float(group[0]) == 0.0:
            return -estimator.log_prob(theta, x)
        return atomic(estimator, theta, x)

    return loss_fn


def train_apt(estimator: nn.Module, theta: Tensor, x: Tensor, prior: Distribution,
              proposal_log_prob_fn: Callable[[Tensor], Tensor] | None = None,
              config: TrainConfig | None = None, num_atoms: int = 10,
              batches: Any = None, per_proposal: bool = False) -> TrainingHistory:
    """(Re)train an NPE ``estimator`` in place with the atomic APT loss on all rounds' pairs.

    Args:
        estimator: an NPE estimator (``estimators.npe.NPEEstimator``; flows ``fmaf``,
            ``maf``, ``nsf`` or ``mdn``; with or without ``theta_transform="unconstrained"``),
            freshly built or already trained (training continues from its weights; its
            z-scoring is kept).
        theta: ``(N, D)`` parameters of all rounds (valid simulations only, all inside the
            prior's support).
        x: ``(N, *x_shape)`` their simulations.
        prior: the prior ``p(theta)`` of the inference problem (not the proposal).
        proposal_log_prob_fn: accepted for callers that track proposals; the atomic loss does
            not use it (the proposal cancels from the loss, as in sbi), so pooled rounds from
            different proposals need nothing per row. Must be ``None`` or callable.
        config: the :class:`~sbi_core.training.TrainConfig`; ``None`` uses the NPE training
            defaults of the estimator's flow.
        num_atoms: atoms per row (``>= 2``), clamped to the batch size with a warning.
        batches: optional :class:`~sbi_core.training.BatchSource` over the same rows with a
            fixed validation split (``run_sequential`` passes one whose split is fixed per
            round, so rows trained on in an earlier round never become validation rows: a
            fresh random split of the pooled data each round would measure the validation
            loss partly on trained rows and stop on the wrong epoch). ``None``: a seeded
            random split of ``theta, x``.
        per_proposal: ``batches`` yields minibatches of one proposal each, with the
            proposal id as an extra last theta column (0 = the prior); trains with
            :func:`apt_round_loss` (the plain NPE loss on prior rows, atoms from the row's own
            proposal otherwise). Needs ``batches``.

    Returns:
        The :class:`~sbi_core.training.TrainingHistory` (the estimator holds the best
        validation weights, as with every ``train``).
    """
    _check_num_atoms(num_atoms)
    if proposal_log_prob_fn is not None and not callable(proposal_log_prob_fn):
        raise TypeError("proposal_log_prob_fn must be a callable theta -> log density, or None.")
    cfg = config or _default_config(estimator)
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"config must be a sbi_core.TrainConfig or None, got "
                        f"{type(cfg).__name__}.")
    reg = (getattr(estimator, "config", {}) or {}).get("regularizer")
    if reg is not None:
        raise ValueError(f"train_apt does not combine with regularizer={reg!r} (the estimator's "
                         "config); build the NPE estimator without a regularizer for APT.")
    theta = torch.as_tensor(theta, dtype=torch.float32)
    x = torch.as_tensor(x, dtype=torch.float32)
    if theta.ndim != 2 or theta.shape[1] != int(prior.event_shape[0]):
        raise ValueError(f"theta must have shape (N, {int(prior.event_shape[0])}) to match the "
                         f"prior; got {tuple(theta.shape)}.")
    n = theta.shape[0]
    n_val = int(round(cfg.validation_fraction * n))
    smallest = min(n - n_val, cfg.batch_size)
    if n_val < 2 or smallest < 2:
        raise ValueError(f"{n} simulations give {n_val} validation and {n - n_val} training rows; "
                         "the atomic loss needs at least 2 of each. Simulate more.")
    if num_atoms > smallest:
        warnings.warn(f"num_atoms={num_atoms} is larger than the batch of {smallest} rows; using "
                      f"{smallest} atoms.", stacklevel=2)
    theta_transform = getattr(estimator, "theta_transform", None)
    if theta_transform is not None:
        theta_transform.check_inside(theta)
    inside = torch.isfinite(prior_log_prob(prior, theta))
    if not bool(inside.all()):
        raise ValueError(f"{int((~inside).sum())} of {n} parameters lie outside the prior's "
                         "support; APT needs every theta inside it (rounds must sample their "
                         "proposals inside the support).")
    if per_proposal:
        if batches is None:
            raise ValueError("per_proposal=True needs batches that yield one proposal's rows "
                             "per minibatch, the proposal id as the last theta column.")
        return train(estimator, batches, None, cfg, loss_fn=apt_round_loss(prior, num_atoms))
    if batches is not None:
        return train(estimator, batches, None, cfg, loss_fn=apt_loss(prior, num_atoms))
    return train(estimator, theta, x, cfg, loss_fn=apt_loss(prior, num_atoms))


def _check_num_atoms(num_atoms: Any) -> None:
    if isinstance(num_atoms, bool) or not isinstance(num_atoms, int) or num_atoms < 2:
        raise ValueError(f"num_atoms must be an integer >= 2 (the true parameter and at least one "
                         f"contrasting atom); got {num_atoms!r}.")


def _default_config(estimator: nn.Module) -> TrainConfig:
    from estimators.npe import train_defaults

    options = getattr(estimator, "config", {}) or {}
    kw = {**train_defaults(options), **APT_TRAIN_DEFAULTS}
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in kw.items() if k in names})
