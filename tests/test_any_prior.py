"""Any prior (issue 16 item 1): plain torch.distributions priors, scipy.stats products and
user-written classes go through Problem -> simulate -> fit -> save -> load -> sample ->
diagnose; user classes are stored as a name that is never imported; training theta outside
the prior's support is reported (issue 15 item 11)."""

from __future__ import annotations

import importlib
import math
import sys
import textwrap
import warnings

import pytest
import torch
from scipy import stats
from torch.distributions import (
    Categorical,
    Distribution,
    ExpTransform,
    Gamma,
    Independent,
    LogNormal,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
    TransformedDistribution,
)

from sbi_core import Problem, fit, independent, load, save, simulate
from sbi_core.priors import (
    as_prior,
    prior_from_spec,
    prior_spec,
    support_bounds,
    unconstrained_transform,
    within_support,
)
from sbi_core.serialization import ModelFileError

TINY = dict(method="npe", seed=0, max_epochs=2, hidden_features=8, num_transforms=1,
            progress=False)


def noisy_identity(theta: torch.Tensor) -> torch.Tensor:
    return theta + 0.1 * torch.randn_like(theta)


def _torch_priors() -> dict[str, Distribution]:
    tril = torch.tensor([[1.0, 0.0], [0.8, 0.6]])
    return {
        "independent_lognormal": Independent(LogNormal(torch.zeros(2), 0.5 * torch.ones(2)), 1),
        "correlated_mvn": MultivariateNormal(torch.zeros(2), scale_tril=tril),
        "transformed_exp": Independent(TransformedDistribution(
            Normal(torch.zeros(2), torch.ones(2)), [ExpTransform()]), 1),
        "mixture_mvn": MixtureSameFamily(
            Categorical(torch.tensor([0.3, 0.7])),
            MultivariateNormal(torch.tensor([[-1.0, 0.0], [1.0, 0.5]]),
                               0.25 * torch.eye(2).expand(2, 2, 2))),
        "product": independent(Gamma(2.0, 1.0), ("uniform", {"low": 0.0, "high": 2.0}),
                               Normal(0.0, 1.0)),
        "scipy_product": as_prior([stats.norm(0, 1), stats.lognorm(s=0.5),
                                   stats.uniform(loc=-1, scale=2)]),
    }


EXPECTED_BOUNDS = {
    "independent_lognormal": ([0.0, 0.0], [math.inf, math.inf]),
    "correlated_mvn": ([-math.inf] * 2, [math.inf] * 2),
    "transformed_exp": ([0.0, 0.0], [math.inf, math.inf]),
    "mixture_mvn": ([-math.inf] * 2, [math.inf] * 2),
    "product": ([0.0, 0.0, -math.inf], [math.inf, 2.0, math.inf]),
    "scipy_product": ([-math.inf, 0.0, -1.0], [math.inf, math.inf, 1.0]),
}


@pytest.mark.parametrize("name", list(_torch_priors()))
def test_spec_is_plain_data_and_rebuilds_the_same_prior(name):
    prior = _torch_priors()[name]
    spec = prior_spec(prior)
    assert "user" not in repr(spec)

    def plain(v):
        return v is None or isinstance(v, (str, int, float, bool)) or (
            isinstance(v, list) and all(plain(e) for e in v)) or (
            isinstance(v, dict) and all(isinstance(k, str) and plain(e) for k, e in v.items()))

    assert plain(spec), spec
    again = prior_from_spec(spec)
    theta = prior.sample((300,))
    assert torch.allclose(prior.log_prob(theta), again.log_prob(theta), atol=1e-5)
    low, high = support_bounds(prior)
    assert (low.tolist(), high.tolist()) == EXPECTED_BOUNDS[name]
    t = unconstrained_transform(prior)
    assert within_support(prior, theta).all()
    assert within_support(prior, t(4 * torch.randn(300, theta.shape[1]))).all()
    assert torch.allclose(t(t.inv(theta)), theta, atol=1e-4)


