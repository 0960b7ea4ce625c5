"""benchmarks/sequential_vs_sbi.py: option variants of our methods and the prior handed to sbi's
worker (issue 17 measurements). sbi is never imported."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import sequential_vs_sbi  # noqa: E402


def test_variants_parse_and_bad_ones_name_the_fix() -> None:
    out = sequential_vs_sbi.parse_variants(
        ['snpe_c_mdn=snpe_c:{"flow": "mdn"}', 'snle_10=snle:{"rounds": 10}', "npe_plain=npe:"])
    assert out == {"snpe_c_mdn": ("snpe_c", {"flow": "mdn"}), "snle_10": ("snle", {"rounds": 10}),
                   "npe_plain": ("npe", {})}
    for bad, words in (("x=sbi_tsnpe:{}", "METHOD one of"), ("tsnpe=tsnpe:{}", "new NAME"),
                       ("x=npe:{flow}", "not JSON"), ("x=npe:[1]", "JSON object")):
        with pytest.raises(SystemExit, match=words):
            sequential_vs_sbi.parse_variants([bad])


def test_variant_options_reach_fit() -> None:
    import simulators

    problem = simulators.get_problem("two_moons")
    x_o = problem.observation(1)
    with pytest.raises(ValueError, match="no_such_flow"):
        sequential_vs_sbi.run_ours(problem, x_o, "npe", 200, 1, 0, 10, None,
                                   {"flow": "no_such_flow"})


def test_sir_prior_goes_to_sbi_as_the_same_law() -> None:
    """sbi 0.27 raised 'Cannot transform _ProductSupport constraints' on sir's product prior;
    the worker now passes one torch Independent distribution with the same density."""
    from _npe_worker import _prior_for_sbi

    import simulators
    from sbi_core.priors import prior_spec

    prior = simulators.get_problem("sir").prior
    converted = _prior_for_sbi(prior_spec(prior))
    assert isinstance(converted, torch.distributions.Independent)
    theta = prior.sample((500,))
    assert torch.allclose(converted.log_prob(theta), prior.log_prob(theta), atol=1e-5)
    torch.manual_seed(0)
    draws = converted.sample((20_000,))
    assert torch.allclose(draws.log().mean(0), torch.tensor([0.4, 0.125]).log(), atol=0.02)
