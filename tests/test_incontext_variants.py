"""Inference-time variants of the in-context posterior (``estimators/incontext_select.py``):
the residual parameterization keeps ``log_prob`` normalized and consistent with ``sample``
(bounded and unbounded priors, where the prior bounds move with x), survives save/load,
``variant="auto"`` picks by held-out likelihood and records the scores, and bad options get
a clear error."""

import math

import pytest
import torch
from test_incontext import check_1d_normalized, linear_1d

from estimators.incontext_method import load_pretrained
from estimators.incontext_select import heldout_nll, heldout_nlls
from sbi_core import fit, simulate
from sbi_core.serialization import load, save
from simulators.gaussian_linear import gaussian_linear


@pytest.mark.parametrize("bounded", [False, True])
def test_residual_variant_is_normalized_and_matches_its_samples(bounded):
    problem = linear_1d(bounded)
    sims = simulate(problem, 300, seed=0, progress=False)
    post = fit(problem, sims, method="incontext", detector=False, variant="residual",
               num_neighbors=64)
    est = post.estimator
    assert est.residual and est.net.config["num_neighbors"] == 64
    assert abs(float(est.coef[1, 0])) > 0.1  # theta depends on x: a real shift
    check_1d_normalized(post, torch.tensor([1.5]), bounded)  # far out: shifted bounds matter


def test_log_prob_of_several_observations_matches_one_at_a_time():
    problem = gaussian_linear(dim=2)
    sims = simulate(problem, 200, seed=0, progress=False)
    post = fit(problem, sims, method="incontext", detector=False, variant="residual")
    xs = torch.tensor([[0.2, -0.1], [1.0, 0.5]])
    theta = post.sample((7,), x=xs[0], seed=0)
    both = post.estimator.log_prob(theta[:, None].expand(7, 2, 2).contiguous(), xs)
    for b in range(2):
        one = post.log_prob(theta, x=xs[b])
        assert torch.allclose(both[:, b], one, atol=1e-4)


def test_auto_picks_by_heldout_likelihood_and_round_trips(tmp_path):
    problem = gaussian_linear(dim=2)
    sims = simulate(problem, 300, seed=0, progress=False)
    post = fit(problem, sims, method="incontext", detector=False)
    record = post.estimator.config["variant"]
    assert record["requested"] == "auto" and record["folds"] == 5
    scores = record["scores"]
    assert set(scores) == {"plain-16", "residual-16", "residual-64", "residual-256",
                                 "nonlinear-16"}
    assert record["chosen"] == min(scores, key=scores.get)
    assert post.history["variant"] == record["chosen"]
    # linear-Gaussian: the residuals are independent of x, so a residual variant must win
    assert record["chosen"].startswith("residual")
    assert scores[record["chosen"]] < scores["plain-16"] - 0.05
    again = fit(problem, sims, method="incontext", detector=False)
    assert again.estimator.config["variant"] == record  # deterministic
    x_o = torch.tensor([0.2, -0.1])
    theta = post.sample((50,), x=x_o, seed=0)
    loaded = load(save(post, tmp_path / "m.pt"))
    assert loaded.estimator.residual
    assert torch.allclose(loaded.log_prob(theta, x=x_o), post.log_prob(theta, x=x_o), atol=1e-5)


def test_heldout_nll_prefers_residuals_on_a_linear_problem():
    problem = gaussian_linear(dim=3)
    theta, x = simulate(problem, 400, seed=1, progress=False).training_data()
    zx = (x - x.mean(0)) / x.std(0)
    net, _ = load_pretrained()
    plain = heldout_nll(net, theta, zx, False, 16)
    resid = heldout_nll(net, theta, zx, True, 64)
    assert math.isfinite(plain) and resid < plain - 0.05, (plain, resid)
    assert net.config["num_neighbors"] == 16  # restored


def test_bad_variant_options_get_a_clear_error():
    problem = gaussian_linear(dim=2)
    sims = simulate(problem, 50, seed=0, progress=False)
    with pytest.raises(ValueError, match="'auto'"):
        fit(problem, sims, method="incontext", detector=False, variant="zoom")
    with pytest.raises(ValueError, match="num_neighbors must be a positive"):
        fit(problem, sims, method="incontext", detector=False, num_neighbors=0)


def test_estimators_saved_before_the_variants_still_load():
    """Model files written before ``residual``/``num_neighbors`` existed have neither key in
    their config and no ``coef`` buffer: they load as the plain network."""
    from estimators.incontext_method import InContextEstimator

    problem = gaussian_linear(dim=2)
    sims = simulate(problem, 100, seed=0, progress=False)
    post = fit(problem, sims, method="incontext", detector=False, variant="plain")
    old_config = {k: v for k, v in post.estimator.config.items()
                  if k not in ("residual", "num_neighbors", "variant")}
    old = InContextEstimator(old_config)
    old.load_state_dict(post.estimator.state_dict())
    theta = torch.tensor([[[0.1, -0.2]], [[0.3, 0.0]]])
    xs = torch.tensor([[0.2, -0.1]])
    assert not old.residual
    assert torch.allclose(old.log_prob(theta, xs), post.estimator.log_prob(theta, xs))


def test_heldout_nlls_share_encodings_without_changing_the_scores():
    """``variant="auto"`` encodes each fold's context once per parameterization and reuses it
    for every neighbour count; the scores must equal those of each candidate alone."""
    problem = gaussian_linear(dim=2)
    theta, x = simulate(problem, 120, seed=2, progress=False).training_data()
    zx = (x - x.mean(0)) / x.std(0)
    net, _ = load_pretrained()
    cands = ((False, 16), (True, 16), (True, 64))
    together = heldout_nlls(net, theta, zx, cands)
    for c in cands:
        assert abs(together[c] - heldout_nll(net, theta, zx, *c)) < 1e-5, c
    assert net.config["num_neighbors"] == 16  # restored
