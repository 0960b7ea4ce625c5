"""Regressions found by running the tutorials as a user would (wave 10)."""

import warnings

import torch

from sbi_core import fit, simulate
from simulators import get_problem
from simulators.g_and_k import TRUE_THETA, g_and_k_data


def test_mmd_abc_does_not_warn_about_z_scoring_x():
    # tutorials/14_abc.py: g-and-k simulations have a heavy right tail (values up to 1e8);
    # fit warned that "z-scoring x ... squeezes the other simulations" and suggested an NPE
    # x_transform, but the MMD distance compares raw data sets and never z-scores x.
    p = get_problem("g_and_k")
    sims = simulate(p, 500, seed=0, progress=False)
    y = g_and_k_data(TRUE_THETA, 50, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        post = fit(p, sims, method="smc_abc", x_o=y, distance="mmd", num_draws=8,
                   num_particles=50, num_simulations=8000, detector=False)
    assert post.history["num_simulations"] <= 8000
    assert torch.isfinite(post.sample((10,), seed=0)).all()


_NO_MAIN_GUARD = """
import pytest
import torch
from sbi_core import Problem, box_uniform
from sbi_core.simulation import simulate
p = Problem(box_uniform([-1.0], [1.0]), lambda t: t + 0.1 * torch.randn_like(t), name="toy")
s = simulate(p, 200, seed=0, chunk_size=100, executor="local:2", progress=False)
print("rows", len(s), s.num_invalid)
"""


def test_dask_local_cluster_from_a_script_without_main_guard(tmp_path):
    # tutorials/08_scale_out.py (full mode) crashed with "Nanny failed to start": Dask's
    # default "spawn" reran the whole script in each worker. A script as users write it
    # (no `if __name__ == "__main__":`) must work, as it does with workers=N.
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "no_guard.py"
    script.write_text(_NO_MAIN_GUARD)
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "rows 200 0" in proc.stdout
