"""Stacked in-context posterior (``variant="stack"``, ``estimators/incontext_select.py``
``select_stack`` / ``stacking_weights``): the weights maximize the held-out log score (checked
against a scalar optimizer and a known mixture), sum to 1 and are reproducible; the mixture's
``log_prob`` is normalized on a 1-D grid and its samples follow it; save/load keeps it exactly
(one copy of the shared network); bad options get a clear error."""

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar
from test_incontext import check_1d_normalized, linear_1d

from estimators.incontext_method import StackedInContextEstimator
from estimators.incontext_select import stacking_weights
from sbi_core import fit, simulate
from sbi_core.serialization import load, save
from simulators.gaussian_linear import gaussian_linear


def test_stacking_weights_recover_a_known_mixture_and_match_a_scalar_optimizer():
    g = torch.Generator().manual_seed(0)
    m = 20_000
    wide = torch.rand(m, generator=g) < 0.7  # data from 0.3 N(0, 1) + 0.7 N(0, 3^2)
    z = torch.randn(m, generator=g) * torch.where(wide, 3.0, 1.0)
    normal = torch.distributions.Normal
    logp = torch.stack([normal(0.0, 1.0).log_prob(z), normal(0.0, 3.0).log_prob(z)], 1)
    w = stacking_weights(logp)
    assert w.shape == (2,) and abs(float(w.sum()) - 1.0) < 1e-6 and (w >= 0).all()
    assert abs(float(w[1]) - 0.7) < 0.03, w  # the mixture MLE: close to the truth

    lp = logp.double().numpy()

    def neg(a: float) -> float:
        return -float(np.logaddexp(np.log(a) + lp[:, 0], np.log1p(-a) + lp[:, 1]).mean())

    best = minimize_scalar(neg, bounds=(1e-9, 1 - 1e-9), method="bounded",
                           options={"xatol": 1e-10})
    assert abs(float(w[0]) - best.x) < 1e-4, (w, best.x)
    # one candidate better on every pair gets (almost) all the weight
    w1 = stacking_weights(torch.stack([logp[:, 0] + 1.0, logp[:, 0]], 1))
    assert float(w1[0]) > 0.99


def test_stack_weights_are_reproducible_and_beat_each_candidate_on_heldout_pairs():
    problem = gaussian_linear(dim=2)
    sims = simulate(problem, 300, seed=0, progress=False)
    post = fit(problem, sims, method="incontext", detector=False, variant="stack")
    est = post.estimator
    assert isinstance(est, StackedInContextEstimator)
    rec = est.config["variant"]
    assert rec["requested"] == "stack" and rec["folds"] == 5
    assert set(rec["scores"]) == {"plain-16", "residual-16", "residual-64", "residual-256",
                                 "nonlinear-16"}
    w = est.log_weights.exp()
    assert abs(float(w.sum()) - 1.0) < 1e-5 and len(w) == len(est.components) >= 1
    assert abs(sum(rec["weights"].values()) - 1.0) < 1e-3
    # the mixture's held-out log score is at least the best single candidate's (up to the
    # pruned weights below 0.01)
    assert rec["stack_nll"] <= min(rec["scores"].values()) + 0.01, rec
    assert post.history["variant"] == rec["chosen"] and rec["chosen"].startswith("stack(")
    again = fit(problem, sims, method="incontext", detector=False, variant="stack")
    assert again.estimator.config["variant"] == rec
    assert torch.equal(again.estimator.log_weights, est.log_weights)


def two_component_stack(problem, sims, weights):
    """A posterior whose estimator is the mixture ``weights[0]`` plain-16 +
    ``weights[1]`` residual-64 (built directly, so the check does not depend on which
    components stacking keeps)."""
    post = fit(problem, sims, method="incontext", detector=False, variant="plain")
    base = {k: v for k, v in post.estimator.config.items()
            if k not in ("residual", "num_neighbors", "variant")}
    est = StackedInContextEstimator({**base, "variant": {"requested": "stack"}, "stack": [
        {"residual": False, "num_neighbors": 16}, {"residual": True, "num_neighbors": 64}]})
    est.components[0].net.load_state_dict(post.estimator.net.state_dict())
    est.set_context(*sims.training_data(), torch.tensor(weights))
    est.set_bounds(post.estimator.low, post.estimator.high)
    post.estimator = est.eval()
    return post


