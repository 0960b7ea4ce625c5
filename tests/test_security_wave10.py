"""Wave 10 security review: a reference recorded in a file (model, simulation file, store) is
shown in a suggested command line *quoted*, so pasting that command into a shell cannot run a
second command smuggled into the file (``x.py:p; touch PWNED``)."""

import shlex
import subprocess

import torch

from estimators.embedding import _missing_message
from sbi_core import simulate
from sbi_core.cli.main import main
from sbi_core.resolve import recorded_problem_hint
from sbi_core.stores import SimulationStore

EVIL_REF = "evil.py:problem; touch PWNED"


def _pasted_args(message: str, option: str) -> list[str]:
    """The words a shell gives the suggested ``option VALUE`` (VALUE ends the message part)."""
    tail = message.split(f"{option} ", 1)[1]
    return shlex.split(tail.split(" (in Python", 1)[0].split(").", 1)[0].split("` ", 1)[0])


def test_recorded_problem_hint_quotes_the_reference():
    msg = recorded_problem_hint(EVIL_REF, "m.pt")
    assert _pasted_args(msg, "--problem")[0] == EVIL_REF  # one argument, no second command
    assert f"--problem {shlex.quote(EVIL_REF)}" in msg


def test_model_with_smuggled_command_is_shown_quoted_and_pasting_runs_nothing(tmp_path, capsys,
                                                                             linear_problem):
    from sbi_core import fit, save

    sims = simulate(linear_problem, 200, seed=0, progress=False)
    post = fit(linear_problem, sims, method="npe", seed=0, progress=False, max_epochs=1,
               hidden_features=8, num_transforms=1)
    path = save(post, tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    payload["problem"]["source"] = EVIL_REF
    torch.save(payload, path)
    assert main(["diagnose", str(path), "--num", "10"]) == 2
    err = capsys.readouterr().err
    assert "never imported" in err and f"--problem {shlex.quote(EVIL_REF)}" in err
    suggested = err.split("pass --problem ", 1)[1].split(" (in Python", 1)[0]
    # paste the suggested argument into a real shell: it stays one word, nothing runs
    out = subprocess.run(["sh", "-c", f"printf '%s\\n' {suggested}"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=10)
    assert out.stdout.splitlines() == [EVIL_REF]
    assert not (tmp_path / "PWNED").exists()


def test_store_repair_hint_quotes_the_recorded_problem(tmp_path, linear_problem):
    store = tmp_path / "s.zarr"
    simulate(linear_problem, 100, seed=0, chunk_size=50, progress=False, store=store)
    st = SimulationStore(store, mode="r+")
    st.group.attrs["problem_source"] = EVIL_REF
    hint = SimulationStore(store).repair_hint()
    words = shlex.split(hint.split("`", 2)[1])
    assert words[:3] == ["sbi-core", "simulate", EVIL_REF]
    assert ";" not in words and "touch" not in words


def test_user_embedding_message_quotes_the_recorded_option():
    msg = _missing_message({"type": "user", "class": "m.Net", "output_dim": 4,
                            "cli_spec": "nets.py:make && touch PWNED"}, "m.pt")
    suggested = msg.split("pass --embedding ", 1)[1].rsplit(").", 1)[0]
    assert shlex.split(suggested) == ["nets.py:make && touch PWNED"]


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED",))


def test_store_whose_metadata_names_a_pickle_codec_is_refused_clearly(tmp_path, linear_problem,
                                                                      monkeypatch):
    """A doctored zarr store declares its arrays as zarr v2 arrays decoded by numcodecs' pickle
    codec (inline consolidated metadata of the root zarr.json), with pickled payloads that would
    run ``touch PWNED``: it is refused with a message naming the store, and nothing runs."""
    import json
    import pickle

    import pytest

    from sbi_core.stores import load_store

    monkeypatch.chdir(tmp_path)
    store = tmp_path / "s.zarr"
    simulate(linear_problem, 100, seed=0, chunk_size=100, progress=False, store=store)
    root = json.loads((store / "zarr.json").read_text())
    meta = {"zarr_format": 2, "shape": [100, 2], "chunks": [100, 2], "dtype": "<f4",
            "compressor": {"id": "pickle"}, "fill_value": None, "order": "C", "filters": None,
            "dimension_separator": ".", "attributes": {}}
    root["consolidated_metadata"] = {"kind": "inline", "must_understand": False, "metadata": {
        "theta": meta, "x": meta, "valid": dict(meta, dtype="|b1")}}
    (store / "zarr.json").write_text(json.dumps(root))
    for name in ("theta", "x", "valid"):
        (store / name / "0.0").write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(ValueError, match="not a readable sbi-core simulation store.*Nothing in "
                                         "it was run"):
        load_store(store)
    assert main(["train", "--sims", str(store), "--problem", "linear_gaussian", "--out",
                 str(tmp_path / "m.pt"), "--quiet"]) == 2
    assert not (tmp_path / "PWNED").exists()
