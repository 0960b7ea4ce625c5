"""Your own nn.Module as the embedding: trained jointly, saved as weights, given again at load.

The class name stored in a model file is only shown: these tests check that loading never
imports it (a module that does not exist, and one with an import side effect).
"""

import builtins
import importlib
import sys

import pytest
import torch
from torch import nn

from sbi_core import ModelFileError, Problem, box_uniform, fit, load, save, simulate

X_DIM = 8


class TinyNet(nn.Module):
    """A user embedding: (N, 8) -> (N, 3)."""

    def __init__(self, hidden: int = 16):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(X_DIM, hidden), nn.ReLU(), nn.Linear(hidden, 3))

    def forward(self, x):
        return self.net(x)


@pytest.fixture(scope="module")
def problem_and_sims():
    def simulator(theta):
        return theta.repeat(1, X_DIM // 2) + 0.2 * torch.randn(theta.shape[0], X_DIM)

    problem = Problem(box_uniform([-1.0, -1.0], [1.0, 1.0]), simulator, x_shape=(X_DIM,))
    return problem, simulate(problem, 600, seed=0, progress=False)


SMALL = {"npe": {"hidden_features": 16, "num_transforms": 2},
         "nre": {"hidden_features": 16},
         "fmpe": {"hidden_features": 16, "num_layers": 2},
         "pfn": {"n_max": 2, "d_model": 16, "num_layers": 1, "num_heads": 2, "ff_features": 16,
                 "num_buckets": 20, "num_border_samples": 2000}}


def _fit(problem_and_sims, method, embedding, **kw):
    problem, sims = problem_and_sims
    with pytest.warns(UserWarning, match="max_epochs"):
        return fit(problem, sims, method=method, embedding=embedding, seed=0, progress=False,
                   max_epochs=3, **SMALL[method], **kw)


@pytest.mark.parametrize("method", ["npe", "nre", "fmpe", "pfn"])
def test_user_module_trains_saves_and_reloads(problem_and_sims, method, tmp_path):
    problem, _ = problem_and_sims
    mine = TinyNet()
    before = [p.detach().clone() for p in mine.parameters()]
    post = _fit(problem_and_sims, method, mine)
    # trained jointly: the posterior's copy moved, the object passed in was not touched
    trained = list(post.estimator.embedding.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, trained))
    assert all(torch.equal(a, b) for a, b in zip(before, mine.parameters()))
    record = post.estimator.config["embedding"]
    assert record == {"type": "user", "class": f"{__name__}.TinyNet", "output_dim": 3}

    path = save(post, tmp_path / "m.pt")
    theta = problem.prior.sample((16,))
    x = problem.simulator(theta)
    for given in (TinyNet, lambda: TinyNet(16), TinyNet()):  # class, factory, instance
        loaded = load(path, embedding=given)
        for est in (post.estimator, loaded.estimator):
            est.eval()
        with torch.no_grad():  # the whole network, deterministic in eval mode
            assert torch.equal(post.estimator.loss(theta, x), loaded.estimator.loss(theta, x))
    if method == "npe":
        x_o = problem.observation(1)
        assert torch.equal(post.log_prob(theta, x=x_o), loaded.log_prob(theta, x=x_o))


def test_load_without_embedding_names_the_class_and_the_fix(problem_and_sims, tmp_path):
    path = save(_fit(problem_and_sims, "npe", TinyNet()), tmp_path / "m.pt")
    with pytest.raises(ModelFileError, match=r"user embedding .*TinyNet.*load\(path, "
                                             r"embedding=TinyNet\).*--embedding module:function"):
        load(path)
    with pytest.raises(ModelFileError, match=r"does not match.*net\.0\.weight"):
        load(path, embedding=lambda: TinyNet(hidden=7))
    with pytest.raises(ModelFileError, match="cannot be called without arguments"):
        load(path, embedding=lambda width: TinyNet(width))


def test_embedding_for_a_builtin_model_is_refused(problem_and_sims, tmp_path):
    path = save(_fit(problem_and_sims, "npe", {"type": "mlp", "output_dim": 4}), tmp_path / "m.pt")
    assert load(path).estimator.config["embedding"]["type"] == "mlp"
    with pytest.raises(ModelFileError, match="has no user embedding"):
        load(path, embedding=TinyNet)


def _class_in_module(module_name):
    """TinyNet's twin whose class claims to live in ``module_name``."""
    cls = type("Evil", (TinyNet,), {"__module__": module_name})
    return cls


