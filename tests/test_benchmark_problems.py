"""Benchmark problems: shapes, seeding, vectorization, observations, data layout."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import simulators
from sbi_core.priors import within_support
from simulators import BENCHMARK_PROBLEMS, get_problem

ALL = BENCHMARK_PROBLEMS
X_SHAPES = {"gaussian_linear": (10,), "gaussian_linear_uniform": (10,), "slcp": (8,),
            "gaussian_mixture": (2,), "two_moons": (2,), "bernoulli_glm": (10,), "sir": (10,),
            "lotka_volterra": (20,), "hodgkin_huxley": (8,)}
DIMS = {"gaussian_linear": 10, "gaussian_linear_uniform": 10, "slcp": 5, "gaussian_mixture": 2,
        "two_moons": 2, "bernoulli_glm": 10, "sir": 2, "lotka_volterra": 4, "hodgkin_huxley": 2}


@pytest.fixture(scope="module")
def problems():
    return {name: get_problem(name) for name in ALL}


def test_registry_lists_all_problems():
    assert set(ALL + ["hodgkin_huxley"]) <= set(simulators.available_problems())


@pytest.mark.parametrize("name", ALL)
def test_shapes_and_finiteness(problems, name):
    p = problems[name]
    n = 64
    assert p.dim == DIMS[name] and p.x_shape == X_SHAPES[name]
    theta = p.prior.sample((n,))
    x = p.simulator(theta)
    assert x.shape == (n, *X_SHAPES[name]) and x.dtype == torch.float32
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("name", ALL)
def test_seeding(problems, name):
    p = problems[name]
    n = 32
    theta = p.prior.sample((n,))

    def run(seed):
        torch.manual_seed(seed)
        np.random.seed(seed)
        return p.simulator(theta)

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


@pytest.mark.parametrize("name", [n for n in BENCHMARK_PROBLEMS if n not in ("sir",
                                                                            "lotka_volterra")])
def test_vectorized_batch_matches_single_calls(problems, name):
    """A batch of one repeated theta has the same distribution as separate single calls."""
    p = problems[name]
    torch.manual_seed(3)
    theta = p.prior.sample((1,))
    batch = p.simulator(theta.expand(400, -1).clone())
    single = torch.cat([p.simulator(theta) for _ in range(400)])
    se = (batch.var(0) / 400 + single.var(0) / 400).sqrt().clamp(min=1e-6)
    assert ((batch.mean(0) - single.mean(0)).abs() / se).max() < 4.5


@pytest.mark.parametrize("name,fn", [("sir", "infected_fraction"),
                                     ("lotka_volterra", "populations")])
def test_ode_stacked_solve_matches_single_solves(problems, name, fn):
    module = __import__(f"simulators.{name}", fromlist=[fn])
    solve = getattr(module, fn)
    theta = problems[name].prior.sample((40,))
    stacked = solve(theta)
    single = torch.cat([solve(theta[i:i + 1]) for i in range(5)])
    rel = (stacked[:5] - single).abs() / (single.abs() + 1e-6)
    assert rel.max() < 1e-4


def test_ode_solve_against_scipy_reference_tolerance():
    from scipy.integrate import solve_ivp

    from simulators.lotka_volterra import TIMES, populations
    theta = torch.tensor([[0.9, 0.05, 0.8, 0.04]])
    a, b, c, d = theta[0].double().tolist()
    ref = solve_ivp(lambda t, y: [a * y[0] - b * y[0] * y[1], -c * y[1] + d * y[0] * y[1]],
                    (0, TIMES[-1]), [30.0, 1.0], t_eval=TIMES, rtol=1e-12, atol=1e-12).y
    ours = populations(theta)[0].reshape(2, -1).numpy()
    assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-6


@pytest.mark.parametrize("name", ALL)
def test_observations_reproducible(problems, name):
    p = problems[name]
    fresh = get_problem(name)
    for k in range(1, 11):
        assert torch.equal(p.observation(k), fresh.observation(k))
        assert torch.equal(p.true_parameters(k), fresh.true_parameters(k))
        assert within_support(p.prior, p.true_parameters(k)[None]).all()
        assert torch.isfinite(p.observation(k)).all()
    assert not torch.equal(p.observation(1), p.observation(2))


def test_gaussian_linear_spec():
    p = get_problem("gaussian_linear")
    theta = p.prior.sample((20000,))
    assert abs(float(theta.var(0).mean()) - 0.1) < 0.005
    torch.manual_seed(0)
    x = p.simulator(torch.zeros(20000, 10))
    assert abs(float(x.var(0).mean()) - 0.1) < 0.005


def test_slcp_layout_is_four_2d_draws():
    p = get_problem("slcp")
    theta = torch.tensor([[1.0, -2.0, 1.0, 1.2, 0.5]])
    x = p.simulator(theta.expand(20000, -1)).reshape(20000, 4, 2)
    m = x.reshape(-1, 2).mean(0)
    assert torch.allclose(m, torch.tensor([1.0, -2.0]), atol=0.05)
    cov = torch.cov(x.reshape(-1, 2).T)
    s1, s2, rho = 1.0, 1.2**2, np.tanh(0.5)
    expect = torch.tensor([[s1**2, rho * s1 * s2], [rho * s1 * s2, s2**2]], dtype=torch.float32)
    assert torch.allclose(cov, expect, atol=0.08)


def test_bernoulli_glm_statistics_are_spike_count_and_sta():
    from simulators.bernoulli_glm import design_matrix
    X = design_matrix()
    stim = X[:, 1]
    y = (torch.rand(100) < 0.3).float()
    x = y @ X
    sta = F.conv1d(y.reshape(1, 1, -1), stim.reshape(1, 1, -1), padding=8).squeeze()[-9:]
    assert x[0] == y.sum()
    assert torch.allclose(x[1:], sta, atol=1e-4)
    assert abs(float(stim[0]) - 0.4967141530) < 1e-6  # RandomState(42).randn(100)[0]


def test_hodgkin_huxley_problem_shapes_seeding_observations():
    from simulators.hodgkin_huxley import STAT_NAMES, hodgkin_huxley
    p = hodgkin_huxley(dt=0.05)
    assert p.dim == 2 and p.x_shape == (len(STAT_NAMES),) and p.param_names == ["g_Na", "g_K"]
    theta = p.prior.sample((4,))
    torch.manual_seed(1)
    a = p.simulator(theta)
    torch.manual_seed(1)
    b = p.simulator(theta)
    assert a.shape == (4, 8) and torch.isfinite(a).all() and torch.equal(a, b)
    assert torch.equal(p.observation(1), p.observation(1)) and p.true_parameters(1).shape == (2,)


def test_hodgkin_huxley_spikes_depend_on_sodium_and_batch_equals_single():
    from simulators.hodgkin_huxley import STAT_NAMES, simulate_voltage, summary_statistics
    trace = simulate_voltage(torch.tensor([[60.0, 5.0], [0.5, 5.0]]), noise=0.0, dt=0.05)
    stats = summary_statistics(trace, dt=0.05)
    assert stats.shape == (2, len(STAT_NAMES))
    assert stats[0, 0] >= 3 and stats[1, 0] == 0
    assert abs(float(stats[1, 1]) + 70.0) < 1.0  # resting potential near E_L
    single = simulate_voltage(torch.tensor([[0.5, 5.0]]), noise=0.0, dt=0.05)
    assert torch.allclose(single[0], trace[1], atol=1e-4)


def test_problem_observation_seeds_option():
    from sbi_core.priors import box_uniform
    from sbi_core.problem import OBSERVATION_SEED_BASE, Problem

    def sim(theta):
        return theta + torch.randn_like(theta)

    default = Problem(box_uniform(-1.0, 1.0, dim=2), sim)
    assert default.observation_seeds == [OBSERVATION_SEED_BASE + k for k in range(1, 11)]
    shifted = Problem(box_uniform(-1.0, 1.0, dim=2), sim,
                      observation_seeds=[OBSERVATION_SEED_BASE + k for k in range(2, 12)])
    assert torch.equal(shifted.observation(1), default.observation(2))
    with pytest.raises(ValueError, match="10 seeds"):
        Problem(box_uniform(-1.0, 1.0, dim=2), sim, observation_seeds=[1, 2])
