import pytest
import torch

from diagnostics.c2st import c2st
from sbi_core import Problem, SamplingError, box_uniform, fit, simulate
from simulators.linear_gaussian import linear_gaussian_posterior


def test_npe_matches_analytic_posterior(linear_problem, trained_npe):
    """Accuracy: C2ST < 0.6 against the analytic 2-D linear Gaussian posterior (seeded)."""
    for k in (1, 2):
        x_o = linear_problem.observation(k)
        samples = trained_npe.sample((2000,), x=x_o, seed=0)
        reference = linear_gaussian_posterior(x_o).sample((2000,))
        assert c2st(samples, reference, seed=0) < 0.6


@pytest.mark.parametrize("flow", ["nsf", "mdn"])
def test_other_density_estimators_train(linear_problem, flow):
    sims = simulate(linear_problem, 2000, seed=2, progress=False)
    post = fit(linear_problem, sims, flow=flow, seed=0, progress=False, max_epochs=60,
               batch_size=64, hidden_features=32, num_transforms=2)
    x_o = linear_problem.observation(1)
    samples = post.sample((1000,), x=x_o, seed=0)
    ref = linear_gaussian_posterior(x_o)
    assert torch.allclose(samples.mean(0), ref.mean, atol=0.15)
    assert c2st(samples, ref.sample((1000,)), seed=0) < 0.62


@pytest.mark.parametrize("embedding,x_shape", [
    ({"type": "mlp", "output_dim": 8}, (6,)),
    ({"type": "set", "output_dim": 8}, (5, 2)),
    ({"type": "cnn1d", "output_dim": 8, "channels": [4]}, (16,)),
])
def test_embeddings_train_and_sample(embedding, x_shape):
    def simulator(theta):
        n = theta.shape[0]
        if len(x_shape) == 2:
            return theta[:, None, :] + 0.3 * torch.randn(n, *x_shape)
        reps = x_shape[0] // 2
        return theta.repeat(1, reps)[:, : x_shape[0]] + 0.3 * torch.randn(n, *x_shape)

    problem = Problem(box_uniform([-1, -1], [1, 1]), simulator, x_shape=x_shape)
    sims = simulate(problem, 1000, seed=0, progress=False)
    post = fit(problem, sims, embedding=embedding, seed=0, progress=False, max_epochs=15,
               hidden_features=16, num_transforms=2)
    x_o = problem.observation(1)
    s = post.sample((300,), x=x_o, seed=1)
    assert s.shape == (300, 2) and torch.isfinite(s).all()
    # the posterior learned something: its mean is nearer the truth than the prior mean (0)
    truth = problem.true_parameters(1)
    assert (s.mean(0) - truth).norm() < truth.norm() + 0.3


def test_set_embedding_handles_padding():
    from estimators.embedding import build_embedding

    net, dim = build_embedding({"type": "set", "output_dim": 4}, (3, 2))
    x = torch.randn(2, 3, 2)
    padded = x.clone()
    padded[:, 2] = float("nan")
    out_full = net(x[:, :2].repeat(1, 1, 1))  # same two rows, as a 2-set built separately
    net2_in = torch.cat([x[:, :2], torch.full((2, 1, 2), float("nan"))], 1)
    assert torch.allclose(net(net2_in), net(padded))
    assert dim == 4 and out_full.shape == (2, 4)


def test_rejection_reports_acceptance_and_fails_clearly(trained_npe):
    from sbi_core import DirectPosterior

    # Restrict the support to a sliver: acceptance collapses -> clear error, no endless loop.
    narrow = box_uniform([-0.001, -0.001], [0.001, 0.001])
    post = DirectPosterior(trained_npe.estimator, narrow, trained_npe.problem_spec)
    with pytest.raises(SamplingError, match="inside the prior support"):
        post.sample((100,), x=torch.tensor([1.5, 1.5]))
    wide = box_uniform([-5, -5], [5, 5])
    post = DirectPosterior(trained_npe.estimator, wide, trained_npe.problem_spec)
    post.sample((500,), x=torch.zeros(2))
    assert post.last_acceptance_rate > 0.99


def test_unknown_options_are_named(linear_problem):
    sims = simulate(linear_problem, 200, seed=0, progress=False)
    with pytest.raises(TypeError, match="hidden_feature"):
        fit(linear_problem, sims, hidden_feature=3, progress=False)
    with pytest.raises(ValueError, match="Unknown flow"):
        fit(linear_problem, sims, flow="realnvp", progress=False)
    with pytest.raises(ValueError, match="Unknown method"):
        fit(linear_problem, sims, method="no_such_method", progress=False)
