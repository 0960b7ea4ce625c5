"""Every subcommand, run with malformed arguments and files, exits 2 with one message line
and no traceback (in-process through ``main(argv)``; test_cli_errors.py covers the real
entry point in subprocesses)."""

import zipfile

import numpy as np
import pytest
import torch

from sbi_core.cli.main import main


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Malformed inputs: name -> path."""
    root = tmp_path_factory.mktemp("fuzz")
    files = {}

    def put(name, data):
        path = root / name
        path.write_bytes(data) if isinstance(data, bytes) else path.write_text(data)
        files[name] = str(path)

    put("empty.pt", b"")
    put("junk.pt", b"\x00\x01junk" * 10)
    put("text.pt", "hello")
    with zipfile.ZipFile(root / "zip.pt", "w") as zf:
        zf.writestr("a.txt", "not torch")
    files["zip.pt"] = str(root / "zip.pt")
    torch.save({"weights": torch.zeros(2)}, root / "foreign.pt")
    files["foreign.pt"] = str(root / "foreign.pt")
    torch.save({"format": "sbi-core-model", "format_version": 1}, root / "nokeys.pt")
    files["nokeys.pt"] = str(root / "nokeys.pt")
    torch.save({"format": "sbi-core-model", "format_version": 1, "method": "npe",
                "problem": "x", "estimator_config": [], "state_dict": 3}, root / "types.pt")
    files["types.pt"] = str(root / "types.pt")
    np.savez(root / "wrongkeys.npz", a=np.zeros(3))
    files["wrongkeys.npz"] = str(root / "wrongkeys.npz")
    np.savez(root / "empty.npz", theta=np.zeros((0, 2)), x=np.zeros((0, 2)))
    files["empty.npz"] = str(root / "empty.npz")
    np.savez(root / "mismatch.npz", theta=np.zeros((5, 2)), x=np.zeros((4, 2)))
    files["mismatch.npz"] = str(root / "mismatch.npz")
    put("bad.csv", "0.1,O.2\n")
    put("ragged.csv", "1,2\n3\n")
    put("empty.csv", "")
    put("bin.csv", b"\xff\xfe\x00garbage")
    put("bad.json", "{not json")
    put("obj.json", '{"y": [1, 2]}')
    put("strs.json", '[["a", "b"]]')
    put("bad.npy", b"\x93NUMPY junk")
    np.save(root / "objs.npy", np.array(["a", "b"]))
    files["objs.npy"] = str(root / "objs.npy")
    put("x.txt.exe", "1,2")
    put("syntax.py", "def problem(:\n")
    put("noproblem.py", "x = 1\n")
    put("raises.py", "def problem():\n    raise RuntimeError('boom')\n")
    put("notproblem.py", "def problem():\n    return 3\n")
    (root / "adir").mkdir()
    files["adir"] = str(root / "adir")
    files["missing"] = str(root / "missing.pt")
    files["root"] = str(root)
    return files


MODELS = ["empty.pt", "junk.pt", "text.pt", "zip.pt", "foreign.pt", "nokeys.pt", "types.pt",
          "adir", "missing"]
SIMS = ["empty.pt", "junk.pt", "zip.pt", "foreign.pt", "wrongkeys.npz", "empty.npz",
        "mismatch.npz", "missing", "bad.csv"]
OBS = ["bad.csv", "ragged.csv", "empty.csv", "bin.csv", "bad.json", "obj.json", "strs.json",
       "bad.npy", "objs.npy", "x.txt.exe", "adir", "missing"]
PROBLEMS = ["syntax.py:problem", "noproblem.py:problem", "raises.py:problem",
            "notproblem.py:problem", "missing.py:problem", "no_such_problem", "os:nothing",
            "no_such_module_zz:f", ":", "linear_gaussian:1"]


def _cases(f):
    out = "{root}/out"
    cases = []
    for m in MODELS:
        cases += [["sample", f(m), "--x", f("bad.csv"), "--out", out + ".csv"],
                  ["diagnose", f(m), "--num", "5", "--out", out + "_d"],
                  ["robustness", f(m), "--num", "5"],
                  ["serve", f(m), "--port", "1"]]
    for s in SIMS:
        cases += [["train", "--sims", f(s), "--problem", "linear_gaussian", "--out", out + ".pt"]]
    for p in PROBLEMS:
        p = f(p.split(":")[0]) + ":" + p.split(":")[1] if p.split(":")[0].endswith(".py") else p
        cases += [["simulate", p, "--num", "5", "--out", out + ".pt"],
                  ["reference", p, "--observation", "1", "--out", out + ".csv"],
                  ["demo", "--problem", p, "--out", out + "_demo"]]
    for o in OBS:
        cases += [["reference", "two_moons", "--x", f(o), "--out", out + ".csv", "--num", "5"]]
    cases += [
        ["simulate", "linear_gaussian", "--num", "-3", "--out", out + ".pt"],
        ["simulate", "linear_gaussian", "--num", "5", "--out", f("adir")],
        ["simulate", "linear_gaussian", "--num", "5", "--out", f("bad.csv")],
        ["simulate", "linear_gaussian", "--num", "5", "--chunk-size", "0", "--out", out + ".pt"],
        ["simulate", "linear_gaussian", "--num", "5", "--resume", "--out", out + ".pt"],
        ["simulate", "linear_gaussian", "--num", "1e3", "--out", out + ".pt"],
        ["train", "--sims", f("missing"), "--out", out + ".pt", "--batch-size", "0"],
        ["train", "--sims", f("missing"), "--out", out + ".pt", "--method", "nope"],
        ["train", "--sims", f("empty.npz"), "--out", f("empty.npz")],
        ["train", "--sims", f("wrongkeys.npz"), "--out", out + ".pt", "--max-seconds", "-1"],
        ["train", "--sims", f("junk.pt"), "--out", out + ".pt", "--stream"],
        ["reference", "two_moons", "--observation", "0", "--out", out + ".csv"],
        ["reference", "two_moons", "--observation", "11", "--out", out + ".csv"],
        ["reference", "two_moons", "--observation", "1", "--num", "0", "--out", out + ".csv"],
        ["reference", "two_moons", "--observation", "1", "--out", f("adir")],
        ["benchmark", "--task", "no_such", "--method", "npe", "--sims", "100"],
        ["benchmark", "--task", "two_moons", "--method", "nope", "--sims", "100"],
        ["benchmark", "--task", "two_moons", "--method", "npe", "--sims", "-1"],
        ["benchmark", "--task", "two_moons", "--method", "npe", "--sims", "100",
         "--observations", "12"],
        ["benchmark", "--task", "two_moons", "--method", "npe", "--sims", "100",
         "--option", "novalue"],
        ["demo", "--out", f("bad.csv")],
        ["demo", "--num-simulations", "0", "--out", out + "_demo"],
        ["demo", "--observation", "0", "--out", out + "_demo"],
        ["nosuchcommand"],
        ["train"],
        ["sample"],
    ]
    return cases


def test_every_malformed_case_is_one_line_exit_2(corpus, capsys):
    def f(name):
        return corpus.get(name, corpus["root"] + "/" + name)

    failures = []
    for argv in _cases(f):
        argv = [a.format(root=corpus["root"]) for a in argv]
        code = main(argv)
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        if code != 2 or len(lines) != 1 or "Traceback" in captured.err \
                or "internal error" in captured.err:
            failures.append((argv, code, captured.err[-400:]))
    assert not failures, "\n".join(f"{a} -> {c}: {e}" for a, c, e in failures)
