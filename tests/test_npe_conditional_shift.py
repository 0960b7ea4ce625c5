"""NPE's conditional affine pre-standardization (estimators/conditional_shift.py).

Linear Gaussian toy: prior N(0, I), x = theta + 0.5 eps, posterior N(0.8 x, 0.2 I). The
regression of theta on x is then exactly the posterior mean and the residual covariance the
posterior covariance, so the fitted shift is checked against the analytic values; the
density's log-Jacobian and the sample / log_prob pair are checked exactly.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from estimators.conditional_shift import ShiftedDensity, fit_linear_shift, resolve_shift
from estimators.npe import NPEEstimator, build_npe
from sbi_core.priors import gaussian

VAR = 0.2  # posterior variance of the toy (prior N(0, I), noise sd 0.5)


def _toy(n: int = 4000, dim: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(n, dim, generator=g)
    return theta, theta + 0.5 * torch.randn(n, dim, generator=g)


def _prior(dim: int = 2):
    return gaussian(torch.zeros(dim), std=torch.ones(dim))


@pytest.mark.parametrize("mode", ["linear", "linear_full"])
def test_fitted_shift_is_the_analytic_posterior_mean_and_scale(mode: str) -> None:
    theta, x = _toy(20_000)
    est = build_npe(theta, x, _prior(), flow="fmaf", conditional_shift=mode)
    assert isinstance(est.density, ShiftedDensity)
    # in parameter units: mean = theta_std * (A (x - mu_x) / x_std + b) + theta_mean
    xo = torch.tensor([[1.0, -0.5], [0.3, 2.0]])
    with torch.no_grad():
        ctx = est.context(xo)
        mean = est.theta_norm.inverse(est.density.mean(ctx))
        sd = torch.diagonal(est.density.scale_tril) * est.theta_norm.std
    torch.testing.assert_close(mean, 0.8 * xo, atol=0.03, rtol=0)
    torch.testing.assert_close(sd, torch.full((2,), math.sqrt(VAR)), atol=0.02, rtol=0)


def test_log_prob_includes_the_constant_jacobian_exactly() -> None:
    theta, x = _toy(2000)
    torch.manual_seed(0)
    est = build_npe(theta, x, _prior(), flow="fmaf", conditional_shift="linear_full")
    d = est.density
    with torch.no_grad():
        z = est.theta_norm(theta[:50])
        ctx = est.context(x[:50])
        u = torch.linalg.solve_triangular(d.scale_tril, (z - ctx @ d.weight.T - d.bias).T,
                                          upper=False).T
        expected = (d.flow.log_prob(u, ctx) - torch.diagonal(d.scale_tril).log().sum()
                    - est.theta_norm.std.log().sum())
        torch.testing.assert_close(est.log_prob(theta[:50], x[:50]), expected)


@pytest.mark.parametrize("mode", ["linear", "linear_full"])
def test_samples_and_log_prob_agree_and_invert(mode: str) -> None:
    theta, x = _toy(2000)
    torch.manual_seed(1)
    est = build_npe(theta, x, _prior(), flow="fmaf", conditional_shift=mode)
    with torch.no_grad():
        s, lp = est.sample_and_log_prob(7, x[:3])  # (7, 3, 2), (7, 3)
        again = est.log_prob(s.reshape(-1, 2), x[:3].repeat(7, 1)).reshape(7, 3)
        torch.testing.assert_close(lp, again, atol=1e-4, rtol=0)
        base = est.to_base(s.reshape(-1, 2), x[:3].repeat(7, 1))  # data -> base -> data
        back = est.density.inverse_transform(base, est.context(x[:3].repeat(7, 1)))
        torch.testing.assert_close(est.from_z(back), s.reshape(-1, 2), atol=1e-4, rtol=0)


def test_shifted_density_integrates_to_one() -> None:
    """1-D: the density of theta (flow, shift and standardization together) sums to 1 on a
    fine grid: the Jacobian is neither missing nor counted twice."""
    theta, x = _toy(2000, dim=1)
    torch.manual_seed(2)
    est = build_npe(theta, x, _prior(1), flow="fmaf", conditional_shift="linear")
    grid = torch.linspace(-300, 300, 200_001, dtype=torch.float64)
    with torch.no_grad():
        lp = est.log_prob(grid[:, None].float(), torch.full((grid.shape[0], 1), 0.7))
    assert abs(float(torch.trapezoid(lp.double().exp(), grid)) - 1.0) < 2e-3


def test_training_with_the_shift_reaches_the_analytic_posterior() -> None:
    from sbi_core import Problem, fit

    theta, x = _toy(3000)
    problem = Problem(_prior(), lambda t: t, x_shape=(2,), validate=False)
    post = fit(problem, (theta, x), method="npe", conditional_shift="linear_full", seed=0,
               progress=False, max_epochs=15, hidden_features=20, num_transforms=2)
    assert post.estimator.config["conditional_shift"] == "linear_full"
    xo = torch.tensor([0.6, -1.0])
    s = post.sample((4000,), x=xo, seed=0)
    torch.testing.assert_close(s.mean(0), 0.8 * xo, atol=0.05, rtol=0)
    torch.testing.assert_close(s.std(0), torch.full((2,), math.sqrt(VAR)), atol=0.04, rtol=0)


@pytest.mark.parametrize("mode", ["linear", "linear_full"])
def test_saved_model_reloads_with_the_same_density(tmp_path, mode: str) -> None:
    from sbi_core import Problem, fit, load, save

    theta, x = _toy(1000)
    problem = Problem(_prior(), lambda t: t, x_shape=(2,), validate=False)
    post = fit(problem, (theta, x), method="npe", conditional_shift=mode, seed=0,
               progress=False, max_epochs=2, hidden_features=10, num_transforms=1)
    path = save(post, tmp_path / "m.pt")
    raw = torch.load(path, weights_only=True)
    assert raw["estimator_config"]["conditional_shift"] == mode
    again = load(path)
    xo = torch.tensor([0.2, 0.4])
    th = torch.randn(20, 2)
    torch.testing.assert_close(again.log_prob(th, x=xo), post.log_prob(th, x=xo))


def test_model_file_from_before_the_option_loads_with_the_same_results(tmp_path) -> None:
    """A file without the ``conditional_shift`` key (as saved before the option existed)
    loads without the shift and gives the saved model's log_prob."""
    from sbi_core import Problem, fit, load, save

    theta, x = _toy(1000)
    problem = Problem(_prior(), lambda t: t, x_shape=(2,), validate=False)
    post = fit(problem, (theta, x), method="npe", conditional_shift=None, seed=0,
               progress=False, max_epochs=2, hidden_features=10, num_transforms=1)
    path = save(post, tmp_path / "old.pt")
    raw = torch.load(path, weights_only=True)
    del raw["estimator_config"]["conditional_shift"]
    torch.save(raw, path)
    old = load(path)
    assert not isinstance(old.estimator.density, ShiftedDensity)
    th, xo = torch.randn(20, 2), torch.tensor([0.2, 0.4])
    torch.testing.assert_close(old.log_prob(th, x=xo), post.log_prob(th, x=xo))


