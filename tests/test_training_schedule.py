"""lr_schedule="cosine": warm-up + cosine decay per step over a fixed epoch budget."""

import math

import pytest
import torch
from torch import nn

from sbi_core.training import TrainConfig, cosine_lr, train


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


def test_cosine_lr_formula():
    lr = cosine_lr(1e-3, total_steps=100, warmup_steps=10)
    assert lr(0) == pytest.approx(1e-3 / 11) and lr(9) == pytest.approx(1e-3 * 10 / 11)
    assert lr(10) == pytest.approx(1e-3)  # peak right after warm-up
    assert lr(55) == pytest.approx(0.5e-3)  # half-way through the decay
    assert lr(99) < 1e-6 and lr(500) == 0.0
    values = [lr(t) for t in range(10, 100)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone decay
    assert cosine_lr(1.0, 50, 0)(0) == 1.0


class LrRecorder:
    def __init__(self):
        self.lrs = []

    def on_epoch_end(self, epoch, train_loss, val_loss, lr, seconds):
        self.lrs.append(lr)


def test_training_follows_the_schedule_and_ends_with_it():
    theta, x = _data()  # 900 training rows, batch 100: 9 steps per epoch
    rec = LrRecorder()
    hist = train(Line(), theta, x, progress=False, batch_size=100, learning_rate=0.05,
                 lr_schedule="cosine", schedule_epochs=6, warmup_epochs=1,
                 stop_after_epochs=100, callbacks=[rec])
    assert hist.stopped == "schedule_done" and hist.epochs == 6
    expected = cosine_lr(0.05, 6 * 9, 9)
    # the lr reported after each epoch is the one of its last step
    assert rec.lrs == pytest.approx([expected(9 * (e + 1) - 1) for e in range(6)])
    assert rec.lrs[0] == pytest.approx(0.05 * 9 / 10)  # last warm-up step
    assert rec.lrs[-1] < 0.05 * 0.02
    assert hist.config["lr_schedule"] == "cosine" and hist.config["schedule_epochs"] == 6


def test_max_epochs_shortens_the_schedule_with_a_warning():
    theta, x = _data()
    rec = LrRecorder()
    with pytest.warns(UserWarning, match=r"Reached max_epochs=3 \(the cosine schedule of 50"):
        hist = train(Line(), theta, x, progress=False, batch_size=100, learning_rate=0.05,
                     lr_schedule="cosine", schedule_epochs=50, max_epochs=3, callbacks=[rec])
    assert hist.stopped == "max_epochs" and hist.epochs == 3
    assert rec.lrs[-1] < 0.05 * 0.02  # the whole decay fit into the 3 epochs


def test_bad_schedule_settings_name_the_fix():
    with pytest.raises(ValueError, match=r"lr_schedule must be one of \['plateau', 'cosine'\]"):
        TrainConfig(lr_schedule="linear")
    with pytest.raises(ValueError, match="schedule_epochs must be an integer >= 1"):
        TrainConfig(schedule_epochs=0)
    with pytest.raises(ValueError, match="warmup_epochs must be a finite number >= 0"):
        TrainConfig(warmup_epochs=-1)
    with pytest.raises(ValueError, match="warmup_epochs"):
        TrainConfig(warmup_epochs=math.nan)


def test_auto_schedule_epochs_scale_with_the_simulations():
    from sbi_core.training import auto_schedule_epochs

    assert auto_schedule_epochs(10_000) == 300
    assert auto_schedule_epochs(1_000) == 949 and auto_schedule_epochs(100_000) == 95
    assert auto_schedule_epochs(10**9) == 30  # floor
    theta, x = _data(400)  # 400 simulations: 1500 epochs, cut to max_epochs=2 with a warning
    with pytest.warns(UserWarning, match="cosine schedule of 1500 epochs"):
        hist = train(Line(), theta, x, progress=False, lr_schedule="cosine",
                     schedule_epochs="auto", max_epochs=2)
    assert hist.epochs == 2 and hist.config["schedule_epochs"] == "auto"


def test_a_stall_compresses_the_rest_of_the_decay():
    """Converged early (the line is fitted in a few epochs): after stop_after_epochs without
    a new best, the lr decays from its current value to 0 over STALL_DECAY_FRACTION of the
    schedule (10 epochs of 100) instead of running all 100 epochs at a high rate."""
    from sbi_core.training import STALL_DECAY_FRACTION

    theta, x = _data()
    rec = LrRecorder()
    hist = train(Line(), theta, x, progress=False, batch_size=100, learning_rate=0.05,
                 lr_schedule="cosine", schedule_epochs=100, stop_after_epochs=5,
                 callbacks=[rec])
    assert STALL_DECAY_FRACTION == 0.1
    assert hist.stopped == "converged" and hist.epochs < 40, (hist.epochs, rec.lrs)
    start = next(e for e in range(1, len(rec.lrs)) if rec.lrs[e] < 0.9 * rec.lrs[e - 1])
    assert rec.lrs[start - 1] > 0.04  # still near the peak when the stall was seen
    assert rec.lrs[-1] < 0.15 * rec.lrs[start - 1], rec.lrs
