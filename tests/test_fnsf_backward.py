"""The fused NSF's training pass (``FusedNSFPass``: a forward without autograd and a
hand-written backward) against the autograd graph of ``FusedNSF._forward_autograd``.

The same function (values equal bit for bit: the same operations) and the same gradients of
every parameter tensor up to float rounding, for one, two and five features, several
numbers of bins, transforms and hidden layers, inputs inside and outside the spline interval
(linear tails), random non-zero weights and the identity initialization; the autograd graph
still serves input gradients, double backward, ``no_grad`` and ``torch.func.vmap``.
"""

from __future__ import annotations

import math

import pytest
import torch
from autograd_helpers import autograd_nodes
from torch.func import functional_call, vmap

from estimators.fast_nsf import FusedNSF


def _flow(dim: int, blocks: int, transforms: int, bins: int, context_dim: int,
          scale: float, seed: int = 0, dtype: torch.dtype = torch.float64) -> FusedNSF:
    """A flow with random non-zero weights (``scale`` 0: the identity initialization)."""
    torch.manual_seed(seed)
    flow = FusedNSF(dim, context_dim, hidden_features=12, num_transforms=transforms,
                    num_blocks=blocks, num_bins=bins, tail_bound=2.5).to(dtype)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(scale * torch.randn_like(p))
    return flow


_graph = autograd_nodes


def _uses_pass(t: torch.Tensor) -> bool:
    return any("FusedNSFPass" in type(f).__name__ for f in _graph(t))


def _grads(loss: torch.Tensor, flow: FusedNSF) -> list[torch.Tensor]:
    """Gradients of every parameter tensor (zeros for tensors the loss does not use, e.g.
    the conditioner's input weights for ``D == 1``)."""
    params = list(flow.parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]


def _size(g: torch.Tensor) -> float:
    """``max(max |g|, 1)`` (1 for empty tensors: no hidden layers)."""
    return max(float(g.abs().max()), 1.0) if g.numel() else 1.0


