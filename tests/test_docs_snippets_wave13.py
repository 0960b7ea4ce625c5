"""Snippets of README.md and docs/*.md as a new user runs them (wave 13, docs13).

``sbi-core diagnose model.pt --embedding mypkg.nets:make`` (docs/embeddings.md) and
``--problem module:function`` (README) name a module. Run from the folder that holds
``mypkg/``, the console script cannot import it (the current folder is not on its Python
path); the error must say so and give the fix (the file form, or ``PYTHONPATH=.``).
"""

from __future__ import annotations

import sys

import pytest

from sbi_core.resolve import ProblemFileError, resolve_callable, resolve_problem


@pytest.fixture
def package_in_cwd(tmp_path, monkeypatch):
    """``mypkg/nets.py`` and ``mypkg/probs.py`` in the current folder, which is not on sys.path."""
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text("def make():\n    return None\n")
    (pkg / "probs.py").write_text("def make():\n    return None\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    return tmp_path


def test_embedding_module_in_cwd_names_the_fix(package_in_cwd):
    with pytest.raises(ValueError) as err:
        resolve_callable("mypkg.nets:make")
    msg = str(err.value)
    assert "mypkg/nets.py:make" in msg and "PYTHONPATH=." in msg, msg


def test_problem_module_in_cwd_names_the_fix(package_in_cwd):
    with pytest.raises(ProblemFileError) as err:
        resolve_problem("mypkg.probs:make")
    msg = str(err.value)
    assert "mypkg/probs.py:make" in msg and "PYTHONPATH=." in msg, msg


def test_missing_module_elsewhere_keeps_plain_message(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as err:
        resolve_callable("nosuchpkg_xyz.nets:make")
    assert "nosuchpkg_xyz" in str(err.value) and "PYTHONPATH=." not in str(err.value)


def _small_posterior():
    """An NPE posterior (with its misspecification detector) of a problem defined in Python."""
    import torch

    from sbi_core import Problem, box_uniform, fit, simulate

    def simulator(theta):
        return theta + 0.1 * torch.randn_like(theta)

    problem = Problem(box_uniform([-1.0, -1.0], [1.0, 1.0]), simulator, param_names=["a", "b"])
    sims = simulate(problem, 600, seed=0)
    return fit(problem, sims, seed=0, max_epochs=2, progress=False), simulator


def test_diagnose_x_alone_tests_the_observations():
    """README ("Methods") and docs/trust.md: ``diagnose(posterior, x=xs)`` in Python, like
    ``sbi-core diagnose MODEL --x obs.csv`` alone, tests the observations when no problem or
    simulations are given (it raised "diagnose needs test simulations")."""
    import torch

    from diagnostics import diagnose

    posterior, simulator = _small_posterior()
    torch.manual_seed(1)
    xs = simulator(torch.zeros(3, 2))
    with pytest.warns(UserWarning, match="problem="):
        report = diagnose(posterior, x=xs)
    assert [s for s in report.to_dict()["sections"]] == ["misspecification"], report.to_dict()
    report = diagnose(posterior, observations=xs, num_samples=50)  # the same without x's checks
    assert list(report.to_dict()["sections"]) == ["misspecification"]
    with pytest.raises(ValueError, match="needs test simulations"):
        diagnose(posterior)  # nothing to test: the error names problem= and sims=