def test_rebuild_never_looks_up_names_outside_the_allow_list():
    with pytest.raises(ValueError, match="allow-list"):
        prior_from_spec({"type": "torch", "class": "os.system", "params": {}, "children": []})
    with pytest.raises(ValueError, match="allow-list"):
        prior_from_spec({"type": "torch", "class": "TransformedDistribution", "params": {},
                         "children": [{"type": "torch", "class": "Normal",
                                       "params": {"loc": 0.0, "scale": 1.0}, "children": []}],
                         "transforms": [{"class": "__import__", "params": {}, "children": []}]})
    with pytest.raises(ValueError, match="continuous distributions of scipy.stats"):
        prior_from_spec({"type": "scipy", "components": [{"name": "__loader__", "args": []}]})


def test_subclass_of_an_allowed_class_is_user_code():
    class MyNormal(Normal):
        pass

    spec = prior_spec(Independent(MyNormal(torch.zeros(2), torch.ones(2)), 1))
    assert spec["type"] == "user" and spec["class"].endswith("Independent")
    assert spec["user_class"].endswith("MyNormal")
    with pytest.raises(ValueError, match=r"Independent containing the user-written .*MyNormal"):
        prior_from_spec(spec)


def test_scipy_prior_sampling_is_seeded_by_torch():
    prior = as_prior([stats.norm(0, 1), stats.gamma(2.0)])
    torch.manual_seed(3)
    a = prior.sample((5,))
    torch.manual_seed(3)
    b = prior.sample((5,))
    assert torch.equal(a, b) and a.dtype == torch.float32 and a.shape == (5, 2)
    expected = stats.norm(0, 1).logpdf(a[:, 0].double().numpy()) + \
        stats.gamma(2.0).logpdf(a[:, 1].double().numpy())
    assert torch.allclose(prior.log_prob(a), torch.as_tensor(expected, dtype=torch.float32))


def test_prior_without_support_uses_log_prob_for_membership():
    class NoSupport(Distribution):
        arg_constraints: dict = {}

        def __init__(self):
            super().__init__(torch.Size(), torch.Size([1]), validate_args=False)

        def log_prob(self, value):
            return torch.where(value[..., 0] > 0, -value[..., 0], -torch.inf)

    prior = NoSupport()
    assert within_support(prior, torch.tensor([[1.0], [-1.0], [math.nan]])).tolist() == \
        [True, False, False]
    assert support_bounds(prior)[0].tolist() == [-math.inf]


def _round_trip(prior, tmp_path, load_prior=None):
    problem = Problem(prior, noisy_identity, name="p")
    sims = simulate(problem, 300, seed=0, progress=False)
    posterior = fit(problem, sims, **TINY)
    path = save(posterior, tmp_path / "model.pt")
    again = load(path, prior=load_prior)
    x_o = problem.observation(1)
    samples = again.sample((100,), x_o, seed=0)
    assert samples.shape == (100, problem.dim)
    assert within_support(again.prior, samples).all()
    assert torch.isfinite(again.log_prob(samples, x_o)).all()
    return problem, posterior, again


@pytest.mark.parametrize("name", list(_torch_priors()))
def test_fit_save_load_sample_diagnose(name, tmp_path):
    from diagnostics import diagnose

    prior = _torch_priors()[name]
    problem, posterior, again = _round_trip(prior, tmp_path)
    x_o = problem.observation(2)
    assert torch.allclose(posterior.sample((20,), x_o, seed=1), again.sample((20,), x_o, seed=1),
                          atol=1e-5)
    report = diagnose(again, problem, num=8, num_samples=30, checks=["sbc"], progress=False)
    assert report.sections["sbc"]["status"] in ("pass", "warn", "fail")
    assert "raised" not in report.sections["sbc"]["why"]


