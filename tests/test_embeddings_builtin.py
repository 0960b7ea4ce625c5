"""Built-in embeddings: shapes, invariances, causality, old files, and one learning check."""

import pytest
import torch

from estimators.embedding import build_embedding, prepare_embedding
from estimators.npe import NPEEstimator
from sbi_core import Problem, box_uniform, fit, simulate
from sbi_core.priors import support_bounds

CASES = [
    ("mlp", (6,)), ("set", (5, 2)), ("cnn1d", (40,)), ("cnn1d", (3, 40)),
    ("tcn", (40,)), ("tcn", (40, 3)), ("gru", (30,)), ("lstm", (30, 2)),
    ("transformer", (50,)), ("transformer", (300, 2)), ({"type": "transformer", "mode": "set"},
                                                        (7, 3)),
    ("cnn2d", (12, 12)), ("cnn2d", (3, 13, 11)), ({"type": "cnn2d", "channels": [4]}, (1, 5, 5)),
]


@pytest.mark.parametrize("spec,x_shape", CASES, ids=[f"{s}-{x}" for s, x in CASES])
def test_shapes_and_plain_specs(spec, x_shape):
    torch.manual_seed(0)
    stored, module = prepare_embedding(spec, x_shape)
    assert module is None and isinstance(stored, dict)  # plain values only
    net, dim = build_embedding(stored, x_shape)
    out = net(torch.randn(4, *x_shape))
    assert out.shape == (4, dim) and torch.isfinite(out).all()
    # the same spec builds the same architecture (what load relies on)
    again, _ = build_embedding(stored, x_shape)
    assert {k: v.shape for k, v in net.state_dict().items()} == \
        {k: v.shape for k, v in again.state_dict().items()}
    with torch.device("meta"):  # estimators may be built on the meta device first
        meta_net, meta_dim = build_embedding(stored, x_shape)
    assert meta_dim == dim


@pytest.mark.parametrize("spec", ["set", {"type": "transformer", "mode": "set"}])
def test_set_embeddings_are_permutation_invariant_and_ignore_padding(spec):
    torch.manual_seed(0)
    net, _ = build_embedding(prepare_embedding(spec, (6, 2))[0], (6, 2))
    net.eval()
    x = torch.randn(3, 6, 2)
    perm = x[:, torch.randperm(6)]
    assert torch.allclose(net(x), net(perm), atol=1e-5)
    padded = x.clone()
    padded[:, 4:] = float("nan")  # a set of 4 in a batch of 6
    moved = torch.cat([padded[:, 4:], padded[:, :4]], dim=1)  # padding first
    assert torch.allclose(net(padded), net(moved), atol=1e-5)
    assert not torch.allclose(net(padded), net(x), atol=1e-3)


def test_sequence_embeddings_see_order():
    torch.manual_seed(0)
    x = torch.randn(2, 40)
    for spec in ("gru", "tcn", "transformer", "cnn1d"):
        net, _ = build_embedding(prepare_embedding(spec, (40,))[0], (40,))
        assert not torch.allclose(net(x), net(x.flip(1)), atol=1e-4), spec


def test_tcn_is_causal():
    torch.manual_seed(0)
    net, _ = build_embedding({"type": "tcn", "num_blocks": 3}, (30, 2))
    x = torch.randn(2, 30, 2)
    changed = x.clone()
    changed[:, 20:] += 5.0
    h, h2 = net.features(x), net.features(changed)
    assert torch.allclose(h[..., :20], h2[..., :20])  # the past never sees the future
    assert not torch.allclose(h[..., 20:], h2[..., 20:])


def test_cnn1d_files_without_layout_keep_the_original_architecture():
    # configs written before layout 2 have {"type": "cnn1d"}: max pooling, 8 pooled steps
    cfg = {"theta_dim": 2, "x_shape": [100], "embedding": {"type": "cnn1d"},
           "hidden_features": 8, "num_transforms": 1}
    old = NPEEstimator(cfg).embedding
    assert isinstance(old.conv[2], torch.nn.MaxPool1d)
    assert old.head[0].weight.shape == (64, 32 * 8)
    new_spec, _ = prepare_embedding("cnn1d", (100,))
    assert new_spec["layout"] == 2
    new = NPEEstimator({**cfg, "embedding": new_spec}).embedding
    assert new.conv[0].stride == (2,)


def test_npe_with_time_series_embedding_beats_the_prior():
    """Learning check: level ``mu`` and noise scale ``sigma`` of a series of 32 steps
    ``x_t = mu + sigma * eps_t``, read by a tcn (the scale needs a nonlinear summary). Over
    40 test series the normalized posterior-mean error must be under half that of the prior
    mean (the trivial estimate that ignores x)."""

    def simulator(theta):
        return theta[:, :1] + theta[:, 1:].exp() * torch.randn(len(theta), 32)

    problem = Problem(box_uniform([-1.0, -1.5], [1.0, 0.0]), simulator, x_shape=(32,))
    sims = simulate(problem, 1000, seed=0, progress=False)
    post = fit(problem, sims, embedding={"type": "tcn", "channels": 16, "num_blocks": 2},
               seed=0, progress=False, max_epochs=25, batch_size=64, hidden_features=32,
               num_transforms=2)
    torch.manual_seed(1)
    theta = problem.prior.sample((40,))
    post.range_check = "off"  # a few test series reach past the 1000 training ones per step
    mean = post.sample_batched((200,), simulator(theta), seed=0).mean(0)
    low, high = support_bounds(problem.prior)
    err = ((mean - theta) / (high - low)).norm(dim=-1).mean()
    base = ((0.5 * (low + high) - theta) / (high - low)).norm(dim=-1).mean()
    assert err < 0.5 * base, (float(err), float(base))
