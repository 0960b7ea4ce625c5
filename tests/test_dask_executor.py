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


def _fast_problem() -> Problem:
    return Problem(box_uniform([-1.0, -1.0], [1.0, 1.0]),
                   lambda t: t * 2 + 0.1 * torch.randn_like(t), name="fast_lambda")


def test_users_open_client_is_reused_and_left_open(monkeypatch):
    """A Client the user already has on the scheduler is used, not a second one (two clients
    in one process is where distributed's cross-event-loop failures come from)."""
    import sbi_core.dask_executor as de

    problem = _fast_problem()
    plan = chunk_plan(60, seed=3, chunk_size=20)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        def no_second_client(*args, **kwargs):
            raise AssertionError("dask_chunks opened a second Client")

        monkeypatch.setattr(de, "Client", no_second_client)
        results = {r.index: r for r in dask_chunks(problem, plan, cluster.scheduler_address)}
        assert client.status == "running"  # the user's client stays open
        assert client.submit(lambda: 41 + 1).result() == 42
    for i, size, seed in plan:
        ref = run_chunk(problem, i, size, seed)
        assert torch.equal(results[i].theta, ref.theta) and torch.equal(results[i].x, ref.x)


def test_client_side_event_loop_failure_reruns_chunk_locally(monkeypatch):
    """``Future.result()`` raising distributed's 'bound to a different event loop' error (seen
    while a killed worker's tasks were rescheduled) reruns that chunk locally: same rows."""
    import sbi_core.dask_executor as de

    real_as_completed = de.as_completed
    failed = []

    def flaky_as_completed(futures):
        for future in real_as_completed(futures):
            if not failed:
                failed.append(future)
                real_result = future.result

                def result(*args, **kwargs):
                    raise RuntimeError("<asyncio.locks.Event object> is bound to a different "
                                       "event loop")
                future.result = result
                yield future
                future.result = real_result
            else:
                yield future

    monkeypatch.setattr(de, "as_completed", flaky_as_completed)
    problem = _fast_problem()
    plan = chunk_plan(60, seed=5, chunk_size=20)
    results = {r.index: r for r in dask_chunks(problem, plan, "local:1")}
    assert len(failed) == 1 and sorted(results) == [0, 1, 2]
    for i, size, seed in plan:
        ref = run_chunk(problem, i, size, seed)
        assert results[i].first_error is None
        assert torch.equal(results[i].theta, ref.theta) and torch.equal(results[i].x, ref.x)


def test_task_runtime_errors_are_not_mistaken_for_client_failures():
    from sbi_core.dask_executor import _is_client_loop_error

    assert _is_client_loop_error(RuntimeError("<Event> is bound to a different event loop"))
    assert not _is_client_loop_error(RuntimeError("CUDA out of memory"))
