"""No file makes the tool run code, and doctored model files are rejected before they cost
memory (issue 15 items 1 and 2, issue 16 item 6)."""

import resource
import time

import numpy as np
import pytest
import torch

from sbi_core import ModelFileError, load, save, simulate
from sbi_core.cli.main import main
from sbi_core.resolve import RecordedProblemError, recorded_problem, resolve_problem

EVIL = "from pathlib import Path\nPath(__file__).with_name('RAN').write_text('x')\n" \
       "def problem():\n    raise SystemExit('code from a file ran')\n"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, linear_problem):
    """A tiny NPE on the 2-D linear Gaussian, saved; plus its simulations."""
    from sbi_core import fit

    root = tmp_path_factory.mktemp("sec")
    sims = simulate(linear_problem, 300, seed=0, progress=False)
    post = fit(linear_problem, sims, method="npe", seed=0, progress=False, max_epochs=2,
               hidden_features=8, num_transforms=1)
    return save(post, root / "m.pt"), sims


def _with_source(src, dst, source):
    payload = torch.load(src, weights_only=True)
    payload["problem"]["source"] = source
    torch.save(payload, dst)
    return dst


@pytest.mark.parametrize("command", ["diagnose", "robustness"])
def test_recorded_problem_path_in_model_is_shown_never_run(tiny_model, tmp_path, capsys, command):
    (tmp_path / "evil.py").write_text(EVIL)
    model = _with_source(tiny_model[0], tmp_path / "m.pt", f"{tmp_path / 'evil.py'}:problem")
    code = main([command, str(model), "--num", "20", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert not (tmp_path / "RAN").exists()
    assert f"--problem {tmp_path / 'evil.py'}:problem" in err and "never imported" in err


def test_recorded_module_in_model_is_not_imported(tiny_model, tmp_path, capsys, monkeypatch):
    (tmp_path / "evilmod.py").write_text(EVIL)
    monkeypatch.syspath_prepend(str(tmp_path))
    model = _with_source(tiny_model[0], tmp_path / "m.pt", "evilmod:problem")
    assert main(["diagnose", str(model), "--num", "20"]) == 2
    assert not (tmp_path / "RAN").exists()
    assert "--problem evilmod:problem" in capsys.readouterr().err


def test_recorded_problem_in_simulation_file_is_not_run_by_train(tiny_model, tmp_path, capsys):
    (tmp_path / "evil.py").write_text(EVIL)
    sims = tiny_model[1]
    sims.provenance["problem_source"] = f"{tmp_path / 'evil.py'}:problem"
    sims.save(tmp_path / "s.pt")
    assert main(["train", "--sims", str(tmp_path / "s.pt"), "--out", str(tmp_path / "m.pt"),
                 "--quiet"]) == 2
    assert not (tmp_path / "RAN").exists()
    assert "--problem" in capsys.readouterr().err


def test_recorded_problem_in_python_diagnose_warns_without_running(tiny_model, tmp_path):
    from diagnostics.report import diagnose

    (tmp_path / "evil.py").write_text(EVIL)
    posterior = load(_with_source(tiny_model[0], tmp_path / "m.pt",
                                  f"{tmp_path / 'evil.py'}:problem"))
    with pytest.raises(RecordedProblemError, match="never imported"):
        diagnose(posterior, num=20, num_samples=50, progress=False)
    sims = tiny_model[1]
    with pytest.warns(UserWarning, match="never imported"):
        diagnose(posterior, sims=sims, num=20, num_samples=50, checks=["coverage"],
                 progress=False)
    assert not (tmp_path / "RAN").exists()


def test_recorded_builtin_name_is_still_used():
    assert recorded_problem("linear_gaussian", "f").name == resolve_problem("linear_gaussian").name
    assert recorded_problem(None, "f") is None
    for ref in ["x.py:problem", "os:system", "../linear_gaussian", "evil.py"]:
        with pytest.raises(RecordedProblemError):
            recorded_problem(ref, "f")


def _doctor(src, dst, **changes):
    payload = torch.load(src, weights_only=True)
    payload["estimator_config"].update(changes)
    torch.save(payload, dst)
    return dst


def test_doctored_config_is_rejected_before_allocating(tiny_model, tmp_path):
    path = _doctor(tiny_model[0], tmp_path / "d.pt", hidden_features=4000, num_transforms=40)
    assert path.stat().st_size < 200_000
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with pytest.raises(ModelFileError, match="do not match"):
        load(path)
    assert time.perf_counter() - t0 < 2.0
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    assert grown_mib < 100, grown_mib  # building it for real would take ~1.5 GiB


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 10**12])
def test_non_finite_or_absurd_config_numbers_are_rejected(tiny_model, tmp_path, value):
    with pytest.raises(ModelFileError, match="damaged"):
        load(_doctor(tiny_model[0], tmp_path / "d.pt", hidden_features=value))


