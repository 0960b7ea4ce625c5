import numpy as np
import pytest
import torch

from sbi_core import Problem, box_uniform


def test_problem_infers_x_shape_and_names():
    p = Problem(box_uniform([-1, -1], [1, 1]), lambda t: torch.cat([t, t**2], 1), name="sq")
    assert p.x_shape == (4,)
    assert p.param_names == ["theta_1", "theta_2"]
    assert p.spec()["prior"]["type"] == "box_uniform"


def test_wrong_x_shape_names_expected_and_received():
    with pytest.raises(ValueError, match=r"returned x of shape \(3,\).*expected x_shape \(2,\)"):
        Problem(box_uniform([-1, -1], [1, 1]), lambda t: torch.zeros(t.shape[0], 3), x_shape=(2,))


def test_unbatched_simulator_is_explained():
    with pytest.raises(ValueError, match="per_sample"):
        Problem(box_uniform([-1, -1], [1, 1]), lambda t: t[0])


def test_numpy_and_integer_outputs_are_rejected_with_fix():
    with pytest.raises(TypeError, match="from_numpy"):
        Problem(box_uniform([-1], [1]), lambda t: np.zeros((t.shape[0], 1)))
    with pytest.raises(TypeError, match="floating-point"):
        Problem(box_uniform([-1], [1]), lambda t: torch.zeros(t.shape[0], 1, dtype=torch.long))


def test_raising_simulator_at_construction_is_reported():
    def bad(theta):
        raise RuntimeError("boom")

    with pytest.raises(ValueError, match="boom"):
        Problem(box_uniform([-1], [1]), bad)


def test_param_names_length_checked():
    with pytest.raises(ValueError, match="2 dimensions"):
        Problem(box_uniform([-1, -1], [1, 1]), lambda t: t, param_names=["a"])


def test_observations_are_reproducible(linear_problem):
    import simulators

    other = simulators.get_problem("linear_gaussian")
    for k in (1, 5, 10):
        assert torch.equal(linear_problem.observation(k), other.observation(k))
        assert torch.equal(linear_problem.true_parameters(k), other.true_parameters(k))
    assert not torch.equal(linear_problem.observation(1), linear_problem.observation(2))
    with pytest.raises(ValueError, match="1..10"):
        linear_problem.observation(11)
