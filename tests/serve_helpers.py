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


class SquareLikelihood(torch.nn.Module):
    """Exact log-likelihood of ``x = (theta_1**2, theta_2) + N(0, sigma**2)``: for ``x_1 > 0``
    the posterior has two narrow modes ``theta_1 = ±sqrt(x_1)`` that MCMC chains started in
    different modes cannot cross (a deterministic case of chains that do not mix)."""

    def __init__(self, sigma: float = 0.02):
        super().__init__()
        self.sigma = sigma

    def log_likelihood(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        mean = torch.stack([theta[:, 0] ** 2, theta[:, 1]], -1)
        return -0.5 * (((x - mean) / self.sigma) ** 2).sum(-1)


#: the square model samples with sbi-core's previous default MCMC settings (slice, 20 chains,
#: fixed thinning, R-hat warning at 1.1, no minimum draws per chain): the server tests built
#: on it check limits, lanes and warnings computed from these settings
SQUARE_MCMC = {"progress": False, "method": "slice", "num_chains": 20, "ess_fraction": None,
               "warn_rhat": 1.1, "min_draws_per_chain": 1}


def square_posterior(**mcmc) -> Posterior:
    """An MCMC posterior (as NLE builds it) over the exact likelihood above; no training."""
    from sbi_core.mcmc_posterior import MCMCPosterior
    from sbi_core.priors import box_uniform

    post = MCMCPosterior(SquareLikelihood(), box_uniform([-1.0, -1.0], [1.0, 1.0]),
                         {"name": "square", "x_shape": [2], "param_names": ["a", "b"]},
                         mcmc={**SQUARE_MCMC, **mcmc})
    post.method = "nle"
    return post


CHROMIUM = "/usr/bin/chromium"  # Debian's Chromium (README step 1), never a downloaded one
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


@contextlib.contextmanager
def explorer_page(app, **page_options) -> Iterator[tuple]:
    """Serve ``app`` on localhost and open a headless Chromium page: ``(server, page, errors)``.

    ``errors`` collects the page's uncaught JavaScript errors; ``page_options`` go to
    ``browser.new_page`` (e.g. ``viewport=``).
    """
    from playwright.sync_api import sync_playwright

    from sbi_core.server import BackgroundServer

    with BackgroundServer(app) as srv, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(**page_options)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        try:
            yield srv, page, errors
        finally:
            browser.close()
