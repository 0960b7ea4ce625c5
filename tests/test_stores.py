"""Zarr simulation store: identical to in-memory runs, append, concurrent writers, and a
CLI run killed with SIGKILL then resumed (exact counts, no duplicates, identical data)."""

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sbi_core import Problem, box_uniform
from sbi_core.simulation import chunk_plan, chunk_source, simulate
from sbi_core.simulation_set import SimulationSet
from sbi_core.stores import SimulationStore, load_store, simulate_into_store

ROOT = Path(__file__).resolve().parents[1]

SLOW_PROBLEM = '''
import time
import torch
from sbi_core import Problem, box_uniform


def _sim(theta):
    time.sleep(0.08)
    x = theta ** 2 + 0.1 * torch.randn_like(theta)
    x[theta[:, 0] > 0.9] = float("nan")  # some invalid rows, kept in the store
    return x


def problem():
    return Problem(box_uniform([-1.0, -1.0], [1.0, 1.0]), _sim, name="slow")
'''


def _problem() -> Problem:
    def sim(theta):
        x = theta + 0.1 * torch.randn_like(theta)
        x[theta[:, 1] > 0.8] = float("nan")
        return x
    return Problem(box_uniform([-1.0, -1.0], [1.0, 1.0]), sim, name="toy")


def test_store_equals_memory_and_appends(tmp_path):
    p = _problem()
    path = tmp_path / "s.zarr"
    mem = simulate(p, 950, seed=3, chunk_size=200, progress=False)
    st = simulate(p, 950, seed=3, chunk_size=200, progress=False, store=path)
    assert torch.equal(mem.theta, st.theta) and torch.equal(mem.valid, st.valid)
    assert torch.allclose(mem.x, st.x, equal_nan=True)
    assert st.provenance["num_invalid"] == mem.num_invalid > 0
    attrs = SimulationStore(path).attrs
    assert attrs["seed"] == 3 and attrs["chunk_size"] == 200 and attrs["problem"] == "toy"
    assert "zarr" in attrs["versions"] and "torch" in attrs["versions"]
    # append: extend the budget; the partial last chunk (150 rows) is redone at 200
    bigger = simulate(p, 1400, seed=3, chunk_size=200, progress=False, store=path, resume=True)
    ref = simulate(p, 1400, seed=3, chunk_size=200, progress=False)
    assert torch.allclose(bigger.x, ref.x, equal_nan=True) and torch.equal(bigger.theta, ref.theta)
    assert len(SimulationSet.load(path)) == 1400


def test_store_errors_are_clear(tmp_path):
    p = _problem()
    path = tmp_path / "s.zarr"
    simulate(p, 400, seed=0, chunk_size=100, progress=False, store=path)
    with pytest.raises(ValueError, match="already exists"):
        simulate(p, 400, seed=0, chunk_size=100, progress=False, store=path)
    with pytest.raises(ValueError, match="seed: store has 0, run has 1"):
        simulate(p, 400, seed=1, chunk_size=100, progress=False, store=path, resume=True)
    with pytest.raises(ValueError, match="fewer"):
        simulate(p, 300, seed=0, chunk_size=100, progress=False, store=path, resume=True)
    with pytest.raises(ValueError, match="needs a store"):
        simulate(p, 300, seed=0, progress=False, resume=True)
    part = tmp_path / "part.zarr"
    plan = chunk_plan(400, 0, 100)
    simulate_into_store(p, plan, chunk_source(), part, seed=0, chunk_size=100,
                        progress=False, only_chunks=[0, 2])
    with pytest.raises(ValueError, match="incomplete: 2 of 4"):
        SimulationSet.load(part)
    with pytest.warns(UserWarning, match="committed"):
        assert len(load_store(part, partial=True)) == 200


def _writer(path: str, chunks: list[int]) -> None:
    p = _problem()
    simulate_into_store(p, chunk_plan(1000, 5, 100), chunk_source(), path, seed=5,
                        chunk_size=100, resume=True, progress=False, only_chunks=chunks)


def test_concurrent_writers_from_processes(tmp_path):
    path = str(tmp_path / "c.zarr")
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(path, list(range(k, 10, 3)))) for k in range(3)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    got = load_store(path)
    ref = simulate(_problem(), 1000, seed=5, chunk_size=100, progress=False)
    assert torch.equal(got.theta, ref.theta)
    assert torch.allclose(got.x, ref.x, equal_nan=True)
    assert len({int(m["pid"]) for m in SimulationStore(path).marks().values()}) == 3


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "sbi_core.cli.main", *args]


def _children(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_cli_sigkill_then_resume_matches_uninterrupted(tmp_path):
    prob_file = tmp_path / "slow.py"
    prob_file.write_text(SLOW_PROBLEM)
    path = tmp_path / "run.zarr"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = ["simulate", f"{prob_file}:problem", "--num", "1180", "--seed", "7",
            "--chunk-size", "20", "--out", str(path), "--quiet"]
    proc = subprocess.Popen(_cli(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    marks = path / "_committed"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if marks.is_dir() and len(list(marks.glob("chunk-*.json"))) >= 5:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    workers = _children(proc.pid)
    assert workers, "the CLI simulates in supervised worker processes"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # its workers do not outlive it (they used to wait on their pipe forever)
    deadline = time.time() + 15
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.1)
    assert not any(_alive(w) for w in workers), "worker processes outlived the killed CLI"
    store = SimulationStore(path)
    done_before = store.committed()
    assert 5 <= len(done_before) < store.num_chunks  # killed mid-run
    before = {i: m["pid"] for i, m in store.marks().items()}
    with pytest.raises(ValueError, match="incomplete"):
        load_store(path)

    out = subprocess.run(_cli(*args, "--resume"), env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["num_simulations"] == 1180
    store = SimulationStore(path)
    marks = store.marks()
    assert sorted(marks) == list(range(59))
    assert all(marks[i]["pid"] == pid for i, pid in before.items())  # not redone
    got = load_store(path)
    sys.path.insert(0, str(tmp_path))
    try:
        from slow import problem
    finally:
        sys.path.remove(str(tmp_path))
    ref = simulate(problem(), 1180, seed=7, chunk_size=20, progress=False)
    assert len(got) == 1180 and torch.equal(got.theta, ref.theta)
    assert torch.unique(got.theta, dim=0).shape[0] == 1180  # no duplicates
    assert torch.equal(got.valid, ref.valid) and got.num_invalid > 0
    assert torch.allclose(got.x, ref.x, equal_nan=True)
