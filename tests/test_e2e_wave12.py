"""Wave 12 end-to-end sweep, own problems: a prior with a dependency between its parameters,
written as your own class without a ``support`` (the support ``0 < b < a < 1`` is no box).

Before wave 12 NPE returned samples outside it and a log_prob normalized as if nothing leaked
(the posterior took "no support" for "unbounded"), MCMC (NLE) stopped with a bare
NotImplementedError, NPSE/FMPE raised "Samples fell outside the prior support." and
``posterior.condition(x).support`` raised NotImplementedError.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.distributions import Distribution

from sbi_core import Problem, fit, simulate


class Triangle(Distribution):
    """a ~ U(0, 1), b | a ~ U(0, a): density 1/a on 0 < b < a < 1 (no ``support``)."""

    arg_constraints: dict = {}

    def __init__(self):
        super().__init__(event_shape=torch.Size([2]), validate_args=False)

    def sample(self, sample_shape=()):
        a = torch.rand(*sample_shape, 1)
        return torch.cat([a, a * torch.rand(*sample_shape, 1)], -1)

    def log_prob(self, value):
        a, b = value[..., 0], value[..., 1]
        inside = (a > 0) & (a < 1) & (b > 0) & (b < a)
        return torch.where(inside, -a.clamp_min(1e-30).log(), torch.tensor(float("-inf")))


def noisy(theta: torch.Tensor) -> torch.Tensor:
    return theta + 0.2 * torch.randn_like(theta)


X_O = torch.tensor([0.5, 0.6])  # b > a: much of the likelihood lies outside the support


@pytest.fixture(scope="module")
def tri():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "loading will need the prior again"
        problem = Problem(Triangle(), noisy, param_names=["a", "b"], x_shape=(2,))
        sims = simulate(problem, 1000, seed=0, progress=False)
    return problem, sims


def _fit(tri, **options):
    problem, sims = tri
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit(problem, sims, progress=False, detector=False, **options)


def _outside(samples: torch.Tensor) -> int:
    return int((~torch.isfinite(Triangle().log_prob(samples))).sum())


@pytest.fixture(scope="module")
def tri_npe(tri):
    return _fit(tri, max_epochs=15, hidden_features=16, num_transforms=2)


def test_npe_samples_stay_inside_a_support_the_prior_class_does_not_declare(tri_npe):
    post = tri_npe
    samples = post.sample((1000,), x=X_O, seed=0)
    assert _outside(samples) == 0  # was: 30 of 1000 outside (no rejection)
    assert post.last_acceptance_rate < 0.999
    # log_prob is normalized over the support (was: divided by nothing, integral < 1)
    h = 1 / 150
    g = torch.arange(h / 2, 1, h)
    grid = torch.cartesian_prod(g, g)
    mass = float(post.log_prob(grid, x=X_O).exp().sum() * h * h)
    assert mass == pytest.approx(1.0, abs=0.02)
    q = post.condition(X_O)
    assert bool(q.support.check(torch.tensor([0.5, 0.2])))
    assert not bool(q.support.check(torch.tensor([0.5, 0.7])))
    with pytest.raises(ValueError, match="support"):  # validate_args: as for any support
        q.log_prob(torch.tensor([[0.5, 0.7]]))


def test_map_with_a_prior_class_without_variance(tri_npe):
    theta_map = tri_npe.map(X_O, num_init=200, steps=20)  # was: NotImplementedError (variance)
    assert theta_map.shape == (2,) and _outside(theta_map[None]) == 0


def test_nle_mcmc_runs_with_a_prior_class_without_support(tri):
    post = _fit(tri, method="nle", max_epochs=10, hidden_features=16, num_transforms=2)
    samples = post.sample((40,), x=X_O, seed=0, num_chains=4, warmup_steps=30)
    assert samples.shape == (40, 2) and _outside(samples) == 0  # was: NotImplementedError


def test_npse_rejects_draws_outside_a_support_the_prior_class_does_not_declare(tri):
    post = _fit(tri, method="fmpe", max_epochs=10)
    samples = post.sample((300,), x=X_O, seed=0, steps=10)
    # was: SamplingError "Samples fell outside the prior support."
    assert samples.shape == (300, 2) and _outside(samples) == 0


# ---------------------------------------------------------------- a varying number of trials
def trials_3_to_10(theta: torch.Tensor) -> torch.Tensor:
    """theta (N, 1) -> x (N, 10, 1): 3 to 10 trials x_i ~ N(theta, 1), then all-NaN padding."""
    x = theta[:, None, :] + torch.randn(len(theta), 10, 1)
    k = torch.randint(3, 11, (len(theta),))
    x[torch.arange(10)[None, :] >= k[:, None]] = float("nan")
    return x


@pytest.fixture(scope="module")
def padded():
    from sbi_core import gaussian

    problem = Problem(gaussian([0.0], std=[1.0]), trials_3_to_10, param_names=["mu"],
                      x_shape=(10, 1))
    return problem, simulate(problem, 1000, seed=0, progress=False)


def test_set_embedding_trains_on_and_samples_sets_padded_with_nan_trials(padded):
    problem, sims = padded
    assert sims.num_invalid > 800  # simulate does not know the embedding: NaN = invalid there
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # was: "Excluding 880 of 1000 invalid ..."
        warnings.filterwarnings("ignore", "Reached max_epochs")
        post = fit(problem, sims, embedding="set", max_epochs=30, progress=False)
    assert post.history["num_train"] + post.history["num_validation"] == 1000
    x_o = torch.full((10, 1), float("nan"))
    x_o[:5, 0] = torch.tensor([0.8, 1.2, 0.5, 1.5, 1.0])  # 5 trials: N(5/6, 1/6) exactly
    samples = post.sample((2000,), x=x_o, seed=0)  # was: "The observation contains NaN"
    assert abs(float(samples.mean()) - 5 / 6) < 0.15 and abs(float(samples.std()) - 6**-0.5) < 0.1
    # the tuple form takes them too; NaN in part of a trial is still an error, not padding
    post2 = fit(problem, (sims.theta[:600], sims.x[:600]), embedding="set", max_epochs=2,
                progress=False)
    assert post2.history["num_train"] + post2.history["num_validation"] == 600
    x_o[5, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        post.sample((10,), x=x_o)


# ---------------------------------------------------------------- a prior built in float64
@pytest.mark.parametrize("method", ["nle", "fmpe"])
def test_prior_built_from_float64_tensors_works_beyond_npe(method):
    from torch.distributions import Independent, Normal

    f64 = dict(dtype=torch.float64)
    prior = Independent(Normal(torch.zeros(2, **f64), torch.ones(2, **f64)), 1)
    problem = Problem(prior, noisy, param_names=["a", "b"], x_shape=(2,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = fit(problem, simulate(problem, 500, seed=0, progress=False), method=method,
                   max_epochs=3, detector=False, progress=False)
        x_o = torch.tensor([0.3, -0.2])
        # was: RuntimeError "mat1 and mat2 must have the same dtype, but got Double and Float"
        samples = post.sample((20,), x=x_o, seed=0, **({"num_chains": 4, "warmup_steps": 10}
                                                       if method == "nle" else {"steps": 10}))
        lp = post.log_prob(samples[:3], x=x_o, **({} if method == "nle" else {"steps": 5}))
        theta_map = post.map(x_o, num_init=20, steps=3)
    assert samples.dtype == lp.dtype == theta_map.dtype == torch.float32
    assert samples.shape == (20, 2) and bool(torch.isfinite(lp).all())
