"""Training callbacks (sbi_core.training), TensorBoard / MLflow loggers (sbi_core.tracking),
and `sbi-core train --log-dir / --mlflow`."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from sbi_core.tracking import MLflowLogger, TensorBoardLogger, flat_params, report_metrics
from sbi_core.training import TrainConfig, TrainingCallback, train


class Toy(nn.Module):
    """Linear regression of theta on x with a per-sample squared loss."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.config = {}

    def loss(self, theta, x):
        return ((theta - self.lin(x)) ** 2).sum(1)


def _data(n=200):
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(n, 2, generator=g)
    return theta, theta + 0.1 * torch.randn(n, 2, generator=g)


class Recorder:
    def __init__(self):
        self.events = []

    def on_epoch_end(self, epoch, train_loss, val_loss, lr, seconds):
        self.events.append(("epoch", epoch, train_loss, val_loss, lr, seconds))

    def on_best(self, epoch, val_loss):
        self.events.append(("best", epoch, val_loss))

    def on_stop(self, reason, history):
        self.events.append(("stop", reason, history))


def test_callbacks_see_every_epoch_best_and_stop_in_order():
    rec = Recorder()
    assert isinstance(rec, TrainingCallback)
    history = train(Toy(), *_data(), TrainConfig(max_epochs=6, batch_size=50, progress=False,
                                                 callbacks=[rec]))
    epochs = [e for e in rec.events if e[0] == "epoch"]
    assert [e[1] for e in epochs] == list(range(6))
    assert [e[3] for e in epochs] == pytest.approx(history.validation_loss)
    assert [e[2] for e in epochs] == pytest.approx(history.train_loss)
    assert all(e[4] == pytest.approx(1e-3) and e[5] >= 0 for e in epochs)
    bests = [e for e in rec.events if e[0] == "best"]
    assert bests[-1][1:] == (history.best_epoch, pytest.approx(history.best_validation_loss))
    assert all(b2[2] < b1[2] for b1, b2 in zip(bests, bests[1:]))
    assert rec.events[-1][0] == "stop" and rec.events[-1][1] == "max_epochs"
    assert rec.events[-1][2] is history and sum(e[0] == "stop" for e in rec.events) == 1
    # the history stays plain values (saved in model files): callbacks only named
    assert history.config["callbacks"] == ["Recorder"]
    json.dumps(history.to_dict())


def test_train_keyword_and_partial_callbacks():
    calls = []

    class OnlyStop:
        def on_stop(self, reason, history):
            calls.append(reason)

    train(Toy(), *_data(), max_epochs=2, progress=False, callbacks=[OnlyStop()])
    assert calls == ["max_epochs"]


def test_failing_callback_is_dropped_and_training_finishes():
    rec = Recorder()

    class Broken:
        def on_epoch_end(self, *args):
            raise OSError("disk full")

    with pytest.warns(UserWarning, match="Broken.on_epoch_end raised OSError: disk full"):
        history = train(Toy(), *_data(), TrainConfig(max_epochs=4, progress=False,
                                                     callbacks=[Broken(), rec]))
    assert history.epochs == 4
    assert sum(e[0] == "epoch" for e in rec.events) == 4


def test_object_without_hooks_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="on_epoch_end.*TensorBoardLogger"):
        TrainConfig(callbacks=[object()])
    with pytest.raises(ValueError, match="callbacks must be a list"):
        TrainConfig(callbacks=Recorder())


def _scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc, {tag: [(s.step, s.value) for s in acc.Scalars(tag)]
                 for tag in acc.Tags()["scalars"]}


def test_tensorboard_event_files_hold_the_logged_scalars(tmp_path):
    tb = TensorBoardLogger(tmp_path / "run", params={"method": "toy"})
    history = train(Toy(), *_data(), TrainConfig(max_epochs=5, progress=False, callbacks=[tb]))
    card = {"status": "warn", "sections": {
        "sbc": {"status": "warn", "metrics": {"ks_p": 0.01, "note": "text", "nan": math.nan}},
        "tarp": {"status": "skip", "metrics": {}}}}
    tb.log_report(card, step=4)
    tb.close()
    acc, scalars = _scalars(tmp_path / "run")
    assert [s for s, _ in scalars["loss/validation"]] == list(range(5))
    assert [v for _, v in scalars["loss/validation"]] == pytest.approx(history.validation_loss,
                                                                        rel=1e-6)
    assert [v for _, v in scalars["loss/train"]] == pytest.approx(history.train_loss, rel=1e-6)
    assert [v for _, v in scalars["lr"]] == pytest.approx([1e-3] * 5)
    assert scalars["final/best_validation_loss"][0][1] == pytest.approx(
        history.best_validation_loss, rel=1e-6)
    assert scalars["final/epochs"][0][1] == 5
    assert scalars["diagnostics/sbc/ks_p"] == [(4, pytest.approx(0.01))]
    assert scalars["diagnostics/sbc/status"] == [(4, 1.0)]
    assert not any(t.startswith("diagnostics/tarp") for t in scalars)
    texts = acc.Tags()["tensors"]
    assert "config/text_summary" in texts and "report_card/text_summary" in texts
    config_text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"method": "toy"' in config_text and '"max_epochs": 5' in config_text


