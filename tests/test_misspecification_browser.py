"""The explorer shows the misspecification badge on the observation panel (Chromium)."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from playwright.sync_api import sync_playwright
from serve_helpers import CHROMIUM, CHROMIUM_ARGS
from test_misspecification import NOISE_SD, _posterior, _x_o

from sbi_core.server import BackgroundServer, create_app

ARGS = CHROMIUM_ARGS


def test_explorer_shows_misspecification_badge(tmp_path: Path):
    assert os.path.exists(CHROMIUM), "Debian's chromium is missing: apt-get install -y chromium"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = _posterior()
    with BackgroundServer(create_app({"glin": post})) as server, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.url + "/")
        page.wait_for_function("document.querySelector('#pairplot').dataset.updates === '1'")
        box = page.locator("#misspecification")
        badge = page.locator("#misspecification-badge")
        assert box.is_visible() and badge.is_visible()
        assert box.get_attribute("data-verdict") == "ok"  # the training mean is typical
        assert "Like the training simulations" in badge.inner_text()
        # load an observation shifted by 3 noise sd: the badge turns red and says why
        obs = tmp_path / "shifted.json"
        obs.write_text(json.dumps({"x": (_x_o() + 3 * NOISE_SD).tolist()}))
        page.locator("#file").set_input_files(str(obs))
        page.wait_for_function(
            "document.querySelector('#misspecification').dataset.verdict === 'misspecified'")
        assert "Unlike the training simulations" in badge.inner_text()
        assert "density p" in badge.inner_text() and "MMD p" in badge.inner_text()
        assert "bad" in (badge.get_attribute("class") or "")
        browser.close()
    assert not errors, errors