@pytest.mark.parametrize("method,options,key", [
    ("npe", {"flow": "nsf"}, "hidden_features"),
    ("npe", {"flow": "maf"}, "hidden_features"),
    ("npe", {"flow": "mdn"}, "hidden_features"),
    ("nle", {}, "hidden_features"),
    ("nre_c", {}, "hidden_features"),
    ("fmpe", {}, "hidden_features"),
    ("npse", {}, "hidden_features"),
    ("pfn", {"n_max": 2, "num_buckets": 20}, "d_model"),
])
def test_every_method_loads_and_rejects_a_doctored_size(linear_problem, tmp_path, method,
                                                         options, key):
    from sbi_core import fit

    sims = simulate(linear_problem, 200, seed=0, progress=False)
    post = fit(linear_problem, sims, method=method, seed=0, progress=False, max_epochs=1,
               **options)
    path = save(post, tmp_path / "m.pt")
    load(path)  # an honest file still loads
    with pytest.raises(ModelFileError, match="damaged"):
        load(_doctor(path, tmp_path / "d.pt", **{key: 4000}))


def test_model_missing_keys_is_a_clear_error(tiny_model, tmp_path, capsys):
    for key in ["problem", "state_dict", "method"]:
        payload = torch.load(tiny_model[0], weights_only=True)
        del payload[key]
        torch.save(payload, tmp_path / "k.pt")
        with pytest.raises(ModelFileError, match=f"no '{key}'"):
            load(tmp_path / "k.pt")
    payload = torch.load(tiny_model[0], weights_only=True)
    del payload["problem"]["prior"]
    torch.save(payload, tmp_path / "k.pt")
    np.savetxt(tmp_path / "x.csv", np.zeros((1, 2)), delimiter=",")
    assert main(["sample", str(tmp_path / "k.pt"), "--x", str(tmp_path / "x.csv"), "--out",
                 str(tmp_path / "o.csv")]) == 2
    assert "'prior'" in capsys.readouterr().err


def test_problem_file_importing_a_sibling_module(tmp_path, capsys):
    pkg = tmp_path / "proj"
    pkg.mkdir()
    (pkg / "helpers_sec_sibling.py").write_text("SCALE = 0.1\n")
    (pkg / "model.py").write_text(
        "import torch\nfrom helpers_sec_sibling import SCALE\n"
        "from sbi_core import Problem, box_uniform\n"
        "def problem():\n"
        "    return Problem(box_uniform([0.0], [1.0]), lambda t: t + SCALE, name='sib')\n")
    problem = resolve_problem(f"{pkg / 'model.py'}:problem")
    assert problem.name == "sib" and problem.source == f"{pkg / 'model.py'}:problem"


@pytest.mark.parametrize("body,match", [
    ("def problem(:\n", "syntax error"),
    ("import no_such_module_xyz\n", "ModuleNotFoundError"),
    ("def problem():\n    raise RuntimeError('boom')\n", "raised RuntimeError: boom"),
    ("import sys\nsys.exit(3)\n", "raised SystemExit"),
])
def test_problem_file_errors_are_one_line_naming_the_file(tmp_path, capsys, body, match):
    (tmp_path / "bad.py").write_text(body)
    assert main(["simulate", f"{tmp_path / 'bad.py'}:problem", "--num", "5", "--out",
                 str(tmp_path / "s.pt")]) == 2
    err = capsys.readouterr().err
    assert match in err and "bad.py" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_diagnose_says_what_to_pass_when_nothing_is_recorded(tiny_model, tmp_path, capsys):
    model = _with_source(tiny_model[0], tmp_path / "m.pt", None)
    assert main(["diagnose", str(model), "--num", "20"]) == 2
    err = capsys.readouterr().err
    assert "--problem" in err and "linear_gaussian" in err


def test_any_mutated_config_value_loads_or_is_a_model_file_error(tiny_model, tmp_path):
    base = torch.load(tiny_model[0], weights_only=True)
    unexpected = []
    for key in list(base["estimator_config"]):
        for bad in [-1, "x", None, 1e30]:
            payload = torch.load(tiny_model[0], weights_only=True)
            payload["estimator_config"][key] = bad
            torch.save(payload, tmp_path / "mut.pt")
            try:
                load(tmp_path / "mut.pt")
            except ModelFileError:
                pass
            except Exception as err:  # noqa: BLE001 - collected and reported below
                unexpected.append((key, bad, f"{type(err).__name__}: {err}"))
    assert not unexpected, unexpected[:5]
