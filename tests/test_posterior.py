import math

import pytest
import torch

from sbi_core import ObservationError
from simulators.linear_gaussian import linear_gaussian_posterior


def test_shapes_of_every_entry_point(trained_npe):
    x = torch.tensor([0.3, -0.2])
    xs = torch.randn(4, 2) * 0.5
    assert trained_npe.sample((7,), x=x).shape == (7, 2)
    assert trained_npe.sample((2, 3), x=x).shape == (2, 3, 2)
    assert trained_npe.sample_batched((5,), xs).shape == (5, 4, 2)
    assert trained_npe.log_prob(torch.zeros(6, 2), x).shape == (6,)
    assert trained_npe.log_prob(torch.zeros(2), x).shape == ()
    assert trained_npe.log_prob_batched(torch.zeros(6, 4, 2), xs).shape == (6, 4)
    assert trained_npe.map(x).shape == (2,)
    assert trained_npe.map_batched(xs).shape == (4, 2)


def test_seed_makes_sampling_reproducible(trained_npe):
    x = torch.tensor([0.3, -0.2])
    a = trained_npe.sample((50,), x=x, seed=5)
    b = trained_npe.sample((50,), x=x, seed=5)
    c = trained_npe.sample((50,), x=x, seed=6)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_log_prob_and_map_match_analytic(trained_npe):
    x = torch.tensor([0.4, -0.3])
    true = linear_gaussian_posterior(x)
    theta = true.sample((500,))
    lp, lp_true = trained_npe.log_prob(theta, x), true.log_prob(theta)
    assert (lp - lp_true).abs().mean() < 0.3
    assert torch.allclose(trained_npe.map(x), true.mean, atol=0.1)


def test_batched_equals_single(trained_npe):
    xs = torch.tensor([[0.1, 0.2], [-0.5, 0.4]])
    theta = torch.randn(10, 2) * 0.3
    lp_b = trained_npe.log_prob_batched(theta[:, None, :].expand(10, 2, 2), xs)
    lp_0 = trained_npe.log_prob(theta, xs[0])
    assert torch.allclose(lp_b[:, 0], lp_0, atol=1e-5)


def test_bad_observations_get_clear_errors(trained_npe):
    with pytest.raises(ObservationError, match=r"shape \(3,\)"):
        trained_npe.sample((5,), x=torch.zeros(3))
    with pytest.raises(ObservationError, match="NaN"):
        trained_npe.sample((5,), x=torch.tensor([math.nan, 0.0]))
    with pytest.raises(ObservationError, match="outside the range"):
        trained_npe.sample((5,), x=torch.tensor([40.0, 0.0]))
    with pytest.raises(ObservationError, match="Batched"):
        trained_npe.sample_batched((5,), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="D=2"):
        trained_npe.log_prob(torch.zeros(4, 3), torch.zeros(2))
    trained_npe.range_check = "warn"
    try:
        with pytest.warns(UserWarning, match="outside the range"):
            trained_npe.sample((5,), x=torch.tensor([40.0, 0.0]))
    finally:
        trained_npe.range_check = "error"
