"""The cheaper default ``fit`` learns exactly the same weights (issue 18, wave 10).

Three CPU savings of the training loop are bit-identical by construction and checked here
against the code they replace: the lean Adam step (``training._AdamStep``: the same fused
kernel calls as ``torch.optim.Adam(fused=True).step()``), the per-epoch gather of the
minibatches (``_TensorBatches.epoch``: the same rows as one index per minibatch) and the
fused MAF pass with its stacked tensors split once (``_fused_forward``: the same views as
indexing each use). docs/performance.md, "Issue 18: the cost of the whole default fit".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from estimators import fast_maf
from estimators.fast_maf import FusedMAF, GaussianBaseFlow, _fused_forward, _tanh_
from sbi_core import training
from sbi_core.training import TrainConfig, _AdamStep, _TensorBatches, make_adam, train


def _toy_flow(seed: int = 3) -> FusedMAF:
    torch.manual_seed(seed)
    return FusedMAF(3, 2, hidden_features=12, num_transforms=3, num_blocks=2)


def _data(n: int = 600) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 2, generator=gen)
    theta = torch.cat([x, x[:, :1]], 1) + 0.3 * torch.randn(n, 3, generator=gen)
    return theta, x


def test_adam_step_equals_torch_fused_adam_bit_for_bit() -> None:
    flows = [_toy_flow(), _toy_flow()]
    opts = [make_adam(f.parameters(), 3e-3) for f in flows]
    lean = _AdamStep(opts[1])
    theta, x = _data(128)
    for step in range(12):
        for i, (flow, opt) in enumerate(zip(flows, opts)):
            opt.param_groups[0]["lr"] = 3e-3 * (1 - step / 20)  # a schedule, as the loop's
            loss = -flow.log_prob(theta, x).mean()
            if i == 0:
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            else:
                lean.zero_grad()
                loss.backward()
                lean.step()
    assert lean.lean and lean.state is not None  # the lean path ran after the first step
    assert lean.step_counts is not None  # the step counters as views of one tensor
    for a, b in zip(flows[0].parameters(), flows[1].parameters()):
        assert torch.equal(a, b)
    for p, q in zip(flows[0].parameters(), flows[1].parameters()):  # optimizer state too
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(opts[0].state[p][key], opts[1].state[q][key])


def test_adam_step_falls_back_for_plain_adam() -> None:
    flow = _toy_flow()
    opt = torch.optim.Adam(flow.parameters(), lr=1e-3)  # not fused: torch's own step
    lean = _AdamStep(opt)
    assert not lean.lean
    theta, x = _data(64)
    lean.zero_grad()
    (-flow.log_prob(theta, x).mean()).backward()
    lean.step()
    assert all(int(opt.state[p]["step"]) == 1 for p in flow.parameters())


def test_epoch_gather_yields_the_rows_of_per_batch_indexing(monkeypatch) -> None:
    theta, x = _data(1003)
    cfg = TrainConfig(batch_size=100)
    data = _TensorBatches(theta, x, cfg, torch.Generator().manual_seed(1), torch.device("cpu"))
    got = list(data.epoch(torch.Generator().manual_seed(5), 100))
    monkeypatch.setattr(training, "_EPOCH_COPY_BYTES", 0)  # large data: index per batch
    ref = list(data.epoch(torch.Generator().manual_seed(5), 100))
    assert len(got) == len(ref) == data.num_train // 100
    for (ta, xa), (tb, xb) in zip(got, ref):
        assert torch.equal(ta, tb) and torch.equal(xa, xb)


class _FlowNLL(torch.nn.Module):
    """A toy estimator: the negative log-likelihood of one flow."""

    def __init__(self, flow):
        super().__init__()
        self.flow = flow

    def loss(self, th, xx):
        return -self.flow.log_prob(th, xx)


def _train_toy_flow(seed: int, theta, x, cfg) -> tuple[list[torch.Tensor], list[float]]:
    """Train ``_toy_flow(seed)`` with ``cfg``: its final weights and validation curve."""
    flow = _toy_flow(seed)
    hist = train(_FlowNLL(flow), theta, x, cfg)
    return [p.detach().clone() for p in flow.parameters()], hist.validation_loss


def test_training_is_bit_identical_with_and_without_the_lean_loop(monkeypatch) -> None:
    """The whole loop (cosine schedule, EMA, clipping, validation, best-weight restore)."""
    theta, x = _data(900)
    cfg = TrainConfig(max_epochs=6, batch_size=64, learning_rate=3e-3, lr_schedule="cosine",
                      schedule_epochs=6, ema_decay=0.9, progress=False, seed=4)

    def run() -> tuple[list[torch.Tensor], list[float]]:
        return _train_toy_flow(7, theta, x, cfg)

    lean_w, lean_v = run()
    monkeypatch.setattr(training, "_EPOCH_COPY_BYTES", 0)
    monkeypatch.setattr(training._AdamStep, "_collect", lambda self: None)  # torch's step
    ref_w, ref_v = run()
    assert lean_v == ref_v
    assert all(torch.equal(a, b) for a, b in zip(lean_w, ref_w))


def _old_tanh_(a: torch.Tensor) -> torch.Tensor:
    """The wave-7 ``_tanh_``: three in-place operations."""
    return a.sigmoid_().mul_(2.0).sub_(1.0)


def test_one_op_tanh_equals_three_op_tanh_bit_for_bit() -> None:
    gen = torch.Generator().manual_seed(2)
    for dtype in (torch.float32, torch.float64):
        a = torch.randn(1000, 53, generator=gen).to(dtype) * 30  # saturated units too
        a[0, :5] = torch.tensor([0.0, -0.0, 1e-30, -200.0, 200.0], dtype=dtype)
        assert torch.equal(_tanh_(a.clone()), _old_tanh_(a.clone()))


def _indexed_forward(t_all, k_all, inputs, context, w_in, b_in, w_ctx, b_ctx, w_hid, b_hid,
                     w_out, b_out, mask_in, mask_hidden, mask_out):
    """The wave-7 form of ``_fused_forward`` (one index per use, three-op tanh, inputs
    copied into a stacked buffer), the reference."""
    n, d, h = inputs.shape[0], inputs.shape[1], w_in.shape[1]
    with torch.no_grad():
        wm_in, wm_hid, wm_out = w_in * mask_in, w_hid * mask_hidden[:, None], w_out * mask_out
        w_in_t, w_out_t = wm_in.transpose(1, 2), wm_out.transpose(1, 2)
        w_hid_t = wm_hid.transpose(2, 3)
        feats = _old_tanh_(torch.addmm(b_ctx, context, w_ctx.t(), beta=2.0, alpha=2.0))
        ctx_h = feats.view(n, t_all, h) + b_in
        acts = inputs.new_empty(k_all + 1, t_all, n, h)
        zs = inputs.new_empty(t_all, n, d)
        scales = inputs.new_empty(t_all, n, d)
        z = inputs
        for t in range(t_all):
            zs[t] = z
            hid = _old_tanh_(torch.addmm(ctx_h[:, t], z, w_in_t[t], beta=2.0, alpha=2.0,
                                         out=acts[0, t]))
            for k in range(k_all):
                hid = _old_tanh_(torch.addmm(b_hid[t, k], hid, w_hid_t[t, k], beta=2.0,
                                             alpha=2.0, out=acts[k + 1, t]))
            out = torch.addmm(b_out[t], hid, w_out_t[t])
            a = out[:, :d].clone()
            scale = torch.add(F.softplus(a), 1e-3, out=scales[t])
            z = torch.addcmul(out[:, d:], z, scale)
        return z, scales.log().sum((0, 2)), acts, zs, feats


def test_split_views_forward_equals_indexed_forward_bit_for_bit() -> None:
    flow = _toy_flow()
    theta, x = _data(200)
    args = (flow.num_transforms, flow.num_blocks, theta, x, flow.w_in, flow.b_in, flow.w_ctx,
            flow.b_ctx, flow.w_hid, flow.b_hid, flow.w_out, flow.b_out, flow.mask_in,
            flow.mask_hidden, flow.mask_out)
    z, log_det, saved = _fused_forward(*args)
    z_ref, ld_ref, acts_ref, zs_ref, feats_ref = _indexed_forward(*args)
    assert torch.equal(z, z_ref) and torch.equal(log_det, ld_ref)
    assert torch.equal(saved[4], acts_ref) and torch.equal(saved[3], feats_ref)
    assert torch.equal(torch.stack(saved[5]), zs_ref)


def test_fused_pass_gradients_unchanged_by_the_split_views() -> None:
    """The hand-written backward on the split views gives the gradients of the autograd
    graph (the wave-7 check of tests/test_fused_pass_autograd.py, here on the toy flow)."""
    flow = _toy_flow().double()
    theta, x = (v.double() for v in _data(100))
    fast = torch.autograd.grad(flow.log_prob(theta, x).sum(), list(flow.parameters()))
    z, ld = flow._forward_autograd(theta, x)
    ref_lp = ld - 0.5 * (z.square().sum(-1) + flow.dim * 1.8378770664093453)
    ref = torch.autograd.grad(ref_lp.sum(), list(flow.parameters()))
    for a, b in zip(fast, ref):
        assert torch.allclose(a, b, rtol=0, atol=1e-10)


def test_detector_with_the_40_epoch_flow_keeps_its_power_and_level() -> None:
    """The detector's density flow now stops at 40 epochs (was 100): on two_moons (flow
    density: 4,800 fitting rows) it still flags shifted observations and keeps its
    false-alarm rate near alpha (benchmarks/misspecification_power.py measured the same
    power with 40 and 100 epochs)."""
    from diagnostics.misspecification import fit_detector
    from sbi_core import simulate
    from simulators import get_problem

    torch.set_num_threads(1)
    prob = get_problem("two_moons")
    x = simulate(prob, 6000, seed=0, progress=False).training_data()[1]
    det = fit_detector(None, x, seed=0)
    assert det.config["density"] == "flow"
    fresh = simulate(prob, 600, seed=5, progress=False).training_data()[1]
    null_rate = float(det.test(fresh).flagged().float().mean())
    # combined level 0.05 (Bonferroni: <= 0.05); 600 rows: binomial sd 0.009
    assert null_rate <= 0.08
    shifted = det.test(fresh[:200] + 3 * x.std(0))
    assert float(shifted.flagged().float().mean()) >= 0.9


# --- wave 11 (h11-sirfit): the base density inside the fused pass, the no-grad pass's
# two-buffer activations, the shared Adam step counters (docs/performance.md, "Issue 18: sir
# and the per-step overhead")


def _old_log_prob(flow: FusedMAF, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The wave-10 training ``log_prob``: ``_FusedMAFPass`` then the base density as an
    autograd graph (``GaussianBaseFlow.log_prob``)."""
    return GaussianBaseFlow.log_prob(flow, theta, x)


