"""A Dask worker with several threads (``dask worker`` defaults to one thread per core) ran
chunks at once in one process; each chunk seeds torch's global random state, so concurrent
chunks drew from each other's streams and the rows differed from a local run with the same
seed (wave 14). Chunks now run one at a time per worker process."""

import time

import distributed
import torch

from sbi_core.dask_executor import dask_chunks
from sbi_core.priors import box_uniform
from sbi_core.problem import Problem
from sbi_core.simulation import chunk_plan, run_chunk


def _noisy(theta: torch.Tensor) -> torch.Tensor:
    out = []
    for row in theta:  # interleaves with other threads' chunks between rows
        time.sleep(0.002)
        out.append(row + 0.1 * torch.randn(2))
    return torch.stack(out)


def test_threaded_worker_gives_the_rows_of_a_local_run():
    problem = Problem(box_uniform([-1.0, -1.0], [1.0, 1.0]), _noisy, name="noisy")
    plan = chunk_plan(160, seed=3, chunk_size=20)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=4, processes=False,
                                  dashboard_address=None) as cluster:
        results = {r.index: r for r in dask_chunks(problem, plan, cluster.scheduler_address)}
    assert len(results) == len(plan)
    for i, size, seed in plan:
        local = run_chunk(problem, i, size, seed)
        assert torch.equal(results[i].theta, local.theta), f"chunk {i}: theta differs"
        assert torch.equal(results[i].x, local.x), f"chunk {i}: x differs"
