"""Fewer torch calls per NPE training step, the same bits (issue 18, wave 12: sir's margin).

- ``estimators.fast_maf_step.StepBuffers``: the autograd-free step's pass writes into
  buffers, views and gradient tensors made once per run (the gradients: slices of one
  tensor), and still equals ``loss.backward()`` bit for bit, step after step;
- ``training._one_storage``: the trainable weights as slices of one tensor during
  training, so the weight average is one ``lerp_`` and the clip multiply one ``mul_``
  (the same bits as the per-tensor ``_foreach_*`` calls); each weight gets its own storage
  back after training;
- NPE's ``prepare``: the training rows z-scored once per run instead of per minibatch.

A whole ``train`` run equals the wave-11 loop (per-step buffers, per-tensor EMA and clip
multiply, per-batch z-scoring) in weights, validation and training losses.
docs/performance.md, "Issue 18: sir's margin".
"""

from __future__ import annotations

import torch
from torch import nn

from estimators import fast_maf
from estimators.fast_maf import FusedNLLStep, _fused_backward, _fused_forward
from estimators.npe import NPEEstimator, build_npe
from estimators.robust_training import npe_training_loss
from sbi_core import training
from sbi_core.priors import BoxUniform
from sbi_core.training import TrainConfig, train


def _data(n: int = 700) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    theta = torch.rand(n, 2, generator=gen) * 4 - 2
    x = torch.cat([theta, theta.sum(1, keepdim=True)], 1).repeat(1, 2) \
        + 0.3 * torch.randn(n, 6, generator=gen)
    return theta, 5 + 3 * x


def _npe() -> NPEEstimator:
    theta, x = _data()
    torch.manual_seed(3)
    prior = BoxUniform(-2 * torch.ones(2), 2 * torch.ones(2))
    return build_npe(theta, x, prior, flow="fmaf", hidden_features=20, num_transforms=3)


def _wave11_call(self: FusedNLLStep, inputs, context, offset=None):
    """The wave-11 ``FusedNLLStep.__call__``: fresh buffers, views and gradients per step."""
    flow, params = self.flow, self.params
    masks = (flow.mask_in, flow.mask_hidden, flow.mask_out)
    with torch.no_grad():
        z, log_det, saved = _fused_forward(flow.num_transforms, flow.num_blocks, inputs,
                                           context, *params, *masks)
        lp = log_det - 0.5 * (z.square().sum(-1) + flow.dim * fast_maf._LOG_2PI)
        loss = -(lp if offset is None else lp + offset)
        mean = loss.mean()
        g_lp = self._row_gradient(loss.shape[0], mean)
        g_z = torch.mul(z, g_lp[:, None]).neg_()
        grads = _fused_backward(saved, context, *masks, g_z, g_lp)[4:12]
        for p, g in zip(params, grads):
            p.grad = g if g.stride() == p.stride() else \
                g.new_empty_strided(p.shape, p.stride()).copy_(g)
    return mean


def test_step_buffers_are_reused_and_give_autograds_bits() -> None:
    est = _npe()
    theta, x = _data()
    step = est.fused_training_step(npe_training_loss)
    seen = None
    for rows in (slice(0, 128), slice(128, 256), slice(300, 428), slice(0, 77)):
        for p in est.parameters():
            p.grad = None
        loss = npe_training_loss(est, theta[rows], x[rows]).mean()
        loss.backward()
        ref = [p.grad for p in est.parameters()]
        for p in est.parameters():
            p.grad = None
        got = step(theta[rows], x[rows])
        assert torch.equal(got, loss.detach())
        grads = [p.grad for p in est.parameters()]
        assert all(torch.equal(a, b) and a.stride() == b.stride() for a, b in zip(grads, ref))
        # one gradient tensor per parameter for the run, slices of one tensor
        whole = training._one_buffer(grads)
        assert whole is not None and whole.numel() == sum(p.numel() for p in est.parameters())
        if seen is not None and rows.stop - rows.start == 128:
            assert all(a is b for a, b in zip(grads, seen))
        seen = grads
    # new storage for the weights (e.g. `.data` replaced): new buffers, the same bits
    for p in est.parameters():
        p.data = p.data.clone()
        p.grad = None
    loss = npe_training_loss(est, theta[:128], x[:128]).mean()
    loss.backward()
    ref = [p.grad for p in est.parameters()]
    for p in est.parameters():
        p.grad = None
    assert torch.equal(step(theta[:128], x[:128]), loss.detach())
    assert all(torch.equal(p.grad, g) for p, g in zip(est.parameters(), ref))
    assert not any(a is b for a, b in zip([p.grad for p in est.parameters()], seen))


