"""Serving a posterior that answers one observation (ABC): the model info names that x_o
(`focus`), the API answers it and refuses others, and the explorer opens on it."""

from __future__ import annotations

import os
import warnings

import pytest
from fastapi.testclient import TestClient
from playwright.sync_api import sync_playwright
from serve_helpers import tiny_posterior
from test_serve_browser import ARGS, CHROMIUM

from sbi_core import fit, simulate
from sbi_core.server import BackgroundServer, create_app
from simulators import get_problem


@pytest.fixture(scope="module")
def abc_post():
    p = get_problem("gaussian_linear", dim=2)
    sims = simulate(p, 1000, seed=0, progress=False)
    return fit(p, sims, method="abc", x_o=p.observation(1), quantile=0.1, detector=False)


def test_focus_in_model_info_and_api(abc_post):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        amortized = tiny_posterior()
    c = TestClient(create_app({"abc": abc_post, "npe": amortized}))
    info = c.get("/api/models/abc").json()
    x_o = abc_post.estimator.x_o.tolist()
    assert info["focus"]["kind"] == "single_observation" and info["focus"]["x_o"] == x_o
    assert c.get("/api/models/npe").json()["focus"] is None
    assert c.post("/api/models/abc/sample", json={"x": x_o, "n": 20}).status_code == 200
    other = c.post("/api/models/abc/sample", json={"x": [x_o[0] + 1, x_o[1]], "n": 20})
    assert other.status_code == 422 and "fitted to one observation" in other.json()["detail"]


def test_explorer_opens_on_the_focus_observation(abc_post):
    assert os.path.exists(CHROMIUM), "Debian's chromium is missing: apt-get install -y chromium"
    with BackgroundServer(create_app({"abc": abc_post}, max_samples=5000)) as srv, \
            sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(srv.url + "/")
        page.wait_for_function("document.querySelector('#pairplot').dataset.updates === '1'")
        assert page.locator("#pairplot").get_attribute("data-sample-count") == "1000"
        shown = [float(v) for v in page.locator("#inputs input[type=number]").evaluate_all(
            "els => els.map(e => e.value)")]
        assert shown == pytest.approx(abc_post.estimator.x_o.tolist(), rel=1e-6)
        assert page.locator("#status").get_attribute("data-state") == "idle"
        assert not errors
        browser.close()
