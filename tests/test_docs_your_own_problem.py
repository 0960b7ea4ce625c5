"""Every code block of docs/your_own_problem.md runs (so the page cannot rot).

In page order, in one namespace, in a fresh folder:

* a ```python block whose first line is ``# file: NAME.py`` is written to ``NAME.py``;
* every other ```python block is executed;
* every line ``sbi-core ...`` of a ```bash block runs through the CLI's ``main`` and must exit 0
  (``sbi-core serve`` runs with ``uvicorn.run`` replaced, so it loads the models and builds the
  app, which then answers one sample request).

Sizes are reduced by the exact substitutions in :data:`SMALLER` (each must occur in the page,
so the list cannot drift from it). The page's ``my_problem.py`` imports ``epidemic.py``, which
the page describes as "the ``sir`` function and ``Net`` class from above": the test writes it
from the page's own blocks.
"""

from __future__ import annotations

import re
import shlex
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from sbi_core.cli.main import main as cli

DOC = Path(__file__).resolve().parents[1] / "docs" / "your_own_problem.md"

SMALLER = {
    "10_000": "300",
    "ext_sims = simulate(external_problem, 1_000": "ext_sims = simulate(external_problem, 300",
    "max_seconds=600": "max_epochs=3",
    "diagnose(posterior, problem)": "diagnose(posterior, problem, num=40, num_samples=50)",
    "--num 10000": "--num 300",
    "--max-seconds 600": "--max-epochs 3",
    "sbi-core diagnose model.pt --problem my_problem.py:make --embedding my_problem.py:net":
        "sbi-core diagnose model.pt --problem my_problem.py:make --embedding my_problem.py:net "
        "--num 40 --samples 50 --quiet",
}


def blocks(text: str) -> list[tuple[str, str]]:
    """``(language, code)`` of every fenced block, in order."""
    return [(m.group(1), m.group(2)) for m in
            re.finditer(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)]


def definition(code: str, name: str) -> str:
    """The top-level ``def``/``class`` ``name`` in ``code``, up to the next top-level line."""
    lines = code.splitlines()
    start = next(i for i, line in enumerate(lines)
                 if re.match(rf"(def|class) {name}\b", line))
    end = next((i for i in range(start + 1, len(lines))
                if lines[i] and not lines[i][0].isspace()), len(lines))
    return "\n".join(lines[start:end]).rstrip() + "\n"


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks run fastest on one torch thread on a busy machine; restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_every_block_of_your_own_problem_md_runs(tmp_path, monkeypatch, capsys):
    text = DOC.read_text()
    for old, new in SMALLER.items():
        assert old in text, f"docs/your_own_problem.md no longer contains {old!r}"
        text = text.replace(old, new)
    found = blocks(text)
    assert {lang for lang, _ in found} >= {"python", "bash"}
    for link in ("priors.md", "embeddings.md", "simulators.md", "security.md", "mnle.md"):
        assert f"]({link}" in text

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import uvicorn

    from sbi_core.cli import serve_cmd

    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.update(app=app))
    monkeypatch.setattr(serve_cmd, "check_port", lambda host, port: None)

    namespace: dict = {"__name__": "your_own_problem_doc"}
    python_code = "\n".join(code for lang, code in found if lang == "python")
    (tmp_path / "epidemic.py").write_text(
        "import torch\nfrom torch import nn\n\n\n" + definition(python_code, "sir") + "\n\n"
        + definition(python_code, "Net"))
    commands = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # short trainings and small diagnostics warn, rightly
        for lang, code in found:
            first = code.splitlines()[0] if code.strip() else ""
            if lang == "python" and first.startswith("# file: "):
                (tmp_path / first[len("# file: "):].strip()).write_text(code)
            elif lang == "python":
                exec(compile(code, str(DOC), "exec"), namespace)  # noqa: S102
            elif lang == "bash":
                for line in code.splitlines():
                    if line.startswith("sbi-core "):
                        assert cli(shlex.split(line)[1:]) == 0, (line, capsys.readouterr().err)
                        commands += 1
    assert commands >= 5

    # what the page claims about the results
    ns = namespace
    assert ns["ricker_sim"].kind == "per-sample (numpy arrays)"
    ext = ns["ext_sims"]
    assert torch.equal(~ext.valid, ext.theta[:, 0] > 1.5)
    assert "have no finite value in any column" in ext.provenance["invalid_columns"]
    assert ns["samples"].shape == (1000, 2) and bool((ns["samples"] > 0).all())
    assert ns["log_p"].shape == (10,) and ns["theta_map"].shape == (2,)
    assert ns["more"].shape == (500, 2)
    x_o = ns["x_o"]
    assert torch.equal(ns["sir_again"].log_prob(ns["samples"], x=x_o),
                       ns["posterior"].log_prob(ns["samples"], x=x_o))
    assert ns["answer"].status_code == 200 and len(ns["answer"].json()["samples"]) == 100
    assert set(ns["report"].sections) >= {"tarp", "sbc", "coverage", "predictive"}
    rows = np.loadtxt(tmp_path / "samples.csv", delimiter=",", skiprows=1)
    assert rows.shape == (1000, 3) and (rows[:, 1:] > 0).all()

    from fastapi.testclient import TestClient

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        client = TestClient(served["app"])
    r = client.post("/api/models/model/sample", json={"x": x_o.tolist(), "n": 3, "seed": 0})
    assert r.status_code == 200 and np.asarray(r.json()["samples"]).shape == (3, 2)
    for name in ("my_problem", "epidemic"):
        sys.modules.pop(name, None)
