"""MNLE (mixed discrete + continuous x) and NPE with one-hot discrete x columns.

The simulator is a cheap choice + reaction-time model with a closed-form likelihood:
``choice ~ Bernoulli(sigmoid(theta_1))``, ``rt | choice ~ LogNormal(theta_2 + 0.5 choice, 0.3)``,
``theta ~ U([-2, 2] x [-1, 1])``. The reference posterior for a set of iid trials is
computed on a 401 x 401 grid over the prior box (exact up to the grid spacing, which the
samples are jittered over).
"""

import math

import pytest
import torch
from torch.nn.functional import logsigmoid

from diagnostics.c2st import c2st
from estimators.discrete_x import discrete_config
from estimators.mnle import build_mnle
from sbi_core import Problem, box_uniform, fit, load, save, simulate
from sbi_core.posterior import ObservationError

MCMC = {"num_chains": 20, "warmup_steps": 50, "progress": False}
THETA_O = torch.tensor([0.5, 0.2])
SMALL = dict(hidden_features=32, num_transforms=2, categorical_hidden=32, progress=False)


def choice_rt(theta: torch.Tensor) -> torch.Tensor:
    """``theta`` ``(N, 2)`` → ``x`` ``(N, 2)`` = (choice in {0, 1}, reaction time > 0)."""
    choice = torch.bernoulli(torch.sigmoid(theta[:, 0]))
    rt = torch.exp(theta[:, 1] + 0.5 * choice + 0.3 * torch.randn_like(choice))
    return torch.stack([choice, rt], 1)


