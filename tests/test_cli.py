import json

import numpy as np
import pytest
import torch

from sbi_core.cli.main import COMMANDS, build_parser, main
from sbi_core.io import read_samples_csv


def test_every_command_has_help(capsys):
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0
        assert "usage" in capsys.readouterr().out
    assert build_parser().prog == "sbi-core"


def test_simulate_train_sample_pipeline(tmp_path, capsys):
    sims = tmp_path / "sims.pt"
    assert main(["simulate", "linear_gaussian", "--num", "1500", "--seed", "1", "--out", str(sims),
                 "--workers", "2", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["num_simulations"] == 1500
    model = tmp_path / "m.pt"
    assert main(["train", "--sims", str(sims), "--out", str(model), "--max-epochs", "30",
                 "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["epochs"] <= 30
    xfile = tmp_path / "x.csv"
    xfile.write_text("x1,x2\n0.1,0.2\n-0.3,0.5\n")
    csv_out = tmp_path / "s.csv"
    assert main(["sample", str(model), "--x", str(xfile), "--num", "100", "--out",
                 str(csv_out)]) == 0
    names, samples = read_samples_csv(csv_out)
    assert names == ["theta_1", "theta_2"] and samples.shape == (200, 2)
    header = csv_out.read_text().splitlines()[0]
    assert header == "observation,theta_1,theta_2"
    # one observation as .npy
    np.save(tmp_path / "x.npy", np.array([0.1, 0.2], dtype=np.float32))
    assert main(["sample", str(model), "--x", str(tmp_path / "x.npy"), "--num", "10", "--out",
                 str(csv_out)]) == 0
    # --iid on a method that does not support it: clear error, exit 2
    capsys.readouterr()
    assert main(["sample", str(model), "--x", str(xfile), "--num", "10", "--out", str(csv_out),
                 "--iid"]) == 2
    assert "iid" in capsys.readouterr().err


def test_train_from_npz_needs_problem(tmp_path, capsys):
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(600, 2, generator=g)
    np.savez(tmp_path / "d.npz", theta=theta.numpy(), x=(theta + 0.5 * torch.randn(600, 2)).numpy())
    model = tmp_path / "m.pt"
    assert main(["train", "--sims", str(tmp_path / "d.npz"), "--out", str(model), "--quiet"]) == 2
    assert "--problem" in capsys.readouterr().err
    assert main(["train", "--sims", str(tmp_path / "d.npz"), "--problem", "linear_gaussian",
                 "--out", str(model), "--max-epochs", "5", "--quiet"]) == 0


def test_user_problem_from_file(tmp_path, capsys):
    (tmp_path / "my_model.py").write_text(
        "import torch\nfrom sbi_core import Problem, box_uniform\n"
        "def make():\n"
        "    return Problem(box_uniform([0.0], [1.0]), lambda t: t + 0.1 * torch.randn_like(t),\n"
        "                   param_names=['rate'], name='mine')\n"
    )
    sims = tmp_path / "s.pt"
    assert main(["simulate", f"{tmp_path / 'my_model.py'}:make", "--num", "300", "--out",
                 str(sims), "--quiet"]) == 0
    # the problem recorded in the simulation file is a code path: shown, never imported
    ref = f"{tmp_path / 'my_model.py'}:make"
    capsys.readouterr()
    assert main(["train", "--sims", str(sims), "--out", str(tmp_path / "m.pt"), "--max-epochs",
                 "3", "--quiet"]) == 2
    assert f"--problem {ref}" in capsys.readouterr().err
    assert main(["train", "--sims", str(sims), "--problem", ref, "--out", str(tmp_path / "m.pt"),
                 "--max-epochs", "3", "--quiet"]) == 0
    assert main(["simulate", "no_such_problem", "--num", "3", "--out", str(sims)]) == 2
    assert "Unknown problem" in capsys.readouterr().err


def test_bad_model_and_observation_files(tmp_path, capsys):
    (tmp_path / "junk.pt").write_bytes(b"junk")
    (tmp_path / "x.csv").write_text("1,2\n")
    assert main(["sample", str(tmp_path / "junk.pt"), "--x", str(tmp_path / "x.csv"), "--out",
                 str(tmp_path / "o.csv")]) == 2
    assert "corrupted" in capsys.readouterr().err


def test_demo_runs_end_to_end_small(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--num-simulations", "1000",
                 "--num-samples", "1000", "--max-seconds", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert {"c2st", "train_seconds", "model", "pairplot"} <= set(summary)
    assert 0.5 <= summary["c2st"] <= 1.0
    assert (tmp_path / "demo" / "model.pt").is_file()
    assert (tmp_path / "demo" / "pairplot.png").stat().st_size > 10_000