def test_log_prob_node_equals_pass_plus_autograd_base_bit_for_bit() -> None:
    """Values and weight gradients of the one-node training ``log_prob`` equal the pass +
    autograd base density's, bit for bit: a batch of 256 with the mean (as in training) and
    an odd batch with unequal row weights (any upstream gradient)."""
    flow = _toy_flow()
    for n, weighted in ((256, False), (97, True)):
        theta, x = _data(n)
        theta = theta * 3  # larger z: the -g z gradient matters
        w = torch.rand(n, generator=torch.Generator().manual_seed(n)) if weighted else None
        new, old = flow.log_prob(theta, x), _old_log_prob(flow, theta, x)
        assert any("LogProb" in type(f).__name__ for f in [new.grad_fn])
        assert torch.equal(new, old)
        grads = []
        for lp in (new, old):
            loss = -(lp * w).sum() if weighted else -lp.mean()
            grads.append(torch.autograd.grad(loss, list(flow.parameters())))
        for a, b in zip(*grads):
            assert torch.equal(a, b)


def test_no_grad_pass_with_two_buffers_equals_the_kept_activations() -> None:
    flow = _toy_flow()
    theta, x = _data(1000)
    args = (flow.num_transforms, flow.num_blocks, theta, x, flow.w_in, flow.b_in, flow.w_ctx,
            flow.b_ctx, flow.w_hid, flow.b_hid, flow.w_out, flow.b_out, flow.mask_in,
            flow.mask_hidden, flow.mask_out)
    z, ld, saved = _fused_forward(*args)
    z2, ld2, saved2 = _fused_forward(*args, keep=False)
    assert torch.equal(z, z2) and torch.equal(ld, ld2)
    assert saved2[4].shape[:2] == (2, 1)  # two (N, H) buffers, not (L, T, N, H)
    with torch.no_grad():
        assert torch.equal(flow.log_prob(theta, x), _old_log_prob(flow, theta, x))


