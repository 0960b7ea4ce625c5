"""The NPE default flow (``flow="auto"``) resolves as documented (docs/npe.md, the
``AUTO_FLOW`` comment in estimators/npe.py): ``fnsf`` for problems whose x declares
exchangeable trials that NPE uses (up to 9 parameters), ``fmaf`` otherwise; both fused flows
train with the accurate preset's cosine schedule."""

import pytest
import torch

import simulators
from estimators.npe import (
    AUTO_FLOW,
    DEFAULTS,
    FMAF_ACCURATE_DEFAULTS,
    FMAF_TRAIN_DEFAULTS,
    resolve_flow,
)
from sbi_core import Problem, fit, get_method, simulate
from sbi_core.priors import gaussian

COSINE = {"batch_size": 256, "learning_rate": 3e-3, "min_delta": 0.003, "ema_decay": 0.99,
          "stop_after_epochs": 40, "lr_schedule": "cosine", "schedule_epochs": "auto",
          "warmup_epochs": 5.0, "stall_decay": 0.0, "overfit_rise": 0.05,
          "overfit_epochs": 25}
pytestmark = pytest.mark.filterwarnings("ignore:Reached max_epochs")
TINY = {"max_epochs": 1, "hidden_features": 8, "num_transforms": 2, "progress": False,
        "detector": False, "seed": 0}


def test_rule_and_presets_as_documented():
    assert DEFAULTS["flow"] == "auto"
    assert AUTO_FLOW == {"trials": ((9, "fnsf"), (float("inf"), "fmaf")),
                         "flat": ((float("inf"), "fmaf"),)}
    dims = (1, 2, 3, 5, 9, 10, 50)
    assert [resolve_flow("auto", d, trials=True) for d in dims] == \
        ["fnsf"] * 5 + ["fmaf"] * 2
    assert [resolve_flow("auto", d) for d in dims] == ["fmaf"] * 7
    assert resolve_flow("fmaf", 5, trials=True) == "fmaf"  # an explicit flow is kept
    npe = get_method("npe")
    assert FMAF_ACCURATE_DEFAULTS == COSINE
    for options in ({}, {"flow": "auto"}, {"flow": "fmaf"}, {"flow": "fnsf"},
                    {"flow": "fnsf", "preset": "accurate"}):
        assert npe.training_defaults(options) == COSINE, options
        assert npe.training_defaults({**options, "preset": "fast"}) == FMAF_TRAIN_DEFAULTS


def _trial_problem(dim: int, n: int = 3) -> Problem:
    def simulator(theta: torch.Tensor) -> torch.Tensor:
        return (theta[:, None, :] + torch.randn(theta.shape[0], n, dim)).reshape(-1, n * dim)

    return Problem(gaussian(torch.zeros(dim), torch.ones(dim)), simulator,
                   name="iid", x_trials=(n, dim))


@pytest.mark.parametrize("dim, options, flow, mode", [
    (3, {}, "fnsf", "sort"),                                  # declared trials -> fnsf
    (3, {"preset": "accurate"}, "fnsf", "sort"),
    (3, {"flow": "fmaf"}, "fmaf", "sort"),                     # explicit flow wins
    (3, {"embedding": "identity"}, "fmaf", None),              # declaration not used
    (3, {"embedding": {"type": "set", "moments": True}}, "fnsf", "set"),
    (10, {}, "fmaf", "sort"),                                  # D >= 10: fmaf
])
def test_fit_resolves_the_default_on_a_trial_problem(dim, options, flow, mode):
    problem = _trial_problem(dim)
    sims = simulate(problem, 200, seed=0, progress=False)
    post = fit(problem, sims, **{**TINY, **options})
    cfg = post.estimator.config
    assert (cfg["flow"], cfg["trial_mode"]) == (flow, mode)
    assert cfg["flow_requested"] == options.get("flow", "auto")
    assert post.history["config"]["lr_schedule"] == "cosine"


@pytest.mark.parametrize("task", ["gaussian_linear", "two_moons"])
def test_builtin_problems_without_trials_keep_fmaf(task):
    """gaussian_linear and two_moons declare no trials: the default is the fused MAF with the
    cosine preset, as before the trial rule."""
    problem = simulators.get_problem(task)
    assert problem.x_trials is None
    sims = simulate(problem, 200, seed=0, progress=False)
    post = fit(problem, sims, **TINY)
    assert post.estimator.config["flow"] == "fmaf"
    assert {k: post.history["config"][k] for k in COSINE} == COSINE


def test_slcp_declares_trials_so_its_default_is_fnsf():
    problem = simulators.get_problem("slcp")
    sims = simulate(problem, 200, seed=0, progress=False)
    assert fit(problem, sims, **TINY).estimator.config["flow"] == "fnsf"
