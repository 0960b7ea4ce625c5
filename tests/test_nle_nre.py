"""NLE and NRE on a linear Gaussian: C2ST against the analytic posterior for 1 and 10 iid
observations, plus the potential, MAP, save/load and the NRE losses."""

import pytest
import torch

from diagnostics.c2st import c2st
from estimators.nle import build_nle
from estimators.nre_losses import LOSSES, cyclic_negatives, nre_loss
from sbi_core import fit, load, save, simulate
from sbi_core.methods import get_method
from sbi_core.posterior import ObservationError
from simulators.linear_gaussian import linear_gaussian, linear_gaussian_posterior

THETA_O = torch.tensor([0.5, -0.3])
MCMC = {"num_chains": 50, "warmup_steps": 50, "progress": False}


@pytest.fixture(scope="module")
def problem():
    return linear_gaussian(dim=2)


@pytest.fixture(scope="module")
def sims(problem):
    return simulate(problem, 2000, seed=0)


@pytest.fixture(scope="module")
def observations(problem):
    torch.manual_seed(1)
    return problem.simulator(THETA_O.expand(10, 2))  # (10, 2) iid trials


@pytest.fixture(scope="module")
def nle(problem, sims):
    return fit(problem, sims, method="nle", seed=0, hidden_features=32, max_epochs=300,
               progress=False, mcmc=MCMC)


@pytest.fixture(scope="module")
def nre(problem, sims):
    return fit(problem, sims, method="nre", seed=0, hidden_features=32, max_epochs=300,
               progress=False, mcmc=MCMC)


@pytest.mark.parametrize("which", ["nle", "nre"])
@pytest.mark.parametrize("num_trials", [1, 10])
def test_c2st_against_analytic_posterior(which, num_trials, request, observations):
    posterior = request.getfixturevalue(which)
    x_o = observations[:num_trials] if num_trials > 1 else observations[0]
    samples = posterior.sample((1000,), x=x_o, seed=0)
    reference = linear_gaussian_posterior(observations[:num_trials]).sample((1000,))
    score = c2st(samples, reference, seed=0)
    assert score < 0.65, f"{which} with {num_trials} trials: C2ST {score:.3f}"
    assert posterior.last_mcmc is not None and posterior.last_mcmc.samples.shape == (1000, 1, 2)
    assert float(posterior.last_mcmc.rhat.max()) < 1.1


def test_map_matches_analytic_mode(nle, observations):
    truth = linear_gaussian_posterior(observations).mean
    assert torch.allclose(nle.map(observations), truth, atol=0.15)
    batched = nle.map_batched(observations[:3])
    assert batched.shape == (3, 2)


def test_log_prob_is_unnormalized_potential_summed_over_trials(nle, observations):
    assert nle.supports_iid and not nle.normalized_log_prob
    theta = torch.randn(7, 2)
    single = torch.stack([nle.log_prob(theta, x) for x in observations[:4]])  # (4, 7)
    prior_lp = nle.prior.log_prob(theta)
    expected = prior_lp + (single - prior_lp).sum(0)
    assert torch.allclose(nle.log_prob(theta, observations[:4]), expected, atol=1e-4)
    # batched form over two observation sets agrees with the single form
    sets = torch.stack([observations[:4], observations[4:8]])  # (B=2, n=4, 2)
    lp = nle.log_prob_batched(theta[:, None].expand(7, 2, 2), sets)
    assert torch.allclose(lp[:, 0], expected, atol=1e-4)


def test_batched_sampling_of_iid_sets(nre, observations):
    sets = torch.stack([observations[:5], observations[5:]])  # (2, 5, 2)
    out = nre.sample_batched((200,), sets, seed=0, num_chains=10)
    assert out.shape == (200, 2, 2)
    assert nre.last_mcmc.rhat.shape == (2, 2)


def test_save_load_roundtrip_keeps_mcmc_settings(nre, tmp_path, observations):
    path = save(nre, tmp_path / "nre.pt")
    again = load(path)
    assert again.method == "nre" and again.mcmc_config.num_chains == 50
    theta = torch.randn(5, 2)
    assert torch.allclose(again.log_prob(theta, observations), nre.log_prob(theta, observations))
    a = nre.sample((100,), x=observations, seed=3)
    b = again.sample((100,), x=observations, seed=3)
    assert torch.allclose(a, b)


