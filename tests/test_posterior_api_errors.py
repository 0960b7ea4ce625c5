"""Bad arguments to sample / log_prob / map get clear errors naming the fix, never raw torch
errors; lists and numpy arrays are accepted, strings are not; set_default_x makes x optional."""

import math

import numpy as np
import pytest
import torch

from sbi_core import ObservationError

X = torch.tensor([0.3, -0.2])


@pytest.mark.parametrize("shape,match", [
    ((-5,), "negative size"), (-5, "negative size"), ((2.5,), "whole numbers"),
    ("10", "int or a tuple of ints"), ((True,), "whole numbers"), ((3, None), "whole numbers"),
])
def test_bad_sample_shapes(trained_npe, shape, match):
    with pytest.raises(ValueError, match=match) as info:
        trained_npe.sample(shape, X)
    assert "sample((1000,), x)" in str(info.value)


def test_good_sample_shapes(trained_npe):
    assert trained_npe.sample(np.int64(4), X).shape == (4, 2)
    assert trained_npe.sample(torch.Size([2, 3]), X).shape == (2, 3, 2)
    assert trained_npe.sample([3], X).shape == (3, 2)
    assert trained_npe.sample((), X).shape == (2,)  # one draw, as in torch
    assert trained_npe.sample((0,), X).shape == (0, 2)
    assert trained_npe.sample_batched((0, 4), torch.zeros(3, 2)).shape == (0, 4, 3, 2)


def test_x_as_string_list_or_numpy(trained_npe):
    with pytest.raises(ObservationError, match=r"x is a string .*float\(v\) for v in"):
        trained_npe.sample((5,), "0.1,0.2")
    with pytest.raises(ObservationError, match="could not be read as numbers"):
        trained_npe.sample((5,), [0.1, "a"])
    with pytest.raises(ObservationError, match="could not be read as numbers"):
        trained_npe.log_prob(torch.zeros(2), [[0.1], [0.2, 0.3]])
    # lists and numpy arrays are friendly input: same result as the tensor
    ref = trained_npe.sample((5,), X, seed=1)
    assert torch.equal(trained_npe.sample((5,), [0.3, -0.2], seed=1), ref)
    assert torch.equal(trained_npe.sample((5,), np.array([0.3, -0.2]), seed=1), ref)
    lp = trained_npe.log_prob([[0.0, 0.0]], X)
    assert lp.shape == (1,) and torch.isfinite(lp).all()


def test_nan_theta_names_the_rows(trained_npe):
    theta = torch.zeros(5, 2)
    theta[1, 0] = math.nan
    theta[4, 1] = math.nan
    with pytest.raises(ValueError, match=r"NaN in 2 row\(s\) \(flat row index \[1, 4\]\)"):
        trained_npe.log_prob(theta, X)
    with pytest.raises(ValueError, match=r"theta is a string"):
        trained_npe.log_prob("0,0", X)
    with pytest.raises(ValueError, match="a scalar in its last dimension"):
        trained_npe.log_prob(torch.tensor(0.0), X)
    with pytest.raises(ValueError, match=r"NaN in 1 row"):
        trained_npe.log_prob_batched(torch.full((3, 1, 2), 0.0).index_fill(0, torch.tensor([2]),
                                                                          math.nan), X[None])


def test_bad_max_seconds(trained_npe):
    with pytest.raises(ValueError, match="max_seconds must be a positive number"):
        trained_npe.sample((5,), X, max_seconds=-1)
    with pytest.raises(ValueError, match="'default'"):
        trained_npe.sample((5,), X, max_seconds="forever")


def test_default_x(trained_npe):
    with pytest.raises(ValueError, match=r"set_default_x\(x_o\)"):
        trained_npe.sample((5,))
    with pytest.raises(ObservationError, match="NaN"):  # checked when set, not later
        trained_npe.set_default_x(torch.tensor([math.nan, 0.0]))
    try:
        assert trained_npe.set_default_x(X) is trained_npe
        assert torch.equal(trained_npe.default_x, X)
        assert torch.equal(trained_npe.sample((5,), seed=3), trained_npe.sample((5,), X, seed=3))
        theta = torch.zeros(4, 2)
        assert torch.equal(trained_npe.log_prob(theta), trained_npe.log_prob(theta, X))
        assert torch.equal(trained_npe.map(steps=5), trained_npe.map(X, steps=5))
        # an explicit x still wins
        other = torch.tensor([1.0, 1.0])
        assert torch.equal(trained_npe.sample((5,), other, seed=3),
                           trained_npe.set_default_x(None).sample((5,), other, seed=3))
    finally:
        trained_npe.set_default_x(None)
    assert trained_npe.default_x is None
