"""Wave 11 end-to-end sweep: a zarr store whose attributes were damaged or edited is refused
with one message naming the attribute (was: division by zero, ``int('abc')``, ``'int' object
is not iterable``, or "15 of 5,000,000,000 chunks committed")."""

from __future__ import annotations

import pytest

from sbi_core import simulate
from sbi_core.cli.main import main
from sbi_core.stores import SimulationStore, load_store


@pytest.fixture(scope="module")
def store(tmp_path_factory, linear_problem):
    path = tmp_path_factory.mktemp("w11b") / "s.zarr"
    simulate(linear_problem, 100, seed=0, chunk_size=50, progress=False, store=path)
    return path


@pytest.mark.parametrize("key, value, why", [
    ("chunk_size", 0, "not an integer >= 1"),
    ("chunk_size", 10**15, "stored in chunks of 50 rows"),
    ("num_simulations", 10**12, "more than the 100 rows"),
    ("num_simulations", "100", "not an integer >= 0"),
    ("num_simulations", 100.5, "not an integer >= 0"),
    ("seed", "abc", "not an integer"),
    ("param_names", 5, "not a list of names"),
    ("x_names", "ab", "not a list of names"),
])
def test_store_with_damaged_attributes_is_refused_naming_the_attribute(store, tmp_path, key,
                                                                       value, why):
    import shutil

    copy = tmp_path / "d.zarr"
    shutil.copytree(store, copy)
    SimulationStore(copy, mode="r+").group.attrs[key] = value
    with pytest.raises(ValueError, match=f"is damaged: its attribute '{key}' .*{why}"):
        load_store(copy)


def test_cli_train_on_a_store_with_a_damaged_chunk_size_is_one_clear_line(store, tmp_path,
                                                                        capsys):
    import shutil

    copy = tmp_path / "d.zarr"
    shutil.copytree(store, copy)
    SimulationStore(copy, mode="r+").group.attrs["chunk_size"] = 0
    assert main(["train", "--sims", str(copy), "--out", str(tmp_path / "m.pt"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "its attribute 'chunk_size' is 0" in err and "division" not in err


def test_store_grown_by_a_crashed_resume_still_loads(store, tmp_path):
    """Arrays larger than num_simulations: a crash between resizing and recording the new
    budget while extending. Not damage; the store reads as before."""
    import shutil

    copy = tmp_path / "g.zarr"
    shutil.copytree(store, copy)
    group = SimulationStore(copy, mode="r+").group
    for name in ("theta", "x", "valid"):
        group[name].resize((150, *group[name].shape[1:]))
    assert len(load_store(copy)) == 100
