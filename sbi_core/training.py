"""The one training loop every estimator goes through.

An estimator is an ``nn.Module`` with ``loss(theta, x) -> Tensor[N]`` (per-sample loss).
The loop: Adam (torch's fused kernel where available, :func:`make_adam`), minibatches shuffled by index each epoch with the data kept on the
device as tensors, a held-out validation split, gradient clipping, early stopping on
the validation loss with the best weights restored, and caps on epochs and wall time.
A diverging loss or Ctrl-C stops training with the best weights so far, never losing them.

Two extensions share the same loop: a streaming :class:`BatchSource` (e.g. chunks of a
zarr store larger than memory, :mod:`sbi_core.streaming`) instead of tensors, and
multi-process data parallelism (``TrainConfig(distributed=True)`` under ``torchrun``, see
:mod:`sbi_core.distributed`), where every global minibatch is split across the ranks and
gradients are averaged by :class:`torch.nn.parallel.DistributedDataParallel`.

Callbacks (``TrainConfig(callbacks=[...])`` or ``train(..., callbacks=[...])``, also
``fit(..., callbacks=[...])``) observe the loop without changing it: any object with some of
``on_epoch_end(epoch, train_loss, val_loss, lr, seconds)``, ``on_best(epoch, val_loss)`` and
``on_stop(reason, history)`` (:class:`TrainingCallback`; loggers in :mod:`sbi_core.tracking`).
Only rank 0 calls them under DDP. A callback that raises is warned about and dropped; the
training and its best weights are never lost to a logger.
"""

from __future__ import annotations

import math
import numbers
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from sbi_core.progress import progress_bar
from sbi_core.threads import module_work, thread_scope

__all__ = ["TrainConfig", "TrainingHistory", "TrainingCallback", "train", "split_options",
           "BatchSource"]

CALLBACK_HOOKS = ("on_epoch_end", "on_best", "on_stop")
LR_SCHEDULES = ("plateau", "cosine")


@runtime_checkable
class TrainingCallback(Protocol):
    """What the training loop calls; implement any subset (missing hooks are skipped).

    - ``on_epoch_end(epoch, train_loss, val_loss, lr, seconds)``: after each epoch
      (``epoch`` counts from 0; losses are per-sample means; ``lr`` the learning rate used;
      ``seconds`` the epoch's wall time).
    - ``on_best(epoch, val_loss)``: the validation loss reached a new best (weights kept).
    - ``on_stop(reason, history)``: once, after the best weights are restored; ``reason`` is
      ``history.stopped`` (``"converged"``, ``"schedule_done"`` (a cosine schedule ran to its
      end), ``"max_epochs"``, ``"max_seconds"``,
      ``"diverged"``, ``"interrupted"``; ``"failed"`` when no epoch gave a finite loss and
      ``train`` then raises) and ``history`` the :class:`TrainingHistory`.
    """

    def on_epoch_end(self, epoch: int, train_loss: float, val_loss: float, lr: float,
                     seconds: float) -> None: ...

    def on_best(self, epoch: int, val_loss: float) -> None: ...

    def on_stop(self, reason: str, history: TrainingHistory) -> None: ...

LossFn = Callable[[nn.Module, Tensor, Tensor], Tensor]


@dataclass
class TrainConfig:
    """Settings of :func:`train`. Defaults were chosen by ``benchmarks/`` (docs/performance.md).

    ``num_threads``: torch intra-op threads while training (restored afterwards); ``"auto"``
    (default) picks them with :func:`sbi_core.threads.choose_threads` (1 for small networks,
    else the free cores), ``None`` keeps the process setting.
    ``ema_decay``: if set (e.g. ``0.995``), an exponential moving average of the weights is
    updated after every step; validation, early stopping and the returned weights use the
    average (Polyak averaging), which smooths out minibatch noise at the end of training.
    ``min_delta``: early stopping counts an epoch as progress only if the validation loss
    beats the best by more than this (nats per sample); the best weights are kept anyway.
    ``lr_schedule``: ``"plateau"`` (default: the learning rate is halved when the validation
    loss stalls, if ``lr_decay_on_plateau``; training ends by early stopping) or ``"cosine"``
    (a fixed budget of ``schedule_epochs`` epochs (``"auto"``: :func:`auto_schedule_epochs`
    of the number of simulations), or ``max_epochs`` if smaller: linear
    warm-up over the first ``warmup_epochs`` epochs, then cosine decay to 0 per step;
    training ends when the schedule does; after ``stop_after_epochs`` epochs without a new
    best validation loss the rest of the decay is compressed into ``stall_decay`` of the
    schedule's epochs, which then runs to its end, or, with ``stall_decay=0``, training ends
    at the stall; the best weights are restored either way).
    ``overfit_rise``: if set (nats, e.g. ``0.05``), ``overfit_epochs`` epochs without a real
    gain already count as a stall when each of the last 5 validation losses is above the best
    by more than ``overfit_rise`` (the model is overfitting: more epochs only make it worse;
    a flat plateau is not ended early) (:func:`is_stalled`).
    ``stall_decay``: see ``lr_schedule="cosine"`` (default ``STALL_DECAY_FRACTION`` = 0.1;
    the NPE ``"accurate"`` preset uses 0: in the benchmark the compressed decay never gave a
    new best validation loss, docs/performance.md, "Issue 18: the stall ends training").
    """

    batch_size: int = 256
    learning_rate: float = 1e-3
    validation_fraction: float = 0.1
    stop_after_epochs: int = 20
    min_delta: float = 0.0
    max_epochs: int = 2000
    max_seconds: float | None = None
    clip_max_norm: float | None = 5.0
    device: str = "cpu"
    seed: int = 0
    progress: bool | None = None
    lr_decay_on_plateau: bool = True
    distributed: bool = False
    num_threads: int | str | None = "auto"
    ema_decay: float | None = None
    lr_schedule: str = "plateau"
    schedule_epochs: int | str | None = None
    warmup_epochs: float = 0.0
    stall_decay: float = 0.1
    overfit_rise: float | None = None
    overfit_epochs: int = 25
    callbacks: tuple[Any, ...] | list[Any] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        check_train_config(self)


