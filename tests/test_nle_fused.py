"""NLE with the fused MAF (``flow="fmaf"``) and with ``dequantize=True``: the likelihood's gradient in θ (HMC's, through the
fused flow's autograd path) matches finite differences of the fused no-grad path, and the
posterior on a 2-D linear Gaussian matches the analytic one; dequantized integer counts give
the Poisson posterior (C2ST 0.55; 0.675 without dequantize, same settings)."""

import pytest
import torch

from diagnostics.c2st import c2st
from estimators.nle import build_nle
from sbi_core import fit, simulate
from simulators.linear_gaussian import linear_gaussian, linear_gaussian_posterior


def test_theta_gradient_of_the_fused_likelihood_matches_finite_differences():
    torch.manual_seed(0)
    theta, x = torch.randn(200, 3), torch.randn(200, 4)
    est = build_nle(theta, x, None, flow="fmaf", hidden_features=16, num_transforms=3).double()
    for p in est.density.parameters():  # away from the near-identity initialization
        p.data.add_(0.3 * torch.randn_like(p))
    th, xx = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    th.requires_grad_(True)
    ll = est.log_likelihood(th, xx)  # context needs grad: the autograd path
    (grad,) = torch.autograd.grad(ll.sum(), th)
    eps, fd = 1e-6, torch.zeros_like(grad)
    with torch.no_grad():  # the fused no-grad path
        assert torch.allclose(est.log_likelihood(th, xx), ll, atol=1e-10)
        for j in range(3):
            step = torch.zeros(3, dtype=torch.float64)
            step[j] = eps
            fd[:, j] = (est.log_likelihood(th + step, xx)
                        - est.log_likelihood(th - step, xx)) / (2 * eps)
    assert torch.allclose(grad, fd, rtol=1e-5, atol=1e-6), (grad - fd).abs().max()


def test_fused_nle_matches_the_analytic_posterior_on_a_linear_gaussian():
    problem = linear_gaussian(dim=2)
    sims = simulate(problem, 2000, seed=0)
    torch.manual_seed(1)
    trials = problem.simulator(torch.tensor([0.5, -0.3]).expand(10, 2))
    post = fit(problem, sims, method="nle", flow="fmaf", seed=0, hidden_features=32,
               max_epochs=300, progress=False, detector=False,
               mcmc={"num_chains": 50, "warmup_steps": 50, "progress": False})
    assert type(post.estimator.density).__name__ == "FusedMAF"
    for n in (1, 10):
        x_o = trials[0] if n == 1 else trials[:n]
        samples = post.sample((1000,), x=x_o, seed=0)
        reference = linear_gaussian_posterior(trials[:n]).sample((1000,))
        score = c2st(samples, reference, seed=0)
        assert score < 0.65, f"NLE + fmaf, {n} trials: C2ST {score:.3f}"


# ---------------------------------------------------------------- dequantize (integer counts)
def _poisson_problem():
    """λ ~ U(0.2, 3), x = 5 iid Poisson(λ) counts (many zeros): the posterior is a Gamma
    ``(1 + Σx, 5)`` truncated to the prior's box."""
    from sbi_core.priors import box_uniform
    from sbi_core.problem import Problem

    def simulator(theta):
        return torch.poisson(theta.expand(-1, 5).contiguous())

    return Problem(box_uniform([0.2], [3.0]), simulator, name="poisson5", x_shape=(5,))


def _poisson_reference(x_o, n):
    gamma = torch.distributions.Gamma(1.0 + x_o.sum(), torch.tensor(5.0))
    draws = gamma.sample((20 * n,))
    return draws[(draws > 0.2) & (draws < 3.0)][:n, None]


def test_dequantize_loss_noise_in_training_midpoint_otherwise_and_integer_samples():
    problem = _poisson_problem()
    torch.manual_seed(0)
    theta = problem.prior.sample((300,))
    x = problem.simulator(theta)
    est = build_nle(theta, x, problem.prior, flow="fmaf", dequantize=True, hidden_features=8,
                    num_transforms=2)
    est.train()
    assert not torch.allclose(est.loss(theta[:20], x[:20]), est.loss(theta[:20], x[:20]))
    torch.manual_seed(1)  # same weights: the dequantized density is evaluated at x + 1/2
    a = build_nle(theta, x, problem.prior, flow="fmaf", dequantize=True, hidden_features=8,
                  num_transforms=2).eval()
    torch.manual_seed(1)
    plain = build_nle(theta, x + 0.5, problem.prior, flow="fmaf", hidden_features=8,
                      num_transforms=2).eval()
    plain.x_norm.load_state_dict(a.x_norm.state_dict())
    with torch.no_grad():
        assert torch.allclose(a.loss(theta[:20], x[:20]), plain.loss(theta[:20], x[:20] + 0.5))
        draws = a.sample(4, theta[:3])
    assert draws.shape == (4, 3, 5) and bool((draws == draws.round()).all())


