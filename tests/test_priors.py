import math

import pytest
import torch

from sbi_core.priors import (
    box_uniform,
    gaussian,
    independent,
    prior_from_spec,
    prior_spec,
    support_bounds,
    unconstrained_transform,
    within_support,
)


def _priors():
    return [
        box_uniform([-1.0, 0.0], [1.0, 2.0]),
        gaussian([0.0, 1.0, 2.0], std=[1.0, 0.5, 2.0]),
        gaussian([0.0, 0.0], cov=[[1.0, 0.5], [0.5, 2.0]]),
        independent(("lognormal", {"loc": 0.0, "scale": 0.5}), ("uniform", {"low": 0, "high": 3}),
                    gaussian([0.0, 0.0], std=1.0)),
    ]


@pytest.mark.parametrize("prior", _priors(), ids=["box", "diag", "full", "independent"])
def test_spec_roundtrip_gives_same_distribution(prior):
    again = prior_from_spec(prior_spec(prior))
    torch.manual_seed(0)
    theta = prior.sample((500,))
    assert theta.shape == (500, prior.event_shape[0])
    assert torch.allclose(prior.log_prob(theta), again.log_prob(theta), atol=1e-5)
    assert within_support(prior, theta).all()


@pytest.mark.parametrize("prior", _priors(), ids=["box", "diag", "full", "independent"])
def test_unconstrained_transform_roundtrip(prior):
    t = unconstrained_transform(prior)
    theta = prior.sample((200,))
    z = t.inv(theta)
    assert torch.isfinite(z).all()
    assert torch.allclose(t(z), theta, atol=1e-4)
    # any real vector maps inside the support
    assert within_support(prior, t(torch.randn(200, theta.shape[1]) * 5)).all()


def test_independent_log_prob_matches_components_and_support():
    prior = independent(("lognormal", {"loc": 0.0, "scale": 0.5}), ("normal", {"loc": 1, "scale": 2}))
    theta = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    lp = prior.log_prob(theta)
    expected = torch.distributions.LogNormal(0.0, 0.5).log_prob(torch.tensor(1.0)) + \
        torch.distributions.Normal(1.0, 2.0).log_prob(torch.tensor(0.0))
    assert math.isclose(float(lp[0]), float(expected), rel_tol=1e-5)
    assert lp[1] == -math.inf
    assert within_support(prior, theta).tolist() == [True, False]
    low, high = support_bounds(prior)
    assert low.tolist() == [0.0, -math.inf] and high.tolist() == [math.inf, math.inf]


def test_box_bounds_and_errors():
    low, high = support_bounds(box_uniform(-2.0, 3.0, dim=3))
    assert low.tolist() == [-2.0] * 3 and high.tolist() == [3.0] * 3
    with pytest.raises(ValueError, match="larger than"):
        box_uniform([1.0], [0.0])
    with pytest.raises(ValueError, match="exactly one"):
        gaussian([0.0])
    with pytest.raises(ValueError, match=r"shape \(2, 2\)"):
        gaussian([0.0, 0.0], cov=[[1.0]])
    with pytest.raises(ValueError, match="Unknown prior"):
        prior_from_spec({"type": "cauchy"})
    # Any torch distribution now has a spec (issue 16): plain torch classes are stored as data,
    # and a spec naming a user-written class is refused with the fix, never imported.
    assert prior_spec(torch.distributions.Normal(0.0, 1.0))["class"] == "Normal"
    with pytest.raises(ValueError, match=r"never imported.*prior="):
        prior_from_spec({"type": "user", "class": "mypkg.MyPrior"})
