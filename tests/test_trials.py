"""Declared exchangeable trials (``Problem(x_trials=(n, d))``): validation, the NPE default it
selects, permutation invariance, save/load, and one accuracy check against an analytic
posterior."""

import pytest
import torch

import simulators
from diagnostics.c2st import c2st
from estimators.trials import permute_trials, sort_trials
from sbi_core import Problem, fit, load, save, simulate
from sbi_core.priors import gaussian

N_TRIALS, DIM = 5, 2


def _iid_gaussian(theta: torch.Tensor) -> torch.Tensor:
    """``N_TRIALS`` draws of ``N(theta, I)``, flattened to ``(N, N_TRIALS * DIM)``."""
    x = theta[:, None, :] + torch.randn(theta.shape[0], N_TRIALS, DIM)
    return x.reshape(theta.shape[0], -1)


def _problem(**kwargs) -> Problem:
    return Problem(gaussian(torch.zeros(DIM), torch.ones(DIM)), _iid_gaussian,
                   name="iid_gaussian", **{"x_trials": (N_TRIALS, DIM), **kwargs})


def _reorder(x: torch.Tensor, order: list[int]) -> torch.Tensor:
    return x.reshape(N_TRIALS, DIM)[order].reshape(-1)


REORDER = [3, 0, 4, 2, 1]


def test_declaration_is_validated_and_saved():
    assert _problem().spec()["x_trials"] == [N_TRIALS, DIM]
    assert "x_trials" not in _problem(x_trials=None).spec()
    with pytest.raises(ValueError, match=r"x_trials=\(4, 2\) covers 8 values, but x has 10"):
        _problem(x_trials=(4, 2))
    for bad in [(10,), (0, 10), (2.5, 4), ("a", "b"), 7]:
        with pytest.raises(ValueError, match="must be two positive integers"):
            _problem(x_trials=bad)
    # the built-in problems: slcp's x is 4 iid 2-D draws, gaussian_linear's x is one draw
    assert simulators.get_problem("slcp").spec()["x_trials"] == [4, 2]
    assert simulators.get_problem("gaussian_linear").x_trials is None


def test_sort_and_permute_helpers():
    torch.manual_seed(0)
    x = torch.randn(6, N_TRIALS * DIM)
    x[0, 2] = x[0, 0]  # a tie in the first value: broken by the second
    perm = torch.stack([_reorder(r, REORDER) for r in x])
    assert torch.equal(sort_trials(x, N_TRIALS, DIM), sort_trials(perm, N_TRIALS, DIM))
    s = sort_trials(x, N_TRIALS, DIM).reshape(6, N_TRIALS, DIM)
    assert (s[:, 1:, 0] >= s[:, :-1, 0]).all()
    p = permute_trials(x, N_TRIALS, DIM).reshape(6, N_TRIALS, DIM)
    # same trials (as sets), and not all rows in their original order
    assert torch.equal(p.sort(1).values, x.reshape(6, N_TRIALS, DIM).sort(1).values)
    assert not torch.equal(p.reshape(6, -1), x)


@pytest.fixture(scope="module")
def sims():
    return simulate(_problem(), 600, seed=0, progress=False)


def _quick_fit(problem, sims, **options):
    return fit(problem, sims, max_epochs=2, hidden_features=16, num_transforms=2,
               progress=False, detector=False, seed=0, **options)


@pytest.mark.parametrize("options,mode,exact", [
    ({}, "sort", True), ({"trial_mode": "set"}, "set", False),
    ({"embedding": {"type": "set", "moments": True}}, "set", False)])
def test_default_and_sort_are_permutation_invariant(sims, options, mode, exact):
    problem = _problem()
    post = _quick_fit(problem, sims, **options)
    cfg = post.estimator.config
    assert cfg["x_trials"] == [N_TRIALS, DIM] and cfg["trial_mode"] == mode
    # one mean / std per trial feature, shared by all trials
    mean = post.estimator.x_norm.mean.reshape(N_TRIALS, DIM)
    assert torch.equal(mean, mean[:1].expand(N_TRIALS, DIM))
    x = problem.observation(1)
    theta = post.sample((50,), x=x, seed=1)
    a = post.log_prob(theta, x=x)
    b = post.log_prob(theta, x=_reorder(x, REORDER))
    if exact:
        assert torch.equal(a, b)
    else:  # the DeepSet's mean over trials differs only by float rounding of the sum order
        assert torch.allclose(a, b, atol=1e-4, rtol=0)
    assert torch.equal(post.sample((20,), x=x, seed=3),
                       post.sample((20,), x=_reorder(x, REORDER), seed=3)) or not exact


