"""End-to-end: the explorer in Debian's Chromium (Playwright) reacts to a slider."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright
from serve_helpers import CHROMIUM, CHROMIUM_ARGS, square_posterior, tiny_posterior

from sbi_core.server import BackgroundServer, create_app

ARGS = CHROMIUM_ARGS


@pytest.fixture(scope="module")
def server():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = tiny_posterior()
    with BackgroundServer(create_app({"moons": post}, max_samples=5000)) as srv:
        yield srv


def test_slider_moves_posterior_and_screenshot(server, tmp_path: Path):
    assert os.path.exists(CHROMIUM), "Debian's chromium is missing: apt-get install -y chromium"
    outside: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.on("request", lambda r: outside.append(r.url)
                if not r.url.startswith(server.url) and not r.url.startswith("blob:") else None)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.url + "/")
        plot = page.locator("#pairplot")
        page.wait_for_function("document.querySelector('#pairplot').dataset.updates === '1'")
        assert plot.get_attribute("data-sample-count") == "1000"
        first = plot.get_attribute("data-sample-hash")
        assert first
        # the slider range comes from the training data
        slider = page.locator("#inputs input[type=range]").first
        lo, hi = float(slider.get_attribute("min")), float(slider.get_attribute("max"))
        x_min = float(server_info(page)["x_range"]["min"][0])
        assert lo == pytest.approx(x_min, rel=1e-5) and hi > lo
        # move the first slider to 80% of its range, as a user would with the keyboard
        slider.focus()
        for _ in range(40):
            page.keyboard.press("ArrowRight")
        page.wait_for_function(
            f"document.querySelector('#pairplot').dataset.sampleHash !== '{first}' && "
            "document.querySelector('#status').dataset.state === 'idle'")
        assert plot.get_attribute("data-sample-hash") != first
        assert float(page.locator("#inputs input[type=number]").first.input_value()) > \
            float(server_info(page)["x_range"]["default"][0])
        # fast typing: stale requests are aborted and the plot ends on the latest observation
        number = page.locator("#inputs input[type=number]").nth(1)
        for value in ("0.3", "-0.3", "0.25", "-0.1", "0.05"):
            number.fill(value)
            page.wait_for_timeout(30)
        page.wait_for_function(
            "JSON.parse(document.querySelector('#pairplot').dataset.x || '[]')[1] === 0.05 && "
            "document.querySelector('#status').dataset.state === 'idle'")
        shown = json.loads(plot.get_attribute("data-x"))
        inputs = [float(v) for v in page.locator("#inputs input[type=number]").evaluate_all(
            "els => els.map(e => e.value)")]
        assert shown == pytest.approx(inputs)
        # the diagnostics card and the summary table are shown
        assert "No diagnostics" in page.locator("#diagnostics").inner_text()
        assert "theta_1" in page.locator("#summary").inner_text()
        # samples download as CSV with a header of parameter names
        with page.expect_download() as dl:
            page.locator("#download").click()
        csv = Path(dl.value.path()).read_text().splitlines()
        assert csv[0] == "theta_1,theta_2" and len(csv) == 1001
        # a bad observation file gives a clear message, not a broken page
        bad = tmp_path / "bad.csv"
        bad.write_text("a,b,c\n1,2,3\n")
        page.locator("#file").set_input_files(str(bad))
        page.wait_for_function("document.querySelector('#status').dataset.state === 'error'")
        assert "found 3 numbers" in page.locator("#status").inner_text()
        good = tmp_path / "obs.json"
        good.write_text('{"x": [0.1, 0.2]}')
        page.locator("#file").set_input_files(str(good))
        page.wait_for_function("document.querySelector('#status').dataset.state === 'idle'")
        assert float(page.locator("#inputs input[type=number]").nth(1).input_value()) == 0.2
        shot = tmp_path / "explorer.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        if os.environ.get("SBI_CORE_SCREENSHOT"):  # keep a copy to look at
            page.screenshot(path=os.environ["SBI_CORE_SCREENSHOT"], full_page=True)
        browser.close()
    assert not errors, errors
    assert not outside, f"the page fetched from outside the server: {outside}"


def test_api_docs_render_offline(server):
    """Swagger UI at /docs renders the API from installed files: no request leaves the server."""
    outside: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page()
        page.on("request", lambda r: outside.append(r.url)
                if not r.url.startswith(server.url) and not r.url.startswith("data:") else None)
        page.goto(server.url + "/docs")
        page.get_by_text("/api/models/{name}/sample", exact=True).first.wait_for(timeout=15_000)
        assert "sbi-core posterior server" in page.content()
        browser.close()
    assert not outside, f"/docs fetched from outside the server: {outside}"


@pytest.mark.filterwarnings("ignore:MCMC chains have not mixed")
def test_mcmc_diagnostics_and_warnings_are_shown():
    """An MCMC model: the R-hat / ESS badge is shown; for an observation whose posterior has
    two separated modes the badge turns red and the server's warning is listed."""
    app = create_app({"square": square_posterior(warmup_steps=20)})
    with BackgroundServer(app) as srv, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(srv.url + "/")
        badge = page.locator("#mcmc-badge")
        badge.wait_for(timeout=30_000)
        assert "max R-hat" in badge.inner_text() and "min ESS" in badge.inner_text()
        assert badge.get_attribute("class") == "badge ok"
        assert page.locator("#sampling").get_attribute("data-warnings") == "0"
        assert float(page.locator("#sampling").get_attribute("data-max-rhat")) < 1.1
        page.locator("#inputs input[type=number]").first.fill("0.49")  # modes at ±0.7
        page.wait_for_function("document.querySelector('#sampling').dataset.warnings !== '0'")
        assert page.locator("#mcmc-badge").get_attribute("class") == "badge bad"
        assert float(page.locator("#sampling").get_attribute("data-max-rhat")) > 2.0
        assert "have not mixed" in page.locator("#warnings").inner_text()
        assert page.locator("#warnings").is_visible()
        browser.close()
    assert not errors, errors


def server_info(page) -> dict:
    return page.evaluate("state.info")
