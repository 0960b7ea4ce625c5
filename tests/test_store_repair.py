"""Damaged zarr chunks: reads name the store, the chunk and its rows and say how to repair;
``repair=True`` / ``--resume --repair`` re-simulates exactly the damaged chunks (same seeds,
same θ) and the store then equals an undamaged run bit for bit."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sbi_core import Problem, box_uniform
from sbi_core.simulation import simulate
from sbi_core.simulation_set import SimulationSet
from sbi_core.stores import SimulationStore, StoreDamagedError, load_store
from sbi_core.streaming import StoreBatches

ROOT = Path(__file__).resolve().parents[1]


def _sim(theta):
    x = theta + 0.1 * torch.randn_like(theta)
    x[theta[:, 1] > 0.8] = float("nan")
    return x


def _problem():
    return Problem(box_uniform([-1.0, -1.0], [1.0, 1.0]), _sim, name="toy", x_shape=(2,),
                   validate=False)


def _arrays(path):
    st = SimulationStore(path)
    return [st.group[name][:].tobytes() for name in ("theta", "x", "valid")]


def _corrupt_header(path: Path, array: str, chunk: int) -> None:
    f = path / array / "c" / str(chunk) / "0"
    raw = bytearray(f.read_bytes())
    raw[:8] = b"\xff" * 8  # the codec's frame header: zstd cannot decode it
    f.write_bytes(bytes(raw))


def test_damaged_chunk_error_names_it_and_repair_restores_bitwise(tmp_path):
    p = _problem()
    path, fresh = tmp_path / "s.zarr", tmp_path / "fresh.zarr"
    simulate(p, 500, seed=4, chunk_size=100, progress=False, store=path)
    simulate(p, 500, seed=4, chunk_size=100, progress=False, store=fresh)
    pids = {i: m["pid"] for i, m in SimulationStore(path).marks().items()}
    _corrupt_header(path, "x", 3)
    hint = "--resume --repair"
    with pytest.raises(StoreDamagedError) as info:
        SimulationSet.load(path)
    msg = str(info.value)
    assert str(path) in msg and "chunk 3 (rows 300-399)" in msg and "array 'x'" in msg
    assert "Zstd" in msg and hint in msg and "repair=True" in msg and "--seed 4" in msg
    with pytest.raises(StoreDamagedError, match=r"chunk 3 \(rows 300-399\)"):  # streaming too
        batches = StoreBatches(path, validation_fraction=0.0)
        for _ in batches.epoch(torch.Generator().manual_seed(0), 64):
            pass
    assert SimulationStore(path).damaged_chunks().keys() == {3}
    with pytest.warns(UserWarning, match="Re-simulating 1 damaged chunk"):
        sims = simulate(p, 500, seed=4, chunk_size=100, progress=False, store=path,
                        resume=True, repair=True)
    assert sims.provenance["repaired_chunks"] == [3]
    assert _arrays(path) == _arrays(fresh)  # bit for bit
    marks = SimulationStore(path).marks()
    assert all(marks[i]["pid"] == pid for i, pid in pids.items() if i != 3)  # others kept
    assert SimulationStore(path).damaged_chunks() == {}


def test_silent_corruption_and_missing_file_found_by_checksums(tmp_path):
    p = _problem()
    path, fresh = tmp_path / "s.zarr", tmp_path / "fresh.zarr"
    simulate(p, 400, seed=1, chunk_size=100, progress=False, store=path)
    simulate(p, 400, seed=1, chunk_size=100, progress=False, store=fresh)
    f = path / "theta" / "c" / "1" / "0"
    raw = bytearray(f.read_bytes())
    raw[-20:-12] = b"\x00" * 8  # inside the data: decodes fine, values wrong
    f.write_bytes(bytes(raw))
    (path / "valid" / "c" / "2").unlink()  # a lost file reads as fill values
    damaged = SimulationStore(path).damaged_chunks()
    assert set(damaged) == {1, 2}
    assert "array 'theta' differs from the checksum" in damaged[1]
    assert "array 'valid' differs from the checksum" in damaged[2]
    with pytest.warns(UserWarning, match="Re-simulating 2 damaged chunk"):
        simulate(p, 400, seed=1, chunk_size=100, progress=False, store=path, resume=True,
                 repair=True)
    assert _arrays(path) == _arrays(fresh)


def test_cli_repair_of_a_store_simulated_at_given_theta(tmp_path):
    prob_file = tmp_path / "toyp.py"
    prob_file.write_text(
        "import torch\nfrom sbi_core import Problem, box_uniform\n\n\n"
        "def problem():\n"
        "    return Problem(box_uniform([-1.0, -1.0], [1.0, 1.0]),\n"
        "                   lambda t: t * 3 + 0.1 * torch.randn_like(t), name='toyp')\n")
    theta = (torch.rand(120, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1).numpy()
    np.save(tmp_path / "theta.npy", theta)
    path = tmp_path / "g.zarr"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "sbi_core.cli.main", "simulate", f"{prob_file}:problem",
            "--theta", str(tmp_path / "theta.npy"), "--seed", "2", "--chunk-size", "50",
            "--out", str(path), "--quiet"]
    assert subprocess.run(args, env=env, capture_output=True, timeout=300).returncode == 0
    before = _arrays(path)
    _corrupt_header(path, "theta", 1)
    with pytest.raises(StoreDamagedError, match=r"--theta THETA_FILE .*--resume --repair"):
        load_store(path)
    out = subprocess.run(args + ["--resume", "--repair"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert '"repaired_chunks": [1]' in out.stdout
    assert _arrays(path) == before
