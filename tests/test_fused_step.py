"""The autograd-free training step of NPE with the fused MAF (issue 18, wave 11).

``estimators.fast_maf.FusedNLLStep`` computes a minibatch's mean loss and sets the flow's
gradients without autograd; ``training.train`` uses it where the estimator offers it
(``fused_training_step``). It must give the same bits as ``loss.mean().backward()`` (so the
same trained weights and validation curve) and must be declined wherever autograd is needed
(trainable parameters outside the flow, regularized losses, the conditional shift,
permuted trials, other flows). docs/performance.md, "Issue 18: sir and the per-step
overhead".
"""

from __future__ import annotations

import pytest
import torch

from diagnostics.misspecification import _DensityFlow
from estimators.npe import NPEEstimator, build_npe
from estimators.robust_training import npe_training_loss
from sbi_core import training
from sbi_core.priors import BoxUniform
from sbi_core.training import TrainConfig, train


def _data(n: int = 700, x_dim: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    theta = torch.rand(n, 2, generator=gen) * 4 - 2
    x = torch.cat([theta, theta.sum(1, keepdim=True)], 1).repeat(1, x_dim // 3) \
        + 0.3 * torch.randn(n, x_dim, generator=gen)
    return theta, 5 + 3 * x  # unstandardized: the estimator's z-scoring matters


def _npe(**options) -> NPEEstimator:
    theta, x = _data()
    torch.manual_seed(3)
    prior = BoxUniform(-2 * torch.ones(2), 2 * torch.ones(2))
    return build_npe(theta, x, prior, **{"flow": "fmaf", "hidden_features": 20,
                                         "num_transforms": 3, **options})


def _autograd_step(est: NPEEstimator, theta, x) -> tuple[torch.Tensor, list]:
    for p in est.parameters():
        p.grad = None
    loss = npe_training_loss(est, theta, x).mean()
    loss.backward()
    return loss.detach(), [p.grad for p in est.parameters()]


@pytest.mark.parametrize("n,options", [(256, {}), (77, {}),
                                       (256, {"theta_transform": "unconstrained"})])
def test_fused_step_equals_autograd_bit_for_bit(n: int, options: dict) -> None:
    est = _npe(**options)
    theta, x = _data()
    step = est.fused_training_step(npe_training_loss)
    assert step is not None
    for rows in (slice(0, n), slice(n, 2 * n), slice(0, n)):  # kept row gradient reused
        ref_loss, ref_grads = _autograd_step(est, theta[rows], x[rows])
        for p in est.parameters():
            p.grad = None
        loss = step(theta[rows], x[rows])
        assert loss.grad_fn is None and torch.equal(loss, ref_loss)
        for p, g in zip(est.parameters(), ref_grads):
            assert torch.equal(p.grad, g)
            assert p.grad.stride() == p.stride()  # the parameter's layout, as autograd's


def test_fused_step_is_declined_where_autograd_is_needed() -> None:
    est = _npe()
    assert est.fused_training_step(None) is not None
    assert est.fused_training_step(lambda e, t, x: e.loss(t, x)) is None  # a custom loss
    est.config["regularizer"] = "noise"
    assert est.fused_training_step(npe_training_loss) is None  # regularized loss
    est.config["regularizer"] = None
    assert _npe(embedding="mlp").fused_training_step(None) is None  # trainable embedding
    assert _npe(conditional_shift="linear_full").fused_training_step(None) is None
    assert _npe(flow="fnsf").fused_training_step(None) is None

    class OwnLoss(NPEEstimator):  # a subclass's own loss is trained with autograd
        def loss(self, theta, x):
            return 2 * super().loss(theta, x)

    est.__class__ = OwnLoss
    assert est.fused_training_step(None) is None


def test_npe_training_with_the_fused_step_is_bit_identical(monkeypatch) -> None:
    """The whole loop: same weights, validation curve and training losses."""
    theta, x = _data()
    cfg = TrainConfig(max_epochs=4, batch_size=64, learning_rate=3e-3, lr_schedule="cosine",
                      schedule_epochs=4, ema_decay=0.99, progress=False, seed=1)

    def run() -> tuple[dict, list, list]:
        est = _npe()
        hist = train(est, theta, x, cfg, loss_fn=npe_training_loss)
        return est.state_dict(), hist.validation_loss, hist.train_loss

    used = []
    fused_step = training._fused_step
    monkeypatch.setattr(training, "_fused_step",
                        lambda e, f: used.append(fused_step(e, f)) or used[-1])
    new = run()
    assert used[-1] is not None  # the fused step ran
    monkeypatch.setattr(training, "_fused_step", lambda e, f: None)  # autograd
    old = run()
    assert new[1] == old[1] and new[2] == old[2]
    assert all(torch.equal(new[0][k], old[0][k]) for k in old[0])


def test_detector_flow_fused_step_equals_autograd() -> None:
    torch.manual_seed(0)
    flow = _DensityFlow(5, 16, 3, seed=0)
    z = torch.randn(300, 5)
    loss = flow.loss(z, torch.zeros(300, 1)).mean()
    ref = torch.autograd.grad(loss, list(flow.parameters()))
    step = flow.fused_training_step(None)
    assert step is not None and flow.fused_training_step(lambda *a: None) is None
    got = step(z, torch.zeros(300, 1))
    assert torch.equal(got, loss.detach())
    assert all(torch.equal(p.grad, g) for p, g in zip(flow.parameters(), ref))