def test_hmc_sampling_through_the_posterior(nle, observations):
    samples = nle.sample((300,), x=observations, seed=0, method="hmc", num_chains=10,
                         warmup_steps=40, warn_rhat=None)
    truth = linear_gaussian_posterior(observations)
    assert torch.allclose(samples.mean(0), truth.mean, atol=0.15)
    assert nle.last_mcmc.method == "hmc"


def test_bad_observation_and_options_raise(nle):
    with pytest.raises(ObservationError):
        nle.sample((10,), x=torch.zeros(3))
    with pytest.raises(TypeError, match="Unknown MCMC options"):
        nle.sample((10,), x=torch.zeros(2), chains=3)
    with pytest.raises(TypeError, match="Unknown NLE options"):
        build_nle(torch.randn(10, 2), torch.randn(10, 2), None, blocks=3)
    with pytest.raises(TypeError, match="Unknown MCMC options"):
        build_nle(torch.randn(10, 2), torch.randn(10, 2), None, mcmc={"chains": 3})


def test_every_ratio_method_builds_trains_a_step_and_names_itself(problem, sims):
    theta, x = sims.training_data()
    for name in ("nre", "nre_a", "nre_b", "nre_c", "bnre"):
        method = get_method(name)
        est = method.build(theta, x, problem.prior)
        loss = est.loss(theta[:64], x[:64])
        assert loss.shape == (64,) and bool(torch.isfinite(loss).all())
        loss.mean().backward()
        post = method.make_posterior(est, problem.prior, problem.spec())
        assert post.method == name
    assert get_method("nre_b").build(theta, x, problem.prior).config["num_classes"] == 10
    with pytest.raises(ValueError, match="method='nre'"):
        get_method("nre_a").build(theta, x, problem.prior, loss="nre_c")


def test_ratio_losses_prefer_the_true_ratio():
    torch.manual_seed(0)
    theta = torch.randn(256, 1)
    x = theta + 0.5 * torch.randn(256, 1)

    def true_logits(idx):  # log N(x | theta, 0.25) - log N(x | 0, 1.25)
        t = theta[idx][..., 0]
        xi = x[:, 0:1]
        return (-0.5 * (xi - t) ** 2 / 0.25 - 0.5 * torch.log(torch.tensor(0.25))
                + 0.5 * xi**2 / 1.25 + 0.5 * torch.log(torch.tensor(1.25)))

    for kind in LOSSES:
        good = nre_loss(kind, true_logits, 256, generator=torch.Generator().manual_seed(0)).mean()
        flat = nre_loss(kind, lambda idx: torch.zeros(idx.shape), 256,
                        generator=torch.Generator().manual_seed(0)).mean()
        assert good < flat, kind
    neg = cyclic_negatives(50, 7, torch.Generator().manual_seed(0))
    assert not bool((neg == torch.arange(50)[:, None]).any())
    assert all(len(set(row.tolist())) == 7 for row in neg)
    with pytest.raises(ValueError, match="at least 2"):
        nre_loss("nre_a", true_logits, 1)


def test_cli_train_and_sample_iid(tmp_path, observations):
    import numpy as np

    from sbi_core.cli.main import main

    assert main(["simulate", "linear_gaussian", "--num", "500", "--out",
                 str(tmp_path / "sims.pt"), "--quiet"]) == 0
    model = tmp_path / "nre.pt"
    assert main(["train", "--sims", str(tmp_path / "sims.pt"), "--method", "nre", "--out",
                 str(model), "--max-epochs", "3", "--quiet"]) == 0
    np.savetxt(tmp_path / "x.csv", observations.numpy(), delimiter=",")
    out = tmp_path / "samples.csv"
    assert main(["sample", str(model), "--x", str(tmp_path / "x.csv"), "--num", "40", "--iid",
                 "--out", str(out), "--num-chains", "10", "--warmup-steps", "30"]) == 0
    rows = out.read_text().strip().splitlines()
    assert len(rows) == 41  # header + 40 samples of one iid set


def test_invalid_simulations_are_excluded_with_a_bias_warning(problem, sims):
    from sbi_core import SimulationSet

    theta, x = sims.training_data()
    x = x[:300].clone()
    x[:20] = float("nan")
    valid = torch.isfinite(x).all(-1)
    broken = SimulationSet(theta[:300], x, valid, {"problem": "linear_gaussian"})
    with pytest.warns(UserWarning, match="Excluding 20 of 300 invalid simulations"):
        post = fit(problem, broken, method="nre_a", seed=0, max_epochs=2, progress=False)
    assert post.history["num_train"] + post.history["num_validation"] == 280