USER_MODULE = '''
import pathlib, torch
from torch.distributions import Distribution, constraints

pathlib.Path({marker!r}).write_text("imported")


class PositivePair(Distribution):
    """A user-written prior: two independent Exp(rate) parameters."""

    arg_constraints = {{}}
    support = constraints.independent(constraints.positive, 1)

    def __init__(self, rate=1.0):
        self.rate = torch.as_tensor(float(rate))
        super().__init__(torch.Size(), torch.Size([2]), validate_args=False)

    def sample(self, sample_shape=torch.Size()):
        u = torch.rand(*sample_shape, 2)
        return -torch.log1p(-u) / self.rate

    def log_prob(self, value):
        inside = (value > 0).all(-1)
        lp = (torch.log(self.rate) - self.rate * value).sum(-1)
        return torch.where(inside, lp, torch.full_like(lp, -torch.inf))
'''


def test_user_written_prior_is_stored_as_a_name_never_imported(tmp_path, monkeypatch):
    marker = tmp_path / "imported.txt"
    (tmp_path / "user_prior_mod.py").write_text(textwrap.dedent(USER_MODULE.format(
        marker=str(marker))))
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = importlib.import_module("user_prior_mod")
    prior = mod.PositivePair(2.0)
    with pytest.warns(UserWarning, match=r"user-written class \(user_prior_mod.PositivePair\)"
                                         r".*load\(path, prior=\.\.\.\)"):
        problem = Problem(prior, noisy_identity, name="user")
    sims = simulate(problem, 300, seed=0, progress=False)
    posterior = fit(problem, sims, **TINY)
    path = save(posterior, tmp_path / "user.pt")

    # the module named in the file is gone; loading without the prior must not bring it back
    del sys.modules["user_prior_mod"]
    marker.unlink()
    with pytest.raises(ModelFileError, match=r"user-written prior user_prior_mod.PositivePair.*"
                                             r"never imported.*prior=PositivePair\(\.\.\.\).*"
                                             r"--problem"):
        load(path)
    assert "user_prior_mod" not in sys.modules and not marker.exists()

    again = load(path, prior=prior)
    x_o = problem.observation(1)
    samples = again.sample((100,), x_o, seed=0)
    assert (samples > 0).all()
    assert torch.allclose(samples, posterior.sample((100,), x_o, seed=0), atol=1e-5)
    assert torch.isfinite(again.log_prob(samples, x_o)).all()
    # a Problem is accepted as well (what --problem gives the CLI)
    assert load(path, prior=problem).prior is prior
    with pytest.raises(ModelFileError, match="event shape"):
        load(path, prior=Independent(Normal(torch.zeros(3), torch.ones(3)), 1))


def test_load_warns_when_the_given_prior_differs(tmp_path):
    prior = Independent(LogNormal(torch.zeros(2), 0.5 * torch.ones(2)), 1)
    _, _, _ = _round_trip(prior, tmp_path)
    path = tmp_path / "model.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load(path, prior=Independent(LogNormal(torch.zeros(2), 0.5 * torch.ones(2)), 1))
    with pytest.warns(UserWarning, match="differs from the one saved"):
        load(path, prior=Independent(LogNormal(torch.ones(2), 0.5 * torch.ones(2)), 1))


def test_served_posterior_with_a_plain_torch_prior(tmp_path):
    from fastapi.testclient import TestClient

    from sbi_core.server import create_app

    prior = Independent(LogNormal(torch.zeros(2), 0.5 * torch.ones(2)), 1)
    problem, _, again = _round_trip(prior, tmp_path)
    client = TestClient(create_app({"lognormal": again}, max_samples=1000))
    info = client.get("/api/models/lognormal").json()
    assert info["prior"]["low"] == [0.0, 0.0] and info["prior"]["high"] == [None, None]
    x = problem.observation(1).tolist()
    r = client.post("/api/models/lognormal/sample", json={"x": x, "n": 50, "seed": 3})
    assert r.status_code == 200, r.text
    got = torch.tensor(r.json()["samples"])
    assert got.shape == (50, 2) and (got > 0).all()
    assert torch.allclose(got, again.sample((50,), torch.tensor(x), seed=3), atol=1e-5)


