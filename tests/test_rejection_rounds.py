"""Rejection sampling into the prior's support (``DirectPosterior``, ``sbi_core/rejection.py``):
the first round proposes exactly what is needed, later rounds binomial headroom; the
samples are the truncated distribution whatever the round sizes."""

import math

import torch
from scipy import stats
from torch import nn

from sbi_core.posterior import DirectPosterior
from sbi_core.priors import box_uniform
from sbi_core.rejection import proposal_count


class _CountingNormal(nn.Module):
    """Standard normal draws per observation; records each round's proposal count."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.w = nn.Parameter(torch.zeros(1))
        self.rounds: list[int] = []

    def sample(self, n: int, xs: torch.Tensor) -> torch.Tensor:
        self.rounds.append(n)
        return torch.randn(n, xs.shape[0], self.dim)

    def log_prob(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.distributions.Normal(0.0, 1.0).log_prob(theta).sum(-1)


def _posterior(low: list[float], high: list[float]) -> tuple[DirectPosterior, _CountingNormal]:
    est = _CountingNormal(len(low))
    names = [f"t{i}" for i in range(len(low))]
    return DirectPosterior(est, box_uniform(low, high), {"x_shape": [1], "param_names": names}), est


def test_no_leakage_is_one_round_of_exactly_n():
    """A support holding (almost) all the mass: one round of exactly n proposals (the old
    fixed 20% oversampling drew 12,000 for 10,000)."""
    post, est = _posterior([-20.0, -20.0], [20.0, 20.0])
    s = post.sample((10_000,), x=torch.zeros(1), seed=0)
    assert s.shape == (10_000, 2) and est.rounds == [10_000]
    assert post.last_acceptance_rate == 1.0


def test_truncated_samples_follow_the_truncated_normal():
    """Half the mass outside ([0, 8]): all samples inside, exactly n, few rounds, few wasted
    proposals, and the samples pass a KS test against the half-normal (p > 0.01)."""
    post, est = _posterior([0.0], [8.0])
    n = 20_000
    s = post.sample((n,), x=torch.zeros(1), seed=3)[:, 0]
    assert s.shape == (n,) and bool(((s >= 0) & (s <= 8)).all())
    assert est.rounds[0] == n and len(est.rounds) <= 4
    assert sum(est.rounds) < 1.1 * n / 0.5  # the old margin proposed ~1.2 n / 0.5 in all
    assert stats.kstest(s.numpy(), stats.halfnorm.cdf).pvalue > 0.01


def test_observations_with_different_acceptance():
    """Two observations sharing rounds: each gets its n samples, in its support."""
    post, _ = _posterior([-1.0], [3.0])
    xs = torch.zeros(2, 1)
    s = post.sample_batched((5000,), xs, seed=1)
    assert s.shape == (5000, 2, 1) and bool(((s >= -1) & (s <= 3)).all())


def test_proposal_count_headroom():
    """First round: the largest need. Later: enough that a binomial draw at the measured rate
    falls short rarely (< 1% of 2,000 simulated rounds), and not far above need / rate."""
    need = torch.tensor([10_000, 4_000])
    zero = torch.zeros(2, dtype=torch.long)
    assert proposal_count(need, zero, zero) == 10_000
    accepted, proposed = torch.tensor([5_000, 9_000]), torch.tensor([10_000, 10_000])
    m = proposal_count(torch.tensor([5_000, 1_000]), accepted, proposed)
    assert 10_000 < m < 11_000
    torch.manual_seed(0)
    short = torch.distributions.Binomial(m, torch.tensor(0.5)).sample((2000,)) < 5_000
    assert float(short.float().mean()) < 0.01
    assert proposal_count(torch.tensor([3]), torch.tensor([999]), torch.tensor([1000])) == 64
    assert math.isfinite(proposal_count(torch.tensor([10]), torch.tensor([0]),
                                        torch.tensor([1000])))
