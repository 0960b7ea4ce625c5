"""The one training loop every estimator goes through.

An estimator is an ``nn.Module`` with ``loss(theta, x) -> Tensor[N]`` (per-sample loss).
The loop: Adam, minibatches shuffled by index each epoch with the data kept on the
device as tensors, a held-out validation split, gradient clipping, early stopping on
the validation loss with the best weights restored, and caps on epochs and wall time.
A diverging loss or Ctrl-C stops training with the best weights so far, never losing them.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

__all__ = ["TrainConfig", "TrainingHistory", "train", "split_options"]

LossFn = Callable[[nn.Module, Tensor, Tensor], Tensor]


@dataclass
class TrainConfig:
    """Settings of :func:`train`. Defaults were chosen by ``benchmarks/`` (docs/performance.md).

    ``num_threads``: torch intra-op threads while training (restored afterwards); ``None``
    keeps the process setting. On a shared or 2-core CPU, ``1`` avoids oversubscription.
    """

    batch_size: int = 256
    learning_rate: float = 1e-3
    validation_fraction: float = 0.1
    stop_after_epochs: int = 20
    max_epochs: int = 2000
    max_seconds: float | None = None
    clip_max_norm: float | None = 5.0
    device: str = "cpu"
    seed: int = 0
    progress: bool = True
    lr_decay_on_plateau: bool = True
    num_threads: int | None = None


@dataclass
class TrainingHistory:
    """Per-epoch losses and the outcome of a training run (plain values, saved with models)."""

    train_loss: list[float] = field(default_factory=list)
    validation_loss: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    best_epoch: int = -1
    best_validation_loss: float = math.inf
    stopped: str = ""
    seconds: float = 0.0
    num_train: int = 0
    num_validation: int = 0
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def epochs(self) -> int:
        return len(self.train_loss)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["epochs"] = self.epochs
        if not math.isfinite(d["best_validation_loss"]):
            d["best_validation_loss"] = None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainingHistory:
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        if kwargs.get("best_validation_loss") is None:
            kwargs["best_validation_loss"] = math.inf
        return cls(**kwargs)


def split_options(options: dict[str, Any]) -> tuple[TrainConfig, dict[str, Any]]:
    """Split keyword options into a :class:`TrainConfig` and the remaining (estimator) options."""
    names = {f.name for f in fields(TrainConfig)}
    train_kw = {k: v for k, v in options.items() if k in names}
    rest = {k: v for k, v in options.items() if k not in names}
    return TrainConfig(**train_kw), rest


def _default_loss(estimator: nn.Module, theta: Tensor, x: Tensor) -> Tensor:
    return estimator.loss(theta, x)


def train(
    estimator: nn.Module,
    theta: Tensor,
    x: Tensor,
    config: TrainConfig | None = None,
    loss_fn: LossFn | None = None,
    **overrides: Any,
) -> TrainingHistory:
    """Train ``estimator`` in place on ``theta`` ``(N, D)`` and ``x`` ``(N, *x_shape)``.

    Args:
        estimator: module with ``loss(theta, x) -> Tensor[N]``.
        theta, x: training pairs (only valid simulations).
        config: a :class:`TrainConfig`; keyword ``overrides`` replace its fields.
        loss_fn: optional ``f(estimator, theta, x) -> Tensor[N]`` replacing ``estimator.loss``
            (regularized objectives, e.g. the FIM defense).

    Returns:
        The :class:`TrainingHistory`; the estimator holds the best validation weights.
    """
    cfg = _replace(config or TrainConfig(), overrides)
    loss_fn = loss_fn or _default_loss
    n = theta.shape[0]
    if x.shape[0] != n:
        raise ValueError(f"theta has {n} rows but x has {x.shape[0]}.")
    if not (torch.isfinite(theta).all() and torch.isfinite(x).all()):
        raise ValueError(
            "Training data contain NaN or inf; pass SimulationSet.training_data() to drop invalid "
            "simulations."
        )
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but no CUDA GPU is available; use 'cpu'.")
    if cfg.num_threads is not None and cfg.num_threads < 1:
        raise ValueError(f"num_threads must be >= 1 (or None to keep torch's setting); got "
                         f"{cfg.num_threads}.")
    threads_before = torch.get_num_threads()
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    try:
        return _train(estimator, theta, x, cfg, loss_fn, device)
    finally:
        torch.set_num_threads(threads_before)


def _train(estimator: nn.Module, theta: Tensor, x: Tensor, cfg: TrainConfig, loss_fn: LossFn,
           device: torch.device) -> TrainingHistory:
    generator = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    n = theta.shape[0]

    n_val = int(round(cfg.validation_fraction * n)) if cfg.validation_fraction > 0 else 0
    if cfg.validation_fraction > 0 and (n_val < 1 or n - n_val < 2):
        raise ValueError(
            f"{n} simulations are too few for validation_fraction={cfg.validation_fraction}; "
            "simulate more or set validation_fraction=0."
        )
    perm = torch.randperm(n, generator=generator)
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    theta, x = theta.to(device, torch.float32), x.to(device, torch.float32)
    theta_tr, x_tr = theta[train_idx.to(device)], x[train_idx.to(device)]
    theta_va, x_va = theta[val_idx.to(device)], x[val_idx.to(device)]
    n_train = theta_tr.shape[0]
    batch_size = min(cfg.batch_size, n_train)

    estimator.to(device)
    optimizer = torch.optim.Adam(estimator.parameters(), lr=cfg.learning_rate)
    scheduler = (
        torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=0.5, patience=max(cfg.stop_after_epochs // 3, 1))
        if cfg.lr_decay_on_plateau and n_val else None
    )
    history = TrainingHistory(num_train=n_train, num_validation=n_val,
                              config={k: v for k, v in asdict(cfg).items()})
    best_state = _state_copy(estimator)
    since_best = 0
    start = time.perf_counter()
    bar = tqdm(range(cfg.max_epochs), desc="training", unit="epoch", disable=not cfg.progress,
               leave=False)
    try:
        for epoch in bar:
            t0 = time.perf_counter()
            estimator.train()
            order = torch.randperm(n_train, generator=generator).to(device)
            n_batches = max(n_train // batch_size, 1)
            total = torch.zeros((), device=device)
            for b in range(n_batches):
                idx = order[b * batch_size:(b + 1) * batch_size]
                loss = loss_fn(estimator, theta_tr[idx], x_tr[idx]).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.clip_max_norm is not None:
                    nn.utils.clip_grad_norm_(estimator.parameters(), cfg.clip_max_norm)
                optimizer.step()
                total += loss.detach()
            train_loss = float(total) / n_batches
            val_loss = _evaluate(estimator, loss_fn, theta_va, x_va) if n_val else train_loss
            history.train_loss.append(train_loss)
            history.validation_loss.append(val_loss)
            history.epoch_seconds.append(time.perf_counter() - t0)
            if not math.isfinite(val_loss) or not math.isfinite(train_loss):
                history.stopped = "diverged"
                warnings.warn(
                    f"Training diverged at epoch {epoch + 1} (loss {train_loss:.3g}); restored "
                    f"the best weights from epoch {history.best_epoch + 1}. Try a lower "
                    "learning_rate.", stacklevel=2)
                break
            if val_loss < history.best_validation_loss:
                history.best_validation_loss, history.best_epoch = val_loss, epoch
                best_state = _state_copy(estimator)
                since_best = 0
            else:
                since_best += 1
            if scheduler is not None:
                scheduler.step(val_loss)
            bar.set_postfix(train=f"{train_loss:.3f}", val=f"{val_loss:.3f}")
            if since_best >= cfg.stop_after_epochs:
                history.stopped = "converged"
                break
            if cfg.max_seconds is not None and time.perf_counter() - start > cfg.max_seconds:
                history.stopped = "max_seconds"
                break
        else:
            history.stopped = "max_epochs"
            warnings.warn(f"Reached max_epochs={cfg.max_epochs} before the validation loss "
                          "converged.", stacklevel=2)
    except KeyboardInterrupt:
        history.stopped = "interrupted"
        warnings.warn("Training interrupted; keeping the best weights so far.", stacklevel=2)
    finally:
        bar.close()
    if history.best_epoch < 0:
        raise RuntimeError("Training produced no finite validation loss; check the data scale "
                           "and lower the learning_rate.")
    estimator.load_state_dict(best_state)
    estimator.eval()
    history.seconds = time.perf_counter() - start
    return history


@torch.no_grad()
def _evaluate(estimator: nn.Module, loss_fn: LossFn, theta: Tensor, x: Tensor,
              chunk: int = 8192) -> float:
    estimator.eval()
    total = 0.0
    for i in range(0, theta.shape[0], chunk):
        total += float(loss_fn(estimator, theta[i:i + chunk], x[i:i + chunk]).sum())
    return total / theta.shape[0]


def _state_copy(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _replace(cfg: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    from dataclasses import replace

    unknown = set(overrides) - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise TypeError(f"Unknown training options {sorted(unknown)}; valid: "
                        f"{[f.name for f in fields(TrainConfig)]}.")
    return replace(cfg, **overrides)
