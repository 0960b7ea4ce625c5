"""Speed-related options: the thread setting of train() and the NPE defaults (fused MAF)."""

import pytest
import torch
from torch import nn

from estimators.fast_maf import FusedMAF
from estimators.npe import build_npe
from sbi_core import get_method
from sbi_core.training import train


class _Gauss(nn.Module):
    def __init__(self):
        super().__init__()
        self.mu = nn.Parameter(torch.zeros(1))

    def loss(self, theta, x):
        return 0.5 * (theta[:, 0] - self.mu) ** 2


def test_num_threads_is_applied_and_restored():
    before = torch.get_num_threads()
    seen = []

    def loss_fn(est, theta, x):
        seen.append(torch.get_num_threads())
        return est.loss(theta, x)

    theta = torch.randn(200, 1) + 2.0
    hist = train(_Gauss(), theta, theta, num_threads=1, max_epochs=3, progress=False,
                 loss_fn=loss_fn)
    assert set(seen) == {1} and hist.epochs == 3
    assert torch.get_num_threads() == before


def test_num_threads_rejects_zero():
    theta = torch.randn(50, 1)
    with pytest.raises(ValueError, match="num_threads"):
        train(_Gauss(), theta, theta, num_threads=0, progress=False)


def test_npe_defaults_are_the_fused_maf_with_its_training_presets():
    """fmaf is the default flow; its default training preset is "accurate" and the earlier
    defaults (batch 512, lr 2e-3, min_delta 0.005) are preset="fast" (docs/npe.md,
    tests/test_presets.py); user options override both."""
    theta, x = torch.randn(100, 2), torch.randn(100, 3)
    assert isinstance(build_npe(theta, x, prior=None).density, FusedMAF)
    assert type(build_npe(theta, x, prior=None, flow="maf").density).__name__ == "Flow"
    npe = get_method("npe")
    assert npe.training_defaults({"preset": "fast"}) == {
        "batch_size": 512, "learning_rate": 2e-3, "min_delta": 0.005, "ema_decay": None,
        "stop_after_epochs": 20, "lr_schedule": "plateau", "schedule_epochs": None,
        "warmup_epochs": 0.0, "stall_decay": 0.1, "overfit_rise": None,
        "overfit_epochs": 25}
    assert npe.training_defaults({})["min_delta"] == 0.003
    assert get_method("nle").training_defaults({}) == {}


def test_min_delta_stops_on_negligible_improvements():
    """With min_delta, epochs that improve the validation loss by less than it count toward
    the patience; the best weights are still the best epoch's."""
    gen = torch.Generator().manual_seed(0)
    theta = 3.0 + torch.randn(2000, 1, generator=gen)  # mu starts 3 away: slow steady gains
    x = theta + 0.1 * torch.randn(2000, 1, generator=gen)
    runs = {}
    for delta in (0.0, 0.05):
        est = _Gauss()
        h = train(est, theta, x, stop_after_epochs=5, min_delta=delta, max_epochs=300,
                  progress=False, seed=0)
        runs[delta] = h
        assert h.best_validation_loss == min(h.validation_loss)
    assert runs[0.05].epochs < runs[0.0].epochs
