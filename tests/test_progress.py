"""Progress bars: one rule (sbi_core.progress) for every bar — explicit progress=True/False
wins, then SBI_CORE_PROGRESS=0/1, else shown only when stderr is a terminal."""

import io
import sys

import pytest
import torch
from torch import nn

from diagnostics.report import diagnose
from sbi_core import simulate
from sbi_core.mcmc import run_mcmc
from sbi_core.mcmc_posterior import MCMCPosterior
from sbi_core.progress import ENV_VAR, progress_bar, show_progress
from simulators.linear_gaussian import linear_gaussian


class _TTY(io.StringIO):
    def isatty(self):
        return True


def test_rule_argument_then_environment_then_terminal(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert show_progress(None) is False  # not a terminal: off
    assert show_progress(True) is True
    monkeypatch.setattr(sys, "stderr", _TTY())
    assert show_progress(None) is True  # a terminal: on
    assert show_progress(False) is False
    monkeypatch.setenv(ENV_VAR, "0")
    assert show_progress(None) is False  # environment beats the terminal
    assert show_progress(True) is True  # the argument beats the environment
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.setenv(ENV_VAR, "1")
    assert show_progress(None) is True
    monkeypatch.setenv(ENV_VAR, "maybe")  # unknown value: the terminal decides
    assert show_progress(None) is False


def test_progress_bar_writes_only_when_shown(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    assert list(progress_bar(range(3), desc="quiet")) == [0, 1, 2]
    assert err.getvalue() == ""
    list(progress_bar(range(3), desc="loud", progress=True))
    assert "loud" in err.getvalue()


def _potential(theta, index):
    return -0.5 * (theta ** 2).sum(-1)


def test_mcmc_and_simulate_are_silent_in_a_pipe_by_default(monkeypatch, capsys):
    monkeypatch.delenv(ENV_VAR, raising=False)
    problem = linear_gaussian(2)
    simulate(problem, 200, seed=0)
    run_mcmc(_potential, problem.prior, 20, num_chains=4, warmup_steps=5, warn_rhat=None)
    assert capsys.readouterr().err == ""  # capsys' stderr is not a terminal
    run_mcmc(_potential, problem.prior, 20, num_chains=4, warmup_steps=5, progress=True,
             warn_rhat=None)
    assert "MCMC (hmc, 4 chains)" in capsys.readouterr().err


class _GaussianLikelihood(nn.Module):
    """Exact likelihood of the 2-D linear Gaussian (noise 0.5), for a cheap MCMC posterior."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def log_likelihood(self, theta, x):
        return -((x - theta) ** 2).sum(-1) / (2 * 0.25)


@pytest.mark.parametrize("progress", [False, True])
def test_diagnose_progress_reaches_the_mcmc_sampler(monkeypatch, capsys, progress):
    monkeypatch.setenv(ENV_VAR, "1")  # bars on unless the call says otherwise
    problem = linear_gaussian(2)
    post = MCMCPosterior(_GaussianLikelihood(), problem.prior, problem.spec(),
                         mcmc={"num_chains": 4, "warmup_steps": 10, "warn_rhat": None})
    report = diagnose(post, problem, num=5, num_samples=20, checks=["sbc"], progress=progress)
    assert report.sections["sbc"]["status"] in ("pass", "warn", "fail")
    err = capsys.readouterr().err
    assert ("MCMC (" in err) is progress
    assert ("diagnostics" in err) is progress


def test_mcmc_files_with_the_old_default_progress_true_follow_the_rule():
    problem = linear_gaussian(2)
    old = MCMCPosterior(_GaussianLikelihood(), problem.prior, problem.spec(),
                        mcmc={"progress": True})
    assert old.mcmc_config.progress is None
    quiet = MCMCPosterior(_GaussianLikelihood(), problem.prior, problem.spec(),
                          mcmc={"progress": False})
    assert quiet.mcmc_config.progress is False