def test_tensorboard_missing_log_dir_is_explained():
    with pytest.raises(ValueError, match="log_dir"):
        TensorBoardLogger()


class StubMLflow:
    """Records calls with mlflow's own signatures (log_metric, log_params, log_dict)."""

    def __init__(self):
        self.metrics, self.params, self.dicts = [], {}, {}

    def log_metric(self, key, value, step=None):
        assert isinstance(key, str) and isinstance(value, float)
        self.metrics.append((key, value, step))

    def log_params(self, params):
        assert all(isinstance(v, (str, int, float, bool)) for v in params.values())
        self.params.update(params)

    def log_dict(self, dictionary, artifact_file):
        json.dumps(dictionary)  # must be plain values
        self.dicts[artifact_file] = dictionary


def test_mlflow_logger_uses_the_mlflow_api():
    stub = StubMLflow()
    ml = MLflowLogger(params={"problem": {"name": "toy"}}, mlflow=stub)
    history = train(Toy(), *_data(), TrainConfig(max_epochs=3, progress=False, callbacks=[ml]))
    val = [(v, s) for k, v, s in stub.metrics if k == "loss/validation"]
    assert val == [(pytest.approx(v), i) for i, v in enumerate(history.validation_loss)]
    assert ("final/epochs", 3.0, None) in stub.metrics
    assert stub.params["train.max_epochs"] == 3 and stub.params["problem.name"] == "toy"
    assert stub.params["train.max_seconds"] == "None"
    assert stub.dicts["training_history.json"]["epochs"] == 3
    ml.log_report({"sections": {"coverage": {"status": "fail", "metrics": {"atc": -0.2}}}})
    assert ("diagnostics/coverage/atc", -0.2, 0) in stub.metrics
    assert ("diagnostics/coverage/status", 2.0, 0) in stub.metrics
    assert "report_card.json" in stub.dicts


def test_mlflow_missing_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(ImportError, match=r"sbi-core\[mlflow\]"):
        MLflowLogger()


def test_helpers_flatten_and_filter():
    assert flat_params({"a": {"b": 1, "c": None}, "d": [1]}) == {"a.b": 1, "a.c": "None",
                                                                 "d": "[1]"}
    assert report_metrics({"sections": {"x": {"status": "pass", "metrics": {
        "ok": 1, "flag": True, "inf": math.inf}}}}) == {"diagnostics/x/status": 0.0,
                                                         "diagnostics/x/ok": 1.0}


def test_cli_train_log_dir_writes_tensorboard_run(tmp_path, capsys):
    from sbi_core import simulate
    from sbi_core.cli.main import main
    from sbi_core.resolve import resolve_problem

    sims = simulate(resolve_problem("two_moons"), 200, seed=0, progress=False)
    sims.save(tmp_path / "sims.pt")
    log_dir = tmp_path / "runs"
    rc = main(["train", "--sims", str(tmp_path / "sims.pt"), "--out", str(tmp_path / "m.pt"),
               "--max-epochs", "3", "--quiet", "--log-dir", str(log_dir)])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    runs = list(log_dir.iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("m-") and summary["log_dir"] == str(runs[0])
    acc, scalars = _scalars(runs[0])
    assert len(scalars["loss/validation"]) == 3 == summary["epochs"]
    config_text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"problem": "two_moons"' in config_text and '"method": "npe"' in config_text
    (tmp_path / "afile").write_text("x")
    rc = main(["train", "--sims", str(tmp_path / "sims.pt"), "--out", str(tmp_path / "m2.pt"),
               "--max-epochs", "1", "--quiet", "--log-dir", str(tmp_path / "afile")])
    assert rc == 2 and "is a file; pass a folder" in capsys.readouterr().err


def test_tensorboard_missing_names_the_extra(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match=r"sbi-core\[tracking\]"):
        TensorBoardLogger(tmp_path / "run")
