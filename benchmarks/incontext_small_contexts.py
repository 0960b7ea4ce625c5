"""Coverage of the in-context posterior with tiny contexts and with copied simulations.

The measurements behind two checks of wave 14 (docs/incontext.md, "Using it on your own
problem"): contexts below the pretrained minimum of 8 simulations are refused, and exact
copies of simulations are dropped. Problem: ``theta ~ U(0, 1)^2``, ``x = theta + 0.1 eps``
(exact posterior width of a central 90 % interval about 0.33 away from the bounds). For each
setting, ``--trials`` fresh contexts and one observation each, simulated at a true
``theta``; reported: how often the posterior's central 90 % interval (400 draws) holds the
true parameter, per parameter, and the mean interval width.

To measure what the checks now prevent, the script lowers the minimum context to 2 and
(``--keep-copies``) disables the dropping of copies for its own runs (monkeypatched here
only).

    OMP_NUM_THREADS=1 python benchmarks/incontext_small_contexts.py --part tiny
    OMP_NUM_THREADS=1 python benchmarks/incontext_small_contexts.py --part copies
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import estimators.incontext_method as icm  # noqa: E402
from sbi_core import Problem, box_uniform, fit  # noqa: E402


def coverage(problem: Problem, make_context, trials: int, **options) -> tuple[list, list, dict]:
    """90 % interval coverage and width per parameter, and the variants chosen."""
    cov, width, variants = [], [], {}
    for rep in range(trials):
        theta, x = make_context()
        post = fit(problem, (theta, x), method="incontext", detector=False, seed=rep, **options)
        name = post.history["variant"].split("(")[0].split("-")[0]
        variants[name] = variants.get(name, 0) + 1
        post.range_check = "off"
        true = 0.1 + 0.8 * torch.rand(1, 2)
        x_o = problem.simulator(true)[0]
        s = post.sample((400,), x=x_o, seed=0)
        lo, hi = s.quantile(0.05, 0), s.quantile(0.95, 0)
        cov.append(((true[0] >= lo) & (true[0] <= hi)).float())
        width.append(hi - lo)
    return (torch.stack(cov).mean(0).tolist(), torch.stack(width).mean(0).tolist(), variants)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=["tiny", "copies"], required=True)
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--keep-copies", action="store_true",
                    help="copies: also run with the dropping of copies disabled")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    prior = box_uniform([0.0, 0.0], [1.0, 1.0])
    problem = Problem(prior, lambda t: t + 0.1 * torch.randn_like(t), x_shape=(2,),
                      name="lin2d")
    torch.manual_seed(0)
    if args.part == "tiny":
        icm._pretrained_n_min = lambda meta: 2  # measure below the refused minimum
        for n in (2, 3, 5, 8, 10, 20, 50):
            def ctx(n=n):
                t = prior.sample((n,))
                return t, problem.simulator(t)
            c, w, v = coverage(problem, ctx, args.trials, variant="plain")
            print(f"N={n:3d} plain: 90% coverage {c[0]:.2f} / {c[1]:.2f}, "
                  f"width {w[0]:.3f} / {w[1]:.3f}")
        return
    settings = [(1, True), (2, True), (3, True)]
    if args.keep_copies:
        settings += [(2, False), (3, False)]
    for copies, drop in settings:
        icm.drop_duplicate_pairs = (lambda t, x: (t, x, 0)) if not drop else \
            sys.modules["estimators.incontext_checks"].drop_duplicate_pairs

        def ctx(copies=copies):
            t = prior.sample((200,))
            x = problem.simulator(t)
            return t.repeat(copies, 1), x.repeat(copies, 1)
        c, w, v = coverage(problem, ctx, args.trials)
        print(f"200 simulations x{copies} ({'copies dropped' if drop else 'copies kept'}): "
              f"90% coverage {c[0]:.2f} / {c[1]:.2f}, width {w[0]:.3f} / {w[1]:.3f}, "
              f"variants {v}")


if __name__ == "__main__":
    main()
