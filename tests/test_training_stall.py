"""lr_schedule="cosine" with stall_decay=0 (the NPE "accurate" preset): a stall of
stop_after_epochs epochs without a new best validation loss (or overfit_epochs of a rising
one, overfit_rise) ends training with the best weights; a still-improving run is not ended."""

import pytest
from test_training_schedule import Line, LrRecorder, _data

from sbi_core.training import TrainConfig, train


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



def test_is_stalled_ends_early_only_when_the_loss_rises():
    """overfit_rise: after overfit_epochs epochs without a real gain, a validation loss that
    stays above the best by more than overfit_rise is a stall; a flat plateau (within
    overfit_rise of the best) waits the full stop_after_epochs."""
    from sbi_core.training import TrainingHistory, is_stalled

    cfg = TrainConfig(stop_after_epochs=40, overfit_rise=0.05, overfit_epochs=25)
    rising = TrainingHistory(num_train=1, num_validation=1)
    rising.validation_loss = [1.0] + [1.0 + 0.01 * e for e in range(1, 31)]
    rising.best_validation_loss = 1.0
    flat = TrainingHistory(num_train=1, num_validation=1)
    flat.validation_loss = [1.0] + [1.0 + 0.01 * (e % 2) for e in range(1, 31)]
    flat.best_validation_loss = 1.0
    assert not is_stalled(cfg, 24, rising)  # too soon
    assert is_stalled(cfg, 25, rising)  # last 5 losses 1.26-1.30 > 1.05
    assert not is_stalled(cfg, 30, flat)  # a plateau: wait for stop_after_epochs
    assert is_stalled(cfg, 40, flat)
    off = TrainConfig(stop_after_epochs=40)  # overfit_rise None: the fixed patience only
    assert not is_stalled(off, 39, rising) and is_stalled(off, 40, rising)
    with pytest.raises(ValueError, match="overfit_rise"):
        TrainConfig(overfit_rise=-1.0)
    with pytest.raises(ValueError, match="overfit_epochs"):
        TrainConfig(overfit_epochs=0)
