"""Vectorized slice sampling vs a Python loop over chains (same total draws).

    PYTHONPATH=. python benchmarks/mcmc_vectorized.py [--chains 50] [--samples 2000]

Target: a correlated 2-D Gaussian; both runs use the same warm-up and draws per chain.
Prints wall time of each, the speed-up, and max R-hat / mean error of the vectorized run.
"""

from __future__ import annotations

import argparse
import time

import torch

from sbi_core.mcmc import MCMCConfig, run_mcmc
from sbi_core.priors import gaussian

MEAN = torch.tensor([1.0, -2.0])
PRECISION = torch.linalg.inv(torch.tensor([[1.0, 0.6], [0.6, 2.0]]))


def potential(theta: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    d = theta - MEAN
    return -0.5 * ((d @ PRECISION) * d).sum(-1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chains", type=int, default=50)
    parser.add_argument("--samples", type=int, default=2000)
    args = parser.parse_args()
    prior = gaussian([0.0, 0.0], std=[5.0, 5.0])
    torch.manual_seed(0)
    t0 = time.perf_counter()
    result = run_mcmc(potential, prior, args.samples,
                      config=MCMCConfig(num_chains=args.chains, progress=False))
    vectorized = time.perf_counter() - t0
    per_chain = args.samples // args.chains
    t0 = time.perf_counter()
    for _ in range(args.chains):  # baseline: one chain at a time
        run_mcmc(potential, prior, per_chain,
                 config=MCMCConfig(num_chains=1, progress=False, warn_rhat=None))
    looped = time.perf_counter() - t0
    err = float((result.samples[:, 0].mean(0) - MEAN).abs().max())
    print(f"vectorized ({args.chains} chains): {vectorized:.2f} s; loop over chains: "
          f"{looped:.2f} s; speed-up x{looped / vectorized:.1f}; max R-hat "
          f"{float(result.rhat.max()):.3f}; max |mean error| {err:.3f}")


if __name__ == "__main__":
    main()
