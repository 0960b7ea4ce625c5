"""flow="auto" (the NPE default) picks the flow by the problem (declared trials and parameter
dimension; tests/test_npe_defaults_trials.py has the trial cases), recorded in the model
config; presets resolve to the documented settings for every flow; `sbi-core train --preset`."""

import pytest
import torch

from estimators.npe import ACCURATE_DEFAULTS, AUTO_FLOW, DEFAULTS, resolve_flow
from sbi_core import Problem, fit, get_method, load, save
from sbi_core.cli.main import main
from sbi_core.priors import BoxUniform

PLATEAU = {"lr_schedule": "plateau", "schedule_epochs": None, "warmup_epochs": 0.0,
           "stall_decay": 0.1, "overfit_rise": None,
           "overfit_epochs": 25}
FAST_FUSED = {"batch_size": 512, "learning_rate": 2e-3, "min_delta": 0.005, "ema_decay": None,
              "stop_after_epochs": 20, **PLATEAU}
ACCURATE = {"batch_size": 256, "learning_rate": 1e-3, "min_delta": 0.0, "ema_decay": 0.99,
            "stop_after_epochs": 40, **PLATEAU}
ACCURATE_FMAF = {"batch_size": 256, "learning_rate": 3e-3, "min_delta": 0.003,
                 "ema_decay": 0.99, "stop_after_epochs": 40, "lr_schedule": "cosine",
                 "schedule_epochs": "auto", "warmup_epochs": 5.0, "stall_decay": 0.0,
                 "overfit_rise": 0.05,
                 "overfit_epochs": 25}


def test_auto_flow_resolves_by_dimension():
    """The rule of flow="auto" (the default) without declared trials: fmaf for every D
    (fnsf was not better on gaussian_linear at D = 5 or 10)."""
    assert DEFAULTS["flow"] == "auto"
    assert AUTO_FLOW["flat"] == ((float("inf"), "fmaf"),)
    assert [resolve_flow("auto", d) for d in (1, 2, 3, 5, 9, 10, 50)] == ["fmaf"] * 7
    assert resolve_flow("nsf", 2) == "nsf"  # explicit flows are kept


def test_presets_resolve_to_documented_settings_for_every_flow():
    npe = get_method("npe")
    assert ACCURATE_DEFAULTS == ACCURATE
    for flow in ("auto", "fmaf", "fnsf", "maf", "nsf", "mdn"):
        expected = ACCURATE_FMAF if flow in ("auto", "fmaf", "fnsf") else ACCURATE
        assert npe.training_defaults({"flow": flow}) == expected
        assert npe.training_defaults({"flow": flow, "preset": "accurate"}) == expected
    assert npe.training_defaults({}) == ACCURATE_FMAF  # the default flow is auto (fused)
    for flow in ("auto", "fmaf", "fnsf"):
        assert npe.training_defaults({"flow": flow, "preset": "fast"}) == FAST_FUSED
    assert npe.training_defaults({"preset": "fast"}) == FAST_FUSED  # default flow: auto


def _data(dim: int):
    prior = BoxUniform(torch.zeros(dim), torch.ones(dim))
    problem = Problem(prior, lambda t: t + 0.1 * torch.randn_like(t), x_shape=(dim,),
                      validate=False)
    gen = torch.Generator().manual_seed(0)
    theta = torch.rand(300, dim, generator=gen)
    return problem, (theta, theta + 0.1 * torch.randn(300, dim, generator=gen))


@pytest.mark.parametrize("dim, flow", [(2, "fmaf"), (3, "fmaf")])
def test_fit_records_the_resolved_flow_and_it_survives_save_load(dim, flow, tmp_path):
    problem, data = _data(dim)
    post = fit(problem, data, flow="auto", max_epochs=1, progress=False, hidden_features=8,
               detector=False)
    cfg = post.estimator.config
    assert cfg["flow"] == flow and cfg["flow_requested"] == "auto"
    save(post, tmp_path / "m.pt")
    again = load(tmp_path / "m.pt")
    assert again.estimator.config["flow"] == flow
    x_o = data[1][0]
    assert torch.equal(again.sample((20,), x=x_o, seed=1), post.sample((20,), x=x_o, seed=1))


def test_cli_train_preset(tmp_path, capsys):
    sims = tmp_path / "sims.pt"
    assert main(["simulate", "two_moons", "--num", "300", "--seed", "0", "--out", str(sims)]) == 0
    for preset, expected in (("fast", FAST_FUSED), ("accurate", ACCURATE_FMAF)):
        out = tmp_path / f"{preset}.pt"
        assert main(["train", "--sims", str(sims), "--out", str(out), "--max-epochs", "1",
                     "--preset", preset, "--quiet"]) == 0
        cfg = load(out).history["config"]
        assert {k: cfg[k] for k in expected} == expected
    out = tmp_path / "explicit.pt"  # an explicit option wins over the preset's
    assert main(["train", "--sims", str(sims), "--out", str(out), "--max-epochs", "1",
                 "--preset", "fast", "--batch-size", "64", "--quiet"]) == 0
    assert load(out).history["config"]["batch_size"] == 64
    capsys.readouterr()
    assert main(["train", "--sims", str(sims), "--out", str(out), "--preset", "slow"]) != 0
    assert "invalid choice: 'slow'" in capsys.readouterr().err
    assert main(["train", "--sims", str(sims), "--out", str(tmp_path / "nle.pt"), "--method",
                 "nle", "--preset", "fast", "--max-epochs", "1", "--quiet"]) != 0
    assert "method 'nle' has no training presets" in capsys.readouterr().err
