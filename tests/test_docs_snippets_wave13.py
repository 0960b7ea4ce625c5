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