def check_train_config(cfg: TrainConfig) -> None:
    """Raise ``ValueError`` naming the setting and its valid range for any bad value."""

    def bad(name: str, rule: str) -> ValueError:
        return ValueError(f"TrainConfig.{name} must be {rule}; got {getattr(cfg, name)!r}.")

    def is_int(v: Any) -> bool:
        return isinstance(v, numbers.Integral) and not isinstance(v, bool)

    def is_num(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    for name in ("batch_size", "max_epochs", "stop_after_epochs"):
        if not is_int(getattr(cfg, name)) or getattr(cfg, name) < 1:
            raise bad(name, "an integer >= 1")
    if not is_num(cfg.learning_rate) or cfg.learning_rate <= 0:
        raise bad("learning_rate", "a finite number > 0")
    if not is_num(cfg.validation_fraction) or not 0 < cfg.validation_fraction < 1:
        raise bad("validation_fraction", "a number strictly between 0 and 1")
    if not is_num(cfg.min_delta) or cfg.min_delta < 0:
        raise bad("min_delta", "a finite number >= 0")
    if cfg.max_seconds is not None and (not isinstance(cfg.max_seconds, (int, float))
                                        or isinstance(cfg.max_seconds, bool)
                                        or not cfg.max_seconds >= 0):
        raise bad("max_seconds", "a number >= 0 (0: stop after one epoch) or None")
    if cfg.clip_max_norm is not None and (not is_num(cfg.clip_max_norm) or cfg.clip_max_norm <= 0):
        raise bad("clip_max_norm", "a finite number > 0 or None")
    if cfg.num_threads is not None and cfg.num_threads != "auto" and (
            not is_int(cfg.num_threads) or cfg.num_threads < 1):
        raise bad("num_threads", "'auto', an integer >= 1, or None (keep torch's setting)")
    if cfg.ema_decay is not None and (not is_num(cfg.ema_decay) or not 0 < cfg.ema_decay < 1):
        raise bad("ema_decay", "a number strictly between 0 and 1, or None (no averaging)")
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise bad("lr_schedule", f"one of {list(LR_SCHEDULES)}")
    if cfg.schedule_epochs not in (None, "auto") and (not is_int(cfg.schedule_epochs)
                                                      or cfg.schedule_epochs < 1):
        raise bad("schedule_epochs", "an integer >= 1, 'auto' (by the number of simulations) "
                                     "or None (use max_epochs)")
    if not is_num(cfg.warmup_epochs) or cfg.warmup_epochs < 0:
        raise bad("warmup_epochs", "a finite number >= 0")
    if cfg.overfit_rise is not None and (not is_num(cfg.overfit_rise) or cfg.overfit_rise < 0):
        raise bad("overfit_rise", "a finite number >= 0 (nats) or None (off)")
    if not is_int(cfg.overfit_epochs) or cfg.overfit_epochs < 1:
        raise bad("overfit_epochs", "an integer >= 1")
    if not is_num(cfg.stall_decay) or not 0 <= cfg.stall_decay <= 1:
        raise bad("stall_decay", "a number from 0 (a stall ends training) to 1 (fraction of the "
                                 "cosine schedule over which a stall's final decay runs)")
    if not is_int(cfg.seed):
        raise bad("seed", "an integer")
    if not isinstance(cfg.callbacks, (list, tuple)):
        raise bad("callbacks", "a list of callback objects (see sbi_core.tracking)")
    for cb in cfg.callbacks:
        if not any(callable(getattr(cb, hook, None)) for hook in CALLBACK_HOOKS):
            raise ValueError(
                f"TrainConfig.callbacks: {cb!r} has none of the hooks {list(CALLBACK_HOOKS)}; "
                "pass e.g. sbi_core.tracking.TensorBoardLogger(log_dir) or an object with "
                "on_epoch_end(epoch, train_loss, val_loss, lr, seconds).")


@runtime_checkable
class BatchSource(Protocol):
    """Training data that do not fit in memory, passed to :func:`train` instead of tensors.

    ``epoch(generator, batch_size)`` yields the shuffled minibatches ``(theta (B, D), x (B,
    *x_shape))`` of one epoch (every rank must yield the same sequence under DDP), and
    ``validation()`` yields the fixed held-out batches.
    """

    num_train: int
    num_validation: int

    def epoch(self, generator: torch.Generator, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        ...

    def validation(self) -> Iterator[tuple[Tensor, Tensor]]:
        ...


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
    theta: Tensor | BatchSource,
    x: Tensor | None = None,
    config: TrainConfig | None = None,
    loss_fn: LossFn | None = None,
    **overrides: Any,
) -> TrainingHistory:
    """Train ``estimator`` in place on ``theta`` ``(N, D)`` and ``x`` ``(N, *x_shape)``.

    Args:
        estimator: module with ``loss(theta, x) -> Tensor[N]``.
        theta, x: training pairs (only valid simulations); or a :class:`BatchSource` as
            ``theta`` (and ``x=None``) to stream data that do not fit in memory.
        config: a :class:`TrainConfig`; keyword ``overrides`` replace its fields.
        loss_fn: optional ``f(estimator, theta, x) -> Tensor[N]`` replacing ``estimator.loss``
            (regularized objectives, e.g. the FIM defense).

    Returns:
        The :class:`TrainingHistory`; the estimator holds the best validation weights.
    """
    cfg = _replace(config or TrainConfig(), overrides)
    work = None if cfg.device != "cpu" else module_work(estimator, cfg.batch_size)
    with thread_scope(cfg.num_threads, work):
        return _train(estimator, theta, x, cfg, loss_fn)


def training_device(device: Any) -> torch.device:
    """The torch device ``device`` names, checked as a place to train on (bad input is a
    ``ValueError`` naming the device and the fix). ``run_sequential`` calls it before its
    first simulation, so a wrong device does not cost a round of simulations."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:  # e.g. "gpu": bad input, not an internal error
        raise ValueError(f"device={device!r} is not a torch device ({err}); use 'cpu', "
                         "'cuda' or 'cuda:0'.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but no CUDA GPU is available; "
                         "use 'cpu'.")
    if dev.type == "cuda" and dev.index is not None \
            and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device={device!r} was requested but this machine has "
                         f"{torch.cuda.device_count()} CUDA GPU(s) (cuda:0 to "
                         f"cuda:{torch.cuda.device_count() - 1}); use 'cuda' or 'cpu'.")
    mps = getattr(torch.backends, "mps", None)
    if dev.type == "mps" and not (mps is not None and mps.is_available()):
        raise ValueError(f"device={device!r} was requested but this PyTorch has no Apple "
                         "GPU (MPS) available; use 'cpu'.")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device={device!r} cannot train a model (it holds no data or is "
                         "not a compute device sbi-core supports); use 'cpu', 'cuda' or "
                         "'cuda:0'.")
    return dev


def _train(estimator: nn.Module, theta: Tensor | BatchSource, x: Tensor | None,
           cfg: TrainConfig, loss_fn: LossFn | None) -> TrainingHistory:
    custom_loss = loss_fn
    loss_fn = loss_fn or _default_loss
    device = training_device(cfg.device)
    generator = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    rank, world = _distributed_setup(cfg)

    if isinstance(theta, Tensor):
        if x is None:
            raise ValueError("train(estimator, theta, x): x is missing.")
        data: BatchSource = _TensorBatches(theta, x, cfg, generator, device)
    elif isinstance(theta, BatchSource):
        data = theta
    else:
        raise TypeError(f"train() takes tensors theta, x or a BatchSource, got {type(theta).__name__}.")
    n_train, n_val = data.num_train, data.num_validation
    batch_size = min(cfg.batch_size, n_train)
    if world > 1 and batch_size < world:
        raise ValueError(f"batch_size={batch_size} is smaller than the {world} processes.")

    estimator.to(device)
    # after `to`: the step keeps the parameters and buffers it works on
    fused = _fused_step(estimator, custom_loss) if world == 1 else None
    # with the autograd-free step (whose gradients are slices of one tensor): the trainable
    # weights as slices of one tensor for this run, so the EMA and the clip multiply are one
    # operation each instead of one per tensor (the same values); elsewhere (autograd,
    # modules this loop does not know) the weights keep their storage
    flat = _one_storage(estimator) if fused is not None else None
    if fused is not None and isinstance(data, _TensorBatches) and \
            callable(getattr(fused, "prepare", None)):
        # the step's per-row input transform (e.g. NPE's z-scoring) once for all training
        # rows; the minibatches are then rows of the result (the same values)
        with torch.no_grad():
            data.theta_tr, data.x_tr = fused.prepare(data.theta_tr, data.x_tr)
        fused = fused.prepared
    model: nn.Module = _LossModule(estimator, loss_fn)
    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = make_adam(estimator.parameters(), cfg.learning_rate)
    stepper = _AdamStep(optimizer)
    clip = _GradientClipper(estimator, cfg.clip_max_norm) if cfg.clip_max_norm is not None \
        else None
    cosine = cfg.lr_schedule == "cosine"
    scheduler = (
        torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=0.5, patience=max(cfg.stop_after_epochs // 3, 1))
        if cfg.lr_decay_on_plateau and n_val and not cosine else None
    )
    schedule_epochs = auto_schedule_epochs(n_train + n_val) if cfg.schedule_epochs == "auto" \
        else cfg.schedule_epochs
    num_epochs = min(schedule_epochs or cfg.max_epochs, cfg.max_epochs) if cosine \
        else cfg.max_epochs
    steps_per_epoch = max(n_train // batch_size, 1)
    lr_at = cosine_lr(cfg.learning_rate, num_epochs * steps_per_epoch,
                      cfg.warmup_epochs * steps_per_epoch) if cosine else None
    step, anneal_end = 0, None
    history = TrainingHistory(num_train=n_train, num_validation=n_val,
                              config=plain_config(cfg))
    notify = _Notifier(cfg.callbacks if rank == 0 else ())
    ema = _WeightAverage(estimator, cfg.ema_decay, flat) if cfg.ema_decay is not None else None
    best_state = _state_copy(estimator)
    since_best = 0
    start = time.perf_counter()
    # no total/ETA: early stopping usually ends long before max_epochs
    bar = progress_bar(range(num_epochs), desc="training", unit="epoch",
                       bar_format="{desc}: epoch {n_fmt} [{elapsed}, {rate_fmt}{postfix}]",
                       progress=cfg.progress if rank == 0 else False)
    try:
        for epoch in bar:
            t0 = time.perf_counter()
            estimator.train()
            n_batches = 0
            total = torch.zeros((), device=device)
            for theta_b, x_b in data.epoch(generator, batch_size):
                if world > 1:  # this rank's equal share of the global minibatch
                    theta_b, x_b = _shard(theta_b, rank, world), _shard(x_b, rank, world)
                if lr_at is not None:
                    for group in optimizer.param_groups:
                        group["lr"] = lr_at(step)
                step += 1
                if fused is not None:  # loss and gradients without autograd, the same bits
                    stepper.zero_grad()
                    loss = fused(theta_b.to(device), x_b.to(device))
                else:
                    loss = model(theta_b.to(device), x_b.to(device)).mean()
                    stepper.zero_grad()
                    loss.backward()
                if clip is not None:
                    clip()
                stepper.step()
                if ema is not None:
                    ema.update()
                total += loss.detach()
                n_batches += 1
            if world > 1:
                total = _all_mean(total, world)
            train_loss = float(total) / max(n_batches, 1)
            with ema.swapped() if ema is not None else _nothing():
                val_loss = _evaluate_batches(estimator, loss_fn, data.validation(), device) \
                    if n_val else train_loss
            history.train_loss.append(train_loss)
            history.validation_loss.append(val_loss)
            history.epoch_seconds.append(time.perf_counter() - t0)
            notify("on_epoch_end", epoch, train_loss, val_loss,
                   float(optimizer.param_groups[0]["lr"]), history.epoch_seconds[-1])
            if not math.isfinite(val_loss) or not math.isfinite(train_loss):
                history.stopped = "diverged"
                warnings.warn(
                    f"Training diverged at epoch {epoch + 1} (loss {train_loss:.3g}); restored "
                    f"the best weights from epoch {history.best_epoch + 1}. Try a lower "
                    "learning_rate.", stacklevel=2)
                break
            if val_loss < history.best_validation_loss:
                # patience restarts only on a real improvement (> min_delta)
                real = val_loss < history.best_validation_loss - cfg.min_delta
                history.best_validation_loss, history.best_epoch = val_loss, epoch
                with ema.swapped() if ema is not None else _nothing():
                    best_state = _state_copy(estimator)
                since_best = 0 if real else since_best + 1
                notify("on_best", epoch, val_loss)
            else:
                since_best += 1
            if scheduler is not None:
                scheduler.step(val_loss)
            bar.set_postfix(train=f"{train_loss:.3f}", val=f"{val_loss:.3f}",
                            best=f"{history.best_validation_loss:.3f}")
            stalled = is_stalled(cfg, since_best, history)
            if stalled and lr_at is not None and \
                    anneal_end is None and epoch + 1 < num_epochs and cfg.stall_decay > 0:
                # cosine: a stall starts the final decay instead of ending at a high rate
                anneal_end = min(epoch + 1 + max(1, round(cfg.stall_decay * num_epochs)),
                                 num_epochs)
                lr_at = cosine_lr(lr_at(step - 1), (anneal_end - epoch - 1) * steps_per_epoch,
                                  0, start=step)
                since_best, stalled = 0, False
            if (stalled and anneal_end is None) or \
                    (anneal_end is not None and epoch + 1 >= anneal_end):
                history.stopped = "converged"
                break
            out_of_time = cfg.max_seconds is not None and \
                time.perf_counter() - start > cfg.max_seconds
            if world > 1:  # ranks must agree, or the next all-reduce hangs
                out_of_time = _any_rank(out_of_time, device)
            if out_of_time:
                history.stopped = "max_seconds"
                break
        else:
            if cosine and num_epochs >= (schedule_epochs or 0):
                history.stopped = "schedule_done"
            else:
                history.stopped = "max_epochs"
                why = (f" (the cosine schedule of {schedule_epochs} epochs was shortened "
                       "to fit)" if cosine else " before the validation loss converged")
                warnings.warn(f"Reached max_epochs={cfg.max_epochs}{why}.", stacklevel=2)
    except KeyboardInterrupt:
        history.stopped = "interrupted"
        warnings.warn("Training interrupted; keeping the best weights so far.", stacklevel=2)
    finally:
        bar.close()
    if history.best_epoch < 0:
        notify("on_stop", history.stopped or "failed", history)
        raise RuntimeError("Training produced no finite validation loss; check the data scale "
                           "and lower the learning_rate.")
    estimator.load_state_dict(best_state)
    if flat is not None:  # each weight back in its own storage (the same values)
        _own_storage(estimator)
    estimator.eval()
    history.seconds = time.perf_counter() - start
    notify("on_stop", history.stopped, history)
    return history


#: ``schedule_epochs="auto"``: epochs of the cosine schedule for 10,000 simulations, scaled
#: by ``sqrt(10,000 / N)`` for N simulations (fewer epochs of more steps for more data), at
#: least ``MIN_AUTO_SCHEDULE_EPOCHS``; chosen by benchmarks/compare_sbi.py at 10,000
#: simulations (docs/performance.md, "Issue 18: training speed").
AUTO_SCHEDULE_EPOCHS_10K = 300
#: ``lr_schedule="cosine"``: when the validation loss stalls for ``stop_after_epochs`` epochs,
#: the learning rate decays from its current value to 0 over this fraction of the schedule's
#: epochs (``TrainConfig.stall_decay``'s default), then training ends (a stall at a high
#: rate is minibatch noise that the decay removes; quickly converging problems end early
#: instead of running the whole budget).
STALL_DECAY_FRACTION = 0.1
MIN_AUTO_SCHEDULE_EPOCHS = 30


def auto_schedule_epochs(num_simulations: int) -> int:
    """Epochs of the cosine schedule for ``num_simulations`` (training + validation rows):
    300 at 10,000, ``300 * sqrt(10,000 / N)`` otherwise (949 at 1,000; 95 at 100,000),
    at least 30."""
    n = max(int(num_simulations), 1)
    return max(MIN_AUTO_SCHEDULE_EPOCHS, round(AUTO_SCHEDULE_EPOCHS_10K * math.sqrt(10_000 / n)))


#: ``TrainConfig.overfit_rise``: how many of the latest validation losses must all be above
#: the best by more than ``overfit_rise`` for an early (overfitting) stall.
OVERFIT_WINDOW = 5


def is_stalled(cfg: TrainConfig, since_best: int, history: TrainingHistory) -> bool:
    """Whether ``since_best`` epochs without a real gain (> ``min_delta``) are a stall:
    ``stop_after_epochs`` of them, or with ``overfit_rise`` set, ``overfit_epochs`` of them
    while each of the last ``OVERFIT_WINDOW`` validation losses is above the best by more
    than ``overfit_rise`` (a rising loss: overfitting, not a plateau)."""
    if since_best >= cfg.stop_after_epochs:
        return True
    if cfg.overfit_rise is None or since_best < cfg.overfit_epochs:
        return False
    recent = history.validation_loss[-OVERFIT_WINDOW:]
    return min(recent) > history.best_validation_loss + cfg.overfit_rise


def cosine_lr(peak: float, total_steps: int, warmup_steps: float,
              start: int = 0) -> Callable[[int], float]:
    """The learning rate at optimizer step ``t`` of a warm-up + cosine schedule that begins
    at step ``start``: linear from ``peak / (warmup_steps + 1)`` up to ``peak`` over
    ``warmup_steps`` steps, then ``peak * (1 + cos(pi * s)) / 2`` with ``s`` going from 0 to
    1 at step ``start + total_steps``."""
    total = max(int(total_steps), 1)
    warm = min(float(warmup_steps), total - 1.0)

    def lr(t: int) -> float:
        t = t - start
        if t < warm:
            return peak * (t + 1) / (warm + 1)
        s = min((t - warm) / max(total - warm, 1.0), 1.0)
        return 0.5 * peak * (1.0 + math.cos(math.pi * s))

    return lr


def make_adam(params: Iterator[nn.Parameter] | list[nn.Parameter],
              lr: float) -> torch.optim.Adam:
    """Adam with torch's fused kernel (one call updates all parameters; ~3x cheaper than the
    per-tensor loop for the fused flows' ~10 tensors on a CPU, docs/performance.md), or the
    default implementation where that kernel is unavailable (torch < 2.4 on a CPU, other
    devices or dtypes). The update rule is the same; results agree up to float rounding."""
    params = [p for p in params]
    if params and all(p.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
                      and p.device.type in ("cpu", "cuda") for p in params):
        try:
            return torch.optim.Adam(params, lr=lr, fused=True)
        except (RuntimeError, TypeError, ValueError):
            pass
    return torch.optim.Adam(params, lr=lr)


def plain_config(cfg: TrainConfig) -> dict[str, Any]:
    """The settings as plain values (saved with models): callbacks are named, not stored."""
    d = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name != "callbacks"}
    if cfg.callbacks:
        d["callbacks"] = [type(cb).__name__ for cb in cfg.callbacks]
    return d


class _Notifier:
    """Calls the callbacks' hooks; one that raises is warned about once and dropped."""

    def __init__(self, callbacks: tuple[Any, ...] | list[Any]):
        self.callbacks = list(callbacks)

    def __call__(self, hook: str, *args: Any) -> None:
        for cb in list(self.callbacks):
            fn = getattr(cb, hook, None)
            if not callable(fn):
                continue
            try:
                fn(*args)
            except Exception as err:  # a logger must never cost the training
                self.callbacks.remove(cb)
                warnings.warn(f"Training callback {type(cb).__name__}.{hook} raised "
                              f"{type(err).__name__}: {err}; it is switched off for the rest "
                              "of this training run (training goes on).", stacklevel=3)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _fused_step(estimator: nn.Module,
                loss_fn: LossFn | None) -> Callable[[Tensor, Tensor], Tensor] | None:
    """The estimator's autograd-free training step, where it offers one for this loss
    (``estimator.fused_training_step(loss_fn)``: a function ``(theta, x) -> mean loss`` that
    also sets the parameters' gradients, the same values as ``loss.backward()``; e.g. NPE
    with the fused MAF, docs/performance.md, "Issue 18: sir and the per-step overhead"),
    else ``None`` (autograd). The function may carry ``prepare(theta, x) -> (a, b)``, a
    row-by-row transform of the training rows, and ``prepared(a, b) -> mean loss``, the
    same step on transformed rows: in-memory data are then transformed once per run."""
    offer = getattr(estimator, "fused_training_step", None)
    return offer(loss_fn) if callable(offer) else None


class _AdamStep:
    """``optimizer.zero_grad(set_to_none=True)`` and ``optimizer.step()`` for the fused Adam
    of :func:`make_adam`, minus ``torch.optim``'s per-call Python work (hooks, profiler
    records, regrouping the tensors by device and dtype, rebuilding the state lists): after
    torch's own first step has created the state, each step is the same two kernel calls
    that ``torch.optim.Adam(fused=True)`` makes (``_foreach_add_`` on the step counters,
    then ``_fused_adam_`` with the group's settings), on the same tensors, so the weights
    are bit-identical (tests/test_fit_cost.py); the step counters are made views of one
    tensor, so the first call is one ``add_`` (the same values). Anything else (non-fused Adam, several
    groups, amsgrad, a tensor learning rate, gradient scaling, missing or sparse gradients,
    a torch without the kernel) goes through ``optimizer.step()`` as before. ~0.1 ms less
    CPU per step for the default NPE (docs/performance.md, "Issue 18: the cost of the
    whole default fit")."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer
        groups = optimizer.param_groups
        self.params: list[Tensor] = [p for g in groups for p in g["params"]]
        g = groups[0] if len(groups) == 1 else {}
        kinds = {(p.device, p.dtype) for p in self.params}
        self.lean = (isinstance(optimizer, torch.optim.Adam) and hasattr(torch, "_fused_adam_")
                     and bool(g.get("fused")) and not g.get("amsgrad")
                     and not g.get("maximize") and not g.get("capturable")
                     and not g.get("differentiable")
                     and not g.get("decoupled_weight_decay", False)
                     and len(kinds) == 1 and next(iter(kinds))[0].type in ("cpu", "cuda")
                     and getattr(optimizer, "grad_scale", None) is None
                     and getattr(optimizer, "found_inf", None) is None)
        self.state: tuple[list[Tensor], list[Tensor], list[Tensor]] | None = None
        self.step_counts: Tensor | None = None  # the step counters' shared storage

    def zero_grad(self) -> None:
        """Gradients to ``None`` (``zero_grad(set_to_none=True)``)."""
        if not self.lean:
            self.optimizer.zero_grad(set_to_none=True)
            return
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        """One Adam update of all parameters."""
        group = self.optimizer.param_groups[0]
        grads = [p.grad for p in self.params]
        if self.state is None or not self.lean or not isinstance(group["lr"], float) or \
                any(gr is None or gr.is_sparse for gr in grads):
            self.optimizer.step()
            self._collect()
            return
        steps, exp_avgs, exp_avg_sqs = self.state
        beta1, beta2 = group["betas"]
        if self.step_counts is not None:
            self.step_counts.add_(1)  # all counters at once: they are views of this tensor
        else:
            torch._foreach_add_(steps, 1)
        torch._fused_adam_(self.params, grads, exp_avgs, exp_avg_sqs, [], steps,
                           amsgrad=False, lr=group["lr"], beta1=beta1, beta2=beta2,
                           weight_decay=group["weight_decay"], eps=group["eps"],
                           maximize=False, grad_scale=None, found_inf=None)

    def _collect(self) -> None:
        """The optimizer's state tensors once every parameter has them (after a step)."""
        if not self.lean or self.state is not None:
            return
        states = [self.optimizer.state.get(p, {}) for p in self.params]
        if all(isinstance(st.get("step"), Tensor) and "exp_avg" in st and "exp_avg_sq" in st
               for st in states):
            steps = [st["step"] for st in states]
            if len({(s.device, s.dtype, s.shape) for s in steps}) == 1 and steps[0].ndim == 0:
                # the per-parameter step counters (equal 0-dim tensors) become views of one
                # tensor, so one `add_` counts a step for all of them (torch's `_foreach_add_`
                # adds 1 to each: the same values); torch's own step, if it runs again,
                # updates the views in place as before
                self.step_counts = torch.stack(steps)
                for i, st in enumerate(states):
                    st["step"] = self.step_counts[i]
                steps = [st["step"] for st in states]
            self.state = (steps, [st["exp_avg"] for st in states],
                          [st["exp_avg_sq"] for st in states])


class _GradientClipper:
    """``nn.utils.clip_grad_norm_(module.parameters(), max_norm)`` (2-norm) with the same
    arithmetic, minus its per-call work: the parameter list and the check that one
    ``torch._foreach_*`` call covers all gradients (one device and dtype, dense) are done
    once, not at every step (~40 -> ~20 us per step for the default NPE on a CPU).
    Anything else falls back to torch's function."""

    def __init__(self, module: nn.Module, max_norm: float):
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.max_norm = float(max_norm)
        kinds = {(p.device, p.dtype, p.layout) for p in self.params}
        self.lean = len(kinds) == 1 and next(iter(kinds))[2] == torch.strided and \
            next(iter(kinds))[0].type in ("cpu", "cuda")
        # float32 on a CPU: the clip factor from the norm in float32 scalars (below)
        self.scalar = self.lean and next(iter(kinds))[:2] == (torch.device("cpu"), torch.float32)
        self._seen: list[Tensor] = []  # the gradients last checked by `_one_buffer`
        self._buffer: Tensor | None = None  # the one tensor they are slices of, if any

    @torch.no_grad()
    def __call__(self) -> None:
        grads = [p.grad for p in self.params if p.grad is not None]
        if not self.lean or not grads or any(g.is_sparse for g in grads):
            nn.utils.clip_grad_norm_(self.params, self.max_norm)
            return
        total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0)), 2.0)
        if self.scalar and total.dtype == torch.float32:
            # torch's `clamp(max_norm / (total + 1e-6), max=1)` is four float32 operations on
            # 0-dim tensors (add, reciprocal, multiply, clamp): the same IEEE roundings in
            # numpy float32 scalars, at one read of the norm instead of four tensor ops
            one = np.float32(1.0)
            factor = min(one / (np.float32(float(total)) + np.float32(1e-6))
                         * np.float32(self.max_norm), one)
            if factor == one:
                return  # multiplying by exactly 1 changes no bit: skip it
            whole = self._whole(grads)
            if whole is not None:  # the gradients are slices of one tensor: one multiply
                whole.mul_(float(factor))
            else:
                torch._foreach_mul_(grads, float(factor))
            return
        coef = torch.clamp(self.max_norm / (total + 1e-6), max=1.0)
        # (elsewhere than float32 on a CPU: per tensor, as torch's clip_grad_norm_)
        if coef.device.type == "cpu" and float(coef) == 1.0:
            return  # multiplying by exactly 1 changes no bit: skip it (no device sync on CPU)
        torch._foreach_mul_(grads, coef)


    def _whole(self, grads: list[Tensor]) -> Tensor | None:
        """The one flat tensor of which ``grads`` are the consecutive slices (e.g. the
        autograd-free step's gradient buffer, :mod:`estimators.fast_maf_step`), else
        ``None``; checked again only when the gradient tensors change. Multiplying it
        by the factor multiplies each element as ``torch._foreach_mul_`` does: the same
        bits."""
        if len(grads) == len(self._seen) and all(a is b for a, b in zip(grads, self._seen)):
            return self._buffer
        self._seen, self._buffer = list(grads), _one_buffer(grads)
        return self._buffer


