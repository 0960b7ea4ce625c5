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


def test_nsf_model_saved_before_the_layout_fix_still_loads(tmp_path):
    """NSF files saved before the coupling-mask fix (no ``nsf_layout`` in their config)
    rebuild the layout they were trained with and warn that a retrain fixes them."""
    import warnings as _w

    from sbi_core import Problem, box_uniform, fit, load, save, simulate

    problem = Problem(box_uniform([-1.0] * 3, [1.0] * 3),
                      lambda th: th + 0.1 * torch.randn_like(th), x_shape=(3,))
    sims = simulate(problem, 300, seed=0, progress=False)
    with _w.catch_warnings():
        _w.simplefilter("ignore")
        post = fit(problem, sims, flow="nsf", seed=0, progress=False, max_epochs=2,
                   num_transforms=2, hidden_features=8)
    assert post.estimator.config["nsf_layout"] == 2
    save(post, tmp_path / "new.pt")
    assert load(tmp_path / "new.pt").estimator.config["nsf_layout"] == 2
    # an old file: same weights format, config without the key, layout-1 layers
    from estimators.npe import NPEEstimator

    old_cfg = {k: v for k, v in post.estimator.config.items() if k != "nsf_layout"}
    with pytest.warns(UserWarning, match="retrain it"):
        old_est = NPEEstimator(old_cfg)
    old_est.fit_standardization(*sims.training_data())
    post.estimator = old_est
    save(post, tmp_path / "old.pt")
    with pytest.warns(UserWarning, match="retrain it"):
        back = load(tmp_path / "old.pt")
    x_o = torch.zeros(3)
    assert torch.equal(back.sample((20,), x=x_o, seed=1), post.sample((20,), x=x_o, seed=1))