def test_config_without_the_key_builds_no_shift() -> None:
    """Model files saved before the option existed have no ``conditional_shift`` key: the
    estimator is rebuilt without the shift (same state_dict keys as before)."""
    theta, x = _toy(500)
    est = build_npe(theta, x, _prior(), flow="fmaf", conditional_shift=None)
    cfg = {k: v for k, v in est.config.items() if k != "conditional_shift"}
    old = NPEEstimator(cfg)
    assert not isinstance(old.density, ShiftedDensity)
    old.load_state_dict(est.state_dict())  # strict: the same keys


def test_resolve_checks_the_model_and_names_the_fix() -> None:
    base = dict(flow="fmaf", identity_embedding=True, discrete=False, trial_mode=None)
    assert resolve_shift("linear_full", **base) == "linear_full"
    assert resolve_shift("linear", **{**base, "trial_mode": "sort"}) == "linear"
    assert resolve_shift(None, **{**base, "identity_embedding": False}) is None
    for bad in ({"identity_embedding": False}, {"discrete": True}, {"trial_mode": "permute"},
                {"trial_mode": "set"}, {"flow": "mdn"}):
        with pytest.raises(ValueError, match="conditional_shift=None"):
            resolve_shift("linear", **{**base, **bad})
    with pytest.raises(ValueError, match="Unknown conditional_shift"):
        resolve_shift("auto", **base)


def test_default_is_no_shift() -> None:
    theta, x = _toy(2000)
    est = build_npe(theta, x, _prior())
    assert est.config["conditional_shift"] is None
    assert not isinstance(est.density, ShiftedDensity)


def test_fit_skips_non_finite_rows_and_floors_the_scale() -> None:
    z = torch.randn(300, 2)
    ctx = torch.cat([z[:, :1], torch.randn(300, 1)], 1)  # z_1 exactly linear in ctx
    ctx[5, 1] = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a, b, scale = fit_linear_shift(z, ctx, full=True)
    assert torch.isfinite(a).all() and torch.isfinite(scale).all()
    assert float(scale[0, 0]) >= 1e-6 and float(scale[0, 0]) < 0.01