def _one_buffer(tensors: list[Tensor]) -> Tensor | None:
    """The 1-D contiguous tensor (the views' ``_base``) that ``tensors`` are consecutive
    contiguous slices of, covering all of it, else ``None``."""
    base = tensors[0]._base if tensors else None
    if base is None or any(t._base is not base for t in tensors):
        return None
    return base if _slices_of(tensors, base) else None


def _slices_of(tensors: list[Tensor], whole: Tensor) -> bool:
    """True when ``tensors`` are contiguous and lie one after the other in ``whole`` (1-D,
    contiguous, same dtype and device), covering all of it."""
    if whole.dim() != 1 or not whole.is_contiguous():
        return False
    ptr, size = whole.data_ptr(), whole.element_size()
    for t in tensors:
        if t.dtype != whole.dtype or t.device != whole.device or not t.is_contiguous() or \
                t.data_ptr() != ptr:
            return False
        ptr += t.numel() * size
    return ptr == whole.data_ptr() + whole.numel() * size


def _one_storage(module: nn.Module) -> Tensor | None:
    """Moves the trainable parameters of ``module`` into consecutive slices of one new
    flat tensor (the same values, shapes and contiguous layout; ``.data`` is replaced, so
    the parameter objects, the optimizer's references and hooks stay) and returns that
    tensor, so that the weight average updates all weights with one operation
    (:class:`_WeightAverage`). ``None`` (nothing moved) unless all are dense, contiguous,
    of one device and dtype. :func:`_own_storage` undoes it after training."""
    params = [p for p in module.parameters() if p.requires_grad]
    if not params or len({(p.device, p.dtype) for p in params}) != 1 or any(
            p.layout != torch.strided or not p.is_contiguous() for p in params):
        return None
    with torch.no_grad():
        flat = torch.cat([p.detach().reshape(-1) for p in params])
        offset = 0
        for p in params:
            p.data = flat[offset:offset + p.numel()].view(p.shape)
            offset += p.numel()
    return flat


