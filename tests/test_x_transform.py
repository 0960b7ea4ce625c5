"""NPE's ``x_transform`` (estimators/x_transform.py): the "auto" column rule, the stored
choice across save/load, old files without it, and accuracy against an analytic posterior."""

import copy
import warnings

import pytest
import torch
from torch.distributions import Gamma, Independent

from diagnostics.c2st import c2st
from estimators.x_transform import XTransform, resolve_x_transform, skewed_columns
from sbi_core import Problem, fit, load, save, simulate

EXPOSURE = torch.tensor([1.0, 3.0, 10.0])
A, B = 2.0, 0.4  # Gamma(shape A, rate B) prior on a Poisson rate


def _poisson_problem() -> Problem:
    """x_i ~ Poisson(theta * t_i), t = (1, 3, 10), theta ~ Gamma(2, 0.4): the posterior is
    Gamma(2 + sum x, 0.4 + 14); the counts are nonnegative and right-skewed."""
    prior = Independent(Gamma(torch.tensor([A]), torch.tensor([B])), 1)

    def simulator(theta: torch.Tensor) -> torch.Tensor:
        return torch.poisson(theta * EXPOSURE)

    return Problem(prior, simulator, x_shape=(3,), name="poisson_gamma")


def _posterior(x: torch.Tensor) -> Gamma:
    return Gamma(torch.tensor(A) + x.sum(), torch.tensor(B) + EXPOSURE.sum())


