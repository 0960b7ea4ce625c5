"""C2ST: ~0.5 for samples of one distribution, ~1.0 for clearly different ones."""

import pytest
import torch

from diagnostics.c2st import c2st


def test_same_distribution_gives_half():
    torch.manual_seed(0)
    p, q = torch.randn(1000, 3), torch.randn(1000, 3)
    assert abs(c2st(p, q, seed=0) - 0.5) < 0.05


def test_clearly_different_gives_one():
    torch.manual_seed(0)
    p, q = torch.randn(1000, 3), torch.randn(1000, 3) + 5.0
    assert c2st(p, q, seed=0) > 0.97


def test_partially_different_is_in_between():
    torch.manual_seed(0)
    p, q = torch.randn(1000, 2), torch.randn(1000, 2) + torch.tensor([1.0, 0.0])
    score = c2st(p, q, seed=0)
    assert 0.6 < score < 0.8  # optimal accuracy Phi(0.5) = 0.69


def test_c2st_is_seeded_and_validates_input():
    torch.manual_seed(0)
    p, q = torch.randn(300, 2), torch.randn(300, 2) + 0.5
    assert c2st(p, q, seed=3) == c2st(p, q, seed=3)
    with pytest.raises(ValueError, match="sample sets"):
        c2st(p, q[:, :1])
    with pytest.raises(ValueError, match="NaN"):
        c2st(p, torch.full((300, 2), float("nan")))
