"""False-alarm rate, power and cost of the misspecification detector (docs/trust.md).

For each problem (gaussian_linear, two_moons, sir) a detector is fitted on ``--train``
simulations (x-space features: z-scored x; density flow from 4,000 fitting rows on) and:

- **false-alarm rate** at level 0.05 of each test (density, MMD) and of the combined verdict
  (Bonferroni over the two) over ``--null`` fresh well-specified observations, with the
  binomial 95% interval;
- **power** for single observations: ``shift`` x + s * sd(x) in every coordinate,
  ``scale`` mean + c * (x - mean), ``noise`` x + N(0, (k * sd(x))^2) (noise of a kind the
  simulator lacks);
- **power** for sets of 20 observations (MMD set test): a fraction ``eps`` contaminated by
  outliers x + 5 * sd(x) * random signs, and a small shift of the whole set;
- **cost** per observation: the batched test of 1,000 observations, and the baseline
  (one call per observation, as a loop over observations would do) in the same run, with the
  ratio.

With ``--npe SECONDS`` the detector is the one ``fit`` trains with an NPE (features: the
estimator's embedding output; null: the training loop's validation rows), the path users get;
NPE training is capped at SECONDS per problem.

Run: ``PYTHONPATH=. python benchmarks/misspecification_power.py [--train 10000] [--null 1000]
[--npe 90]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import torch

from diagnostics.misspecification import fit_detector
from sbi_core import simulate
from simulators import get_problem

PROBLEMS = ("gaussian_linear", "two_moons", "sir")


def rate(flags: torch.Tensor) -> str:
    """Rejection rate with its Wilson 95% interval."""
    n, k = flags.numel(), int(flags.sum())
    p = k / n
    z = 1.96
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return f"{p:.3f} [{max(centre - half, 0):.3f}, {min(centre + half, 1):.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=int, default=10_000)
    parser.add_argument("--null", type=int, default=1000)
    parser.add_argument("--power", type=int, default=200)
    parser.add_argument("--sets", type=int, default=200)
    parser.add_argument("--problems", default=",".join(PROBLEMS))
    parser.add_argument("--npe", type=float, default=None, metavar="SECONDS",
                        help="use the detector trained by fit with an NPE (training capped)")
    parser.add_argument("--variants", nargs="+", default=["{}"], metavar="JSON",
                        help="fit_detector options per variant, compared in one run on the "
                             "same simulations and perturbations, e.g. '{}' "
                             "'{\"max_fit_rows\": 2048}' (x-space features only)")
    args = parser.parse_args()
    variants = [json.loads(v) for v in args.variants]
    if args.npe is not None and variants != [{}]:
        parser.error("--variants works with x-space features only (without --npe)")
    torch.set_num_threads(1)
    print(f"load average at start: {os.getloadavg()}")
    for name, options in ((n, v) for n in args.problems.split(",") for v in variants):
        prob = get_problem(name)
        sims = simulate(prob, args.train, seed=0, progress=False)
        x = sims.training_data()[1]
        t0, cpu0 = time.perf_counter(), time.process_time()
        if args.npe is None:
            det = fit_detector(None, x, seed=0, **options)
        else:
            from sbi_core import fit

            det = fit(prob, sims, seed=0, max_seconds=args.npe, progress=False).detector
        fit_s, fit_cpu = time.perf_counter() - t0, time.process_time() - cpu0
        fresh = simulate(prob, args.null + 20 * args.sets + args.power, seed=123,
                         progress=False).training_data()[1]
        null_x, set_pool = fresh[:args.null], fresh[args.null:args.null + 20 * args.sets]
        base = fresh[-args.power:]
        mu, sd = x.mean(0), x.std(0)
        print(f"\n## {name}: x_shape {tuple(prob.x_shape)}, {args.train} training simulations, "
              f"detector {det.config['density']} on {det.config['dim']} "
              f"{det.config['features']} features, "
              f"{det.config['num_holdout']} held-out, fit "
              f"{fit_s:.1f} s ({fit_cpu:.2f} CPU s)"
              + (" (NPE + detector)" if args.npe is not None else "")
              + (f", options {json.dumps(options)}" if options else ""))
        res = det.test(null_x)
        print(f"false-alarm rate at 0.05 over {args.null} well-specified observations: "
              f"density {rate(res.density_reject)}, MMD {rate(res.mmd_reject)}, "
              f"combined {rate(res.flagged())}")
        print("| perturbation | density | MMD | combined |\n|---|---|---|---|")
        gen = torch.Generator().manual_seed(1)
        cases = [(f"shift {s} sd", base + s * sd) for s in (0.5, 1.0, 2.0, 3.0)]
        cases += [(f"scale x{c}", mu + c * (base - mu)) for c in (1.5, 2.0, 3.0)]
        cases += [(f"noise {k} sd", base + k * sd * torch.randn(base.shape, generator=gen))
                  for k in (0.5, 1.0, 2.0)]
        for label, xs in cases:
            r = det.test(xs)
            print(f"| {label} | {rate(r.density_reject)} | {rate(r.mmd_reject)} | "
                  f"{rate(r.flagged())} |")
        sets = set_pool.reshape(args.sets, 20, *x.shape[1:])
        null_sets = [det.test_set(s) for s in sets]
        print(f"sets of 20, well-specified: MMD false-alarm "
              f"{rate(torch.cat([r.mmd_reject for r in null_sets]))}, set density "
              f"{rate(torch.cat([r.density_reject for r in null_sets]))}")
        print("| sets of 20 | set density | MMD | combined |\n|---|---|---|---|")
        for eps in (0.05, 0.1, 0.25):
            k = max(1, round(eps * 20))
            bad = sets.clone()
            signs = torch.randint(0, 2, (args.sets, k, *x.shape[1:]), generator=gen) * 2 - 1
            bad[:, :k] = bad[:, :k] + 5 * sd * signs
            rs = [det.test_set(s) for s in bad]
            print(f"| contaminated {k}/20 | {rate(torch.cat([r.density_reject for r in rs]))} | "
                  f"{rate(torch.cat([r.mmd_reject for r in rs]))} | "
                  f"{rate(torch.cat([r.flagged() for r in rs]))} |")
        for s in (0.25, 0.5):
            rs = [det.test_set(t + s * sd) for t in sets]
            print(f"| shift {s} sd (all 20) | {rate(torch.cat([r.density_reject for r in rs]))}"
                  f" | {rate(torch.cat([r.mmd_reject for r in rs]))} | "
                  f"{rate(torch.cat([r.flagged() for r in rs]))} |")
        xs = null_x[:1000]
        det.test(xs[:10])
        t0 = time.perf_counter()
        det.test(xs)
        batched = (time.perf_counter() - t0) / xs.shape[0]
        t0 = time.perf_counter()
        for i in range(200):
            det.test(xs[i:i + 1])
        single = (time.perf_counter() - t0) / 200
        print(f"cost per observation: batched {1e3 * batched:.3f} ms, one call per observation "
              f"(baseline) {1e3 * single:.3f} ms, ratio {single / batched:.1f}x")
    print(f"\nload average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