def _own_storage(module: nn.Module) -> None:
    """Each trainable parameter of ``module`` into a storage of its own (the same values):
    undoes :func:`_one_storage`."""
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.data = p.data.clone()


class _WeightAverage:
    """Exponential moving average of a module's trainable weights (Polyak averaging).

    ``update()`` after each optimizer step: ``avg += (1 - decay) * (w - avg)`` on all
    parameters at once (``torch._foreach_lerp_``), with the decay warmed up as
    ``min(decay, (1 + t) / (10 + t))`` so that early averages do not drag in the random
    initialization. ``swapped()`` puts the averages into the module for a block.
    """

    def __init__(self, module: nn.Module, decay: float, flat: Tensor | None = None):
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.avg = [p.detach().clone() for p in self.params]
        self.live = [p.detach() for p in self.params]  # views: follow in-place updates
        self.decay, self.steps = decay, 0
        # `flat`: the weights are its consecutive slices (:func:`_one_storage`); then the
        # averages are slices of one tensor too and an update is one `lerp_` on the whole
        # (elementwise: the same bits as `_foreach_lerp_` per tensor, tests/test_fit_cost.py)
        self.flat = self.flat_avg = None
        if flat is not None and _slices_of(self.live, flat):
            self.flat, self.flat_avg = flat, flat.detach().clone()
            offset = 0
            for i, p in enumerate(self.params):
                self.avg[i] = self.flat_avg[offset:offset + p.numel()].view(p.shape)
                offset += p.numel()

    @torch.no_grad()
    def update(self) -> None:
        self.steps += 1
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        if self.flat is not None:
            self.flat_avg.lerp_(self.flat, 1.0 - d)
        else:
            torch._foreach_lerp_(self.avg, self.live, 1.0 - d)

    @contextmanager
    def swapped(self) -> Iterator[None]:
        with torch.no_grad():
            current = [p.detach().clone() for p in self.params]
            for p, a in zip(self.params, self.avg):
                p.copy_(a)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, c in zip(self.params, current):
                    p.copy_(c)


