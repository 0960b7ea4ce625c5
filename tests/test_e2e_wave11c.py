"""Wave 11 end-to-end sweep: a model file whose problem spec was damaged or edited is refused
naming the entry (was: a string read as one-letter parameter names, three names labelling two
parameters, an x_shape of strings accepted until sampling, a TypeError), and an unknown method
is not called a weights/config mismatch."""

from __future__ import annotations

import warnings

import pytest
import torch

from sbi_core import ModelFileError, fit, load, save, simulate


@pytest.fixture(scope="module")
def model(tmp_path_factory, linear_problem):
    root = tmp_path_factory.mktemp("w11c")
    sims = simulate(linear_problem, 200, seed=0, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = fit(linear_problem, sims, method="npe", seed=0, progress=False, max_epochs=1,
                   hidden_features=8, num_transforms=1)
    return save(post, root / "m.pt")


@pytest.mark.parametrize("key, value, match", [
    ("param_names", 5, "5 is not a list of names"),
    ("param_names", "ab", "'ab' is not a list of names"),
    ("param_names", [1, 2], "is not a list of names"),
    ("param_names", ["a", "b", "c"], "3 names for the estimator's 2 parameters"),
    ("x_shape", "ab", "'ab' is not a list of positive integers"),
    ("x_shape", [-2], "not a list of positive integers"),
    ("x_shape", [10**9, 10**9], "differs from the estimator's"),
    ("name", 5, "5 is not a string"),
    ("x_names", 5, "5 is not a list of names"),
])
def test_model_with_a_damaged_problem_spec_is_refused(model, tmp_path, key, value, match):
    payload = torch.load(model, weights_only=True)
    payload["problem"][key] = value
    torch.save(payload, tmp_path / "d.pt")
    with pytest.raises(ModelFileError, match=f"problem spec's {key}.*{match}"):
        load(tmp_path / "d.pt")


def test_model_with_an_unknown_method_says_so(model, tmp_path):
    payload = torch.load(model, weights_only=True)
    payload["method"] = "npe_v9"
    torch.save(payload, tmp_path / "d.pt")
    with pytest.raises(ModelFileError, match="records a method this sbi-core .* does not have: "
                                             "Unknown method 'npe_v9'") as err:
        load(tmp_path / "d.pt")
    assert "weights do not match" not in str(err.value)


def test_saved_model_still_loads(model):
    assert load(model).param_names == ["theta_1", "theta_2"]


def test_notebook_explorer_url_quotes_the_model_name():
    """explore({"run 1 & 2": post}) opened the page on ?model=run 1 & 2, which the page reads
    as 'run 1 ' and so fell back to the first model."""
    from types import SimpleNamespace
    from urllib.parse import parse_qs, urlparse

    from sbi_core.server.notebook import Explorer

    view = Explorer(SimpleNamespace(url="http://127.0.0.1:1", running=True), "run 1 & 2#x", 500)
    assert parse_qs(urlparse(view.url).query)["model"] == ["run 1 & 2#x"]
    assert "&amp;" not in view.url and "&" not in view._repr_html_().replace("&amp;", "")
