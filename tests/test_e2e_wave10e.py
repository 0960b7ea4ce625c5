"""End-to-end probes of wave 10 (e): a scientist's own problems unlike the built-in ones
(constrained parameters, extreme x scales, edge cases of ``sample`` / ``map`` / ``log_prob``);
each test pins one fix."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch.distributions import Dirichlet, Independent, Uniform

from sbi_core import Problem, fit, simulate


def _sim2(theta: torch.Tensor) -> torch.Tensor:
    """theta (N, 2) -> x (N, 2)."""
    return theta + 0.1 * torch.randn_like(theta)


@pytest.fixture(scope="module")
def post():
    """A tiny NPE posterior on a 2-D box problem (300 simulations, 2 epochs)."""
    prior = Independent(Uniform(torch.zeros(2), torch.ones(2)), 1)
    problem = Problem(prior, _sim2, param_names=["a", "b"], name="box2", x_shape=(2,))
    sims = simulate(problem, 300, seed=0, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return fit(problem, sims, max_epochs=2, hidden_features=8, num_transforms=1,
                   progress=False, detector=False)


def test_fit_refuses_a_dirichlet_prior_with_a_reparametrization_fix():
    """A Dirichlet (simplex) prior trained fine, but every sample then failed with 'only 0.00%
    inside the support ... train with theta_transform='unconstrained'' (even when it was):
    the weights fill a set of one dimension fewer. fit now refuses it and names the fix."""
    problem = Problem(Dirichlet(torch.ones(3)), lambda th: th + 0.01 * torch.randn_like(th),
                      param_names=["w1", "w2", "w3"], name="weights", x_shape=(3,))
    sims = simulate(problem, 50, seed=0, progress=False)
    for tt in (None, "unconstrained"):
        with pytest.raises(ValueError, match=r"simplex.*D-1 free parameters.*method='abc'"):
            fit(problem, sims, max_epochs=1, hidden_features=8, num_transforms=1,
                progress=False, theta_transform=tt)
    with pytest.raises(ValueError, match="simplex"):
        fit(problem, sims, method="nle", max_epochs=1, progress=False)


def test_sequential_run_refuses_a_dirichlet_prior_before_simulating():
    """run_sequential (CLI `sbi-core run`) simulated the first round and only then failed in
    fit on a simplex prior: that work was lost. It now refuses before the first simulation."""
    from sbi_core.sequential import run_sequential

    calls = []

    def sim(theta: torch.Tensor) -> torch.Tensor:
        calls.append(len(theta))
        return theta + 0.01 * torch.randn_like(theta)

    problem = Problem(Dirichlet(torch.ones(3)), sim, param_names=["w1", "w2", "w3"],
                      name="weights", x_shape=(3,))
    calls.clear()  # Problem may test the simulator once on creation
    with pytest.raises(ValueError, match=r"simplex.*method 'snle'"):
        run_sequential(problem, torch.tensor([0.2, 0.3, 0.5]), method="snle", rounds=2,
                       sims_per_round=50, progress=False, max_epochs=1)
    assert calls == []


def test_a_sample_larger_than_memory_is_refused_with_the_size(post):
    """post.sample(10**12) failed in the allocator ('DefaultCPUAllocator: can't allocate
    memory') for NPE, and an MCMC posterior started an endless run; now a clear error."""
    with pytest.raises(ValueError, match=r"need 8,000\.0 GB for the result alone.*Draw fewer"):
        post.sample(10**12, x=torch.tensor([0.5, 0.5]))
    assert post.sample(1, x=torch.tensor([0.5, 0.5])).shape == (1, 2)


def test_map_with_no_starting_samples_is_a_clear_error(post):
    """post.map(x, num_init=0) raised torch's 'cannot reshape tensor of 0 elements'."""
    x = torch.tensor([0.5, 0.5])
    with pytest.raises(ValueError, match=r"num_init=0.*whole number >= 1"):
        post.map(x=x, num_init=0)
    with pytest.raises(ValueError, match=r"steps=-1"):
        post.map_batched(x[None], steps=-1)
    assert post.map(x=x, num_init=1, steps=0).shape == (2,)


def test_log_prob_of_no_parameter_sets_is_empty(post):
    """post.log_prob(theta of shape (0, D), x) raised torch's reshape error; it is (0,)."""
    lp = post.log_prob(torch.zeros(0, 2), x=torch.tensor([0.5, 0.5]))
    assert lp.shape == (0,)


@pytest.fixture(scope="module")
def box2():
    prior = Independent(Uniform(torch.zeros(2), torch.ones(2)), 1)
    problem = Problem(prior, _sim2, param_names=["a", "b"], name="box2", x_shape=(2,))
    return problem, simulate(problem, 300, seed=0, progress=False)


@pytest.mark.parametrize("device,match", [
    ("mps", r"device='mps' was requested but this PyTorch has no Apple GPU"),
    ("meta", r"device='meta' cannot train a model.*use 'cpu'"),
])
def test_fit_on_a_device_without_data_or_hardware_is_bad_input(box2, device, match):
    """fit(..., device='mps') on a machine without an Apple GPU raised torch's RuntimeError
    ('PyTorch is not linked with support for mps devices'), device='meta' a cross-device copy
    error; both are now ValueErrors with the fix."""
    import torch.backends.mps

    if device == "mps" and torch.backends.mps.is_available():  # pragma: no cover - Apple GPU
        device, match = "meta", r"device='meta' cannot train"
    problem, sims = box2
    with pytest.raises(ValueError, match=match):
        fit(problem, sims, device=device, max_epochs=1, hidden_features=8, num_transforms=1,
            progress=False, detector=False)


@pytest.mark.parametrize("sims_of", [
    lambda s: (s.theta, s.x, s.x),
    lambda s: {"theta": s.theta, "x": s.x},
])
def test_fit_on_something_other_than_a_theta_x_pair_names_the_accepted_forms(box2, sims_of):
    """fit(problem, (theta, x, extra)) said 'too many values to unpack (expected 2)' and
    fit(problem, {'theta': ..., 'x': ...}) 'new(): invalid data type 'str''."""
    problem, sims = box2
    with pytest.raises(ValueError, match=r"sims must be a SimulationSet, a \(theta, x\) pair"):
        fit(problem, sims_of(sims), max_epochs=1, progress=False, detector=False)


def test_streaming_fit_warns_about_invalid_simulations_it_leaves_out(tmp_path):
    """fit(problem, 'sims.zarr', streaming=True) left out the store's failed rows silently,
    while the same store trained in memory warned 'Excluding N of M invalid simulations';
    streaming now warns the same way (with the store's path)."""
    pytest.importorskip("zarr")

    def sim(theta: torch.Tensor) -> torch.Tensor:
        x = theta + 0.1 * torch.randn_like(theta)
        x[theta[:, 0] > 0.8] = float("nan")
        return x

    prior = Independent(Uniform(torch.zeros(2), torch.ones(2)), 1)
    problem = Problem(prior, sim, param_names=["a", "b"], name="fails", x_shape=(2,))
    store = tmp_path / "sims.zarr"
    sims = simulate(problem, 200, seed=0, progress=False, store=store, chunk_size=50)
    with pytest.warns(UserWarning, match=rf"Excluding {sims.num_invalid} of 200 invalid "
                      r"simulations .*sims\.zarr from training"):
        fit(problem, store, streaming=True, max_epochs=1, hidden_features=8,
            num_transforms=1, progress=False, detector=False)


def test_fit_on_float64_values_beyond_float32_says_so(box2):
    """fit(problem, (theta, x)) with a float64 x column of real values ~1e40 turned them into
    inf in float32 and reported 'invalid simulations ... column 1 is inf', then 'Training
    produced no finite validation loss'; now the overflow is named with the fix (an error when
    most rows overflow, a warning when a few blown-up rows do)."""
    import numpy as np

    problem, sims = box2
    theta, x = sims.theta.numpy(), sims.x.double().numpy()
    big = x.copy()
    big[:, 1] = 1e40 + big[:, 1] * 1e39
    with pytest.raises(ValueError, match=r"300 of 300 rows of x have finite values beyond "
                       r"float32's range .*column\(s\) \[1\].*Rescale"):
        fit(problem, (theta, big), max_epochs=1, progress=False, detector=False)
    few = x.copy()
    few[:3, 1] = np.float64(1e40)
    with pytest.warns(UserWarning, match=r"3 of 300 rows of x have finite values beyond float32"):
        fit(problem, (theta, few), max_epochs=1, hidden_features=8, num_transforms=1,
            progress=False, detector=False)


def test_a_float64_simulator_beyond_float32_is_not_said_to_return_nan():
    """A float64 simulator returning finite values ~1e40 had every row marked invalid with
    'the simulator returned NaN or inf'; the first error now names the float32 overflow."""
    prior = Independent(Uniform(torch.zeros(2), torch.ones(2)), 1)
    problem = Problem(prior, lambda th: th.double() * 1e40, param_names=["a", "b"],
                      name="big", x_shape=(2,))
    sims = simulate(problem, 20, seed=0, progress=False)
    assert sims.num_invalid == 20
    assert "beyond float32's range" in sims.provenance["first_error"]
    assert "NaN or inf" not in sims.provenance["first_error"]
