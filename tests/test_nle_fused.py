"""NLE with the fused MAF (``flow="fmaf"``): the likelihood's gradient in θ (HMC's, through the
fused flow's autograd path) matches finite differences of the fused no-grad path, and the
posterior on a 2-D linear Gaussian matches the analytic one."""

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
               max_seconds=20, progress=False, detector=False,
               mcmc={"num_chains": 50, "warmup_steps": 50, "progress": False})
    assert type(post.estimator.density).__name__ == "FusedMAF"
    for n in (1, 10):
        x_o = trials[0] if n == 1 else trials[:n]
        samples = post.sample((1000,), x=x_o, seed=0)
        reference = linear_gaussian_posterior(trials[:n]).sample((1000,))
        score = c2st(samples, reference, seed=0)
        assert score < 0.65, f"NLE + fmaf, {n} trials: C2ST {score:.3f}"