def test_trained_estimator_survives_a_failing_save(tmp_path):
    prior = MultivariateNormal(torch.zeros(2), torch.tensor([[1.0, 0.5], [0.5, 1.0]]))
    problem = Problem(prior, noisy_identity)
    posterior = fit(problem, simulate(problem, 300, seed=0, progress=False), **TINY)
    x_o = problem.observation(1)
    before = posterior.sample((10,), x_o, seed=0)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OSError):
        save(posterior, blocker / "model.pt")
    assert torch.equal(posterior.sample((10,), x_o, seed=0), before)
    assert load(save(posterior, tmp_path / "ok.pt")).sample((10,), x_o, seed=0).allclose(
        before, atol=1e-5)


def test_fit_reports_training_theta_outside_the_support():
    prior = Independent(LogNormal(torch.zeros(2), torch.ones(2)), 1)
    problem = Problem(prior, noisy_identity)
    theta = prior.sample((200,))
    theta[:7, 0] = -1.0  # 7 of 200 rows (3.5%) below the lower bound 0
    x = noisy_identity(theta)
    with pytest.warns(UserWarning, match=r"7 of 200 training θ \(3\.5%\) lie outside"):
        fit(problem, (theta, x), **TINY)
    with pytest.raises(ValueError, match=r"None of the 200 training θ.*sbi_core.simulate"):
        fit(problem, (-theta.abs() - 1, x), **TINY)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        from sbi_core.inference import check_theta_in_support

        check_theta_in_support(problem, prior.sample((200,)))


def test_problem_accepts_scipy_and_rejects_other_objects():
    problem = Problem([stats.norm(0, 1), stats.expon()], noisy_identity)
    assert problem.dim == 2 and problem.spec()["prior"]["type"] == "scipy"
    assert Problem(stats.norm(loc=[0.0, 1.0, 2.0]), noisy_identity).dim == 3
    with pytest.raises(TypeError, match="torch.distributions.Distribution"):
        Problem("uniform", noisy_identity)
    with pytest.raises(ValueError, match="Independent"):
        Problem(Normal(torch.zeros(2), torch.ones(2)), noisy_identity)


PROBLEM_FILE = '''
import torch
from torch.distributions import Distribution, constraints
from sbi_core import Problem


class HalfLine(Distribution):
    arg_constraints = {}
    support = constraints.independent(constraints.positive, 1)

    def __init__(self):
        super().__init__(torch.Size(), torch.Size([2]), validate_args=False)

    def sample(self, sample_shape=torch.Size()):
        return -torch.log1p(-torch.rand(*sample_shape, 2))

    def log_prob(self, value):
        lp = -value.sum(-1)
        return torch.where((value > 0).all(-1), lp, torch.full_like(lp, -torch.inf))


def make():
    return Problem(HalfLine(), lambda t: t + 0.1 * torch.randn_like(t), name="halfline")
'''


def test_cli_sample_needs_problem_for_a_user_prior(tmp_path, capsys):
    from sbi_core.cli.main import main
    from sbi_core.resolve import resolve_problem

    (tmp_path / "halfline.py").write_text(PROBLEM_FILE)
    ref = f"{tmp_path / 'halfline.py'}:make"
    with pytest.warns(UserWarning, match="user-written class"):
        problem = resolve_problem(ref)
    model = save(fit(problem, simulate(problem, 300, seed=0, progress=False), **TINY),
                 tmp_path / "m.pt")
    xfile = tmp_path / "x.csv"
    xfile.write_text("0.5,1.0\n")
    out = tmp_path / "s.csv"
    argv = ["sample", str(model), "--x", str(xfile), "--num", "20", "--out", str(out)]
    assert main(argv) == 2
    assert "--problem" in capsys.readouterr().err and not out.exists()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([*argv, "--problem", ref]) == 0
    rows = out.read_text().strip().splitlines()
    assert len(rows) == 21
    assert all(float(v) > 0 for row in rows[1:] for v in row.split(",")[1:])


