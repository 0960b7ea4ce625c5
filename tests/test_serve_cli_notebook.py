"""`sbi-core serve` from the shell, and the notebook view (without Jupyter)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import httpx
import pytest
from serve_helpers import tiny_posterior

from sbi_core import save
from sbi_core.cli.main import main
from sbi_core.cli.serve_cmd import parse_models
from sbi_core.server.background import free_port
from sbi_core.server.notebook import Explorer, explore

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def post():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tiny_posterior()


def test_parse_models_names_by_stem_or_prefix():
    assert parse_models(["a/b/moons.pt", "lg=x/m.pt"]) == {"moons": Path("a/b/moons.pt"),
                                                            "lg": Path("x/m.pt")}
    with pytest.raises(ValueError, match="Two models are named 'm'"):
        parse_models(["m.pt", "x/m.pt"])
    with pytest.raises(ValueError, match="NAME=PATH"):
        parse_models(["=m.pt"])


def test_serve_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "missing.pt")]) == 2
    assert "No model file" in capsys.readouterr().err
    assert main(["serve", "a=x.pt", "a=y.pt"]) == 2
    assert "Two models are named 'a'" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "m.pt", "--port", str(port)]) == 2
    assert f"Cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_serve_cli_serves_models_on_localhost(post, tmp_path):
    model = save(post, tmp_path / "moons.pt")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "sbi_core.cli.main", "serve", str(model),
                             f"second={model}", "--port", str(port), "--max-samples", "500"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                listing = httpx.get(url + "/api/models", timeout=2).json()
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.3)
        assert [m["name"] for m in listing["models"]] == ["moons", "second"]
        assert listing["max_samples"] == 500
        r = httpx.post(url + "/api/models/second/sample", json={"x": [0.0, 0.1], "n": 501})
        assert r.status_code == 413 and "at most 500 " in r.json()["detail"]
        r = httpx.post(url + "/api/models/moons/sample", json={"x": [0.0, 0.1], "n": 20})
        assert len(r.json()["samples"]) == 20
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert f"serving ['moons', 'second'] at http://127.0.0.1:{port}/" in out


def test_notebook_explore_embeds_the_running_explorer(post):
    view = explore(post, name="moons", height=500)
    try:
        assert isinstance(view, Explorer)
        assert view.url.startswith("http://127.0.0.1:") and view.url.endswith("/?model=moons")
        html = view._repr_html_()
        assert html.startswith("<iframe") and 'height="500"' in html and view.server.url in html
        frame = view.iframe()
        assert frame.src == view.url and frame.height == 500
        page = httpx.get(view.url, timeout=10)
        assert page.status_code == 200 and "pairplot" in page.text
        info = httpx.get(view.server.url + "/api/models/moons", timeout=10).json()
        assert info["param_names"] == ["theta_1", "theta_2"]
        assert "running" in repr(view)
    finally:
        view.stop()
    assert not view.server.running
    with pytest.raises(httpx.HTTPError):
        httpx.get(view.url, timeout=2)