def test_one_storage_average_and_clip_equal_the_per_tensor_ops() -> None:
    torch.manual_seed(0)
    nets = [nn.Sequential(nn.Linear(7, 33), nn.Tanh(), nn.Linear(33, 5)) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    flat = training._one_storage(nets[1])
    assert flat is not None and training._slices_of(
        [p.detach() for p in nets[1].parameters()], flat)
    emas = [training._WeightAverage(nets[0], 0.99), training._WeightAverage(nets[1], 0.99, flat)]
    assert emas[0].flat is None and emas[1].flat is not None
    clips = [training._GradientClipper(net, 1.0) for net in nets]
    gen = torch.Generator().manual_seed(1)
    grad_whole = torch.empty_like(flat)  # gradients as slices of one tensor, as the step's
    views, offset = [], 0
    for p in nets[1].parameters():
        views.append(grad_whole[offset:offset + p.numel()].view(p.shape))
        offset += p.numel()
    for _ in range(40):
        step = [torch.randn(p.shape, generator=gen) * 3 for p in nets[0].parameters()]
        for net, ema, clip in zip(nets, emas, clips):
            with torch.no_grad():
                for p, s, v in zip(net.parameters(), step, views):
                    p.add_(s * 0.01)
                    if net is nets[1]:
                        p.grad = v.copy_(s)
                    else:
                        p.grad = s.clone()
            clip()
            ema.update()
        assert clips[1]._whole([p.grad for p in nets[1].parameters()]) is grad_whole
        assert all(torch.equal(a.grad, b.grad) for a, b in
                   zip(nets[0].parameters(), nets[1].parameters()))
        assert all(torch.equal(a, b) for a, b in zip(emas[0].avg, emas[1].avg))
    with emas[0].swapped(), emas[1].swapped():
        assert all(torch.equal(a, b) for a, b in zip(nets[0].parameters(), nets[1].parameters()))
    training._own_storage(nets[1])
    ptrs = {p.untyped_storage().data_ptr() for p in nets[1].parameters()}
    assert len(ptrs) == len(list(nets[1].parameters()))
    assert all(torch.equal(a, b) for a, b in zip(nets[0].parameters(), nets[1].parameters()))


def test_train_equals_the_wave11_loop_and_prepares_rows_once(monkeypatch) -> None:
    theta, x = _data()
    cfg = TrainConfig(max_epochs=4, batch_size=64, learning_rate=3e-3, lr_schedule="cosine",
                      schedule_epochs=4, ema_decay=0.99, clip_max_norm=0.5, progress=False,
                      seed=1)

    def run() -> tuple[dict, list, list, NPEEstimator]:
        est = _npe()
        hist = train(est, theta, x, cfg, loss_fn=npe_training_loss)
        return est.state_dict(), hist.validation_loss, hist.train_loss, est

    prepared = []
    fused_step = training._fused_step

    def spy(e, f):
        step = fused_step(e, f)
        prepare = step.prepare
        step.prepare = lambda a, b: prepared.append(a.shape[0]) or prepare(a, b)
        return step

    monkeypatch.setattr(training, "_fused_step", spy)
    new = run()
    assert prepared == [630]  # once, all training rows
    est = new[3]  # each weight back in its own storage
    assert len({p.untyped_storage().data_ptr() for p in est.parameters()}) == \
        len(list(est.parameters()))

    def per_batch(e, f):  # the step without `prepare`: z-scoring per minibatch
        step = fused_step(e, f)
        return lambda a, b: step(a, b)

    monkeypatch.setattr(training, "_fused_step", per_batch)
    monkeypatch.setattr(training, "_one_storage", lambda module: None)
    monkeypatch.setattr(FusedNLLStep, "__call__", _wave11_call)
    old = run()
    assert new[1] == old[1] and new[2] == old[2]
    assert all(torch.equal(new[0][k], old[0][k]) for k in old[0])


def test_autograd_training_keeps_each_weights_storage() -> None:
    """Only with the autograd-free step are the weights moved into one tensor; a loss that
    needs autograd trains the weights in their own storage, untouched."""
    theta, x = _data()
    est = _npe()
    ptrs = [p.data_ptr() for p in est.parameters()]
    cfg = TrainConfig(max_epochs=2, batch_size=64, ema_decay=0.99, progress=False, seed=1)
    train(est, theta, x, cfg, loss_fn=lambda e, t, xx: e.loss(t, xx))  # a custom loss
    assert [p.data_ptr() for p in est.parameters()] == ptrs
