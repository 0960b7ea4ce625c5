"""C2ST of NPSE/FMPE against the analytic linear-Gaussian posterior, 1, 5 and 20 iid
observations, every compositional method, with sampling times.

    PYTHONPATH=. python benchmarks/score_iid_c2st.py [--sims 4000] [--seconds 30] [--num 500]

Baseline in the same run: the exact-score posterior (tests/_analytic_score.py) through the
same samplers, so sampler error and network error can be told apart.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _analytic_score import exact_posterior  # noqa: E402

from diagnostics.c2st import c2st  # noqa: E402
from sbi_core import fit, simulate  # noqa: E402
from simulators.linear_gaussian import linear_gaussian, linear_gaussian_posterior  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sims", type=int, default=4000)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--num", type=int, default=500)
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args()
    problem = linear_gaussian(2)
    sims = simulate(problem, args.sims, seed=0)
    posts = {"exact": exact_posterior("npse", "vp")}
    for method in ("npse", "fmpe"):
        t0 = time.perf_counter()
        posts[method] = fit(problem, sims, method=method, seed=0, max_seconds=args.seconds,
                            progress=False)
        print(f"trained {method} in {time.perf_counter() - t0:.1f} s")
    g = torch.Generator().manual_seed(1)
    x_all = torch.tensor([0.5, -0.3]) + 0.5 * torch.randn(20, 2, generator=g)
    print(f"{'model':6s} {'n':>3s} {'method':8s} {'C2ST':>6s} {'seconds':>8s}")
    for name, post in posts.items():
        for n in (1, 5, 20):
            xo = x_all[:n]
            ref = linear_gaussian_posterior(xo).sample((args.num,))
            for method in (["single"] if n == 1 else ["gauss", "jac", "fnpe"]):
                kw: dict = {}
                if method == "fnpe":
                    kw = {"iid_method": "fnpe", "levels": 100, "steps_per_level": 2}
                elif method != "single":
                    kw = {"iid_method": method, "steps": args.steps, "precision_samples": 500}
                t0 = time.perf_counter()
                s = post.sample((args.num,), xo if n > 1 else xo[0], seed=0, **kw)
                dt = time.perf_counter() - t0
                print(f"{name:6s} {n:3d} {method:8s} {c2st(s, ref):6.3f} {dt:8.1f}", flush=True)


if __name__ == "__main__":
    main()
