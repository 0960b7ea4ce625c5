"""An x_o outside the range of the simulations so far does not stop a sequential run: the
round posteriors build their proposals with a warning (early rounds simulate from the prior,
often nowhere near x_o), while the returned posterior keeps its range check (before the fix
the second round's proposal raised ObservationError and the run ended; seen on sir)."""

import warnings

import pytest
import torch

from sbi_core import Problem
from sbi_core.posterior import ObservationError
from sbi_core.priors import box_uniform
from sbi_core.sequential import run_sequential

PRIOR = box_uniform([-1.0, -1.0], [1.0, 1.0])
SMALL = {"max_epochs": 20, "hidden_features": 16, "num_transforms": 2}


def _near(theta: torch.Tensor) -> torch.Tensor:
    """x = θ + 0.05·noise: x stays within about [-1.15, 1.15]."""
    return theta + 0.05 * torch.randn_like(theta)


@pytest.mark.parametrize("method", ["tsnpe", "snpe_c"])
def test_x_o_outside_the_simulations_warns_and_the_run_finishes(method):
    problem = Problem(PRIOR, _near, name="near")
    x_o = torch.tensor([1.8, 0.0])  # beyond the 10% margin of every round's x in dimension 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        posterior, history = run_sequential(problem, x_o, method=method, rounds=2,
                                            sims_per_round=200, seed=0, progress=False,
                                            **SMALL)
    assert len(history) == 2 and history[-1].total_simulations == 400
    msgs = [str(w.message) for w in caught]
    assert any("outside the range" in m and "next round's proposal" in m for m in msgs), msgs
    # the result keeps its check: x_o is outside what this simulator produces
    assert posterior.range_check == "error"
    with pytest.raises(ObservationError, match="outside the range"):
        posterior.sample((10,), x=x_o)


def test_x_o_inside_the_simulations_gives_no_range_warning():
    problem = Problem(PRIOR, _near, name="near")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_sequential(problem, torch.tensor([0.5, 0.0]), method="tsnpe", rounds=2,
                       sims_per_round=200, seed=0, progress=False, **SMALL)
    assert not any("outside the range" in str(w.message) for w in caught)


def test_cli_sample_range_check_option(tmp_path, capsys):
    """The error's fix is reachable from the CLI: `sbi-core sample --range-check warn`."""
    import numpy as np

    from sbi_core import save
    from sbi_core.cli.main import main

    problem = Problem(PRIOR, _near, name="near")
    x_o = torch.tensor([1.8, 0.0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        posterior, _ = run_sequential(problem, x_o, method="tsnpe", rounds=2,
                                      sims_per_round=200, seed=0, progress=False, **SMALL)
    save(posterior, tmp_path / "m.pt")
    np.savetxt(tmp_path / "x.csv", x_o.numpy()[None], delimiter=",")
    args = ["sample", str(tmp_path / "m.pt"), "--x", str(tmp_path / "x.csv"), "--num", "20",
            "--out", str(tmp_path / "s.csv"), "--force"]
    assert main(args) == 2  # a clear usage error, not a traceback
    assert "--range-check warn" in capsys.readouterr().err
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main([*args, "--range-check", "warn"]) == 0
    assert any("outside the range" in str(w.message) for w in caught)
    assert len(np.loadtxt(tmp_path / "s.csv", delimiter=",", skiprows=1)) == 20
