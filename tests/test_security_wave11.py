"""Wave 11 security review: strings read from files (model files, simulation files, zarr
stores' attributes, report cards) are shown escaped and bounded (``sbi_core.display``), so a
file crafted with terminal escape sequences, carriage returns or a 100 kB "name" cannot spoof
or bury the CLI's output, and HTML in a name never runs in the explorer."""

from __future__ import annotations

import csv
import io
import json
import os
import warnings

import numpy as np
import pytest
import torch

from sbi_core import SimulationSet, fit, save, simulate
from sbi_core.cli.main import main
from sbi_core.display import LABEL_LIMIT, MESSAGE_LIMIT, shown, shown_text

ESC = "\x1b[31mRED\x1b[0m\r\x1b[2KSPOOF\x07\u202e"
HTML = "<img src=x onerror=\"window.__pwned=1\">"
LONG = "A" * 50_000


def _clean(text: str) -> None:
    """No control character other than a line break, no giant line."""
    assert "\x1b" not in text and "\r" not in text and "\x07" not in text
    assert "\u202e" not in text
    assert max((len(line) for line in text.splitlines()), default=0) < 25_000


@pytest.fixture(scope="module")
def model(tmp_path_factory, linear_problem):
    """A tiny NPE on the 2-D linear Gaussian, its payload, and a crafted copy whose names and
    recorded references hold escape sequences, HTML and a 50 kB string."""
    root = tmp_path_factory.mktemp("w11")
    sims = simulate(linear_problem, 300, seed=0, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = fit(linear_problem, sims, method="npe", seed=0, progress=False, max_epochs=2,
                   hidden_features=8, num_transforms=1)
    path = save(post, root / "m.pt")
    payload = torch.load(path, weights_only=True)
    payload["problem"]["name"] = ESC + HTML + LONG
    payload["problem"]["param_names"] = [ESC + LONG, HTML + ',"x"\n']
    payload["history"]["stopped"] = ESC + LONG
    payload["diagnostics"] = {"report_card": {"status": "pass", "meta": {"method": ESC},
                                              "sections": {"sbc": {"status": "pass",
                                                                   "why": ESC + LONG}}}}
    evil = root / "evil.pt"
    torch.save(payload, evil)
    return root, path, evil, sims


def test_shown_escapes_control_characters_and_bounds_length():
    assert shown("theta_1") == "theta_1"
    assert shown("a\x1b[2Jb\r\n\t\u202e") == "a\\x1b[2Jb\\r\\n\\t\\u202e"
    out = shown(LONG)
    assert len(out) < LABEL_LIMIT + 40 and out.endswith("[49,800 more characters]")
    assert shown_text("line 1\x1b[2J\nline 2") == "line 1\\x1b[2J\nline 2"
    assert shown(None) == "None" and shown(3) == "3"


def test_cli_diagnose_report_of_a_crafted_model_is_escaped(model, capsys, tmp_path):
    _, _, evil, _ = model
    code = main(["diagnose", str(evil), "--problem", "linear_gaussian", "--num", "20",
                 "--samples", "50", "--checks", "sbc", "--out", str(tmp_path / "d"),
                 "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    _clean(out)
    _clean(err)
    card = json.loads((tmp_path / "d" / "report.json").read_text())
    names = card["sections"]["sbc"]["data"]["param_names"]
    assert names[0].startswith("\\x1b[31mRED") and len(names[0]) < LABEL_LIMIT + 40


def test_cli_error_quoting_a_crafted_recorded_problem_is_escaped(model, capsys, tmp_path):
    _, path, _, _ = model
    payload = torch.load(path, weights_only=True)
    payload["problem"]["source"] = "x.py:p" + ESC + LONG
    torch.save(payload, tmp_path / "m.pt")
    assert main(["diagnose", str(tmp_path / "m.pt"), "--num", "20"]) == 2
    err = capsys.readouterr().err
    _clean(err)
    assert "never imported" in err and "more characters]" in err


def test_cli_warning_quoting_a_crafted_first_error_is_escaped(model, tmp_path):
    """``train`` warns about invalid simulations with the recorded first error: the warning is
    printed by the CLI with the error escaped (checked in a subprocess: real stderr)."""
    import subprocess
    import sys

    _, _, _, sims = model
    x = sims.x.clone()
    x[:20] = float("nan")
    bad = SimulationSet.from_arrays(sims.theta, x, provenance={
        **sims.provenance, "first_error": "RuntimeError: " + ESC + LONG})
    bad.save(tmp_path / "s.pt")
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "sbi_core.cli.main", "train", "--sims",
                          str(tmp_path / "s.pt"), "--out", str(tmp_path / "m.pt"),
                          "--max-epochs", "1", "--quiet"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "Excluding 20 of 300" in run.stderr and "\\x1b[31mRED" in run.stderr
    _clean(run.stderr)


def test_store_attributes_shown_escaped_in_resume_errors(linear_problem, tmp_path, capsys):
    from sbi_core.stores import SimulationStore

    store = tmp_path / "s.zarr"
    simulate(linear_problem, 100, seed=0, chunk_size=50, progress=False, store=store)
    st = SimulationStore(store, mode="r+")
    st.group.attrs["problem"] = ESC + LONG
    st.group.attrs["problem_source"] = "x.py:p" + ESC
    assert main(["simulate", "linear_gaussian", "--num", "100", "--seed", "0",
                 "--chunk-size", "50", "--out", str(store), "--resume", "--quiet"]) == 2
    err = capsys.readouterr().err
    _clean(err)
    assert "Cannot resume" in err and "\\x1b[31mRED" in err
    _clean(SimulationStore(store).repair_hint())


def test_server_json_shows_names_of_a_crafted_model_escaped(model):
    from fastapi.testclient import TestClient

    from sbi_core import load
    from sbi_core.server import create_app

    _, _, evil, _ = model
    client = TestClient(create_app({"m": load(evil)}, max_samples=100))
    listing = client.get("/api/models").json()["models"][0]
    info = client.get("/api/models/m").json()
    sampled = client.post("/api/models/m/sample", json={"x": [0.1, 0.2], "n": 5}).json()
    for value in (listing, info, sampled):
        for text in _strings(value):
            _clean(text)
            assert len(text) < MESSAGE_LIMIT + 40
    assert info["param_names"][0].startswith("\\x1b[31mRED")
    assert len(info["param_names"][0]) < LABEL_LIMIT + 40
    assert info["param_names"][1] == shown(HTML + ',"x"\n')  # HTML is text, the page escapes it
    assert sampled["param_names"] == info["param_names"]


def test_explorer_shows_html_in_names_as_text_and_quotes_csv_header(model, tmp_path):
    """HTML in a model file's names is shown as text (never run) and the CSV download quotes a
    name holding a comma or quote, so it cannot add columns."""
    from serve_helpers import explorer_page

    from sbi_core import load
    from sbi_core.server import create_app

    _, _, evil, _ = model
    with explorer_page(create_app({"m": load(evil)}, max_samples=200)) as (srv, page, errors):
        page.goto(srv.url + "/")
        page.wait_for_function("document.querySelector('#pairplot').dataset.updates === '1'")
        assert page.evaluate("window.__pwned") is None
        assert page.locator("#summary img").count() == 0
        assert HTML in page.locator("#summary").inner_text()
        assert "\\x1b[31mRED" in page.locator("#model-card").inner_text()
        page.locator("#num").fill("3")
        page.wait_for_function("document.querySelector('#pairplot').dataset.sampleCount === '3'")
        with page.expect_download() as dl:
            page.locator("#download").click()
        rows = list(csv.reader(io.StringIO(open(dl.value.path()).read())))
    assert not errors, errors
    assert rows[0] == info_names(evil) and len(rows) == 4
    assert all(len(r) == 2 for r in rows)


def _strings(value):
    """Every string (keys too) in a JSON value."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def info_names(path) -> list[str]:
    from sbi_core import load

    return [shown(n) for n in load(path).param_names]


def test_recorded_problem_that_is_not_a_string_is_a_clear_error(model, tmp_path, capsys):
    _, path, _, _ = model
    payload = torch.load(path, weights_only=True)
    payload["problem"]["source"] = 12345
    torch.save(payload, tmp_path / "m.pt")
    assert main(["diagnose", str(tmp_path / "m.pt"), "--num", "20"]) == 2
    assert "never imported" in capsys.readouterr().err


def test_sample_csv_of_a_crafted_model_keeps_its_columns(model, tmp_path):
    _, _, evil, _ = model
    np.savetxt(tmp_path / "x.csv", [[0.1, 0.2]], delimiter=",")
    assert main(["sample", str(evil), "--x", str(tmp_path / "x.csv"), "--num", "4",
                 "--out", str(tmp_path / "o.csv")]) == 0
    rows = list(csv.reader(open(tmp_path / "o.csv")))
    assert len(rows) == 5 and all(len(r) == 3 for r in rows)
