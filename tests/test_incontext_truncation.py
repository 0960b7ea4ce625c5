"""The two-pass truncated in-context posterior of ``benchmarks/incontext_vs_npe.py
--truncate`` (an experiment, not a package option: RESULTS.md "Issue 21 (wave 10,
h10-ic10)"): its samples lie in the box R, its log_prob is normalized on R (1-D grid), and it
falls back to the one-pass posterior when too few simulations lie in R."""

import math
import sys
from pathlib import Path

import torch

from sbi_core import Problem, fit, simulate
from sbi_core.priors import gaussian

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from incontext_vs_npe import truncated_posterior  # noqa: E402


def _setup():
    problem = Problem(gaussian([0.0], std=[1.0]), lambda t: t + 0.3 * torch.randn_like(t),
                      x_shape=(1,), name="lin1d")
    theta, x = simulate(problem, 400, seed=0, progress=False).training_data()
    post0 = fit(problem, (theta, x), method="incontext", detector=False, variant="plain")
    return problem, theta, x, post0


def test_truncated_posterior_lies_in_the_box_and_is_normalized():
    problem, theta, x, post0 = _setup()
    x_o = torch.tensor([0.4])
    post, rec = truncated_posterior(problem, theta, x, x_o, post0, {"variant": "plain"}, 0,
                                    quantile=0.001, margin=0.25, min_sims=50)
    assert "fallback" not in rec, rec
    lo, hi = rec["low"][0], rec["high"][0]
    # the box is narrower than the prior (N(0, 1)) and the context was cut to it
    assert -3.5 < lo < 0.4 < hi < 3.5 and 50 <= rec["kept"] < 400, rec
    samples = post.sample((5000,), x=x_o, seed=1)[:, 0]
    assert samples.min() >= lo and samples.max() <= hi
    grid = torch.linspace(lo, hi, 6001)[:, None]
    mass = torch.trapezoid(post.log_prob(grid, x=x_o).exp(), grid[:, 0])
    assert abs(float(mass) - 1.0) < 0.01, float(mass)
    outside = torch.tensor([[lo - 0.05], [hi + 0.05]])
    assert (post.log_prob(outside, x=x_o) == -math.inf).all()


def test_truncation_falls_back_when_too_few_simulations_are_in_the_box():
    problem, theta, x, post0 = _setup()
    post, rec = truncated_posterior(problem, theta, x, torch.tensor([0.4]), post0,
                                    {"variant": "plain"}, 0, quantile=0.001, margin=0.25,
                                    min_sims=401)
    assert post is post0 and rec["fallback"].startswith("fewer than 401"), rec
