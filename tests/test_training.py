import math

import pytest
import torch
from torch import nn

from sbi_core.training import TrainConfig, TrainingHistory, train


class Quadratic(nn.Module):
    """Gaussian regression x -> theta with learnable mean; the NLL is the loss."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(1, 1)
        self.config = {}

    def loss(self, theta, x):
        return 0.5 * (theta - self.lin(x)).pow(2).sum(-1)


def _data(n=2000):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, generator=g)
    return 3 * x + 1 + 0.1 * torch.randn(n, 1, generator=g), x


def test_training_converges_and_records_history():
    theta, x = _data()
    model = Quadratic()
    hist = train(model, theta, x, TrainConfig(progress=False, learning_rate=1e-2, seed=0))
    assert hist.stopped == "converged"
    assert abs(model.lin.weight.item() - 3) < 0.05 and abs(model.lin.bias.item() - 1) < 0.05
    assert hist.epochs == len(hist.validation_loss) > hist.best_epoch >= 0
    assert hist.num_validation == 200 and hist.num_train == 1800
    again = TrainingHistory.from_dict(hist.to_dict())
    assert again.best_epoch == hist.best_epoch


def test_best_weights_are_restored_and_caps_hold():
    theta, x = _data()
    model = Quadratic()
    hist = train(model, theta, x, progress=False, max_epochs=3, learning_rate=1e-3)
    assert hist.stopped == "max_epochs" and hist.epochs == 3
    best = hist.best_validation_loss
    with torch.no_grad():
        val = float(model.loss(theta, x).mean())
    assert math.isfinite(best) and val < 10
    model2 = Quadratic()
    hist2 = train(model2, theta, x, progress=False, max_seconds=0.0)
    assert hist2.stopped == "max_seconds" and hist2.epochs == 1


def test_divergence_keeps_best_weights():
    theta, x = _data()
    model = Quadratic()
    calls = {"n": 0}

    def exploding(est, t, xx):  # finite for 3 epochs (7 batches each), then NaN
        calls["n"] += 1
        loss = est.loss(t, xx)
        return loss if calls["n"] <= 3 * 8 else loss * float("nan")

    with pytest.warns(UserWarning, match="diverged"):
        hist = train(model, theta, x, progress=False, loss_fn=exploding, learning_rate=1e-2)
    assert hist.stopped == "diverged" and hist.best_epoch >= 1
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_same_seed_same_result_and_bad_input():
    theta, x = _data(500)
    a, b = Quadratic(), Quadratic()
    b.load_state_dict(a.state_dict())
    ha = train(a, theta, x, progress=False, max_epochs=5, seed=1)
    hb = train(b, theta, x, progress=False, max_epochs=5, seed=1)
    assert ha.train_loss == hb.train_loss
    with pytest.raises(ValueError, match="NaN"):
        train(Quadratic(), theta.clone().fill_(float("nan")), x, progress=False)
    with pytest.raises(TypeError, match="Unknown training options"):
        train(Quadratic(), theta, x, progress=False, epochs=3)
    with pytest.raises(ValueError, match="too few"):
        train(Quadratic(), theta[:2], x[:2], progress=False)
