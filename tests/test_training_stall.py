"""lr_schedule="cosine" with stall_decay=0 (the NPE "accurate" preset): a stall of
stop_after_epochs epochs without a new best validation loss ends training with the best
weights; a still-improving run is not ended."""

import pytest
import torch
from torch import nn

from sbi_core.training import TrainConfig, train


class Line(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(1, 1)

    def loss(self, theta, x):
        return 0.5 * (theta - self.lin(x)).pow(2).sum(-1)


def _data(n=1000):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, generator=g)
    return 2 * x - 1 + 0.1 * torch.randn(n, 1, generator=g), x


class LrRecorder:
    def __init__(self):
        self.lrs = []

    def on_epoch_end(self, epoch, train_loss, val_loss, lr, seconds):
        self.lrs.append(lr)


def test_a_stall_ends_a_converged_run_at_once():
    """The line is fitted in a few epochs: with stall_decay=0 training ends exactly
    stop_after_epochs epochs after the best one, at a still-high learning rate (no
    compressed decay), with the best weights restored."""
    theta, x = _data()
    rec = LrRecorder()
    line = Line()
    hist = train(line, theta, x, progress=False, batch_size=100, learning_rate=0.05,
                 lr_schedule="cosine", schedule_epochs=100, stop_after_epochs=5,
                 stall_decay=0.0, callbacks=[rec])
    assert hist.stopped == "converged"
    assert hist.epochs == hist.best_epoch + 1 + 5 and hist.epochs < 40, hist.epochs
    assert rec.lrs[-1] > 0.5 * 0.05  # ended on the stall, not after a final decay
    assert line.lin.weight.item() == pytest.approx(2.0, abs=0.05)
    assert line.lin.bias.item() == pytest.approx(-1.0, abs=0.05)
    with_decay = train(Line(), theta, x, progress=False, batch_size=100, learning_rate=0.05,
                       lr_schedule="cosine", schedule_epochs=100, stop_after_epochs=5)
    assert with_decay.epochs > hist.epochs  # the default (0.1) adds the decay's epochs


class SlowLine(Line):
    """Learns slowly (a tiny output scale): the validation loss improves every epoch."""

    def loss(self, theta, x):
        return 0.5 * (theta - 1e-2 * self.lin(x)).pow(2).sum(-1)


def test_a_still_improving_run_is_not_ended():
    theta, x = _data()
    hist = train(SlowLine(), theta, x, progress=False, batch_size=100, learning_rate=0.05,
                 lr_schedule="cosine", schedule_epochs=30, stop_after_epochs=5,
                 stall_decay=0.0)
    assert hist.stopped == "schedule_done" and hist.epochs == 30
    assert hist.best_epoch >= 25  # still improving near the end


def test_stall_decay_is_checked():
    with pytest.raises(ValueError, match="stall_decay"):
        TrainConfig(stall_decay=-0.1)
    with pytest.raises(ValueError, match="stall_decay"):
        TrainConfig(stall_decay=1.5)


def test_stall_patience_grows_with_the_run():
    from sbi_core.training import stall_patience

    fixed = TrainConfig(stop_after_epochs=40)
    assert [stall_patience(fixed, e) for e in (1, 60, 500)] == [40, 40, 40]
    scaled = TrainConfig(stop_after_epochs=40, patience_fraction=1 / 3)
    assert [stall_patience(scaled, e) for e in (1, 30, 60, 90, 120, 500)] == \
        [20, 20, 20, 30, 40, 40]
    with pytest.raises(ValueError, match="patience_fraction"):
        TrainConfig(patience_fraction=0)


def test_an_early_best_stalls_after_half_the_patience():
    """The line's best epoch comes in the first few: with patience_fraction the stall is
    judged after stop_after_epochs // 2 epochs instead of stop_after_epochs."""
    theta, x = _data()
    kw = dict(progress=False, batch_size=100, learning_rate=0.05, lr_schedule="cosine",
              schedule_epochs=200, stop_after_epochs=20, stall_decay=0.0)
    fixed = train(Line(), theta, x, **kw)
    scaled = train(Line(), theta, x, patience_fraction=1 / 3, **kw)
    assert fixed.stopped == scaled.stopped == "converged"
    assert fixed.best_epoch < 15
    assert fixed.epochs == fixed.best_epoch + 1 + 20
    assert scaled.epochs == scaled.best_epoch + 1 + 10
