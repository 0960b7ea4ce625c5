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