def test_score_estimator_rebuilt_with_the_given_user_prior(tmp_path, monkeypatch):
    """NPSE stores the prior in its estimator config; at load the given prior is passed in."""
    (tmp_path / "halfline_mod.py").write_text(PROBLEM_FILE)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(UserWarning):
        problem = importlib.import_module("halfline_mod").make()
    post = fit(problem, simulate(problem, 300, seed=0, progress=False), method="npse", seed=0,
               max_epochs=2, hidden_features=16, progress=False)
    path = save(post, tmp_path / "npse.pt")
    with pytest.raises(ModelFileError, match="halfline_mod.HalfLine"):
        load(path)
    again = load(path, prior=problem.prior)
    x_o = problem.observation(1)
    samples = again.sample((30,), x_o, seed=0)
    assert samples.shape == (30, 2) and (samples > 0).all()


def test_likelihood_posterior_log_prob_outside_a_validating_prior_is_minus_inf():
    """torch distributions validate by default: LogNormal.log_prob(-1) raises. The MCMC
    posterior's potential must give -inf there instead of raising."""
    prior = Independent(LogNormal(torch.zeros(2), 0.5 * torch.ones(2)), 1)
    assert prior._validate_args
    problem = Problem(prior, noisy_identity)
    post = fit(problem, simulate(problem, 300, seed=0, progress=False), method="nle", seed=0,
               max_epochs=2, hidden_features=8, num_transforms=1, progress=False)
    lp = post.log_prob(torch.tensor([[-1.0, 1.0], [1.0, 1.0]]), problem.observation(1))
    assert lp[0] == -math.inf and torch.isfinite(lp[1])


def test_scipy_prior_gradient_and_refusal_of_discrete_distributions():
    prior = as_prior([stats.norm(0, 2), stats.gamma(2.0)])
    theta = torch.tensor([[0.5, 1.5], [-1.0, 3.0]], dtype=torch.float64, requires_grad=True)
    prior.log_prob(theta).sum().backward()
    # d/dx log N(x; 0, 2) = -x / 4;  d/dx log Gamma(x; 2) = 1/x - 1
    expected = torch.tensor([[-0.125, 1 / 1.5 - 1], [0.25, 1 / 3 - 1]], dtype=torch.float64)
    assert torch.allclose(theta.grad, expected, atol=1e-5)
    with pytest.raises(ValueError, match="not a continuous distribution"):
        as_prior(stats.poisson(3.0))
    with pytest.raises(TypeError, match="frozen"):
        as_prior([stats.norm(0, 1), "x"])


def test_prior_shape_mistakes_name_the_fix():
    """A scalar torch distribution, a batch without Independent, and a list given to
    independent() are refused with the call that fixes each."""
    from torch.distributions import Normal, Uniform

    from sbi_core import Problem, independent

    with pytest.raises(ValueError, match=r"event shape \(\).*sbi_core\.independent\(dist\)"):
        Problem(Normal(0.0, 1.0), lambda t: t)
    with pytest.raises(ValueError, match=r"batch shape \(2,\).*Independent\(dist, 1\)"):
        Problem(Uniform(torch.zeros(2), torch.ones(2)), lambda t: t)
    with pytest.raises(TypeError, match=r"separate arguments: independent\(\*components\)"):
        independent([Normal(0.0, 1.0)])
    with pytest.raises(TypeError, match="got a component 5"):
        independent(5)
    assert Problem(independent(Normal(0.0, 1.0)), lambda t: t).dim == 1
