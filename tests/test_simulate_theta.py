"""simulate(problem, theta=...): given parameters with all of simulate's machinery —
per-chunk seeds (identical for any number of workers), failure records, stores, resume
(refusing other θ), appending round after round, and the CLI --theta."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sbi_core import Problem, box_uniform
from sbi_core.simulation import chunk_plan, run_chunk, simulate
from sbi_core.stores import SimulationStore, load_store, simulate_into_store

ROOT = Path(__file__).resolve().parents[1]


def _sim(theta):
    if bool((theta[:, 0] < -0.95).any()):
        raise RuntimeError("solver failed")
    x = theta ** 2 + 0.1 * torch.randn_like(theta)
    x[theta[:, 1] > 0.9] = float("nan")
    return x


def _problem():
    return Problem(box_uniform([-1.0, -1.0], [1.0, 1.0]), _sim, name="toy", x_shape=(2,),
                   validate=False, param_names=["a", "b"])


def _theta(n, seed=0):
    return torch.rand(n, 2, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_given_theta_same_for_any_workers_and_seeded_per_chunk():
    p, theta = _problem(), _theta(230)
    a = simulate(p, theta=theta, seed=5, chunk_size=50, progress=False)
    b = simulate(p, theta=theta, seed=5, chunk_size=50, progress=False, workers=2)
    assert torch.equal(a.theta, theta) and torch.equal(b.theta, theta)
    assert torch.equal(a.valid, b.valid) and a.x.numpy().tobytes() == b.x.numpy().tobytes()
    for i, size, seed, rows in chunk_plan(230, 5, 50, theta.numpy()):  # child i of SeedSequence
        ref = run_chunk(p, i, size, seed, rows)
        assert ref.x.numpy().tobytes() == a.x[i * 50:i * 50 + size].numpy().tobytes()
    bad = (theta[:, 1] > 0.9) | (theta[:, 0] < -0.95)
    assert torch.equal(~a.valid, bad) and bad.any()
    assert "solver failed" in a.provenance["first_error"]
    assert a.provenance["theta_source"] == "given"
    assert simulate(p, 10, progress=False).provenance["theta_source"] == "prior"
    c = simulate(p, theta=theta, seed=6, chunk_size=50, progress=False)
    assert not torch.equal(c.x[a.valid], a.x[a.valid])  # the seed still matters (noise)


def test_theta_is_validated():
    p = _problem()
    with pytest.raises(ValueError, match=r"shape \(N, D\) = \(N, 2\)"):
        simulate(p, theta=torch.zeros(5, 3), progress=False)
    with pytest.raises(ValueError, match="NaN/inf.*row 1"):
        simulate(p, theta=np.array([[0.0, 0.0], [np.nan, 0.0]]), progress=False)
    with pytest.raises(ValueError, match="omit num_simulations"):
        simulate(p, 4, theta=torch.zeros(5, 2), progress=False)
    with pytest.warns(UserWarning, match=r"1 of 3 given theta lie outside the prior's support"):
        sims = simulate(p, theta=[[0.0, 0.0], [2.0, 0.0], [0.5, 0.5]], progress=False)
    assert len(sims) == 3 and sims.valid[1]  # simulated anyway


def test_store_resume_checks_theta_and_append_rounds(tmp_path):
    p, theta = _problem(), _theta(330)
    path = tmp_path / "t.zarr"
    mem = simulate(p, theta=theta, seed=1, chunk_size=100, progress=False)
    plan = chunk_plan(330, 1, 100, theta.numpy())
    simulate_into_store(p, plan, lambda prob, tasks: (run_chunk(prob, *t) for t in tasks),
                        path, seed=1, chunk_size=100, progress=False, only_chunks=[0, 2])
    assert SimulationStore(path).theta_source == "given"
    with pytest.raises(ValueError, match="given parameters.*same theta"):
        simulate(p, 330, seed=1, chunk_size=100, progress=False, store=path, resume=True)
    other = theta.clone()
    other[250, 0] = 0.123
    with pytest.raises(ValueError, match=r"differ from the θ stored for chunk 2 \(rows 200-299\)"):
        simulate(p, theta=other, seed=1, chunk_size=100, progress=False, store=path, resume=True)
    done = simulate(p, theta=theta, seed=1, chunk_size=100, progress=False, store=path,
                    resume=True, workers=2)
    assert torch.equal(done.theta, mem.theta) and torch.equal(done.valid, mem.valid)
    assert done.x.numpy().tobytes() == mem.x.numpy().tobytes()
    assert done.provenance["theta_source"] == "given"

    # sequential rounds: the same call appends new θ to one store, round after round
    rounds = tmp_path / "rounds.zarr"
    parts = [_theta(130, 1), _theta(90, 2), _theta(45, 3)]
    for part in parts:
        got = simulate(p, theta=part, seed=2, chunk_size=100, progress=False, store=rounds,
                       append=True)
    with pytest.raises(ValueError, match="omit num_simulations"):
        simulate(p, 10, theta=parts[0], store=rounds, append=True, progress=False)
    full = torch.cat(parts)
    ref = simulate(p, theta=full, seed=2, chunk_size=100, progress=False)
    assert len(got) == 265 and torch.equal(got.theta, full)
    assert got.x.numpy().tobytes() == ref.x.numpy().tobytes()
    assert torch.equal(load_store(rounds).valid, ref.valid)


def test_prior_store_extended_with_given_theta(tmp_path):
    p = _problem()
    path = tmp_path / "p.zarr"
    first = simulate(p, 150, seed=3, chunk_size=100, progress=False, store=path)
    new = _theta(70, 9)
    got = simulate(p, theta=new, seed=3, chunk_size=100, progress=False, store=path, append=True)
    assert torch.equal(got.theta[:150], first.theta) and torch.equal(got.theta[150:], new)
    assert got.x[:100].numpy().tobytes() == first.x[:100].numpy().tobytes()  # chunk 0 kept
    assert SimulationStore(path).theta_source == "given"


def _cli(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "sbi_core.cli.main", *args], env=env,
                          capture_output=True, text=True, timeout=300)


TOY_FILE = """
import torch
from sbi_core import Problem, box_uniform