def exact_log_likelihood(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Sum over iid trials ``x`` ``(n, 2)`` of ``log p(x_i | theta)`` for ``theta`` ``(M, 2)``."""
    c, rt = x[:, 0][None], x[:, 1][None]
    ll = c * logsigmoid(theta[:, :1]) + (1 - c) * logsigmoid(-theta[:, :1])
    ll = ll + torch.distributions.LogNormal(theta[:, 1:2] + 0.5 * c, 0.3).log_prob(rt)
    return ll.sum(1)


def grid_reference(x: torch.Tensor, n: int = 1000) -> torch.Tensor:
    g1, g2 = torch.linspace(-2, 2, 401), torch.linspace(-1, 1, 401)
    grid = torch.stack([t.flatten() for t in torch.meshgrid(g1, g2, indexing="ij")], 1)
    weights = torch.softmax(exact_log_likelihood(grid, x), 0)  # uniform prior
    gen = torch.Generator().manual_seed(0)
    idx = torch.multinomial(weights, n, replacement=True, generator=gen)
    jitter = (torch.rand(n, 2, generator=gen) - 0.5) * torch.tensor([0.01, 0.005])
    return grid[idx] + jitter


@pytest.fixture(scope="module")
def problem():
    return Problem(box_uniform([-2.0, -1.0], [2.0, 1.0]), choice_rt, name="choice_rt",
                   x_discrete=[0])


@pytest.fixture(scope="module")
def sims(problem):
    return simulate(problem, 5000, seed=0, progress=False)


@pytest.fixture(scope="module")
def trials():
    torch.manual_seed(5)
    return choice_rt(THETA_O.expand(20, 2))


@pytest.fixture(scope="module")
def mnle(problem, sims):
    # MAF on the 1-D log reaction time: the true conditional is Gaussian there.
    return fit(problem, sims, method="mnle", flow="maf", log_columns=[1], seed=0,
               max_epochs=300, mcmc=MCMC, **SMALL)


def test_c2st_against_grid_reference_for_20_iid_trials(mnle, trials):
    samples = mnle.sample((1000,), x=trials, seed=0)
    score = c2st(samples, grid_reference(trials), seed=0)
    assert score < 0.6, f"MNLE vs exact posterior for 20 trials: C2ST {score:.3f}"
    assert float(mnle.last_mcmc.rhat.max()) < 1.1


def test_declaration_reaches_the_estimator_and_the_saved_spec(mnle, problem):
    cfg = mnle.estimator.config
    assert cfg["discrete_columns"] == [0] and cfg["num_categories"] == [2]
    assert cfg["discrete_low"] == [0] and cfg["log_columns"] == [1]
    assert problem.spec()["x_discrete"] == [0] and mnle.problem_spec["x_discrete"] == [0]
    # the discrete column is not z-scored; the log reaction time is (std of log rt ~ 0.6)
    assert not hasattr(mnle.estimator, "x_norm") and mnle.estimator.c_norm.std.shape == (1,)
    assert 0.4 < float(mnle.estimator.c_norm.std[0]) < 0.8


def test_synthetic_data_follow_the_simulator(mnle):
    theta = torch.tensor([[1.0, -0.5], [-1.0, 0.5]])
    with torch.no_grad():
        x = mnle.estimator.sample(4000, theta)  # (4000, 2, 2)
    choice, log_rt = x[..., 0], x[..., 1].log()
    assert set(choice.unique().tolist()) <= {0.0, 1.0}
    assert torch.allclose(choice.mean(0), torch.sigmoid(theta[:, 0]), atol=0.05)
    for b in range(2):  # E[log rt | choice] = theta_2 + 0.5 choice, sd 0.3
        for c in (0.0, 1.0):
            sel = log_rt[:, b][choice[:, b] == c]
            assert abs(float(sel.mean()) - (float(theta[b, 1]) + 0.5 * c)) < 0.08
            assert abs(float(sel.std()) - 0.3) < 0.06


def test_log_prob_is_prior_plus_summed_trial_likelihoods(mnle, trials):
    theta = torch.tensor([[0.5, 0.2], [-1.0, 0.0], [1.5, -0.5]])
    single = torch.stack([mnle.log_prob(theta, x) for x in trials[:5]])  # (5, 3)
    prior_lp = mnle.prior.log_prob(theta)
    assert torch.allclose(mnle.log_prob(theta, trials[:5]), prior_lp + (single - prior_lp).sum(0),
                          atol=1e-3)
    # near the truth, the learned log-likelihood ratio between two parameters is close to exact
    pair = torch.tensor([[0.5, 0.2], [0.5, 0.35]])
    learned = mnle.log_prob(pair, trials)
    exact = exact_log_likelihood(pair, trials)
    assert abs(float((learned[0] - learned[1]) - (exact[0] - exact[1]))) < 0.25 * float(
        (exact[0] - exact[1]).abs()) + 1.0


def test_map_and_batched_sets(mnle, trials):
    reference = grid_reference(trials)
    assert torch.allclose(mnle.map(trials), reference.mean(0), atol=0.3)
    sets = torch.stack([trials[:10], trials[10:]])  # (B=2, n=10, 2)
    out = mnle.sample_batched((100,), sets, seed=0, num_chains=10)
    assert out.shape == (100, 2, 2) and bool(torch.isfinite(out).all())


def test_save_load_roundtrip(mnle, trials, tmp_path):
    again = load(save(mnle, tmp_path / "mnle.pt"))
    assert again.method == "mnle" and again.estimator.config["num_categories"] == [2]
    theta = torch.tensor([[0.5, 0.2], [-1.0, 0.0]])
    assert torch.allclose(again.log_prob(theta, trials), mnle.log_prob(theta, trials))


def test_unseen_or_bad_observations_raise_clear_errors(mnle):
    theta = torch.tensor([[0.5, 0.2]])
    with pytest.raises(ObservationError, match="column 0 has value 2.*never occurred"):
        mnle.log_prob(theta, torch.tensor([2.0, 1.0]))
    with pytest.raises(ObservationError, match="column 0 has value 0.5"):
        mnle.log_prob(theta, torch.tensor([0.5, 1.0]))
    with pytest.raises(ObservationError, match="log scale"):
        mnle.log_prob(theta, torch.tensor([[1.0, 1.0], [1.0, -0.1]]))
    with pytest.raises(ObservationError, match="never occurred"):
        mnle.estimator.log_likelihood(theta, torch.tensor([[-1.0, 1.0]]))


def test_wrong_declarations_fail_at_fit_with_the_fix(problem, sims):
    theta, x = sims.training_data()
    with pytest.raises(ValueError, match="x column 1 is declared discrete but holds non-integer"):
        fit(problem, (theta, x), method="mnle", discrete_columns=[1], max_epochs=1,
            progress=False)
    with pytest.raises(ValueError, match="x_discrete declares columns \\[1\\]"):
        Problem(problem.prior, choice_rt, x_discrete=[1])
    with pytest.raises(ValueError, match="distinct indices"):
        Problem(problem.prior, choice_rt, x_discrete=[2])
    plain = Problem(problem.prior, choice_rt)
    with pytest.raises(ValueError, match="discrete_columns=\\[0\\]"):
        fit(plain, (theta, x), method="mnle", max_epochs=1, progress=False)
    with pytest.raises(ValueError, match="log_columns \\[0\\] are not continuous"):
        build_mnle(theta, x, None, discrete_columns=[0], log_columns=[0])
    shifted = x.clone()
    shifted[:5, 1] = -1.0
    with pytest.raises(ValueError, match="column 1 has values <= 0"):
        build_mnle(theta, shifted, None, discrete_columns=[0], log_columns="all")
    with pytest.raises(TypeError, match="Unknown MNLE options"):
        build_mnle(theta, x, None, discrete_columns=[0], blocks=2)


def test_discrete_columns_option_without_declaration(problem, sims):
    theta, x = sims.training_data()
    plain = Problem(problem.prior, choice_rt)
    post = fit(plain, (theta[:500], x[:500]), method="mnle", discrete_columns=[0],
               max_epochs=2, mcmc=MCMC, **SMALL)
    assert post.estimator.config["discrete_columns"] == [0]
    assert torch.isfinite(post.log_prob(torch.zeros(3, 2), x[:4])).all()


def test_several_discrete_columns_form_a_normalized_distribution():
    """Autoregressive categoricals over (count 0..3, choice -1/+1) + one continuous column:
    summed over all discrete configurations, p(d | theta) is 1 for any theta."""
    torch.manual_seed(0)
    theta = torch.rand(400, 2)
    count = torch.distributions.Binomial(3, theta[:, 0]).sample()
    choice = 2 * torch.bernoulli(theta[:, 1]) - 1
    x = torch.stack([count, torch.randn(400) + count, choice], 1)
    assert discrete_config(x, [2, 0]) == {"discrete_columns": [2, 0], "discrete_low": [-1, 0],
                                          "num_categories": [3, 4]}
    est = build_mnle(theta, x, None, discrete_columns=[0, 2], hidden_features=16,
                     num_transforms=1)
    codes = torch.cartesian_prod(torch.arange(4.0), torch.tensor([-1.0, 1.0]))  # seen configs
    t = est.theta_norm(theta[:3])
    total = torch.zeros(3)
    for c in codes:
        xc = c.expand(3, 2)
        k = est.discrete.codes(torch.stack([xc[:, 0], torch.zeros(3), xc[:, 1]], 1))
        total += est._discrete_log_prob(t, k, est.discrete.one_hot(k)).exp()
    assert torch.allclose(total, torch.ones(3), atol=1e-5)
    loss = est.loss(theta[:64], x[:64])
    assert loss.shape == (64,) and bool(torch.isfinite(loss).all())
    assert est.sample(5, theta[:3]).shape == (5, 3, 3)


def test_nle_warns_that_declared_discrete_columns_are_treated_as_continuous(problem, sims):
    theta, x = sims.training_data()
    with pytest.warns(UserWarning, match="treats them as continuous"):
        fit(problem, (theta[:300], x[:300]), method="nle", max_epochs=1, progress=False,
            hidden_features=8, num_transforms=1)


def test_npe_one_hot_discrete_columns_train_and_sample(problem, sims, trials):
    theta, x = sims.training_data()
    opts = dict(max_epochs=30, hidden_features=32, num_transforms=2, progress=False)
    one_hot = fit(problem, (theta, x), method="npe", seed=0, **opts)  # declared -> one-hot
    plain = fit(problem, (theta, x), method="npe", seed=0, discrete_columns=None, **opts)
    est = one_hot.estimator
    assert est.config["discrete_columns"] == [0] and est.discrete_x is not None
    assert plain.estimator.discrete_x is None
    # the context sees the z-scored rt and the one-hot choice, not a z-scored 0/1 code
    feats = est.discrete_x(trials[:3], est.x_norm)
    assert feats.shape == (3, 3)
    assert torch.equal(feats[:, 1:], torch.nn.functional.one_hot(trials[:3, 0].long(), 2).float())
    x_o = trials[0]
    for post in (one_hot, plain):
        samples = post.sample((500,), x=x_o, seed=0)
        assert samples.shape == (500, 2) and bool(torch.isfinite(samples).all())
        assert math.isfinite(float(post.log_prob(THETA_O, x_o)))
    # one trial: the rt pins theta_2 + 0.5 choice to within ~0.3, so the posterior mean of
    # theta_2 is near log(rt) - 0.5 choice
    expected = float(x_o[1].log() - 0.5 * x_o[0])
    assert abs(float(one_hot.sample((500,), x=x_o, seed=0)[:, 1].mean()) - expected) < 0.2
    with pytest.raises(ObservationError, match="never occurred"):
        one_hot.sample((10,), x=torch.tensor([3.0, 1.0]))
    with pytest.raises(ValueError, match="regularizer"):
        fit(problem, (theta, x), method="npe", regularizer="noise", max_epochs=1,
            progress=False)


@pytest.mark.slow
def test_mnle_slow_default_flow_50_trials(problem):
    """The default continuous flow (NSF), more simulations, 50 iid trials."""
    sims = simulate(problem, 20_000, seed=1, progress=False)
    post = fit(problem, sims, method="mnle", log_columns=[1], seed=1, progress=False,
               mcmc={"num_chains": 50, "warmup_steps": 100, "progress": False})
    torch.manual_seed(7)
    trials = choice_rt(torch.tensor([-0.8, -0.3]).expand(50, 2))
    samples = post.sample((2000,), x=trials, seed=0)
    score = c2st(samples, grid_reference(trials, 2000), seed=0)
    assert score < 0.65, f"MNLE (NSF) vs exact posterior for 50 trials: C2ST {score:.3f}"


PROBLEM_FILE = '''
import torch
from sbi_core import Problem, box_uniform

def simulator(theta):
    choice = torch.bernoulli(torch.sigmoid(theta[:, 0]))
    rt = torch.exp(theta[:, 1] + 0.5 * choice + 0.3 * torch.randn_like(choice))
    return torch.stack([choice, rt], 1)

def make():
    return Problem(box_uniform([-2.0, -1.0], [2.0, 1.0]), simulator, name="choice_rt",
                   x_discrete=[0])
'''


def test_cli_trains_mnle_from_the_problem_declaration(tmp_path):
    from sbi_core.cli.main import main

    (tmp_path / "choice_rt.py").write_text(PROBLEM_FILE)
    ref, sims, model = f"{tmp_path / 'choice_rt.py'}:make", tmp_path / "s.pt", tmp_path / "m.pt"
    assert main(["simulate", ref, "--num", "400", "--out", str(sims), "--quiet"]) == 0
    # a problem recorded in the simulation file is never imported: the user names it again
    assert main(["train", "--sims", str(sims), "--problem", ref, "--method", "mnle",
                 "--log-columns", "1", "--max-epochs", "2", "--out", str(model), "--quiet"]) == 0
    cfg = load(model).estimator.config
    assert cfg["discrete_columns"] == [0] and cfg["log_columns"] == [1]
