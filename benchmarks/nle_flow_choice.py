"""Amortized NLE with the nflows MAF (``flow="maf"``) against the fused MAF (``flow="fmaf"``):
C2ST against reference posteriors over several observations, with training and sampling time.

Both flows train on the same simulations with the same seed and training settings, one after
the other in this process, so the time ratio is measured under the same machine load (printed):

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/nle_flow_choice.py \\
        --tasks gaussian_linear two_moons slcp --sims 5000 --observations 1 2 3 --seeds 0

``gaussian_linear`` here is ``simulators.linear_gaussian`` (2-D, analytic posterior, as in
tests/test_nle_nre.py; observations are drawn at fixed parameters); other tasks use
``simulators.get_problem(task)`` and its reference posterior. C2ST (``diagnostics.c2st``) of
``--num-samples`` MCMC draws (the NLE posterior's default sampler) against as many reference
draws; 0.5 is perfect. Rows are printed as JSON as they finish.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _task(name: str):
    """``(problem, observation(k) -> x_o, reference(x_o, n, k) -> (n, D))``."""
    import torch

    import simulators

    if name == "gaussian_linear":
        from simulators.linear_gaussian import linear_gaussian, linear_gaussian_posterior

        problem = linear_gaussian(dim=2)
        truths = torch.tensor([[0.5, -0.3], [-1.0, 0.8], [1.5, 1.2]])

        def observation(k: int):
            torch.manual_seed(100 + k)
            return problem.simulator(truths[(k - 1) % 3][None])[0]

        def reference(x_o, n: int, k: int):
            torch.manual_seed(k)
            return linear_gaussian_posterior(x_o[None]).sample((n,))

        return problem, observation, reference
    problem = simulators.get_problem(name)
    return (problem, problem.observation,
            lambda x_o, n, k: problem.reference_posterior(x_o, n, seed=k))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=["gaussian_linear", "two_moons", "slcp"])
    ap.add_argument("--sims", type=int, nargs="+", default=[5000])
    ap.add_argument("--observations", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--flows", nargs="+", default=["maf", "fmaf"])
    ap.add_argument("--num-samples", type=int, default=5000)
    ap.add_argument("--options", default="{}", help="JSON: extra fit options for every flow")
    args = ap.parse_args()

    import torch

    from diagnostics.c2st import c2st
    from sbi_core import fit, simulate

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    extra = json.loads(args.options)
    rows = []
    for task in args.tasks:
        problem, observation, reference = _task(task)
        for n_sims in args.sims:
            for seed in args.seeds:
                sims = simulate(problem, n_sims, seed=seed, progress=False)
                for flow in args.flows:
                    t0, c0 = time.perf_counter(), time.process_time()
                    post = fit(problem, sims, method="nle", seed=seed, flow=flow,
                               progress=False, detector=False, **extra)
                    train_s, train_cpu = time.perf_counter() - t0, time.process_time() - c0
                    epochs = post.history.get("epochs")
                    best_val = post.history.get("best_validation_loss")
                    for k in args.observations:
                        x_o = observation(k)
                        ref = reference(x_o, args.num_samples, k)
                        t0 = time.perf_counter()
                        samples = post.sample((args.num_samples,), x=x_o, seed=seed,
                                              max_seconds=None)
                        sample_s = time.perf_counter() - t0
                        row = {"task": task, "sims": n_sims, "seed": seed, "flow": flow,
                               "observation": k,
                               "c2st": round(float(c2st(samples, ref, seed=0)), 3),
                               "train_s": round(train_s, 1), "train_cpu_s": round(train_cpu, 1),
                               "epochs": epochs,
                               "best_val_loss": None if best_val is None else round(best_val, 4),
                               "sample_s": round(sample_s, 1),
                               "load": round(os.getloadavg()[0], 2)}
                        rows.append(row)
                        print(json.dumps(row), flush=True)
    print(f"\n{'task':16s} {'sims':>6s} {'flow':6s} {'C2ST mean':>9s} {'train s':>8s} "
          f"{'sample s':>8s} runs")
    for task in args.tasks:
        for n_sims in args.sims:
            for flow in args.flows:
                g = [r for r in rows if (r["task"], r["sims"], r["flow"]) == (task, n_sims, flow)]
                if g:
                    mean = sum(r["c2st"] for r in g) / len(g)
                    tr = sum(r["train_s"] for r in g) / len(g)
                    sm = sum(r["sample_s"] for r in g) / len(g)
                    print(f"{task:16s} {n_sims:6d} {flow:6s} {mean:9.3f} {tr:8.1f} {sm:8.1f} "
                          f"{len(g)}")


if __name__ == "__main__":
    main()
