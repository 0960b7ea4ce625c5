"""A Dask scheduler stopped mid-run (wave 14, h14-e2e14): one clear error saying how many
chunks the store kept and to rerun with resume, not distributed's tracebacks and an
"internal error ... please report it" (exit 1); the resumed store equals a local run."""

import subprocess
import sys
import textwrap

import pytest
import torch

from sbi_core import Problem, box_uniform
from sbi_core.failures import ExecutorLostError
from sbi_core.simulation import run_chunk, simulate

SCRIPT = textwrap.dedent("""
    import os, sys, threading, time
    import distributed, torch
    from sbi_core import Problem, box_uniform
    from sbi_core.failures import ExecutorLostError
    from sbi_core.simulation import simulate

    def main():
        problem = Problem(box_uniform([-1.0, -1.0], [1.0, 1.0]),
                          lambda t: (time.sleep(0.15), t * 2)[1], name="slow")
        # a scheduler on tcp:// that the test stops (its workers are threads of this process)
        cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                           protocol="tcp://", host="127.0.0.1",
                                           dashboard_address=None)

        def stop():
            time.sleep(1.5)
            cluster.sync(cluster.scheduler.close)

        threading.Thread(target=stop, daemon=True).start()
        try:
            simulate(problem, 600, seed=4, chunk_size=20, progress=False, store=sys.argv[1],
                     executor=cluster.scheduler_address)
        except ExecutorLostError as err:
            print("LOST:", err, flush=True)
        os._exit(0)  # the stopped cluster's workers would wait ~30 s to reconnect

    if __name__ == "__main__":
        main()
""")


def _problem() -> Problem:
    return Problem(box_uniform([-1.0, -1.0], [1.0, 1.0]), lambda t: t * 2, name="slow")


def test_scheduler_stopped_mid_run_is_one_clear_error_and_the_store_resumes(tmp_path):
    store = tmp_path / "s.zarr"
    script = tmp_path / "lost.py"
    script.write_text(SCRIPT)
    out = subprocess.run([sys.executable, str(script), str(store)], capture_output=True,
                         text=True, timeout=120)
    lost = [line for line in out.stdout.splitlines() if line.startswith("LOST:")]
    assert lost, out.stdout + out.stderr
    assert "Lost the connection to the Dask scheduler at tcp://127.0.0.1:" in lost[0]
    assert "are committed in" in lost[0] and "--resume" in lost[0]
    assert "Traceback" not in out.stderr  # distributed's reconnection tracebacks are quiet
    # nothing already simulated is lost: the resumed store equals a local run
    resumed = simulate(_problem(), 600, seed=4, chunk_size=20, progress=False, store=store,
                       resume=True)
    local = simulate(_problem(), 600, seed=4, chunk_size=20, progress=False)
    assert torch.equal(resumed.theta, local.theta) and torch.equal(resumed.x, local.x)


def test_lost_executor_without_a_store_says_the_finished_chunks_are_lost():
    problem = _problem()

    def dying(prob, tasks):
        yield run_chunk(prob, *tasks[0])
        raise ExecutorLostError("Lost the connection to the Dask scheduler at tcp://h:1.")

    with pytest.raises(ExecutorLostError, match="1 of 3 chunks were done and are lost.*store"):
        simulate(problem, 60, seed=0, chunk_size=20, progress=False, executor=dying)


def test_cli_reports_a_lost_scheduler_as_one_line_with_exit_2(tmp_path, capsys, monkeypatch):
    import sbi_core.dask_executor as de
    from sbi_core.cli.main import main

    def lost(problem, tasks, address, **kw):
        raise ExecutorLostError(f"Lost the connection to the Dask scheduler at {address}.")
        yield

    monkeypatch.setattr(de, "dask_chunks", lost)
    rc = main(["simulate", "two_moons", "--num", "40", "--chunk-size", "20", "--out",
               str(tmp_path / "s.zarr"), "--dask", "tcp://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert "0 of 2 chunks are committed" in err and "--resume" in err


def test_a_scheduler_without_workers_is_said_not_waited_on_silently():
    """`--dask tcp://...` on a scheduler with no workers used to wait without a word; now a
    warning says so, and the run goes on once a worker joins (same rows as a local run)."""
    import threading

    import distributed

    from sbi_core.dask_executor import dask_chunks
    from sbi_core.simulation import chunk_plan

    problem = _problem()
    plan = chunk_plan(40, seed=1, chunk_size=20)
    with distributed.LocalCluster(n_workers=0, processes=False, protocol="tcp://",
                                  host="127.0.0.1", dashboard_address=None) as cluster:
        timer = threading.Timer(1.0, lambda: cluster.scale(1))
        timer.start()
        with pytest.warns(UserWarning, match="has no workers yet.*dask worker tcp://"):
            results = {r.index: r for r in dask_chunks(problem, plan, cluster.scheduler_address)}
        timer.join()
    for i, size, seed in plan:
        assert torch.equal(results[i].x, run_chunk(problem, i, size, seed).x)
