"""Process faults in the simulation engine: a worker that dies (retried once in a fresh
process, then recorded), a chunk that hangs (killed after ``timeout``), Ctrl-C to the
whole process group (one "interrupted" line, committed chunks kept), and Dask workers
that keep dying. Every run is under a hard time limit, so a hang fails the test."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sbi_core import Problem, box_uniform
from sbi_core.simulation import chunk_plan, run_chunk, simulate
from sbi_core.stores import SimulationStore, load_store

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def hard_timeout(seconds: float):
    """Raise in the test (and so stop the workers) if the block runs longer than ``seconds``."""
    def _fail(signum, frame):
        raise TimeoutError(f"hung for more than {seconds} s")
    old = signal.signal(signal.SIGALRM, _fail)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _noise(theta):
    return theta + 0.1 * torch.randn_like(theta)


def _problem(sim, name="toy"):
    return Problem(box_uniform([-1.0, -1.0], [1.0, 1.0]), sim, name=name, x_shape=(2,),
                   validate=False)


def _bad_chunks(n, seed, chunk_size, threshold):
    """Chunks holding a row with theta_1 > threshold (computed from the plan, in-process)."""
    return {i for i, size, s in chunk_plan(n, seed, chunk_size)
            if bool((run_chunk(_problem(_noise), i, size, s).theta[:, 0] > threshold).any())}


def _dying(log: Path):
    def sim(theta):
        if bool((theta[:, 0] > 0.9).any()):
            with open(log, "a") as fh:
                fh.write(f"{os.getpid()}\n")
            os._exit(3)
        return _noise(theta)
    return sim


@pytest.mark.parametrize("workers,isolate", [(2, False), (1, True)])
def test_dead_worker_is_retried_once_then_recorded(tmp_path, workers, isolate):
    log = tmp_path / "deaths.txt"
    n, seed, cs = 300, 1, 30
    bad = _bad_chunks(n, seed, cs, 0.9)
    assert 0 < len(bad) < 10
    with hard_timeout(60):
        sims = simulate(_problem(_dying(log)), n, seed=seed, workers=workers, isolate=isolate,
                        chunk_size=cs, progress=False)
    ref = simulate(_problem(_noise), n, seed=seed, chunk_size=cs, progress=False)
    rows_bad = torch.zeros(n, dtype=torch.bool)
    for i in bad:
        rows_bad[i * cs:(i + 1) * cs] = True
    assert len(sims) == n and torch.equal(sims.theta, ref.theta)  # no chunk lost
    assert torch.equal(~sims.valid, rows_bad)  # exactly the chunks whose worker died
    assert torch.equal(sims.x[~rows_bad], ref.x[~rows_bad])  # the others as usual
    first = min(bad)
    assert sims.provenance["first_error"] == (
        f"worker process died with exit code 3 while simulating chunk {first} "
        f"(rows {first * cs}-{first * cs + cs - 1}); retried once in a fresh process")
    pids = log.read_text().split()
    assert len(pids) == 2 * len(bad) and len(set(pids)) == len(pids)  # each retry: new process


def test_results_identical_for_in_process_isolated_and_two_workers():
    p = _problem(_noise)
    a = simulate(p, 200, seed=4, chunk_size=40, progress=False)
    b = simulate(p, 200, seed=4, chunk_size=40, progress=False, isolate=True)
    c = simulate(p, 200, seed=4, chunk_size=40, progress=False, workers=2, timeout=30)
    for other in (b, c):
        assert torch.equal(a.theta, other.theta) and torch.equal(a.x, other.x)


def _sleepy(theta):
    if bool((theta[:, 0] > 0.95).any()):
        time.sleep(600)
    return _noise(theta)


def test_timeout_kills_the_chunk_and_records_it():
    n, seed, cs = 200, 0, 20
    bad = _bad_chunks(n, seed, cs, 0.95)
    assert 0 < len(bad) <= 4
    start = time.perf_counter()
    with hard_timeout(60):
        sims = simulate(_problem(_sleepy), n, seed=seed, workers=2, chunk_size=cs,
                        progress=False, timeout=1.0)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0 * len(bad) + 15  # each hung chunk costs about the timeout
    ref = simulate(_problem(_noise), n, seed=seed, chunk_size=cs, progress=False)
    invalid_chunks = {int(i) // cs for i in torch.nonzero(~sims.valid).flatten()}
    assert invalid_chunks == bad and int((~sims.valid).sum()) == cs * len(bad)
    assert torch.equal(sims.x[sims.valid], ref.x[sims.valid])
    first = min(bad)
    assert sims.provenance["first_error"] == (
        f"timed out after 1 s while simulating chunk {first} (rows {first * cs}-"
        f"{first * cs + cs - 1}); the worker process was killed")
    with pytest.raises(ValueError, match="positive number of seconds"):
        simulate(_problem(_noise), 10, timeout=0, progress=False)
    with pytest.raises(ValueError, match="not to a custom executor"):
        simulate(_problem(_noise), 10, timeout=5, progress=False,
                 executor=lambda prob, tasks: (run_chunk(prob, *t) for t in tasks))
    with pytest.raises(ValueError, match="with Dask, use workers=K"):
        simulate(_problem(_noise), 10, timeout=5, progress=False, executor="local:1")


SLOW_PROBLEM = '''
import time
import torch
from sbi_core import Problem, box_uniform


def _sim(theta):
    time.sleep(0.05)
    return theta + 0.1 * torch.randn_like(theta)


def problem():
    return Problem(box_uniform([-1.0, -1.0], [1.0, 1.0]), _sim, name="slow")
'''


def _sigint_as_in_a_terminal() -> None:
    """Give the CLI child Ctrl-C's default disposition, as a terminal's foreground job has.

    A test runner started as a background job (``cmd &`` in a script, ``nohup``) inherits
    SIGINT *ignored*, and so would the child: it would never see the Ctrl-C this test sends.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_to_process_group_is_one_line_and_keeps_chunks(tmp_path):
    (tmp_path / "slowp.py").write_text(SLOW_PROBLEM)
    path = tmp_path / "run.zarr"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "sbi_core.cli.main", "simulate",
            f"{tmp_path / 'slowp.py'}:problem", "--num", "200", "--seed", "2", "--chunk-size",
            "5", "--workers", "2", "--out", str(path), "--quiet"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True,  # its own process group
                            preexec_fn=_sigint_as_in_a_terminal)
    marks = path / "_committed"
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if marks.is_dir() and len(list(marks.glob("chunk-*.json"))) >= 4:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("sbi-core simulate: interrupted:") and "--resume" in lines[0]
    store = SimulationStore(path)
    done = store.committed()
    assert 4 <= len(done) < 40
    assert f"{len(done)} of 40 chunks are committed" in lines[0]
    with hard_timeout(120):
        back = subprocess.run(args + ["--resume"], env=env, capture_output=True, text=True)
    assert back.returncode == 0, back.stderr
    sys.path.insert(0, str(tmp_path))
    try:
        from slowp import problem
    finally:
        sys.path.remove(str(tmp_path))
    got = load_store(path)
    ref = simulate(problem(), 200, seed=2, chunk_size=5, progress=False)
    assert torch.equal(got.theta, ref.theta) and torch.equal(got.x, ref.x)


