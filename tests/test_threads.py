"""Automatic thread count (sbi_core.threads): chosen per task, applied, and restored."""

import threading

import pytest
import torch
from torch import nn

from sbi_core import threads as th
from sbi_core.training import TrainConfig, train


class _Gauss(nn.Module):
    def __init__(self):
        super().__init__()
        self.mu = nn.Parameter(torch.zeros(1))

    def loss(self, theta, x):
        return 0.5 * (theta[:, 0] - self.mu) ** 2


@pytest.fixture
def no_env(monkeypatch):
    for name in ("SBI_CORE_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)


def test_small_work_gets_one_thread_and_large_work_the_free_cores(no_env, monkeypatch):
    monkeypatch.setattr(th.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    monkeypatch.setattr(th.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        assert th.choose_threads(th.SMALL_WORK / 2) == 1
        assert th.choose_threads(th.SMALL_WORK * 2) == 4
        # 3 busy cores out of 4: one is free
        monkeypatch.setattr(th.os, "getloadavg", lambda: (3.0, 3.0, 3.0))
        assert th.free_cores() == 1 and th.choose_threads(th.SMALL_WORK * 2) == 1
        # never more than torch's own setting
        monkeypatch.setattr(th.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
        torch.set_num_threads(2)
        assert th.choose_threads(None) == 2
    finally:
        torch.set_num_threads(before)


def test_environment_setting_wins(monkeypatch):
    monkeypatch.setenv("SBI_CORE_THREADS", "3")
    assert th.choose_threads(1.0) == 3
    monkeypatch.delenv("SBI_CORE_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert th.choose_threads(1.0) == 2


def test_scope_applies_restores_and_nested_auto_keeps_outer_choice(no_env):
    before = torch.get_num_threads()
    with th.thread_scope(1):
        assert torch.get_num_threads() == 1
        with th.thread_scope("auto", work=th.SMALL_WORK * 10):
            assert torch.get_num_threads() == 1  # nested auto does not re-decide
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="'auto', an integer >= 1, or None"):
        with th.thread_scope(0):
            pass
    assert torch.get_num_threads() == before


def test_other_threads_do_not_change_the_process_setting(no_env):
    before = torch.get_num_threads()
    seen = []

    def work():
        with th.thread_scope(1):
            seen.append(torch.get_num_threads())

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert seen == [before] and torch.get_num_threads() == before


def test_training_defaults_to_auto_threads_one_for_a_small_network(no_env):
    assert TrainConfig().num_threads == "auto"
    before = torch.get_num_threads()
    seen = []

    def loss_fn(est, theta, x):
        seen.append(torch.get_num_threads())
        return est.loss(theta, x)

    theta = torch.randn(200, 1)
    train(_Gauss(), theta, theta, max_epochs=2, progress=False, loss_fn=loss_fn)
    assert set(seen) == {1} and torch.get_num_threads() == before
    with pytest.raises(ValueError, match="num_threads"):
        TrainConfig(num_threads="many")


def test_sampling_and_diagnostics_run_inside_a_scope(no_env, monkeypatch):
    """Posterior sampling and c2st go through thread_scope (on a busy machine: 1 thread)."""
    from diagnostics.c2st import c2st

    monkeypatch.setattr(th.os, "getloadavg", lambda: (64.0, 64.0, 64.0))
    before = torch.get_num_threads()
    seen = []
    real = th.thread_scope

    def spy(*a, **k):
        cm = real(*a, **k)

        class Wrap:
            def __enter__(self):
                n = cm.__enter__()
                seen.append(n)
                return n

            def __exit__(self, *e):
                return cm.__exit__(*e)

        return Wrap()

    monkeypatch.setattr(th, "thread_scope", spy)
    gen = torch.Generator().manual_seed(0)
    c2st(torch.randn(100, 2, generator=gen), torch.randn(100, 2, generator=gen), epochs=2)
    assert seen == [1] and torch.get_num_threads() == before
