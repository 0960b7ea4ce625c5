import pickle

import pytest
import torch

from sbi_core import ModelFileError, load, save
from sbi_core.serialization import MODEL_FORMAT


def test_roundtrip_samples_identically(trained_npe, tmp_path):
    path = save(trained_npe, tmp_path / "m.pt")
    back = load(path)
    x = torch.tensor([0.2, -0.1])
    assert torch.equal(back.sample((200,), x=x, seed=3), trained_npe.sample((200,), x=x, seed=3))
    theta = torch.randn(20, 2)
    assert torch.allclose(back.log_prob(theta, x), trained_npe.log_prob(theta, x))
    assert back.history["epochs"] == trained_npe.history["epochs"]
    assert back.param_names == trained_npe.param_names and back.method == "npe"


def test_file_loads_with_weights_only(trained_npe, tmp_path):
    path = save(trained_npe, tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == MODEL_FORMAT
    assert payload["problem"]["prior"]["type"] == "gaussian"


def test_corrupted_file(trained_npe, tmp_path):
    path = save(trained_npe, tmp_path / "m.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="corrupted"):
        load(path)


def test_foreign_files(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(ModelFileError, match="not an sbi-core model file"):
        load(tmp_path / "foreign.pt")

    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    with open(tmp_path / "evil.pt", "wb") as fh:
        pickle.dump({"format": MODEL_FORMAT, "x": Evil()}, fh)
    with pytest.raises(ModelFileError):
        load(tmp_path / "evil.pt")
    with pytest.raises(ModelFileError, match="No model file"):
        load(tmp_path / "missing.pt")


def test_incompatible_version(trained_npe, tmp_path):
    path = save(trained_npe, tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, path)
    with pytest.raises(ModelFileError, match="version 99"):
        load(path)


def test_mismatched_weights(trained_npe, tmp_path):
    path = save(trained_npe, tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    payload["estimator_config"]["hidden_features"] = 7
    torch.save(payload, path)
    with pytest.raises(ModelFileError, match="do not match"):
        load(path)