def test_dask_worker_that_keeps_dying_is_recorded():
    dask = pytest.importorskip("dask")
    from sbi_core.dask_executor import dask_chunks

    def sim(theta):
        if bool((theta[:, 0] > 0.97).any()):
            os._exit(3)
        return _noise(theta)

    n, seed, cs = 80, 1, 20
    bad = _bad_chunks(n, seed, cs, 0.97)
    assert 0 < len(bad) < 4
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), hard_timeout(120):
        results = {r.index: r for r in dask_chunks(_problem(sim), chunk_plan(n, seed, cs),
                                                   "local:1", chunk_size=cs)}
    assert sorted(results) == list(range(4))
    for i, size, s in chunk_plan(n, seed, cs):
        ref = run_chunk(_problem(_noise), i, size, s)
        assert torch.equal(results[i].theta, ref.theta)
        if i in bad:
            assert not results[i].valid.any()
            assert f"chunk {i} (rows {i * cs}-{i * cs + cs - 1})" in results[i].first_error
        else:
            assert np.array_equal(results[i].x.numpy(), ref.x.numpy())


def test_cli_simulate_records_a_dying_simulator_with_one_worker(tmp_path, capsys):
    """`sbi-core simulate` (workers=1) used to exit with the simulator's code 3 and no
    message; it now runs chunks in a supervised process and records them."""
    from sbi_core.cli.main import main

    (tmp_path / "dies.py").write_text(
        "import os\nfrom sbi_core import Problem, box_uniform\n"
        "def sim(t):\n    if (t[:, 0] > 0.9).any():\n        os._exit(3)\n    return t + 0.1\n"
        "def problem():\n    return Problem(box_uniform([0.0], [1.0]), sim, validate=False,"
        " x_shape=(1,))\n")
    out = tmp_path / "s.pt"
    assert main(["simulate", f"{tmp_path / 'dies.py'}:problem", "--num", "100",
                 "--chunk-size", "20", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "worker process died with exit code 3" in printed
    from sbi_core import SimulationSet

    sims = SimulationSet.load(out)
    assert len(sims) == 100 and 0 < sims.num_invalid < 100
