"""simulators.adapt: detects batched vs per-sample and torch vs numpy by a probe call, an
explicit choice overrides it, and errors name the adapter call that works."""

import numpy as np
import pytest
import torch

from sbi_core import Problem, box_uniform, simulate
from simulators import adapt, from_numpy, per_sample


def batched_torch(t):
    return t * 2 + 0.01 * torch.randn_like(t)


def batched_numpy(t):
    return np.stack([np.sin(t[:, 0]), t[:, 1] ** 2], 1) + np.random.normal(size=t.shape) * 0.01


def single_torch(t):
    return torch.stack([t.sum(), t.prod()])


def single_numpy(t):
    a, b = t.astype(np.float64)  # numpy only; with a batch of 3 rows the unpacking fails
    return np.array([a + b, a * b])


PRIOR = box_uniform([0.1, 0.1], [1, 1])


@pytest.mark.parametrize("fn, kind", [
    (batched_torch, "batched (torch tensors)"),
    (batched_numpy, "batched (numpy arrays)"),
    (single_torch, "per-sample (torch tensors)"),
    (single_numpy, "per-sample (numpy arrays)"),
])
def test_the_four_kinds_are_detected_and_simulate(fn, kind):
    sim = adapt(fn)
    problem = Problem(PRIOR, sim, x_shape=(2,))
    assert sim.kind == kind
    sims = simulate(problem, 50, seed=0, progress=False)
    t = sims.theta
    expected = {batched_torch: 2 * t, batched_numpy: torch.stack([t[:, 0].sin(), t[:, 1] ** 2], 1),
                single_torch: torch.stack([t.sum(1), t.prod(1)], 1),
                single_numpy: torch.stack([t.sum(1), t.prod(1)], 1)}[fn]
    assert sims.x.dtype == torch.float32 and torch.allclose(sims.x, expected, atol=0.05)


def test_probe_does_not_change_the_simulations():
    explicit = Problem(PRIOR, from_numpy(batched_numpy), x_shape=(2,), validate=False)
    probed = Problem(PRIOR, adapt(batched_numpy), x_shape=(2,), validate=False)
    a = simulate(explicit, 300, seed=2, chunk_size=100, progress=False)
    b = simulate(probed, 300, seed=2, chunk_size=100, workers=2, progress=False)
    assert torch.equal(a.x, b.x)


def test_explicit_choice_skips_the_probe_and_resolves_ambiguity():
    calls = []

    def ambiguous(t):  # per-sample meaning: first two parameters; also runs on batches
        calls.append(tuple(t.shape))
        return t[:3]

    theta = torch.rand(4, 4)
    with pytest.raises(ValueError, match=r"adapt\(fn, batched=True\).*adapt\(fn, batched=False\)"):
        adapt(ambiguous)(theta)
    calls.clear()
    out = adapt(ambiguous, batched=False, numpy=False)(theta)
    assert calls == [(4,)] * 4 and out.shape == (4, 3)  # no probe calls, per row
    calls.clear()
    adapt(ambiguous, batched=False)(theta)  # numpy still probed: one single-row call per kind
    assert calls == [(4,)] * 2 + [(4,)] * 4
    assert torch.equal(per_sample(ambiguous)(theta), out)


def test_errors_name_the_call_that_works():
    with pytest.raises(ValueError, match=r"use simulators\.per_sample\(fn, numpy=True\).*"
                                         r"instead of simulators\.from_numpy\(fn\)"):
        Problem(PRIOR, from_numpy(single_numpy))
    with pytest.raises(ValueError, match=r"use simulators\.per_sample\(fn, numpy=True\).*"
                                         r"instead of simulators\.per_sample\(fn\)"):
        Problem(PRIOR, per_sample(single_numpy))
    with pytest.raises(ValueError, match=r"use simulators\.from_numpy\(fn\)"):
        Problem(PRIOR, per_sample(batched_numpy_only))
    with pytest.raises(ValueError, match=r"It does work per-sample \(numpy arrays\): use "
                                         r"simulators\.per_sample\(fn, numpy=True\)"):
        adapt(single_numpy, numpy=False)(torch.rand(3, 2))
    with pytest.raises(ValueError, match="Could not call the simulator 'broken'"):
        adapt(broken)(torch.rand(3, 2))


def batched_numpy_only(t):
    return t.astype(np.float64)[:, ::-1].copy()


def broken(t):
    raise RuntimeError("license server unreachable")


def decay_numpy(t):
    """A per-sample numpy simulator whose ufuncs also accept a torch row, with numpy's
    ``__array_wrap__`` DeprecationWarning (numpy >= 2): it must get numpy rows."""
    time = np.linspace(0, 4, 20)
    return t[0] * np.exp(-t[1] * time)


def test_a_numpy_function_that_warns_on_tensors_gets_numpy_input():
    import warnings

    sim = adapt(decay_numpy)
    problem = Problem(PRIOR, sim, x_shape=(20,))
    assert sim.kind == "per-sample (numpy arrays)"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning per simulation
        sims = simulate(problem, 20, seed=0, progress=False)
    t = sims.theta
    expected = t[:, :1] * torch.exp(-t[:, 1:] * torch.linspace(0, 4, 20))
    assert torch.allclose(sims.x, expected, atol=1e-5)
