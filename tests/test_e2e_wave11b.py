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


@pytest.fixture(scope="module")
def sims_file(tmp_path_factory, linear_problem):
    path = tmp_path_factory.mktemp("w11b_sims") / "s.pt"
    simulate(linear_problem, 100, seed=0, progress=False).save(path)
    return path


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.__setitem__("provenance", [1, 2]), "'provenance' entry is a list, not a dict"),
    (lambda d: d.__setitem__("theta", d["theta"].tolist()), "'theta' entry is a list"),
    (lambda d: d.__setitem__("valid", d["valid"].float()), "'valid' entry is of dtype"),
    (lambda d: d["provenance"].__setitem__("param_names", 7), "'provenance.param_names' entry is not a list"),
])
def test_simulation_file_with_damaged_entries_is_refused_naming_the_entry(sims_file, tmp_path,
                                                                          edit, match):
    """Was: 'cannot convert dictionary update sequence', an internal AttributeError, '~ is
    only implemented on integer and Boolean-type tensors', "'int' object is not iterable"."""
    import torch

    from sbi_core import SimulationSet

    payload = torch.load(sims_file, weights_only=True)
    edit(payload)
    torch.save(payload, tmp_path / "d.pt")
    with pytest.raises(ValueError, match=f"is damaged: its {match}"):
        SimulationSet.load(tmp_path / "d.pt")


def test_simulation_file_rows_of_nan_are_invalid_whatever_its_valid_flags_say(sims_file,
                                                                               tmp_path):
    import torch

    from sbi_core import SimulationSet

    payload = torch.load(sims_file, weights_only=True)
    payload["x"][:10] = float("nan")  # flags still say valid
    torch.save(payload, tmp_path / "d.pt")
    sims = SimulationSet.load(tmp_path / "d.pt")
    assert sims.num_invalid == 10
    with pytest.warns(UserWarning, match="Excluding 10 of 100"):
        theta, x = sims.training_data()
    assert torch.isfinite(x).all() and len(theta) == 90
