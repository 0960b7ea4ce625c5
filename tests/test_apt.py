"""SNPE-C / APT: the atomic loss (exact checks), train_apt on every NPE flow, and 2 rounds."""

import math

import pytest
import torch

import simulators
from diagnostics.c2st import c2st
from estimators.apt import apt_loss, atom_indices, train_apt
from estimators.npe import METHOD, build_npe
from sbi_core import simulate
from sbi_core.priors import box_uniform, gaussian
from sbi_core.training import TrainConfig, train

TINY = {"hidden_features": 16, "num_transforms": 2}


def _data(prior, n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    theta = prior.sample((n,))
    x = theta + 0.3 * torch.randn(theta.shape, generator=g)
    return theta, x


def _explicit_loss(est, prior, theta, x, idx):
    """The textbook formula, one row and one atom at a time."""
    out = []
    for i in range(theta.shape[0]):
        logits = torch.stack([
            est.log_prob(theta[j][None], x[i][None])[0] - prior.log_prob(theta[j][None])[0]
            for j in idx[i].tolist()])
        out.append(-(logits[0] - torch.logsumexp(logits, 0)))
    return torch.stack(out)


def test_atoms_exclude_own_row_without_replacement():
    idx = atom_indices(50, 10, torch.Generator().manual_seed(0))
    assert idx.shape == (50, 10)
    assert torch.equal(idx[:, 0], torch.arange(50))
    assert not bool((idx[:, 1:] == torch.arange(50)[:, None]).any())  # never the row itself
    s = idx.sort(1).values
    assert bool((s[:, 1:] != s[:, :-1]).all())  # distinct
    # Each other row is equally likely: 4 rows, 2 other atoms -> probability 2/3 each.
    counts = torch.zeros(4, 4)
    for _ in range(3000):
        i = atom_indices(4, 3)
        counts[torch.arange(4)[:, None], i[:, 1:]] += 1
    freq = counts / 3000
    off = freq[~torch.eye(4, dtype=torch.bool)]
    assert torch.allclose(off, torch.full_like(off, 2 / 3), atol=0.04), freq
    assert bool((freq.diagonal() == 0).all())


@pytest.mark.parametrize("flow,transform,prior", [
    ("fmaf", None, gaussian([0.0, 0.0], std=[1.0, 2.0])),
    ("fmaf", "unconstrained", box_uniform([-2.0, -1.0], [2.0, 3.0])),
    ("mdn", None, gaussian([0.0, 0.0], std=[1.0, 2.0])),
])
def test_atomic_loss_equals_explicit_formula(flow, transform, prior):
    theta, x = _data(prior, 7)
    torch.manual_seed(0)
    est = build_npe(theta, x, prior, flow=flow, theta_transform=transform, **TINY).eval()
    loss_fn = apt_loss(prior, num_atoms=4)
    with torch.no_grad():
        got = loss_fn(est, theta, x)  # eval mode: atoms from a fixed seed
        idx = atom_indices(7, 4, torch.Generator().manual_seed(0))
        want = _explicit_loss(est, prior, theta, x, idx)
    assert torch.allclose(got, want, atol=1e-4), (got, want)

    # The generic path (any estimator with log_prob(theta, x)) gives the same values.
    class Plain(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def log_prob(self, t, xx):
            return self.inner.log_prob(t, xx)

    with torch.no_grad():
        assert torch.allclose(loss_fn(Plain(est).eval(), theta, x), got, atol=1e-5)


def test_two_atoms_uniform_prior_is_a_logistic_loss_and_all_atoms_is_a_softmax():
    prior = box_uniform([-3.0, -3.0], [3.0, 3.0])
    theta, x = _data(prior, 6, seed=1)
    torch.manual_seed(0)
    est = build_npe(theta, x, prior, **TINY).eval()
    with torch.no_grad():
        # num_atoms=2, uniform prior: loss_i = softplus(log q(theta_j|x_i) - log q(theta_i|x_i)).
        idx = atom_indices(6, 2, torch.Generator().manual_seed(0))
        lq_own = est.log_prob(theta, x)
        lq_other = est.log_prob(theta[idx[:, 1]], x)
        want = torch.nn.functional.softplus(lq_other - lq_own)
        assert torch.allclose(apt_loss(prior, 2)(est, theta, x), want, atol=1e-5)
        # num_atoms = batch: the atom set is the whole batch whatever the RNG draws.
        est.train()
        full = apt_loss(prior, 6)(est, theta, x)
        grid = est.log_prob(theta.repeat(6, 1), x.repeat_interleave(6, 0)).reshape(6, 6)
        assert torch.allclose(full, -torch.log_softmax(grid, 1).diagonal(), atol=1e-5)


@pytest.mark.parametrize("flow", ["fmaf", "maf", "nsf", "mdn"])
def test_train_apt_runs_for_every_npe_flow(flow):
    prior = box_uniform([-2.0, -2.0], [2.0, 2.0])
    theta, x = _data(prior, 120)
    torch.manual_seed(0)
    est = build_npe(theta, x, prior, flow=flow, theta_transform="unconstrained", **TINY)
    before = apt_loss(prior, 5)(est.eval(), theta, x).mean()
    hist = train_apt(est, theta, x, prior, num_atoms=5,
                     config=TrainConfig(max_epochs=15, batch_size=32, progress=False))
    assert hist.epochs >= 1 and math.isfinite(hist.best_validation_loss)
    assert hist.best_validation_loss < math.log(5)  # better than a constant q (log #atoms)
    with torch.no_grad():
        assert float(apt_loss(prior, 5)(est.eval(), theta, x).mean()) < float(before)


def test_train_apt_rejects_bad_input():
    prior = box_uniform([-2.0, -2.0], [2.0, 2.0])
    theta, x = _data(prior, 60)
    est = build_npe(theta, x, prior, **TINY)
    cfg = TrainConfig(max_epochs=1, progress=False)
    with pytest.raises(ValueError, match="num_atoms must be an integer >= 2"):
        train_apt(est, theta, x, prior, num_atoms=1, config=cfg)
    outside = theta.clone()
    outside[0, 0] = 5.0
    with pytest.raises(ValueError, match="outside the prior's support"):
        train_apt(est, outside, x, prior, config=cfg)
    bad_x = x.clone()
    bad_x[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        train_apt(est, theta, bad_x, prior, config=cfg)
    with pytest.raises(TypeError, match="proposal_log_prob_fn"):
        train_apt(est, theta, x, prior, proposal_log_prob_fn=3, config=cfg)
    fim = build_npe(theta, x, prior, regularizer="fim", **TINY)
    with pytest.raises(ValueError, match="regularizer='fim'"):
        train_apt(fim, theta, x, prior, config=cfg)
    with pytest.warns(UserWarning, match="using 8 atoms"):
        train_apt(est, theta, x, prior, num_atoms=50,
                  config=TrainConfig(max_epochs=1, batch_size=8, progress=False))


def _two_rounds(problem, n1, n2, x_o, opts, cfg, seed=0):
    """Round 1: NPE on prior simulations; round 2: posterior at x_o -> train_apt on all."""
    s1 = simulate(problem, n1, seed=seed + 1, progress=False)
    torch.manual_seed(seed)
    est = build_npe(s1.theta, s1.x, problem.prior, **opts)
    train(est, s1.theta, s1.x, cfg)
    post = METHOD.make_posterior(est, problem.prior, problem.spec())
    s2 = simulate(problem, theta=post.sample((n2,), x=x_o, seed=seed + 2), seed=seed + 3,
                  progress=False)
    train_apt(est, torch.cat([s1.theta, s2.theta]), torch.cat([s1.x, s2.x]), problem.prior,
              config=cfg)
    return post


def test_two_rounds_on_gaussian_linear_match_the_analytic_posterior():
    problem = simulators.get_problem("gaussian_linear", dim=3)
    x_o = problem.observation(1)
    cfg = TrainConfig(max_epochs=300, batch_size=128, learning_rate=2e-3, min_delta=0.005,
                      progress=False, seed=0)
    post = _two_rounds(problem, 500, 500, x_o, {"hidden_features": 32, "num_transforms": 3}, cfg)
    ref = problem.reference_posterior(x_o, 2000, seed=0)
    acc = c2st(ref, post.sample((2000,), x=x_o, seed=0))
    assert acc < 0.6, acc


# ---------------------------------------------------------------- non-atomic variant (MDN)
def _mdn(prior, n=50, seed=0):
    theta, x = _data(prior, n, seed)
    torch.manual_seed(seed)
    return build_npe(theta, x, prior, flow="mdn", hidden_features=8, num_components=3).eval(), x


@pytest.mark.parametrize("prior", [gaussian([0.5], std=[2.0]), box_uniform([-6.0], [6.0])])
def test_mdn_proposal_posterior_matches_grid_normalization(prior):
    from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

    from estimators.apt_mdn import mdn_components, proposal_posterior_log_prob

    est, x = _mdn(prior)
    prop = MixtureSameFamily(Categorical(logits=torch.tensor([0.0, 1.0])),
                             MultivariateNormal(torch.tensor([[0.3], [1.0]]),
                                                scale_tril=torch.tensor([[[0.5]], [[0.8]]])))
    pts = torch.tensor([[0.2], [1.1], [-0.5]])
    grid = torch.linspace(-15, 15, 30001)[:, None]
    dz = 30.0 / 30000
    uniform = isinstance(prior, type(box_uniform([0.0], [1.0])))
    with torch.no_grad():
        logw, loc, tril = mdn_components(est, x[:1])
        lp_prior = (lambda t: torch.zeros(len(t))) if uniform else prior.log_prob

        def unnorm(t):
            return est.log_prob(t, x[:1].expand(len(t), -1)) + prop.log_prob(t) - lp_prior(t)

        log_z = torch.logsumexp(unnorm(grid), 0) + math.log(dz)
        got = proposal_posterior_log_prob(pts, logw.expand(3, -1), loc.expand(3, -1, -1),
                                          tril.expand(3, -1, -1, -1), prop, prior)
    assert torch.allclose(got, unnorm(pts) - log_z, atol=1e-3), (got, unnorm(pts) - log_z)


def test_mdn_loss_with_the_prior_as_proposal_is_the_nll():
    from torch.distributions import MultivariateNormal

    from estimators.apt_mdn import apt_mdn_loss

    prior = gaussian([0.0, 1.0], std=[1.0, 0.5])
    est, _ = _mdn(prior)
    theta, x = _data(prior, 20, seed=3)
    as_mvn = MultivariateNormal(prior.mean, covariance_matrix=torch.diag(prior.variance))
    with torch.no_grad():
        got = apt_mdn_loss(prior, as_mvn)(est, theta, x)
        assert torch.allclose(got, -est.log_prob(theta, x), atol=1e-4)


def test_mdn_variant_rejects_what_it_cannot_do():
    from estimators.apt_mdn import train_apt_mdn

    prior = gaussian([0.0, 0.0], std=[1.0, 1.0])
    theta, x = _data(prior, 40)
    flow = build_npe(theta, x, prior, **TINY)
    with pytest.raises(ValueError, match="flow='mdn'"):
        train_apt_mdn(flow, theta, x, prior, prior)
    mdn = build_npe(theta, x, prior, flow="mdn", hidden_features=8, num_components=2)
    with pytest.raises(ValueError, match="Gaussian mixture"):
        train_apt_mdn(mdn, theta, x, prior, box_uniform([-1.0, -1.0], [1.0, 1.0]))
    from sbi_core.priors import independent

    odd = independent(("gamma", {"concentration": 2.0, "rate": 1.0}),
                      ("gamma", {"concentration": 2.0, "rate": 1.0}))
    with pytest.raises(ValueError, match="Gaussian or box-uniform prior"):
        train_apt_mdn(mdn, theta.abs() + 0.1, x, odd, prior)


def test_mdn_two_rounds_non_atomic_on_gaussian_linear():
    from estimators.apt_mdn import mdn_proposal, train_apt_mdn

    problem = simulators.get_problem("gaussian_linear", dim=2)
    x_o = problem.observation(1)
    cfg = TrainConfig(max_epochs=150, batch_size=128, learning_rate=2e-3, progress=False, seed=0)
    s1 = simulate(problem, 400, seed=1, progress=False)
    torch.manual_seed(0)
    est = build_npe(s1.theta, s1.x, problem.prior, flow="mdn", hidden_features=32,
                    num_components=3)
    train(est, s1.theta, s1.x, cfg)
    proposal = mdn_proposal(est, x_o)
    torch.manual_seed(5)
    s2 = simulate(problem, theta=proposal.sample((400,)), seed=2, progress=False)
    train_apt_mdn(est, s2.theta, s2.x, problem.prior, proposal, cfg)  # latest round only
    post = METHOD.make_posterior(est, problem.prior, problem.spec())
    ref = problem.reference_posterior(x_o, 2000, seed=0)
    acc = c2st(ref, post.sample((2000,), x=x_o, seed=0))
    assert acc < 0.6, acc


def test_two_moons_second_round_improves_and_reaches_amortized_npe():
    """2 rounds x 500 on two_moons (observation 1). Measured (fmaf 32x3): round 1 C2ST 0.73,
    round 2 0.63, amortized NPE on 1,000 prior simulations 0.59. APT did NOT beat that NPE
    in our runs, and on observations 2-5 round 2 gained <= 0.02 over round 1
    (benchmarks/apt_two_moons.py, docs/apt_and_restriction.md); observation 1 is the one
    where the gain shows, so this is a regression test of the 2-round loop: a clear gain
    over round 1 and a result within 0.06 of NPE at the same budget."""
    problem = simulators.get_problem("two_moons")
    x_o = problem.observation(1)
    ref = problem.reference_posterior(x_o, 2000, seed=0)
    opts = {"hidden_features": 32, "num_transforms": 3}
    cfg = TrainConfig(max_epochs=500, batch_size=128, learning_rate=2e-3, min_delta=0.005,
                      progress=False, seed=0)
    s1 = simulate(problem, 500, seed=1, progress=False)
    torch.manual_seed(0)
    est = build_npe(s1.theta, s1.x, problem.prior, **opts)
    train(est, s1.theta, s1.x, cfg)
    post = METHOD.make_posterior(est, problem.prior, problem.spec())
    round1 = c2st(ref, post.sample((2000,), x=x_o, seed=0))
    s2 = simulate(problem, theta=post.sample((500,), x=x_o, seed=1), seed=2, progress=False)
    train_apt(est, torch.cat([s1.theta, s2.theta]), torch.cat([s1.x, s2.x]), problem.prior,
              config=cfg)
    round2 = c2st(ref, post.sample((2000,), x=x_o, seed=0))
    s3 = simulate(problem, 1000, seed=1, progress=False)
    torch.manual_seed(0)
    base = build_npe(s3.theta, s3.x, problem.prior, **opts)
    train(base, s3.theta, s3.x, cfg)
    npe = c2st(ref, METHOD.make_posterior(base, problem.prior, problem.spec())
               .sample((2000,), x=x_o, seed=0))
    assert round2 < round1 - 0.05, (round1, round2)
    assert round2 < npe + 0.06, (round2, npe)
    assert round2 < 0.7, round2
