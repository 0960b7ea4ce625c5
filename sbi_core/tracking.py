"""Experiment tracking: training callbacks that log to TensorBoard or MLflow.

Both loggers implement :class:`sbi_core.training.TrainingCallback` and log the same things:

- per epoch: ``loss/train``, ``loss/validation``, ``lr``, ``epoch_seconds`` (step = epoch);
- on a new best: ``loss/best_validation``;
- at the end: the training config, the outcome (``final/best_validation_loss``,
  ``final/epochs``, ``final/seconds``, the stop reason) and any ``params`` given;
- :meth:`log_report`: a report card (:func:`diagnostics.report.diagnose`) as
  ``diagnostics/<check>/<metric>`` scalars plus the card as JSON/text.

Example::

    from sbi_core.tracking import TensorBoardLogger
    tb = TensorBoardLogger("runs/npe", params={"method": "npe"})
    posterior = fit(problem, sims, method="npe", callbacks=[tb])
    tb.log_report(diagnose(posterior, problem).to_dict())
    tb.close()
    # tensorboard --logdir runs/

Optional extras: ``pip install sbi-core[tracking]`` (TensorBoard, via
``torch.utils.tensorboard``) and ``pip install sbi-core[mlflow]``.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from typing import Any

__all__ = ["TensorBoardLogger", "MLflowLogger", "report_metrics", "flat_params"]


def report_metrics(card: dict[str, Any]) -> dict[str, float]:
    """Finite scalar metrics of a report card dict as ``{"diagnostics/<check>/<name>": v}``,
    plus ``diagnostics/<check>/status`` (pass 0, warn 1, fail 2; skipped checks left out)."""
    out: dict[str, float] = {}
    codes = {"pass": 0.0, "warn": 1.0, "fail": 2.0}
    for name, section in (card.get("sections") or {}).items():
        if section.get("status") in codes:
            out[f"diagnostics/{name}/status"] = codes[section["status"]]
        for key, value in (section.get("metrics") or {}).items():
            if isinstance(value, numbers.Real) and not isinstance(value, bool) \
                    and math.isfinite(float(value)):
                out[f"diagnostics/{name}/{key}"] = float(value)
    return out


def flat_params(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict → ``{"a.b": value}`` with values as str/int/float/bool (None → "None")."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_params(value, name + "."))
        elif isinstance(value, (str, int, float, bool)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


def _final(history: Any) -> dict[str, float]:
    best = history.best_validation_loss
    out = {"final/epochs": float(history.epochs), "final/seconds": float(history.seconds),
           "final/best_epoch": float(history.best_epoch)}
    if math.isfinite(best):
        out["final/best_validation_loss"] = float(best)
    return out


class TensorBoardLogger:
    """Training callback writing TensorBoard event files into ``log_dir``.

    Args:
        log_dir: folder of this run's event files (``tensorboard --logdir`` its parent).
        params: extra settings to record with the run's config (method, problem, options).
        writer: an existing ``torch.utils.tensorboard.SummaryWriter`` to use instead.
    """

    def __init__(self, log_dir: str | os.PathLike | None = None,
                 params: dict[str, Any] | None = None, writer: Any = None):
        if writer is None:
            if log_dir is None:
                raise ValueError("TensorBoardLogger needs log_dir (a folder for the event "
                                 "files) or writer=SummaryWriter(...).")
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise ImportError("TensorBoard logging needs the tensorboard package: "
                                  "pip install 'sbi-core[tracking]' (or pip install "
                                  f"tensorboard). ({err})") from err
            writer = SummaryWriter(log_dir=str(log_dir))
        self.writer = writer
        self.log_dir = str(getattr(writer, "log_dir", log_dir))
        self.params = dict(params or {})

    def on_epoch_end(self, epoch: int, train_loss: float, val_loss: float, lr: float,
                     seconds: float) -> None:
        w = self.writer
        w.add_scalar("loss/train", train_loss, epoch)
        w.add_scalar("loss/validation", val_loss, epoch)
        w.add_scalar("lr", lr, epoch)
        w.add_scalar("epoch_seconds", seconds, epoch)

    def on_best(self, epoch: int, val_loss: float) -> None:
        self.writer.add_scalar("loss/best_validation", val_loss, epoch)

    def on_stop(self, reason: str, history: Any) -> None:
        config = {"train": dict(history.config), **self.params}
        self.writer.add_text("config", _code_block(config))
        for tag, value in _final(history).items():
            self.writer.add_scalar(tag, value, max(history.epochs - 1, 0))
        self.writer.add_text("stopped", reason or "")
        self.writer.flush()

    def log_report(self, card: dict[str, Any], step: int = 0) -> None:
        """Log a report card dict (``DiagnosisReport.to_dict()``): metrics and the card."""
        for tag, value in report_metrics(card).items():
            self.writer.add_scalar(tag, value, step)
        self.writer.add_text("report_card", _code_block(card))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MLflowLogger:
    """Training callback logging to MLflow (the active run, or one MLflow starts itself).

    Args:
        params: extra settings logged with ``mlflow.log_params`` at the end of training.
        mlflow: the ``mlflow`` module (default: imported here); tests pass a stand-in.
    """

    def __init__(self, params: dict[str, Any] | None = None, mlflow: Any = None):
        if mlflow is None:
            try:
                import mlflow
            except ImportError as err:
                raise ImportError("MLflow logging needs mlflow: pip install 'sbi-core[mlflow]' "
                                  f"(or pip install mlflow). ({err})") from err
        self.mlflow = mlflow
        self.params = dict(params or {})

    def on_epoch_end(self, epoch: int, train_loss: float, val_loss: float, lr: float,
                     seconds: float) -> None:
        for key, value in (("loss/train", train_loss), ("loss/validation", val_loss),
                           ("lr", lr), ("epoch_seconds", seconds)):
            self.mlflow.log_metric(key, value, step=epoch)

    def on_best(self, epoch: int, val_loss: float) -> None:
        self.mlflow.log_metric("loss/best_validation", val_loss, step=epoch)

    def on_stop(self, reason: str, history: Any) -> None:
        self.mlflow.log_params(flat_params({"train": dict(history.config), **self.params}))
        for key, value in _final(history).items():
            self.mlflow.log_metric(key, value)
        self.mlflow.log_dict(history.to_dict(), "training_history.json")

    def log_report(self, card: dict[str, Any], step: int = 0) -> None:
        """Log a report card dict: its metrics and the card as ``report_card.json``."""
        for key, value in report_metrics(card).items():
            self.mlflow.log_metric(key, value, step=step)
        self.mlflow.log_dict(card, "report_card.json")

    def close(self) -> None:
        """Nothing to close: the MLflow run belongs to the caller."""


def _code_block(value: Any) -> str:
    # TensorBoard renders text as markdown: indent JSON so it shows verbatim
    text = json.dumps(value, indent=2, default=str, sort_keys=True)
    return "\n".join("    " + line for line in text.splitlines())
