"""``sbi-core run --embedding SPEC``: the same option as ``sbi-core train --embedding`` (one
parser helper, :func:`sbi_core.cli.common.add_embedding`, resolved by
:func:`sbi_core.resolve.resolve_embedding`) for sequential inference: built-in names, JSON
specs and your own ``file.py:function``; a run with your own network resumes from its store."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from sbi_core.cli.main import build_parser, main
from sbi_core.resolve import resolve_embedding

FAST = ["--rounds", "2", "--sims-per-round", "150", "--max-epochs", "2", "--quiet"]
EMB = '''import torch


def net():
    return torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
'''


@pytest.fixture()
def files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.savetxt(tmp_path / "x.csv", [[0.5, 0.5]], delimiter=",")
    (tmp_path / "emb.py").write_text(EMB)
    return tmp_path


def _run(*extra: str) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return main(["run", "linear_gaussian", "--x", "x.csv", *extra])


def test_run_trains_with_a_builtin_embedding_spec(files, capsys):
    spec = '{"type": "mlp", "output_dim": 5}'
    assert _run("--out", "m.pt", "--embedding", spec, *FAST) == 0
    assert json.loads(capsys.readouterr().out)["total_simulations"] == 300
    payload = torch.load(files / "m.pt", weights_only=True)
    assert payload["estimator_config"]["embedding"] == json.loads(spec)
    assert any(k.startswith("embedding.") for k in payload["state_dict"])


def test_run_with_own_embedding_resumes_and_sample_needs_it(files, capsys):
    assert _run("--out", "r.pt", "--embedding", "emb.py:net", "--store", "r.zarr",
                "--rounds", "1", "--sims-per-round", "150", "--max-epochs", "2", "--quiet") == 0
    capsys.readouterr()
    # the second run reloads round 1 (the user's network is needed again) and compares the
    # recorded option: both must hold in a new process, so no memory address is recorded
    assert _run("--out", "r.pt", "--embedding", "emb.py:net", "--store", "r.zarr", "--resume",
                "--force", *FAST) == 0
    assert json.loads(capsys.readouterr().out)["total_simulations"] == 300
    assert _run("--out", "r.pt", "--embedding", "mlp", "--store", "r.zarr", "--resume",
                "--force", *FAST) == 2
    err = capsys.readouterr().err
    assert "Cannot resume r.zarr" in err and "'--embedding emb.py:net'" in err
    assert "0x" not in err
    assert main(["sample", "r.pt", "--x", "x.csv", "--num", "5", "--out", "s.csv"]) == 2
    assert "--embedding emb.py:net" in capsys.readouterr().err
    assert main(["sample", "r.pt", "--x", "x.csv", "--num", "5", "--out", "s.csv",
                 "--embedding", "emb.py:net"]) == 0


def test_bad_embedding_is_the_same_clear_error_as_train(files, capsys):
    with pytest.raises(ValueError) as train_error:  # what `sbi-core train --embedding` says
        resolve_embedding("{bad")
    assert _run("--out", "m.pt", "--embedding", "{bad", *FAST) == 2
    assert capsys.readouterr().err.strip() == f"sbi-core run: error: {train_error.value}"
    assert _run("--out", "m.pt", "--embedding", "nosuch", *FAST) == 2
    assert "Unknown embedding type 'nosuch'; use one of" in capsys.readouterr().err
    assert not (files / "m.pt").exists()


def test_snle_refuses_an_embedding_by_name(files, capsys):
    assert _run("--out", "m.pt", "--method", "snle", "--embedding", "mlp", "--rounds", "1",
                "--sims-per-round", "100", "--max-epochs", "1", "--quiet") == 2
    assert "NLE" in capsys.readouterr().err and not (files / "m.pt").exists()


def test_run_and_train_share_the_embedding_option():
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    helps = {name: next(a for a in sub[name]._actions if a.dest == "embedding")
             for name in ("run", "train")}
    assert helps["run"].metavar == helps["train"].metavar == "SPEC"
    assert helps["run"].help.split(":", 1)[1] == helps["train"].help.split(":", 1)[1]


def _top_level_factory() -> torch.nn.Module:
    return torch.nn.Linear(2, 3)


def test_store_records_options_as_text_the_same_in_every_process(files):
    from sbi_core.sequential import _plain_options

    factory = resolve_embedding("emb.py:net")  # a new function object in every process
    recorded = _plain_options({"embedding": factory, "flow": "nsf", "progress": False})
    assert recorded == {"embedding": "--embedding emb.py:net", "flow": "nsf"}
    assert _plain_options({"embedding": _top_level_factory})["embedding"] == \
        f"{__name__}._top_level_factory"
    assert _plain_options({"embedding": torch.nn.Linear})["embedding"] == repr(torch.nn.Linear)
    assert _plain_options({"mcmc": {"num_chains": 4}})["mcmc"] == repr({"num_chains": 4})
