"""The explorer's pairplot axes (``pairRange`` in ``pairplot.js``): the posterior samples'
range with a margin, clipped to the prior's support; the whole prior box only when it is
bounded and at most 3x the samples' range. A posterior around 50 under a LogNormal prior
(support [0, inf)) was drawn from 0 to its largest sample, squeezed into the right edge."""

from __future__ import annotations

import math
import os
import warnings

import pytest
import torch
from playwright.sync_api import sync_playwright
from test_serve_browser import ARGS, CHROMIUM
from torch.distributions import Independent, LogNormal

from sbi_core import Problem, fit, simulate
from sbi_core.server import BackgroundServer, create_app


def _simulator(theta: torch.Tensor) -> torch.Tensor:
    return theta + torch.randn_like(theta)


@pytest.fixture(scope="module")
def lognormal_post():
    """ABC (no training) on x = θ + N(0, 1), prior LogNormal(log 50, 0.5) per dimension:
    the posterior at x_o = (50, 50) lies around 50, far from the prior's edge at 0."""
    prior = Independent(LogNormal(torch.full((2,), math.log(50.0)), torch.full((2,), 0.5)), 1)
    problem = Problem(prior=prior, simulator=_simulator, name="lognormal_shift")
    torch.manual_seed(0)
    sims = simulate(problem, 4000, seed=0, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit(problem, sims, method="abc", x_o=torch.tensor([50.0, 50.0]), quantile=0.05,
                   detector=False)


@pytest.fixture(scope="module")
def page_of(lognormal_post):
    assert os.path.exists(CHROMIUM), "Debian's chromium is missing: apt-get install -y chromium"
    with BackgroundServer(create_app({"ln": lognormal_post}, max_samples=2000)) as srv, \
            sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(srv.url + "/")
        page.wait_for_function("document.querySelector('#pairplot').dataset.updates === '1'")
        yield page, errors
        browser.close()


def test_lognormal_prior_axes_follow_the_posterior(page_of, lognormal_post):
    page, errors = page_of
    ranges = page.evaluate("JSON.parse(document.querySelector('#pairplot').dataset.ranges)")
    samples = lognormal_post.sample((1000,), x=torch.tensor([50.0, 50.0]))
    assert samples.min() > 30 and samples.max() < 70  # the posterior sits around 50
    for lo, hi in ranges:
        assert 30 < lo < 50 < hi < 70, ranges  # was [0, max + 5%]
    assert not errors


@pytest.mark.parametrize(("samples", "low", "high", "expected"), [
    ([[49.0], [51.0]], 0.0, None, [48.9, 51.1]),           # half-bounded prior: the samples
    ([[49.0], [51.0]], 0.0, 100.0, [48.9, 51.1]),          # prior 50x wider: zoom in
    ([[-0.9], [0.9]], -1.0, 1.0, [-1.0, 1.0]),             # posterior fills the prior: the box
    ([[0.01], [2.0]], 0.0, None, [0.0, 2.0995]),           # margin clipped at the support's edge
    ([[-3.0], [1.0]], None, None, [-3.2, 1.2]),            # unbounded: samples and margin
    ([[5.0], [5.0]], None, None, [4.75, 5.25]),            # one value: a margin around it
    ([], -1.0, 1.0, [-1.0, 1.0]),                          # no samples yet: the prior box
])
def test_pair_range_rule(page_of, samples, low, high, expected):
    page, _ = page_of
    got = page.evaluate("([s, lo, hi]) => pairRange(s, 0, lo, hi)", [samples, low, high])
    assert got == pytest.approx(expected, abs=1e-9)
