"""CLI outputs never destroy inputs, are written atomically, and bad arguments get one line
(issue 15 items 4, 10, 11)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sbi_core.atomic import OutputPathError, atomic_write, check_output
from sbi_core.cli.main import main
from sbi_core.training import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """sims.pt, model.pt (tiny NPE) and x.csv in one folder."""
    root = tmp_path_factory.mktemp("clierr")
    assert main(["simulate", "linear_gaussian", "--num", "300", "--out", str(root / "sims.pt"),
                 "--quiet"]) == 0
    assert main(["train", "--sims", str(root / "sims.pt"), "--out", str(root / "model.pt"),
                 "--max-epochs", "2", "--quiet"]) == 0
    (root / "x.csv").write_text("x1,x2\n0.1,0.2\n")
    return root


def _one_line_error(capsys, code, expected=2):
    err = capsys.readouterr().err
    assert code == expected, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_train_refuses_to_overwrite_its_simulations(files, capsys):
    before = (files / "sims.pt").read_bytes()
    code = main(["train", "--sims", str(files / "sims.pt"), "--out", str(files / "sims.pt"),
                 "--quiet"])
    assert "also an input" in _one_line_error(capsys, code)
    assert (files / "sims.pt").read_bytes() == before


def test_sample_refuses_to_overwrite_the_model_or_another_kind(files, capsys, tmp_path):
    before = (files / "model.pt").read_bytes()
    code = main(["sample", str(files / "model.pt"), "--x", str(files / "x.csv"), "--out",
                 str(files / "model.pt")])
    assert "also an input" in _one_line_error(capsys, code)
    assert (files / "model.pt").read_bytes() == before
    other = tmp_path / "other.pt"
    other.write_bytes((files / "sims.pt").read_bytes())
    code = main(["sample", str(files / "model.pt"), "--x", str(files / "x.csv"), "--out",
                 str(other), "--num", "5"])
    assert "--force" in _one_line_error(capsys, code)
    assert main(["sample", str(files / "model.pt"), "--x", str(files / "x.csv"), "--out",
                 str(other), "--num", "5", "--force"]) == 0
    assert other.read_text().startswith("observation,")


def test_same_kind_overwrites_and_directory_is_refused(files, capsys, tmp_path):
    out = tmp_path / "s.csv"
    for _ in range(2):
        assert main(["sample", str(files / "model.pt"), "--x", str(files / "x.csv"), "--out",
                     str(out), "--num", "3"]) == 0
    code = main(["sample", str(files / "model.pt"), "--x", str(files / "x.csv"), "--out",
                 str(tmp_path), "--num", "3"])
    assert "folder" in _one_line_error(capsys, code)


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "m.pt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_check_output_kinds(files, tmp_path):
    with pytest.raises(OutputPathError, match="simulation file"):
        check_output(files / "sims.pt", "model")
    with pytest.raises(OutputPathError, match="also an input"):
        check_output(files / ".." / files.name / "x.csv", "csv", inputs=[files / "x.csv"])
    assert check_output(tmp_path / "new.pt", "model") == tmp_path / "new.pt"
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputPathError, match="not a folder"):
        check_output(tmp_path / "f", "directory")


@pytest.mark.parametrize("argv,needle", [
    (["train", "--batch-size", "0"], "--batch-size"),
    (["train", "--batch-size", "-5"], "--batch-size"),
    (["train", "--max-epochs", "0"], "--max-epochs"),
    (["train", "--learning-rate", "nan"], "--learning-rate"),
    (["sample", "--num", "-1"], "--num"),
    (["sample", "--num", "0"], "--num"),
    (["sample", "--num", "many"], "--num"),
])
def test_bad_numbers_are_one_line(files, capsys, tmp_path, argv, needle):
    cmd = argv[0]
    base = {"train": ["train", "--sims", str(files / "sims.pt"), "--out", str(tmp_path / "m.pt"),
                      "--quiet"],
            "sample": ["sample", str(files / "model.pt"), "--x", str(files / "x.csv"), "--out",
                       str(tmp_path / "o.csv")]}[cmd]
    code = main(base + argv[1:])
    assert needle in _one_line_error(capsys, code)
    assert not (tmp_path / "o.csv").exists() and not (tmp_path / "m.pt").exists()


def test_csv_typo_in_first_row_is_an_error_with_line(files, capsys, tmp_path):
    (tmp_path / "x.csv").write_text("0.1,O.2\n0.3,0.4\n")
    code = main(["sample", str(files / "model.pt"), "--x", str(tmp_path / "x.csv"), "--out",
                 str(tmp_path / "o.csv")])
    assert "line 1" in _one_line_error(capsys, code)


def test_empty_npz_is_a_clear_error(capsys, tmp_path):
    np.savez(tmp_path / "z.npz", theta=np.zeros((0, 2)), x=np.zeros((0, 2)))
    code = main(["train", "--sims", str(tmp_path / "z.npz"), "--problem", "linear_gaussian",
                 "--out", str(tmp_path / "m.pt"), "--quiet"])
    assert "no simulations" in _one_line_error(capsys, code)


@pytest.mark.parametrize("options,name", [
    ({"batch_size": 0}, "batch_size"), ({"batch_size": -5}, "batch_size"),
    ({"max_epochs": 0}, "max_epochs"), ({"learning_rate": float("nan")}, "learning_rate"),
    ({"validation_fraction": 1.0}, "validation_fraction"), ({"max_seconds": -1}, "max_seconds"),
    ({"batch_size": 2.5}, "batch_size"), ({"min_delta": -1.0}, "min_delta"),
])
def test_train_config_values_are_checked(options, name):
    with pytest.raises(ValueError, match=f"TrainConfig.{name}"):
        TrainConfig(**options)


def test_debug_shows_the_traceback(tmp_path, capsys):
    argv = ["train", "--sims", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "m.pt")]
    assert main(argv) == 2
    assert "No simulation file" in capsys.readouterr().err
    for debug in (["--debug", *argv], [*argv, "--debug"]):
        with pytest.raises(FileNotFoundError, match="No simulation file"):
            main(debug)


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def test_real_entry_point_prints_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sbi_core.cli.main", "sample", "nothing.pt",
                           "--x", "x.csv", "--out", "o.csv"], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "No model file" in proc.stderr and "Traceback" not in proc.stderr


def _sigint_as_in_a_terminal() -> None:
    """Give the CLI child Ctrl-C's default disposition, as a terminal's foreground job has.

    A test runner started as a background job (``cmd &`` in a script, ``nohup``) inherits
    SIGINT *ignored*, and so would the child: it would never see the Ctrl-C this test sends.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_to_the_process_group_during_parallel_simulation(tmp_path):
    (tmp_path / "slow.py").write_text(
        "import pathlib, time\nfrom sbi_core import Problem, box_uniform\n"
        "def sim(t):\n    pathlib.Path('started').touch()\n    time.sleep(0.3)\n"
        "    return t + 0.1\n"
        "def problem():\n    return Problem(box_uniform([0.0], [1.0]), sim, name='slow',"
        " validate=False, x_shape=(1,))\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sbi_core.cli.main", "simulate", f"{tmp_path / 'slow.py'}:problem",
         "--num", "2000", "--chunk-size", "10", "--workers", "2", "--out",
         str(tmp_path / "s.pt"), "--quiet"],
        cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True, preexec_fn=_sigint_as_in_a_terminal)
    # Wait until the workers simulate (imports and forks take seconds on a loaded runner;
    # a Ctrl-C during torch's import is not what this test is about), then a few chunks more.
    deadline = time.monotonic() + 120
    while not (tmp_path / "started").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the simulation never started"
        time.sleep(0.1)
    time.sleep(1.5)
    assert proc.poll() is None, proc.communicate()
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("sbi-core simulate: interrupted"), err
    assert not (tmp_path / "s.pt").exists()


def test_problem_given_positionally_to_train_names_the_option(capsys, tmp_path):
    """`sbi-core train my.py:make --sims ...` (the way `simulate` takes it) gets a usage
    error that names `--problem my.py:make`; a command without --problem (`reference`) gets
    no such hint."""
    code = main(["train", "my.py:make", "--sims", str(tmp_path / "s.pt"), "--out",
                 str(tmp_path / "m.pt")])
    err = _one_line_error(capsys, code)
    assert "unrecognized arguments: my.py:make" in err
    assert "`sbi-core train` takes the problem as an option: --problem my.py:make" in err
    code = main(["reference", "two_moons", "my.py:make", "--observation", "1", "--out",
                 str(tmp_path / "o.csv")])
    err = _one_line_error(capsys, code)
    assert "unrecognized arguments: my.py:make" in err and "--problem" not in err