def _fit_quietly(problem: Problem, sims, **options):
    """``fit`` with ``x_transform="auto"``, its training warnings silenced (short test runs)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit(problem, sims, seed=0, progress=False, x_transform="auto", **options)


@pytest.fixture(scope="module")
def poisson_fit():
    torch.manual_seed(0)
    problem = _poisson_problem()
    sims = simulate(problem, 3000, seed=0, progress=False)
    post = _fit_quietly(problem, sims, max_epochs=80, schedule_epochs=80, hidden_features=32,
                        num_transforms=2, detector=False)
    return problem, sims, post


def test_auto_rule_picks_nonnegative_skewed_columns():
    g = torch.Generator().manual_seed(0)
    n = 4000
    expo = torch.empty(n).exponential_(generator=g)            # >= 0, skewness ~2: picked
    unif = torch.rand(n, generator=g)                          # >= 0, symmetric: not picked
    shifted = torch.empty(n).exponential_(generator=g) - 0.5   # skewed but negative values
    const = torch.zeros(n)                                     # constant: not picked
    x = torch.stack([expo, unif, shifted, const, 3 * expo], 1)
    assert skewed_columns(x) == [0, 4]
    assert resolve_x_transform("auto", x, True, False) == {"kind": "log1p", "columns": [0, 4]}
    # not for x behind a learned embedding or with trials / sets / discrete columns
    assert resolve_x_transform("auto", x, False, False) is None
    assert resolve_x_transform("auto", x, True, True) is None
    assert resolve_x_transform("none", x, True, False) is None
    # explicit kinds: every nonnegative, non-constant column
    assert resolve_x_transform("sqrt", x, True, False) == {"kind": "sqrt", "columns": [0, 1, 4]}


def test_bad_options_name_the_fix():
    x = torch.randn(100, 2)
    with pytest.raises(ValueError, match="x_transform='none'"):
        resolve_x_transform("log1p", x, True, False)  # nothing nonnegative
    with pytest.raises(ValueError, match="flat x only"):
        resolve_x_transform("log1p", x.abs(), True, True)
    with pytest.raises(ValueError, match="Unknown x_transform"):
        resolve_x_transform("log", x, True, False)
    with pytest.raises(ValueError, match="x_map"):
        XTransform((2,), {"kind": "log1p", "columns": [5]})


def test_map_inverts_and_stays_finite_for_negative_values():
    for kind in ("log1p", "sqrt"):
        t = XTransform((3,), {"kind": kind, "columns": [0, 2]})
        x = torch.tensor([[0.0, -4.0, 250.0], [-3.0, 2.0, 0.5]])
        y = t(x)
        assert torch.isfinite(y).all()
        assert torch.equal(y[:, 1], x[:, 1])  # untouched column
        assert torch.allclose(t.inverse(y), x, rtol=1e-5, atol=1e-5)


def test_builtin_tasks_the_rule_leaves_alone():
    """Of the benchmark tasks only sir has nonnegative, skewed x columns (its constant first
    column excluded); two_moons, slcp, gaussian_mixture, gaussian_linear and bernoulli_glm
    get no transform."""
    from simulators import get_problem

    for name in ("two_moons", "slcp", "gaussian_mixture", "gaussian_linear", "bernoulli_glm"):
        x = simulate(get_problem(name), 1000, seed=0, progress=False).x
        assert skewed_columns(x) == [], name
    x = simulate(get_problem("sir"), 1000, seed=0, progress=False).x
    assert skewed_columns(x) == list(range(1, 10))


def test_poisson_posterior_matches_analytic(poisson_fit):
    """Accuracy with the transform: C2ST < 0.61 against Gamma(2 + sum x, 14.4) on two
    observations; log_prob is the normalized density of what sample draws (its grid
    integral is 1 within 0.03 and its mean matches the samples' within 0.1 sd)."""
    problem, _, post = poisson_fit
    assert post.estimator.config["x_map"] == {"kind": "log1p", "columns": [0, 1, 2]}
    for k in (1, 2):
        x_o = problem.observation(k)
        ref = _posterior(x_o)
        samples = post.sample((2000,), x=x_o, seed=0)
        assert c2st(samples, ref.sample((2000,)).unsqueeze(-1), seed=0) < 0.61
        sd = float(ref.stddev)
        grid = torch.linspace(max(1e-3, float(ref.mean) - 8 * sd), float(ref.mean) + 8 * sd,
                              2001).unsqueeze(-1)
        dens = post.log_prob(grid, x=x_o).exp()
        assert abs(float(torch.trapezoid(dens, grid[:, 0])) - 1.0) < 0.03
        mean_lp = float(torch.trapezoid(dens * grid[:, 0], grid[:, 0]))
        assert abs(mean_lp - float(samples.mean())) < 0.1 * sd


def test_save_load_keeps_the_transform(poisson_fit, tmp_path):
    problem, _, post = poisson_fit
    save(post, tmp_path / "m.pt")
    back = load(tmp_path / "m.pt")
    assert back.estimator.config["x_map"] == post.estimator.config["x_map"]
    assert back.estimator.x_transform.active
    x_o = problem.observation(1)
    theta = post.sample((50,), x=x_o, seed=1)
    assert torch.allclose(back.log_prob(theta, x=x_o), post.log_prob(theta, x=x_o))
    assert torch.equal(back.sample((20,), x=x_o, seed=3), post.sample((20,), x=x_o, seed=3))
    # x_min / x_max stay in the raw x units (range check)
    assert torch.equal(back.estimator.x_max, post.estimator.x_max)
    assert float(back.estimator.x_max.max()) > 20


def test_file_without_the_field_still_loads(poisson_fit, tmp_path):
    """A model saved before the option existed has neither ``x_transform`` nor ``x_map`` in
    its config: it loads and runs without a transform."""
    from estimators.npe import NPEEstimator

    problem, sims, post = poisson_fit
    old_cfg = {k: v for k, v in post.estimator.config.items()
               if k not in ("x_transform", "x_map")}
    old = NPEEstimator(old_cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        old.fit_standardization(*sims.training_data())
    old.load_state_dict(post.estimator.state_dict(), strict=False)
    post_old = copy.copy(post)
    post_old.estimator = old
    save(post_old, tmp_path / "old.pt")
    back = load(tmp_path / "old.pt")
    assert not back.estimator.x_transform.active
    assert "x_map" not in back.estimator.config
    s = back.sample((10,), x=problem.observation(1), seed=0)
    assert s.shape == (10, 1) and torch.isfinite(s).all()


def test_ensemble_members_share_the_transform():
    problem = _poisson_problem()
    sims = simulate(problem, 600, seed=1, progress=False)
    post = _fit_quietly(problem, sims, ensemble=2, max_epochs=2, hidden_features=8,
                        num_transforms=1, detector=False)
    maps = [m.config["x_map"] for m in post.estimator.members]
    assert maps[0] == maps[1] == {"kind": "log1p", "columns": [0, 1, 2]}
    x_o = problem.observation(1)
    s = post.sample((30,), x=x_o, seed=0)
    lp = post.log_prob(s, x=x_o)
    assert s.shape == (30, 1) and torch.isfinite(lp).all()


def test_context_uses_the_transformed_x_and_helpers_stay_in_raw_units(poisson_fit):
    """The flow sees z-scored log1p(x); streaming's exact raw-x statistics do not overwrite
    that fit; the server's default observation is in raw x units."""
    from sbi_core.server.model_info import observation_range
    from sbi_core.streaming import _apply_statistics

    problem, sims, post = poisson_fit
    est = post.estimator
    x = sims.training_data()[1][:5]
    expected = est.embedding((torch.log1p(x) - est.x_norm.mean) / est.x_norm.std)
    assert torch.allclose(est.context(x), expected)
    before = est.x_norm.mean.clone()
    raw = {"theta_mean": est.theta_norm.mean, "theta_std": est.theta_norm.std,
           "x_mean": x.mean(0), "x_std": x.std(0), "x_min": est.x_min, "x_max": est.x_max}
    _apply_statistics(est, raw)
    assert torch.equal(est.x_norm.mean, before)
    default = torch.tensor(observation_range(post)["default"])
    assert torch.allclose(default, torch.expm1(before), rtol=1e-4)


def test_misspecification_detector_sees_the_transformed_features():
    """fit's detector takes the estimator's context, so it scores log1p-transformed x: a
    typical observation passes, counts far above the training range are flagged."""
    problem = _poisson_problem()
    sims = simulate(problem, 800, seed=2, progress=False)
    post = _fit_quietly(problem, sims, max_epochs=5, hidden_features=8, num_transforms=1)
    det = post.detector
    x = sims.training_data()[1][:50]
    f, ctx = det.features(x), post.estimator.context(x).detach()
    for j in range(3):  # the detector's features: its own z-scoring of the context
        assert float(torch.corrcoef(torch.stack([f[:, j], ctx[:, j]]))[0, 1]) > 0.9999
    typical = det.test(problem.observation(1)[None])
    odd = det.test(torch.tensor([[3000.0, 0.0, 9000.0]]))
    assert float(typical.density_p[0]) > 0.01
    assert float(odd.density_p[0]) < 0.05
