"""TARP speed on a trained NPE: batched (one pass) vs a per-observation loop (baseline).

Trains a small NPE on the linear Gaussian (or loads ``--model``), draws ``--num`` test pairs
and ``--samples`` posterior samples per observation, and times

- batched: ``posterior_samples`` (chunked ``sample_batched``) + ``tarp_coverage`` (vectorized);
- loop: ``posterior.sample`` per observation + a Python loop computing each ``f_i``.

Run: ``PYTHONPATH=. python benchmarks/diagnostics_tarp_speed.py [--num 200 --samples 1000]``
"""

from __future__ import annotations

import argparse
import time

import torch

from diagnostics import calibration_pairs, posterior_samples, tarp_coverage
from sbi_core import fit, load, simulate
from simulators import get_problem


def loop_tarp(posterior, theta, xs, num_samples):
    """Baseline: one observation at a time (what a naive implementation does)."""
    lo, hi = theta.min(0).values, theta.max(0).values
    span = hi - lo
    refs = torch.rand(theta.shape)
    f = []
    for i in range(len(theta)):
        s = (posterior.sample((num_samples,), xs[i], seed=i) - lo) / span
        t = (theta[i] - lo) / span
        r = refs[i]
        f.append(float(((s - r).norm(dim=-1) < (t - r).norm()).float().mean()))
    return torch.tensor(f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num", type=int, default=200)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--model", help="model file (default: train a small NPE)")
    args = parser.parse_args()
    problem = get_problem("linear_gaussian")
    if args.model:
        posterior = load(args.model)
    else:
        sims = simulate(problem, 2000, seed=0, progress=False)
        posterior = fit(problem, sims, seed=0, flow="maf", hidden_features=32,
                        num_transforms=3, max_epochs=20, progress=False)
    posterior.range_check = "off"
    theta, xs = calibration_pairs(problem, num=args.num, seed=1)

    start = time.perf_counter()
    samples = posterior_samples(posterior, xs, args.samples, seed=0, progress=False)
    t_sample = time.perf_counter() - start
    res = tarp_coverage(samples, theta)
    t_batched = time.perf_counter() - start

    start = time.perf_counter()
    loop_tarp(posterior, theta, xs, args.samples)
    t_loop = time.perf_counter() - start

    print(f"TARP, {args.num} test pairs x {args.samples} samples, NPE ({posterior.method}), "
          f"torch threads {torch.get_num_threads()}")
    print(f"  batched: {t_batched:.2f} s (sampling {t_sample:.2f} s, TARP "
          f"{t_batched - t_sample:.3f} s); ATC {res.atc:+.3f}, KS p {res.ks_pvalue:.2g}")
    print(f"  loop baseline: {t_loop:.2f} s")
    print(f"  speed-up: {t_loop / t_batched:.1f}x")


if __name__ == "__main__":
    main()