def test_class_named_in_file_is_never_imported(problem_and_sims, tmp_path, monkeypatch):
    # 1. a module that does not exist, with the import machinery watched
    ghost = _class_in_module("sbi_core_test_ghost_pkg.nets")
    path = save(_fit(problem_and_sims, "npe", ghost()), tmp_path / "ghost.pt")
    attempts = []
    real_import = builtins.__import__

    def watching_import(name, *args, **kwargs):
        if "sbi_core_test_ghost_pkg" in name or "sbi_core_test_side_effect" in name:
            attempts.append(name)
        return real_import(name, *args, **kwargs)

    real_import_module = importlib.import_module

    def watching_import_module(name, *args, **kwargs):
        if "sbi_core_test_ghost_pkg" in name or "sbi_core_test_side_effect" in name:
            attempts.append(name)
        return real_import_module(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", watching_import)
    monkeypatch.setattr(importlib, "import_module", watching_import_module)
    with pytest.raises(ModelFileError, match="sbi_core_test_ghost_pkg.nets.Evil"):
        load(path)
    assert load(path, embedding=TinyNet).estimator.config["embedding"]["class"] == \
        "sbi_core_test_ghost_pkg.nets.Evil"

    # 2. a module that exists on sys.path and would leave a mark if imported
    marker = tmp_path / "imported.txt"
    (tmp_path / "sbi_core_test_side_effect.py").write_text(
        f"open({str(marker)!r}, 'w').write('imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    side = _class_in_module("sbi_core_test_side_effect")
    path = save(_fit(problem_and_sims, "npe", side()), tmp_path / "side.pt")
    with pytest.raises(ModelFileError, match="sbi_core_test_side_effect.Evil"):
        load(path)
    load(path, embedding=TinyNet)
    assert not marker.exists()
    assert "sbi_core_test_side_effect" not in sys.modules
    assert "sbi_core_test_ghost_pkg" not in sys.modules
    assert attempts == []


def test_bad_user_modules_fail_at_fit_with_the_shape(problem_and_sims):
    problem, sims = problem_and_sims

    class NoFlatten(nn.Module):
        def forward(self, x):
            return x.unsqueeze(1)  # (N, 1, 8): not (N, C)

    with pytest.raises(ValueError, match=r"returned \(2, 1, 8\).*must return \(N, C\)"):
        fit(problem, sims, embedding=NoFlatten(), progress=False, max_epochs=1)
    with pytest.raises(ValueError, match=r"failed on a batch of observations of shape \(2, 8\)"):
        fit(problem, sims, embedding=nn.Linear(5, 3), progress=False, max_epochs=1)
    with pytest.raises(ValueError, match="NLE learns the density"):
        fit(problem, sims, method="nle", embedding=TinyNet(), progress=False, max_epochs=1)
    with pytest.raises(ValueError, match="Unknown embedding type 'cnn3d'"):
        fit(problem, sims, embedding="cnn3d", progress=False, max_epochs=1)


def test_cli_train_and_sample_with_embedding_from_file(tmp_path, capsys):
    from sbi_core.cli.main import main

    nets = tmp_path / "my_nets.py"
    nets.write_text("import torch\n\n"
                    "def make():\n"
                    "    return torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.ReLU(),\n"
                    "                               torch.nn.Linear(8, 3))\n")
    sims, model = tmp_path / "sims.pt", tmp_path / "m.pt"
    assert main(["simulate", "linear_gaussian", "--num", "300", "--out", str(sims),
                 "--quiet"]) == 0
    assert main(["train", "--sims", str(sims), "--out", str(model), "--max-epochs", "2",
                 "--embedding", f"{nets}:make", "--quiet"]) == 0
    assert load(model, embedding=lambda: nn.Sequential(
        nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 3))).estimator.config["embedding"] == \
        {"type": "user", "class": "torch.nn.modules.container.Sequential", "output_dim": 3,
         "cli_spec": f"{nets}:make"}  # shown in the error below, never imported from the file
    xfile, out = tmp_path / "x.csv", tmp_path / "s.csv"
    xfile.write_text("x1,x2\n0.1,0.2\n")
    capsys.readouterr()
    assert main(["sample", str(model), "--x", str(xfile), "--num", "5", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--embedding module:function" in err
    assert f"It was trained with --embedding {nets}:make (shown, not imported" in err
    assert main(["sample", str(model), "--x", str(xfile), "--num", "5", "--out", str(out),
                 "--embedding", f"{nets}:make"]) == 0
    assert len(out.read_text().splitlines()) == 6
    # a built-in embedding by name, and a JSON spec
    assert main(["train", "--sims", str(sims), "--out", str(model), "--max-epochs", "2",
                 "--embedding", '{"type": "mlp", "output_dim": 4}', "--quiet"]) == 0
    assert load(model).estimator.config["embedding"] == {"type": "mlp", "output_dim": 4}


def test_cli_embedding_may_name_a_module_instance_or_a_class(tmp_path):
    """--embedding FILE.py:NAME takes a function, a class or a module instance (an instance
    is itself callable: it must not be called as a factory)."""
    from sbi_core.cli.main import main
    from sbi_core.resolve import resolve_embedding

    nets = tmp_path / "inst_nets.py"
    nets.write_text("import torch\n\n"
                    "net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.ReLU(),\n"
                    "                          torch.nn.Linear(8, 3))\n\n"
                    "class Net(torch.nn.Module):\n"
                    "    def __init__(self):\n"
                    "        super().__init__()\n"
                    "        self.lin = torch.nn.Linear(2, 3)\n\n"
                    "    def forward(self, x):\n"
                    "        return self.lin(x)\n")
    assert isinstance(resolve_embedding(f"{nets}:net"), nn.Module)
    factory = resolve_embedding(f"{nets}:Net")
    assert factory.__name__ == "Net" and factory.cli_spec == f"{nets}:Net"
    sims = tmp_path / "sims.pt"
    assert main(["simulate", "linear_gaussian", "--num", "300", "--out", str(sims),
                 "--quiet"]) == 0
    for name in ("net", "Net"):
        model = tmp_path / f"m_{name}.pt"
        assert main(["train", "--sims", str(sims), "--out", str(model), "--max-epochs", "2",
                     "--embedding", f"{nets}:{name}", "--quiet"]) == 0
        assert load(model, embedding=resolve_embedding(f"{nets}:{name}")).estimator.config[
            "embedding"]["output_dim"] == 3
