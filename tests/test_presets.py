"""fit(..., preset="fast"|"accurate"): presets resolve to the documented settings (docs/npe.md)."""

import pytest
import torch

from sbi_core import Problem, fit, get_method
from sbi_core.priors import BoxUniform

PLATEAU = {"lr_schedule": "plateau", "schedule_epochs": None, "warmup_epochs": 0.0,
           "stall_decay": 0.1, "overfit_rise": None,
           "overfit_epochs": 25}
FAST_FMAF = {"batch_size": 512, "learning_rate": 2e-3, "min_delta": 0.005, "ema_decay": None,
             "stop_after_epochs": 20, **PLATEAU}
# the default (fmaf, accurate): warm-up + cosine over a budget tied to the data size
# a stall (40 epochs without a gain > 0.003 nats; 25 when the loss rises > 0.05) ends training
ACCURATE = {"batch_size": 256, "learning_rate": 3e-3, "min_delta": 0.003, "ema_decay": 0.99,
            "stop_after_epochs": 40, "lr_schedule": "cosine", "schedule_epochs": "auto",
            "warmup_epochs": 5.0, "stall_decay": 0.0, "overfit_rise": 0.05,
            "overfit_epochs": 25}
ACCURATE_OTHER = {"batch_size": 256, "learning_rate": 1e-3, "min_delta": 0.0,
                  "ema_decay": 0.99, "stop_after_epochs": 40, **PLATEAU}
FAST_OTHER = {"batch_size": 256, "learning_rate": 1e-3, "min_delta": 0.0, "ema_decay": None,
              "stop_after_epochs": 20, **PLATEAU}


def test_presets_resolve_to_documented_settings():
    npe = get_method("npe")
    assert npe.training_defaults({}) == ACCURATE  # the default preset
    assert npe.training_defaults({"preset": "accurate"}) == ACCURATE
    assert npe.training_defaults({"preset": "fast"}) == FAST_FMAF
    assert npe.training_defaults({"preset": "fast", "flow": "nsf"}) == FAST_OTHER
    assert npe.training_defaults({"preset": "accurate", "flow": "nsf"}) == ACCURATE_OTHER
    # every preset sets the same keys (so presets never mix)
    assert set(FAST_FMAF) == set(ACCURATE) == set(FAST_OTHER) == set(ACCURATE_OTHER)


def _tiny():
    prior = BoxUniform(torch.zeros(2), torch.ones(2))
    problem = Problem(prior, lambda t: t + 0.1 * torch.randn_like(t), x_shape=(2,),
                      validate=False)
    gen = torch.Generator().manual_seed(0)
    theta = torch.rand(300, 2, generator=gen)
    return problem, (theta, theta + 0.1 * torch.randn(300, 2, generator=gen))


@pytest.mark.parametrize("preset, expected", [(None, ACCURATE), ("accurate", ACCURATE),
                                              ("fast", FAST_FMAF)])
def test_fit_trains_with_the_preset_and_explicit_options_win(preset, expected):
    problem, data = _tiny()
    kw = {} if preset is None else {"preset": preset}
    post = fit(problem, data, max_epochs=1, progress=False, hidden_features=8, **kw)
    cfg = post.history["config"]
    assert {k: cfg[k] for k in expected} == expected
    post = fit(problem, data, max_epochs=1, progress=False, hidden_features=8,
               batch_size=64, **kw)
    assert post.history["config"]["batch_size"] == 64


def test_bad_presets_name_the_choices():
    problem, data = _tiny()
    with pytest.raises(ValueError, match=r"Unknown preset 'slow'.*\['accurate', 'fast'\]"):
        fit(problem, data, preset="slow")
    with pytest.raises(ValueError, match="method 'nle' has no training presets"):
        fit(problem, data, method="nle", preset="fast")


def test_weight_averaging_returns_a_less_noisy_optimum():
    """ema_decay: the returned weights are the average, which sits closer to the optimum
    than the raw weights of noisy large-step training (mean of 4,000 draws, batch 8; mean
    error over 5 seeds)."""
    from torch import nn

    from sbi_core.training import TrainConfig, train

    class Gauss(nn.Module):
        def __init__(self):
            super().__init__()
            self.mu = nn.Parameter(torch.zeros(1))

        def loss(self, theta, x):
            return 0.5 * (theta[:, 0] - self.mu) ** 2

    gen = torch.Generator().manual_seed(0)
    theta = 2.0 + torch.randn(4000, 1, generator=gen)
    target = float(theta.mean())
    err = {None: 0.0, 0.99: 0.0}
    for decay in err:
        for seed in range(5):  # one epoch: the returned weights are the last step's (or average)
            est = Gauss()
            train(est, theta, theta, batch_size=8, learning_rate=0.2, max_epochs=1, seed=seed,
                  lr_decay_on_plateau=False, ema_decay=decay, progress=False)
            err[decay] += abs(float(est.mu) - target) / 5
    assert err[0.99] < 0.5 * err[None], err
    with pytest.raises(ValueError, match="ema_decay must be a number strictly between 0 and 1"):
        TrainConfig(ema_decay=1.0)
