"""L-C2ST flags a deliberately miscalibrated posterior at x_o and passes a calibrated one.

    PYTHONPATH=. python benchmarks/lc2st_check.py [--seeds 5] [--num-cal 2000] [--num-null 50]

Problem: linear Gaussian (D = 2, x = theta + 0.5 eps, posterior N(0.8 x, 0.2 I)); x_o =
(0.5, -0.3). Posteriors (tests/_analytic_gaussian.py unless trained):

- ``exact``: the analytic posterior (calibrated);
- ``shift0.3``: mean shifted by 0.3 (0.67 posterior sd);
- ``scale1.5``: sd inflated 1.5x (underconfident); ``scale0.7``: overconfident;
- ``local``: sd x1.8 only where x_1 > 0, tested at x_o = (1, 0) (wrong there) and (-1.5, 0);
- ``npe``: a trained NPE (fused MAF, ``--sims`` simulations); ``npe+shift``: the same
  network with its standardization mean moved by 0.3 prior sd (a trained NPE with a wrong
  shift).

Each seed draws fresh calibration simulations; L-C2ST-NF trains its null once per seed and
reuses it for every posterior (it does not depend on the estimator); the general variant
(permutation null) trains per posterior. Baseline in the same run: the oracle C2ST of
``q(. | x_o)`` against the analytic posterior (needs the true posterior, which L-C2ST does
not), and the seconds of one L-C2ST fit vs one test at a new x_o (the classifiers are
trained once).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _analytic_gaussian import gaussian_posterior  # noqa: E402

from diagnostics.c2st import c2st  # noqa: E402
from diagnostics.lc2st import LC2ST  # noqa: E402
from sbi_core import fit, simulate  # noqa: E402
from simulators.linear_gaussian import linear_gaussian, linear_gaussian_posterior  # noqa: E402

X_O = torch.tensor([0.5, -0.3])


def shifted_copy(post, shift: float):
    """A copy of a trained NPE whose theta standardization mean is moved by ``shift`` prior sd."""
    import copy

    bad = copy.deepcopy(post)
    bad.estimator.theta_norm.mean.add_(shift)  # prior sd is 1
    return bad


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--num-cal", type=int, default=2000)
    ap.add_argument("--num-null", type=int, default=50)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--sims", type=int, default=5000)
    ap.add_argument("--general", default="exact,shift0.3,npe,npe+shift",
                    help="posteriors also tested with the general (permutation) variant")
    ap.add_argument("--far", type=int, default=0,
                    help="only measure the false-alarm rate: this many replicates of the exact "
                         "posterior, fresh calibration data each (NF variant)")
    args = ap.parse_args()
    print(f"load average at start: {os.getloadavg()}")
    if args.far:
        false_alarm_rate(args)
        return
    problem = linear_gaussian(2)
    t0 = time.perf_counter()
    npe = fit(problem, simulate(problem, args.sims, seed=100, progress=False), seed=0,
              max_seconds=120, progress=False)
    print(f"trained NPE in {time.perf_counter() - t0:.1f} s "
          f"({npe.history.get('epochs')} epochs, {npe.history.get('stopped')})")
    posts = {"exact": gaussian_posterior(), "shift0.3": gaussian_posterior(shift=0.3),
             "scale1.5": gaussian_posterior(scale=1.5), "scale0.7": gaussian_posterior(scale=0.7),
             "local": gaussian_posterior(scale=1.8, local=True), "npe": npe,
             "npe+shift": shifted_copy(npe, 0.3)}
    cases = [(n, X_O) for n in posts if n != "local"] + [
        ("local", torch.tensor([1.0, 0.0])), ("local", torch.tensor([-1.5, 0.0]))]
    general = set(args.general.split(","))
    opts = {"num_null": args.num_null, "epochs": args.epochs}
    pvals: dict[tuple, list[float]] = {}
    stats: dict[tuple, list[float]] = {}
    fit_s: dict[str, list[float]] = {"nf (null+observed)": [], "nf (observed only)": [],
                                     "general": []}
    test_s: dict[str, list[float]] = {"nf": [], "general": []}
    for seed in range(args.seeds):
        sims = simulate(problem, args.num_cal, seed=seed + 1, progress=False)
        t0 = time.perf_counter()
        null = LC2ST(posts["exact"], sims.theta, sims.x, variant="nf", seed=seed, **opts).fit()
        fit_s["nf (null+observed)"].append(time.perf_counter() - t0)
        fitted = {}
        for name, x_o in cases:
            for variant in ("nf", "general"):
                if variant == "general" and name not in general:
                    continue
                key = (name, variant)
                if key not in fitted:
                    t0 = time.perf_counter()
                    if variant == "nf":
                        lc = null if name == "exact" else LC2ST(
                            posts[name], sims.theta, sims.x, variant="nf", seed=seed,
                            **opts).fit(null_from=null)
                        if name != "exact":
                            fit_s["nf (observed only)"].append(time.perf_counter() - t0)
                    else:
                        lc = LC2ST(posts[name], sims.theta, sims.x, variant="general", seed=seed,
                                   **opts).fit()
                        fit_s["general"].append(time.perf_counter() - t0)
                    fitted[key] = lc
                t0 = time.perf_counter()
                res = fitted[key].test(x_o)
                test_s[variant].append(time.perf_counter() - t0)
                k = (name, tuple(round(v, 2) for v in x_o.tolist()), variant)
                pvals.setdefault(k, []).append(res.p_value)
                stats.setdefault(k, []).append(res.statistic)
        print(f"seed {seed} done", flush=True)
    oracle = {}
    for name, x_o in cases:
        q = posts[name].sample((2000,), x_o, seed=0)
        ref = linear_gaussian_posterior(x_o).sample((2000,))
        oracle[(name, tuple(round(v, 2) for v in x_o.tolist()))] = c2st(ref, q, seed=0)
    print(f"\n{args.seeds} seeds x {args.num_cal} calibration pairs, {args.num_null} null "
          f"classifiers, {args.epochs} epochs; reject at p <= 0.05\n")
    print("| posterior | x_o | variant | p-values over seeds | rejected | median T | "
          "oracle C2ST |")
    print("|---|---|---|---|---|---|---|")
    for (name, xo, variant), ps in pvals.items():
        rej = sum(p <= 0.05 for p in ps)
        print(f"| {name} | {xo} | {variant} | {', '.join(f'{p:.3f}' for p in ps)} | "
              f"{rej}/{len(ps)} | {statistics.median(stats[(name, xo, variant)]):.4f} | "
              f"{oracle[(name, xo)]:.3f} |")
    print("\nseconds (median): " + ", ".join(
        f"fit {k} {statistics.median(v):.1f}" for k, v in fit_s.items() if v) + "; " +
          ", ".join(f"test {k} {statistics.median(v):.3f}" for k, v in test_s.items() if v))
    print(f"load average at end: {os.getloadavg()}")


def false_alarm_rate(args: argparse.Namespace) -> None:
    """Rejection rate at p <= 0.05 for the exact posterior over ``args.far`` replicates."""
    from scipy.stats import binomtest

    problem, post = linear_gaussian(2), gaussian_posterior()
    ps = []
    t0 = time.perf_counter()
    for r in range(args.far):
        sims = simulate(problem, args.num_cal, seed=10_000 + r, progress=False)
        ps.append(LC2ST(post, sims.theta, sims.x, variant="nf", num_null=args.num_null,
                        epochs=args.epochs, seed=r).fit().test(X_O).p_value)
    rej = sum(p <= 0.05 for p in ps)
    ci = binomtest(rej, len(ps)).proportion_ci(0.95)
    print(f"false-alarm rate (exact posterior, NF, {args.num_cal} pairs, {args.num_null} null, "
          f"{args.epochs} epochs): {rej}/{len(ps)} = {rej / len(ps):.3f} "
          f"(95% CI {ci.low:.3f}-{ci.high:.3f}); {time.perf_counter() - t0:.0f} s")
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
