"""Small trained posteriors shared by the server tests (cheap: tiny nets, few epochs)."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch

from sbi_core import fit, simulate
from sbi_core.posterior import Posterior
from simulators import get_problem


@functools.cache
def tiny_posterior(problem: str = "two_moons", num: int = 600, epochs: int = 3) -> Posterior:
    """An NPE posterior trained for a few epochs (seconds on a 2-core CPU)."""
    prob = get_problem(problem)
    sims = simulate(prob, num, seed=0)
    with one_thread():
        return fit(prob, sims, method="npe", seed=0, max_epochs=epochs, hidden_features=16,
                   num_transforms=2, progress=False)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Small nets run faster on one torch thread, much faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