#: Largest per-epoch copy of the training rows (bytes, float32) that
#: :meth:`_TensorBatches.epoch` gathers at once; bigger data sets index per minibatch.
_EPOCH_COPY_BYTES = 256 * 2**20


class _TensorBatches:
    """In-memory data: a seeded validation split, minibatches by shuffled index on ``device``."""

    def __init__(self, theta: Tensor, x: Tensor, cfg: TrainConfig, generator: torch.Generator,
                 device: torch.device):
        n = theta.shape[0]
        if x.shape[0] != n:
            raise ValueError(f"theta has {n} rows but x has {x.shape[0]}.")
        from estimators.embedding import padded_sets

        if not (torch.isfinite(theta).all() and (torch.isfinite(x).all()
                                                  or bool(padded_sets(x).all()))):
            # (sets padded with all-NaN trials are data for a set embedding: fit lets them in
            # only for one)
            raise ValueError(
                "Training data contain NaN or inf; pass SimulationSet.training_data() to drop "
                "invalid simulations."
            )
        n_val = int(round(cfg.validation_fraction * n)) if cfg.validation_fraction > 0 else 0
        if cfg.validation_fraction > 0 and (n_val < 1 or n - n_val < 2):
            need = next(m for m in range(3, 10**6)  # 1 validation and 2 training rows
                        if int(round(cfg.validation_fraction * m)) >= 1
                        and m - int(round(cfg.validation_fraction * m)) >= 2)
            raise ValueError(
                f"{n} valid simulations are too few to train: with validation_fraction="
                f"{cfg.validation_fraction} training needs at least {need} (one held out for "
                "validation, two to train on); simulate more."
            )
        perm = torch.randperm(n, generator=generator)
        val_idx, train_idx = perm[:n_val], perm[n_val:]
        theta, x = theta.to(device, torch.float32), x.to(device, torch.float32)
        self.theta_tr, self.x_tr = theta[train_idx.to(device)], x[train_idx.to(device)]
        self.theta_va, self.x_va = theta[val_idx.to(device)], x[val_idx.to(device)]
        self.num_train, self.num_validation = int(self.theta_tr.shape[0]), n_val
        self.device = device

    def epoch(self, generator: torch.Generator, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        order = torch.randperm(self.num_train, generator=generator).to(self.device)
        n_batches = max(self.num_train // batch_size, 1)
        used = order[:n_batches * batch_size]
        if (self.theta_tr[:1].numel() + self.x_tr[:1].numel()) * used.numel() * 4 \
                <= _EPOCH_COPY_BYTES:
            # the epoch's rows gathered in two index operations, minibatches as row slices:
            # the same rows as indexing per minibatch, at less per-step work
            theta_e, x_e = self.theta_tr[used], self.x_tr[used]
            for b in range(n_batches):
                yield theta_e[b * batch_size:(b + 1) * batch_size], \
                    x_e[b * batch_size:(b + 1) * batch_size]
            return
        for b in range(n_batches):
            idx = order[b * batch_size:(b + 1) * batch_size]
            yield self.theta_tr[idx], self.x_tr[idx]

    def validation(self) -> Iterator[tuple[Tensor, Tensor]]:
        chunk = 8192
        for i in range(0, self.num_validation, chunk):
            yield self.theta_va[i:i + chunk], self.x_va[i:i + chunk]


class _LossModule(nn.Module):
    """``forward(theta, x)`` = per-sample loss, so DDP can wrap any estimator's loss."""

    def __init__(self, estimator: nn.Module, loss_fn: LossFn):
        super().__init__()
        self.estimator = estimator
        self.loss_fn = loss_fn

    def forward(self, theta: Tensor, x: Tensor) -> Tensor:
        return self.loss_fn(self.estimator, theta, x)


def _distributed_setup(cfg: TrainConfig) -> tuple[int, int]:
    if not cfg.distributed:
        return 0, 1
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            "distributed=True needs an initialized torch.distributed process group: launch with "
            "torchrun (e.g. torchrun --nproc_per_node 2 -m sbi_core.cli.main train ... --ddp) "
            "and call sbi_core.distributed.init_distributed() first."
        )
    return dist.get_rank(), dist.get_world_size()


def _shard(v: Tensor, rank: int, world: int) -> Tensor:
    per = v.shape[0] // world
    return v[rank * per:(rank + 1) * per]


def _all_mean(value: Tensor, world: int) -> Tensor:
    import torch.distributed as dist

    value = value.clone()
    dist.all_reduce(value)
    return value / world


def _any_rank(flag: bool, device: torch.device) -> bool:
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


@torch.no_grad()
def _evaluate_batches(estimator: nn.Module, loss_fn: LossFn,
                      batches: Iterator[tuple[Tensor, Tensor]], device: torch.device) -> float:
    estimator.eval()
    total, count = 0.0, 0
    for theta, x in batches:
        total += float(loss_fn(estimator, theta.to(device), x.to(device)).sum())
        count += theta.shape[0]
    return total / max(count, 1)


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