def _loss(z: torch.Tensor, log_det: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """A loss using both outputs with unequal row and column weights."""
    cols = torch.arange(1, z.shape[1] + 1, dtype=z.dtype)
    return (w * (log_det - 0.5 * z.square().sum(-1))).sum() + (z * cols).sum()


def _inputs(n: int, dim: int, context_dim: int, bound: float = 2.5
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows inside and outside ``[-bound, bound]`` (tails) and exactly on its ends."""
    x = torch.randn(n, dim, dtype=torch.float64) * 2.0
    x[:5] = bound * 1.7                       # all outside
    x[5:10] = -bound * 1.3
    x[10, 0], x[11, -1] = bound, -bound       # on the ends
    return x, torch.randn(n, context_dim, dtype=torch.float64)


@pytest.mark.parametrize("dim,blocks,transforms,bins,context_dim", [
    (1, 2, 3, 4, 3), (2, 2, 5, 10, 2), (2, 0, 2, 3, 1), (5, 2, 5, 10, 4), (5, 1, 3, 6, 2),
    (3, 3, 4, 8, 3), (4, 2, 2, 1, 2),
])
@pytest.mark.parametrize("scale", [0.0, 0.4])
def test_pass_equals_autograd_in_float64(dim, blocks, transforms, bins, context_dim, scale):
    flow = _flow(dim, blocks, transforms, bins, context_dim, scale)
    x, c = _inputs(96, dim, context_dim)
    w = torch.rand(96, dtype=torch.float64)
    z, log_det = flow.forward_transform(x, c)
    z_ref, log_det_ref = flow._forward_autograd(x, c)
    assert _uses_pass(log_det) and not _uses_pass(log_det_ref)
    assert torch.equal(z, z_ref) and torch.equal(log_det, log_det_ref)  # the same operations
    fast, ref = _grads(_loss(z, log_det, w), flow), _grads(_loss(z_ref, log_det_ref, w), flow)
    for (name, _), g_fast, g_ref in zip(flow.named_parameters(), fast, ref):
        tol = 1e-11 * _size(g_ref)
        assert torch.allclose(g_fast, g_ref, rtol=1e-9, atol=tol), name


def test_every_gradient_is_exercised():
    """The comparison above is not vacuous: with random weights every parameter tensor gets
    a non-zero gradient (D = 5), tail rows included, and the tails' rows pass their output
    gradient straight through to the inputs."""
    flow = _flow(5, 2, 3, 6, 3, scale=0.4)
    x, c = _inputs(64, 5, 3)
    assert all(bool((g != 0).any()) for g in _grads(_loss(*flow.forward_transform(x, c),
                                                              torch.ones(64)), flow))
    one = _flow(1, 1, 1, 5, 2, scale=0.4)   # D = 1: no mixing layer
    outside = torch.tensor([[7.0], [-3.0], [2.6]], dtype=torch.float64)
    z, log_det = one.forward_transform(outside, torch.randn(3, 2, dtype=torch.float64))
    assert _uses_pass(z)
    assert torch.equal(z, outside) and torch.equal(log_det, torch.zeros(3, dtype=torch.float64))
    assert all(not bool(g.any()) for g in _grads(z.sum() + log_det.sum(), one))


def test_single_output_gradients():
    """Gradients of ``z`` alone and of ``log_det`` alone (the other output unused)."""
    flow = _flow(3, 2, 3, 5, 2, scale=0.4, seed=4)
    x, c = _inputs(40, 3, 2)
    for pick in (0, 1):
        fast = _grads(flow.forward_transform(x, c)[pick].square().sum(), flow)
        ref = _grads(flow._forward_autograd(x, c)[pick].square().sum(), flow)
        for g_fast, g_ref in zip(fast, ref):
            assert torch.allclose(g_fast, g_ref, rtol=1e-9,
                                  atol=1e-11 * _size(g_ref))


def test_float32_gradients_close_to_float64():
    """At the default size (D = 5, H = 50, T = 5, K = 10, batch 256) float32 gradients of the
    pass are as close to exact (float64 autograd) as float32 autograd's own."""
    torch.manual_seed(3)
    flow = FusedNSF(5, 8)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x, c = torch.randn(256, 5) * 1.5, torch.randn(256, 8)

    def nll(z: torch.Tensor, log_det: torch.Tensor) -> torch.Tensor:
        return -(log_det - 0.5 * (z.square().sum(-1) + 5 * math.log(2 * math.pi))).mean()

    exact = _grads(nll(*flow.double()._forward_autograd(x.double(), c.double())), flow)
    flow = flow.float()
    out, out_ref = flow.forward_transform(x, c), flow._forward_autograd(x, c)
    assert all(torch.equal(a, b) for a, b in zip(out, out_ref))  # float32: same values too
    fast, auto = _grads(nll(*out), flow), _grads(nll(*out_ref), flow)
    for g_f, g_a, g_e in zip(fast, auto, exact):
        err_fast = float((g_f.double() - g_e).abs().max())
        err_auto = float((g_a.double() - g_e).abs().max())
        assert err_fast <= 3 * err_auto + 1e-6 * float(g_e.abs().max())


def test_autograd_graph_where_the_pass_does_not_apply():
    """Input gradients, double backward (the FIM regularizer), ``no_grad`` and ``vmap`` (the
    batched ensemble) run the autograd graph, with the same values."""
    flow = _flow(3, 2, 3, 6, 2, scale=0.4, seed=5)
    x, c = _inputs(32, 3, 2)
    ref_z, ref_ld = flow._forward_autograd(x, c)
    with torch.no_grad():
        z, log_det = flow.forward_transform(x, c)
    assert torch.equal(z, ref_z.detach()) and torch.equal(log_det, ref_ld.detach())
    cg = c.clone().requires_grad_(True)
    log_det = flow.forward_transform(x, cg)[1]
    assert not _uses_pass(log_det)
    (score,) = torch.autograd.grad(log_det.sum(), cg, create_graph=True)
    second = _grads(score.square().sum(), flow)  # double backward through the graph
    assert any(float(g.abs().max()) > 0 for g in second)
    xg = x.clone().requires_grad_(True)
    assert not _uses_pass(flow.forward_transform(xg, c)[1])
    members = {f"flow.{k}": torch.stack([v.detach(), 2 * v.detach()])
               for k, v in flow.named_parameters()}
    stacked = vmap(lambda p: functional_call(_LogProb(flow), p, (x, c)))(members)
    ref_lp = ref_ld - 0.5 * (ref_z.square().sum(-1) + 3 * math.log(2 * math.pi))
    assert stacked.shape == (2, 32)
    assert torch.allclose(stacked[0], ref_lp.detach(), rtol=0, atol=1e-12)


class _LogProb(torch.nn.Module):
    """``forward`` = the flow's ``log_prob`` (what the batched ensemble calls)."""

    def __init__(self, flow: FusedNSF):
        super().__init__()
        self.flow = flow

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.flow.log_prob(x, c)


def test_training_uses_the_pass_by_default(linear_problem, monkeypatch):
    """NPE's training loop (``flow="fnsf"``) goes through the hand-written pass; with
    ``hand_backward = False`` through the autograd graph only."""
    from estimators import fast_nsf
    from sbi_core import fit, simulate

    calls = []
    original = fast_nsf.FusedNSFPass.apply

    def counting(*args):
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(fast_nsf.FusedNSFPass, "apply", counting)
    sims = simulate(linear_problem, 300, seed=1, progress=False)
    options = dict(flow="fnsf", seed=0, progress=False, max_epochs=2, batch_size=100,
                   hidden_features=8, num_transforms=2, detector=False)
    fit(linear_problem, sims, **options)
    assert len(calls) >= 4  # two epochs of minibatches
    calls.clear()
    monkeypatch.setattr(fast_nsf.FusedNSF, "hand_backward", False)
    fit(linear_problem, sims, **options)
    assert not calls


def test_nle_with_fnsf_theta_gradient_and_training_pass():
    """NLE with ``flow="fnsf"``: the likelihood's gradient in theta (context needing
    gradients: the autograd graph) matches finite differences, and NLE's training loss
    (weights only) runs the hand-written pass with autograd's gradients."""
    from estimators.nle import build_nle

    torch.manual_seed(0)
    theta, x = torch.randn(200, 3), torch.randn(200, 4)
    est = build_nle(theta, x, None, flow="fnsf", hidden_features=16, num_transforms=3).double()
    for p in est.density.parameters():
        p.data.add_(0.3 * torch.randn_like(p))
    th, xx = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    th.requires_grad_(True)
    ll = est.log_likelihood(th, xx)
    assert not _uses_pass(ll)
    (grad,) = torch.autograd.grad(ll.sum(), th)
    eps, fd = 1e-6, torch.zeros_like(grad)
    with torch.no_grad():
        for j in range(3):
            step = torch.zeros(3, dtype=torch.float64)
            step[j] = eps
            fd[:, j] = (est.log_likelihood(th + step, xx)
                        - est.log_likelihood(th - step, xx)) / (2 * eps)
    assert torch.allclose(grad, fd, rtol=1e-5, atol=1e-6)
    fast = est.log_likelihood(th.detach(), xx)
    assert _uses_pass(fast)
    est.density.hand_backward = False
    ref = est.log_likelihood(th.detach(), xx)
    est.density.hand_backward = True
    for g_f, g_r in zip(_grads(fast.sum(), est.density), _grads(ref.sum(), est.density)):
        assert torch.allclose(g_f, g_r, rtol=1e-9, atol=1e-11 * _size(g_r))


def test_batched_ensemble_of_fnsf_members():
    """The batched ensemble's ``vmap`` works with fnsf members (the autograd graph under
    ``torch.func``) and equals member-by-member evaluation."""
    import simulators
    from estimators.ensemble import build_ensemble
    from sbi_core import simulate

    problem = simulators.get_problem("linear_gaussian")
    theta, x = simulate(problem, 200, seed=0, progress=False).training_data()
    torch.manual_seed(0)
    est = build_ensemble(theta, x, problem.prior, ensemble=2, flow="fnsf", hidden_features=8,
                         num_transforms=2)
    for m in est.members:
        for p in m.parameters():
            p.data.add_(0.2 * torch.randn_like(p))
    lps = est._member_log_probs(theta[:20], x[:20]).detach()
    loop = torch.stack([m.log_prob(theta[:20], x[:20]) for m in est.members]).detach()
    assert est._vmap_ok is True
    assert torch.allclose(lps, loop, atol=1e-5)
    assert float((lps[0] - lps[1]).abs().max()) > 1e-3