def test_dequantize_refuses_non_integer_x_and_non_bool_values():
    theta, x = torch.rand(50, 1), torch.rand(50, 5)
    with pytest.raises(ValueError, match="not all integers"):
        build_nle(theta, x, None, dequantize=True)
    with pytest.raises(TypeError, match="dequantize must be 'auto', True or False"):
        build_nle(theta, x.round(), None, dequantize="yes")


def test_dequantized_nle_matches_the_poisson_posterior():
    problem = _poisson_problem()
    sims = simulate(problem, 2000, seed=0)
    x_o = torch.tensor([0.0, 1.0, 0.0, 0.0, 2.0])
    reference = _poisson_reference(x_o, 1000)
    post = fit(problem, sims, method="nle", flow="fmaf", dequantize=True, seed=0,
               hidden_features=32, max_epochs=300, progress=False, detector=False,
               mcmc={"num_chains": 50, "warmup_steps": 50, "progress": False})
    score = c2st(post.sample((1000,), x=x_o, seed=0), reference, seed=0)
    assert score < 0.6, f"dequantized NLE on Poisson counts: C2ST {score:.3f}"


# ---------------------------------------------------------------- SNLE's default flow
SNLE_TINY = {"method": "snle", "rounds": 2, "sims_per_round": 100, "seed": 0, "progress": False,
             "max_epochs": 3, "hidden_features": 8, "num_transforms": 2,
             "mcmc": {"num_chains": 10}, "proposal_mcmc": {"warmup_steps": 5,
                                                          "ess_fraction": None}}


def test_snle_flow_default_fused_option_and_the_store_records_the_flow(tmp_path):
    import json

    import simulators
    from sbi_core.sequential import SNLE_FLOW, run_sequential

    problem = simulators.get_problem("gaussian_linear", dim=2)
    x_o = problem.observation(1)
    post, _ = run_sequential(problem, x_o, **SNLE_TINY)
    assert post.estimator.config["flow"] == SNLE_FLOW
    store = tmp_path / "run.zarr"
    post, _ = run_sequential(problem, x_o, store=store, flow="fmaf", **SNLE_TINY)
    assert type(post.estimator.density).__name__ == "FusedMAF"
    state = store / "_sequential" / "state.json"
    saved = json.loads(state.read_text())
    assert saved["settings"]["nle_flow"] == "fmaf"
    with pytest.raises(ValueError, match="nle_flow: store has 'fmaf', this run has 'maf'"):
        run_sequential(problem, x_o, store=store, resume=True, flow="maf", **SNLE_TINY)
    # a store written before the setting existed has no "nle_flow": it was the nflows MAF
    del saved["settings"]["nle_flow"]
    state.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="nle_flow: store has 'maf', this run has 'fmaf'"):
        run_sequential(problem, x_o, store=store, resume=True, flow="fmaf", **SNLE_TINY)


def test_dequantize_auto_follows_the_training_x_and_old_configs_load_without_it():
    from estimators.nle import NLEEstimator, resolve_dequantize

    counts = torch.tensor([[0.0, 3.0], [float("nan"), 1.0]])
    assert resolve_dequantize("auto", counts) is True
    assert resolve_dequantize("auto", counts + 0.25) is False
    assert resolve_dequantize(False, counts) is False
    est = build_nle(torch.rand(40, 1), torch.poisson(torch.ones(40, 2)), None, hidden_features=8,
                    num_transforms=1)
    assert est.config["dequantize"] is True
    old = {k: v for k, v in est.config.items() if k != "dequantize"}  # saved before the option
    assert NLEEstimator(old).config["dequantize"] is False
    with pytest.raises(ValueError, match="resolved dequantize"):
        NLEEstimator({**old, "dequantize": "auto"})


def test_a_dequantized_model_saves_and_loads_with_the_same_likelihood(tmp_path):
    from sbi_core import load, save

    problem = _poisson_problem()
    post = fit(problem, simulate(problem, 300, seed=0), method="nle", flow="fmaf", seed=0,
               max_epochs=2, hidden_features=8, num_transforms=2, progress=False,
               detector=False)
    again = load(save(post, tmp_path / "counts.pt"))
    assert again.estimator.config["dequantize"] is True
    theta, x_o = torch.tensor([[0.5], [1.5]]), torch.tensor([0.0, 1.0, 0.0, 0.0, 2.0])
    assert torch.allclose(again.log_prob(theta, x_o), post.log_prob(theta, x_o))
