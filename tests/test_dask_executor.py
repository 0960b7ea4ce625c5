"""Dask execution on a real LocalCluster on loopback: identical results, a worker killed
mid-run has its chunks rescheduled, clear errors for bad addresses."""

import os
import signal
import time

import distributed
import pytest
import torch

from sbi_core import Problem, box_uniform
from sbi_core.dask_executor import dask_chunks, parse_address
from sbi_core.simulation import chunk_plan, run_chunk, simulate


def _slow_problem() -> Problem:
    # a lambda: the problem reaches the workers through cloudpickle
    return Problem(box_uniform([-1.0, -1.0], [1.0, 1.0]),
                   lambda t: (time.sleep(0.25), t * 2 + 0.1 * torch.randn_like(t))[1],
                   name="slow_lambda")


def test_parse_address():
    assert parse_address("local:3") == ("local", 3)
    assert parse_address("tcp://10.0.0.1:8786") == ("remote", None)
    with pytest.raises(ValueError, match="local:N"):
        parse_address("local:zero")
    with pytest.raises(ValueError, match="tcp://HOST:PORT"):
        parse_address("myhost:8786")


def test_killed_worker_chunks_are_retried_and_results_identical():
    problem = _slow_problem()
    plan = chunk_plan(240, seed=11, chunk_size=20)  # 12 chunks of 0.25 s
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        pids = client.run(os.getpid)
        results = {}
        killed = None
        for res in dask_chunks(problem, plan, cluster.scheduler_address):
            results[res.index] = res
            if killed is None:
                killed = next(iter(pids.values()))
                os.kill(killed, signal.SIGKILL)  # the nanny restarts it; its tasks rerun
        assert killed not in client.run(os.getpid).values()
    assert sorted(results) == list(range(12))
    for i, size, seed in plan:
        ref = run_chunk(problem, i, size, seed)
        assert torch.equal(results[i].theta, ref.theta) and torch.equal(results[i].x, ref.x)


def test_local_cluster_address_matches_local_processes():
    problem = _slow_problem()
    a = simulate(problem, 60, seed=2, chunk_size=20, progress=False, executor="local:1")
    b = simulate(problem, 60, seed=2, chunk_size=20, progress=False, workers=2)
    assert torch.equal(a.theta, b.theta) and torch.equal(a.x, b.x)