@pytest.mark.parametrize("bounded", [False, True])
def test_mixture_is_normalized_and_its_samples_follow_it(bounded):
    problem = linear_1d(bounded)
    post = two_component_stack(problem, simulate(problem, 300, seed=0, progress=False),
                               [0.35, 0.65])
    est = post.estimator
    x_o = torch.tensor([1.5])  # far out: the residual component's shifted bounds matter
    grid = torch.linspace(-1.5, 1.9, 9)[:, None, None]  # inside both priors
    a = est.components[0].log_prob(grid, x_o[None])
    b = est.components[1].log_prob(grid, x_o[None])
    assert float((a - b).abs().max()) > 0.05  # the components differ: a real mixture
    mix = est.log_prob(grid, x_o[None])
    assert torch.allclose(mix, torch.logaddexp(a + math.log(0.35), b + math.log(0.65)),
                          atol=1e-5)
    check_1d_normalized(post, x_o, bounded)


def test_stacked_posterior_round_trips_with_one_copy_of_the_network(tmp_path):
    problem = gaussian_linear(dim=2)
    sims = simulate(problem, 200, seed=0, progress=False)
    post = two_component_stack(problem, sims, [0.3, 0.7])
    x_o = torch.tensor([0.2, -0.1])
    theta = post.sample((50,), x=x_o, seed=0)
    path = save(post, tmp_path / "stack.pt")
    single = save(fit(problem, sims, method="incontext", detector=False, variant="plain"),
                  tmp_path / "one.pt")
    assert path.stat().st_size < 1.2 * single.stat().st_size  # the network is stored once
    loaded = load(path)
    assert isinstance(loaded.estimator, StackedInContextEstimator)
    assert torch.allclose(loaded.estimator.log_weights.exp(), torch.tensor([0.3, 0.7]))
    assert torch.allclose(loaded.log_prob(theta, x=x_o), post.log_prob(theta, x=x_o), atol=1e-5)
    assert torch.equal(loaded.sample((50,), x=x_o, seed=0), theta)
    # several observations at once agree with one at a time
    xs = torch.tensor([[0.2, -0.1], [1.0, 0.5]])
    both = loaded.estimator.log_prob(theta[:, None].expand(50, 2, 2).contiguous(), xs)
    assert torch.allclose(both[:, 0], post.log_prob(theta, x=xs[0]), atol=1e-4)
    assert torch.allclose(both[:, 1], post.log_prob(theta, x=xs[1]), atol=1e-4)
    many = loaded.sample_batched((30,), xs, seed=0)
    assert many.shape == (30, 2, 2) and torch.isfinite(many).all()


def test_stack_options_get_a_clear_error():
    problem = gaussian_linear(dim=2)
    sims = simulate(problem, 60, seed=0, progress=False)
    with pytest.raises(ValueError, match="'plain-K' or 'residual-K'"):
        fit(problem, sims, method="incontext", detector=False, variant="stack",
            candidates=["zoom-16"])
    with pytest.raises(ValueError, match="does not apply to variant='stack'"):
        fit(problem, sims, method="incontext", detector=False, variant="stack",
            finetune_steps=2)
    assert math.isfinite(float(fit(problem, sims, method="incontext", detector=False,
                                   variant="stack").estimator.log_weights.exp().sum()))


def test_auto_stacks_only_when_the_mixture_clearly_beats_the_best_candidate():
    """``variant="auto"``: the mixture when its held-out gain over the best single candidate
    exceeds ``STACK_GAIN_SE`` standard errors (gaussian_mixture: a narrow and a wide
    component, which plain and residual candidates cover between them), else the best
    candidate alone (gaussian_linear: the residual-256 candidate is already right), which is
    also what ``variant="select"`` returns."""
    from estimators.incontext_method import STACK_GAIN_SE
    from simulators import get_problem

    mixture = get_problem("gaussian_mixture")
    post = fit(mixture, simulate(mixture, 300, seed=0, progress=False), method="incontext",
               detector=False)
    rec = post.estimator.config["variant"]
    assert isinstance(post.estimator, StackedInContextEstimator)
    assert rec["requested"] == "auto" and rec["gain"] > STACK_GAIN_SE * rec["gain_se"] > 0
    assert len(post.estimator.components) >= 2

    linear = gaussian_linear(dim=2)
    sims = simulate(linear, 300, seed=0, progress=False)
    post = fit(linear, sims, method="incontext", detector=False)
    rec = post.estimator.config["variant"]
    assert not isinstance(post.estimator, StackedInContextEstimator)
    assert rec["gain"] <= STACK_GAIN_SE * rec["gain_se"]
    assert rec["chosen"] == rec["best"] == min(rec["scores"], key=rec["scores"].get)
    select = fit(linear, sims, method="incontext", detector=False, variant="select")
    assert select.estimator.config["variant"]["chosen"] == rec["chosen"]
    x_o = torch.tensor([0.2, -0.1])
    theta = post.sample((20,), x=x_o, seed=0)
    assert torch.allclose(select.log_prob(theta, x=x_o), post.log_prob(theta, x=x_o))
