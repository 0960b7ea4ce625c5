"""``sbi-core reference`` and ``sbi-core benchmark``."""

import json

import numpy as np
import pytest
import torch

from sbi_core.benchmark import run_benchmark
from sbi_core.cli.benchmark_cmd import parse_options
from sbi_core.cli.main import main
from sbi_core.io import read_samples_csv
from simulators import get_problem


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SBI_CORE_CACHE", str(tmp_path / "cache"))


def test_reference_for_problem_observation(tmp_path, capsys):
    out = tmp_path / "ref.csv"
    assert main(["reference", "gaussian_linear", "--observation", "1", "--num", "2000",
                 "--out", str(out)]) == 0
    names, samples = read_samples_csv(out)
    assert names == [f"theta_{i}" for i in range(1, 11)] and samples.shape == (2000, 10)
    x_o = get_problem("gaussian_linear").observation(1)
    assert torch.allclose(samples.mean(0), 0.5 * x_o, atol=0.02)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["observations"] == 1


def test_reference_for_observations_in_a_file(tmp_path):
    xs = tmp_path / "x.csv"
    np.savetxt(xs, np.array([[0.0, 0.0], [0.1, -0.2]]), delimiter=",")
    out = tmp_path / "ref.csv"
    assert main(["reference", "two_moons", "--x", str(xs), "--num", "300",
                 "--out", str(out)]) == 0
    raw = np.loadtxt(out, delimiter=",", skiprows=1)
    assert raw.shape == (600, 3) and set(raw[:, 0]) == {0.0, 1.0}
    assert (np.abs(raw[:, 1:]) <= 1).all()


def test_reference_errors_are_clear(tmp_path, capsys):
    out = str(tmp_path / "r.csv")
    assert main(["reference", "no_such_task", "--observation", "1", "--out", out]) == 2
    assert "Unknown problem" in capsys.readouterr().err
    xs = tmp_path / "x.csv"
    np.savetxt(xs, np.zeros((1, 3)), delimiter=",")
    assert main(["reference", "two_moons", "--x", str(xs), "--out", out]) == 2
    assert "expected one observation of shape (2,)" in capsys.readouterr().err


def test_benchmark_json_lines(capsys):
    code = main(["benchmark", "--task", "gaussian_linear", "--method", "npe", "--sims", "300",
                 "--observations", "1", "2", "--num-samples", "300", "--json",
                 "--option", "max_epochs=3", "--option", "hidden_features=16"])
    assert code == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["observation"] for r in rows] == [1, 2]
    for r in rows:
        assert set(r) == {"task", "method", "sims", "observation", "c2st", "train_seconds",
                          "sample_seconds"}
        assert r["task"] == "gaussian_linear" and r["method"] == "npe" and r["sims"] == 300
        assert 0.45 <= r["c2st"] <= 1.0 and r["train_seconds"] > 0


def test_benchmark_table_and_errors(capsys):
    assert main(["benchmark", "--task", "two_moons", "--method", "npe", "--sims", "200",
                 "--num-samples", "200", "--max-seconds", "2", "--option", "max_epochs=2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:4] == ["task", "method", "sims", "obs"]
    assert lines[1].split()[:4] == ["two_moons", "npe", "200", "1"]
    assert main(["benchmark", "--task", "two_moons", "--method", "nope", "--sims", "10"]) == 2
    assert "available" in capsys.readouterr().err
    assert main(["benchmark", "--task", "two_moons", "--method", "npe", "--sims", "10",
                 "--observations", "11"]) == 2
    assert "1..10" in capsys.readouterr().err


def test_run_benchmark_function_streams_results():
    seen = []
    rows = run_benchmark("gaussian_mixture", "npe", sims=[200], observations=[3],
                         num_samples=200, method_options={"max_epochs": 2},
                         on_result=seen.append)
    assert seen == rows and len(rows) == 1 and rows[0].task == "gaussian_mixture"


def test_parse_options():
    assert parse_options(["a=1", "flow=nsf", "x=[1, 2]", "f=0.5"]) == \
        {"a": 1, "flow": "nsf", "x": [1, 2], "f": 0.5}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_options(["oops"])