def test_training_is_bit_identical_to_the_wave10_pass(monkeypatch) -> None:
    """The whole loop with the one-node log_prob, the two-buffer validation pass and the
    shared step counters against the wave-10 code paths: same weights, same validation
    curve."""
    theta, x = _data(900)
    cfg = TrainConfig(max_epochs=5, batch_size=64, learning_rate=3e-3, lr_schedule="cosine",
                      schedule_epochs=5, ema_decay=0.99, progress=False, seed=2)

    def run() -> tuple[list[torch.Tensor], list[float]]:
        return _train_toy_flow(5, theta, x, cfg)

    new_w, new_v = run()
    monkeypatch.setattr(FusedMAF, "log_prob", GaussianBaseFlow.log_prob)
    forward = fast_maf._fused_forward
    monkeypatch.setattr(fast_maf, "_fused_forward",
                        lambda *a, keep=True: forward(*a, keep=True))
    collect = training._AdamStep._collect

    def separate_counters(self) -> None:  # torch's per-parameter step tensors
        collect(self)
        self.step_counts = None

    monkeypatch.setattr(training._AdamStep, "_collect", separate_counters)
    old_w, old_v = run()
    assert new_v == old_v
    assert all(torch.equal(a, b) for a, b in zip(new_w, old_w))


def test_clip_factor_in_float32_scalars_equals_torch_clip_bit_for_bit() -> None:
    """The clipper's float32 scalar factor against ``nn.utils.clip_grad_norm_`` on the same
    gradients: norms below, near and far above ``max_norm`` (with and without clipping)."""
    flows = [_toy_flow(), _toy_flow()]
    clip = training._GradientClipper(flows[1], 5.0)
    assert clip.scalar
    gen = torch.Generator().manual_seed(0)
    for scale in (1e-4, 0.05, 0.3, 0.31, 1.0, 7.0, 300.0):
        for a, b in zip(flows[0].parameters(), flows[1].parameters()):
            g = torch.randn(a.shape, generator=gen) * scale
            a.grad, b.grad = g.clone(), g.clone()
        torch.nn.utils.clip_grad_norm_(list(flows[0].parameters()), 5.0)
        clip()
        for a, b in zip(flows[0].parameters(), flows[1].parameters()):
            assert torch.equal(a.grad, b.grad)