def _sim(theta):
    return theta ** 2 + 0.1 * torch.randn_like(theta)


def problem():
    return Problem(box_uniform([-1.0, -1.0], [1.0, 1.0]), _sim, name="toy2",
                   param_names=["a", "b"])
"""


def test_cli_theta_csv_and_npy(tmp_path):
    (tmp_path / "toy2.py").write_text(TOY_FILE)
    prob = f"{tmp_path / 'toy2.py'}:problem"
    theta = _theta(40, 4).numpy()
    np.save(tmp_path / "theta.npy", theta)
    np.savetxt(tmp_path / "theta.csv", theta, delimiter=",", header="a,b", comments="",
               fmt="%.9g")  # 9 significant digits: float32 round-trips exactly
    out = _cli("simulate", prob, "--theta", str(tmp_path / "theta.npy"), "--seed", "3",
               "--chunk-size", "15", "--out", str(tmp_path / "a.pt"), "--quiet", "--workers", "2")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1])["num_simulations"] == 40
    from sbi_core.simulation_set import SimulationSet

    sys.path.insert(0, str(tmp_path))
    try:
        from toy2 import problem
    finally:
        sys.path.remove(str(tmp_path))
    ref = simulate(problem(), theta=theta, seed=3, chunk_size=15, progress=False)
    a = SimulationSet.load(tmp_path / "a.pt")
    assert torch.equal(a.theta, ref.theta) and torch.equal(a.x, ref.x)
    assert a.provenance["theta_source"] == "given"
    out = _cli("simulate", prob, "--theta", str(tmp_path / "theta.csv"), "--seed", "3",
               "--chunk-size", "15", "--out", str(tmp_path / "b.zarr"), "--quiet")
    assert out.returncode == 0, out.stderr
    b = load_store(tmp_path / "b.zarr")
    assert torch.equal(b.theta, ref.theta) and torch.equal(b.x, ref.x)
    with pytest.raises(ValueError, match=r"same theta \(CLI: --theta FILE\)"):
        simulate(problem(), 40, seed=3, chunk_size=15, store=tmp_path / "b.zarr", resume=True,
                 progress=False)
    bad = tmp_path / "bad.csv"
    bad.write_text("wrong,names\n0,0\n")
    from sbi_core.cli.simulate_cmd import read_theta_file

    with pytest.raises(ValueError, match=r"columns \['wrong', 'names'\]; the problem's"):
        read_theta_file(bad, ["a", "b"])
    assert np.array_equal(read_theta_file(tmp_path / "theta.csv", ["a", "b"]).astype(np.float32),
                          theta)