def test_identity_embedding_turns_it_off_and_permute_trains_on_reorderings(sims):
    problem = _problem()
    off = _quick_fit(problem, sims, embedding="identity")
    assert off.estimator.config["x_trials"] is None and off.estimator.config["trial_mode"] is None
    x = problem.observation(1)
    theta = off.sample((50,), x=x, seed=1)
    # a flat estimator is not invariant (what the declaration buys)
    assert not torch.allclose(off.log_prob(theta, x=x),
                              off.log_prob(theta, x=_reorder(x, REORDER)), atol=1e-3)
    perm = _quick_fit(problem, sims, trial_mode="permute")
    est = perm.estimator
    assert est.config["trial_mode"] == "permute" and est.config["embedding"] is None
    theta_t, x_t = sims.training_data()
    est.train()
    with torch.no_grad():
        torch.manual_seed(0)
        l1 = est.loss(theta_t[:64], x_t[:64])
        torch.manual_seed(1)
        l2 = est.loss(theta_t[:64], x_t[:64])
    assert not torch.allclose(l1, l2)  # a fresh order of the trials in each training batch
    est.eval()
    with torch.no_grad():
        assert torch.equal(est.loss(theta_t[:64], x_t[:64]), est.loss(theta_t[:64], x_t[:64]))


def test_option_errors(sims):
    problem = _problem()
    with pytest.raises(ValueError, match="trial_mode='set' uses the set embedding"):
        _quick_fit(problem, sims, embedding="identity", trial_mode="set")
    with pytest.raises(ValueError, match="Unknown trial_mode 'shuffle'"):
        _quick_fit(problem, sims, trial_mode="shuffle")
    undeclared = _problem(x_trials=None)
    with pytest.raises(ValueError, match=r"declare them with Problem\(\.\.\., x_trials"):
        _quick_fit(undeclared, sims, trial_mode="sort")
    # fit(x_trials=...) declares them for one fit
    post = _quick_fit(undeclared, sims, x_trials=[N_TRIALS, DIM])
    assert post.estimator.config["trial_mode"] == "sort"


def test_save_load_round_trip(sims, tmp_path):
    problem = _problem()
    post = _quick_fit(problem, sims)
    path = tmp_path / "trials.pt"
    save(post, path)
    raw = torch.load(path, weights_only=True)
    assert raw["problem"]["x_trials"] == [N_TRIALS, DIM]
    assert raw["estimator_config"]["x_trials"] == [N_TRIALS, DIM]
    again = load(path)
    x = problem.observation(2)
    theta = post.sample((30,), x=x, seed=0)
    assert torch.equal(post.log_prob(theta, x=x), again.log_prob(theta, x=x))
    assert again.estimator.config["trial_mode"] == "sort"
    # the set embedding with moments round-trips too (plain spec, weights only)
    post = _quick_fit(problem, sims, embedding={"type": "set", "moments": True})
    save(post, path)
    again = load(path)
    assert again.estimator.config["embedding"] == {"type": "set", "moments": True}
    assert torch.equal(post.log_prob(theta, x=x), again.log_prob(theta, x=x))


def test_declared_trials_learn_the_analytic_posterior():
    """Prior N(0, I), x_i ~ N(theta, I) for 5 trials: posterior N(sum x / 6, I / 6). The
    default (sorted trials) reaches C2ST < 0.6 from 2,000 simulations."""
    problem = _problem()
    sims = simulate(problem, 2000, seed=0, progress=False)
    post = fit(problem, sims, max_epochs=40, progress=False, detector=False, seed=0)
    x = problem.observation(1)
    n = N_TRIALS + 1
    mean = x.reshape(N_TRIALS, DIM).sum(0) / n
    torch.manual_seed(0)
    ref = mean + torch.randn(2000, DIM) / n ** 0.5
    score = c2st(post.sample((2000,), x=x, seed=0), ref, seed=0)
    assert score < 0.6, score


def test_ensemble_members_use_the_declaration(sims):
    problem = _problem()
    post = _quick_fit(problem, sims, ensemble=2, trial_mode="set")
    est = post.estimator
    assert est.config["x_trials"] == [N_TRIALS, DIM] and est.config["trial_mode"] == "set"
    x = problem.observation(1)
    theta = problem.prior.sample((40,))
    with torch.no_grad():
        a = est.log_prob(theta, x.expand(40, -1))
        b = est.log_prob(theta, _reorder(x, REORDER).expand(40, -1))
    assert torch.allclose(a, b, atol=1e-4, rtol=0)
