"""Shared test fixtures: fixed seeds, few threads, headless plotting."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")
# Many small networks: one thread each is as fast and avoids OpenMP oversubscription when
# other processes (tutorial subprocesses, simulation workers) share the two cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto`` (the default in pyproject): one test process per free core, at most 4.

    Each process runs torch on one thread (above), so two processes on CI's two cores run the
    suite in about half the time; more than 4 only multiplies the per-process set-up (torch's
    import, the session fixtures) on large machines.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def linear_problem():
    """2-D linear Gaussian with an analytic posterior (prior N(0, I), noise 0.5)."""
    import simulators

    return simulators.get_problem("linear_gaussian")


@pytest.fixture(scope="session")
def trained_npe(linear_problem):
    """A small NPE trained once on the 2-D linear Gaussian (shared by several test files)."""
    from sbi_core import fit, simulate

    sims = simulate(linear_problem, 3000, seed=1, progress=False)
    return fit(linear_problem, sims, method="npe", seed=1, progress=False, max_epochs=200,
               hidden_features=32, num_transforms=3)
