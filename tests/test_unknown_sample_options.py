"""Options a posterior's ``sample`` / ``log_prob`` does not know are refused, not silently
ignored (wave 14: ``sample(range_check="warn")`` did nothing; the range check is a setting of
the posterior)."""

import pytest
import torch

from sbi_core import fit, simulate
from simulators import get_problem


@pytest.fixture(scope="module")
def npe_posterior():
    problem = get_problem("gaussian_linear")
    sims = simulate(problem, 300, seed=0, progress=False)
    return problem, fit(problem, sims, method="npe", max_epochs=2, detector=False, seed=0)


def test_unknown_sample_option_is_refused_with_the_fix(npe_posterior):
    problem, post = npe_posterior
    x_o = problem.observation(1)
    with pytest.raises(TypeError, match=r"range_check.*posterior\.range_check = 'warn'"):
        post.sample((10,), x=x_o, range_check="warn")
    with pytest.raises(TypeError, match="unknown option"):
        post.sample((10,), x=x_o, num_sample=5)
    with pytest.raises(TypeError, match="unknown option"):
        post.log_prob(torch.zeros(3, problem.dim), x=x_o, chunks=4)


def test_known_options_still_work(npe_posterior):
    problem, post = npe_posterior
    x_o = problem.observation(1)
    assert post.sample((10,), x=x_o, seed=0).shape == (10, problem.dim)
    lp = post.log_prob(torch.zeros(3, problem.dim), x=x_o, normalize=False)
    assert lp.shape == (3,) and torch.isfinite(lp).all()
    assert post.map(x=x_o, num_init=50, steps=5).shape == (problem.dim,)


def test_incontext_sample_refuses_range_check_keyword():
    problem = get_problem("two_moons")
    sims = simulate(problem, 200, seed=0, progress=False)
    post = fit(problem, sims, method="incontext", detector=False, variant="plain")
    x_o = problem.observation(1)
    with pytest.raises(TypeError, match="range_check"):
        post.sample((10,), x=x_o, range_check="warn")
    assert post.sample((10,), x=x_o, seed=0).shape == (10, 2)
    assert post.map(x=x_o, num_init=50, steps=5).shape == (2,)


def test_simulations_passed_as_the_problem_get_a_message_naming_sims(npe_posterior):
    """``diagnose(post, test_sims)`` said "PROBLEM is empty" before wave 14."""
    from diagnostics import diagnose

    problem, post = npe_posterior
    test = simulate(problem, 20, seed=1, progress=False)
    with pytest.raises(TypeError, match=r"got SimulationSet.*sims="):
        diagnose(post, test, num_samples=20)
