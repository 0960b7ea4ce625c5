"""Does ``fnsf`` beat ``fmaf`` on a Gaussian posterior with 3-9 parameters?

Trains NPE with each flow on the same ``gaussian_linear(dim=D)`` simulations (analytic
posterior) and prints C2ST per observation, the mean and the training seconds, one JSON line
per flow (both flows in one run, same data)::

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/flow_by_dimension.py --dim 5 --flows fmaf fnsf

``--trials n`` makes x ``n`` iid draws of ``N(theta, 0.1 I_D)`` (flattened to ``n * D``
values) declared as exchangeable trials (``Problem(x_trials=(n, D))``, like slcp's), with the
conjugate Gaussian posterior as reference: the check that a rule for problems declaring
trials holds beyond slcp. ``--flows default`` trains ``fit``'s default flow (no ``flow=``);
``--options '{...}'`` adds keyword options for ``fit`` to every flow::

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/flow_by_dimension.py --dim 5 --trials 4 \\
        --flows fmaf fnsf
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import torch

from diagnostics import c2st
from sbi_core import Problem, fit, simulate
from simulators.gaussian_linear import gaussian_linear, gaussian_linear_posterior

PRIOR_VAR = NOISE_VAR = 0.1


def iid_gaussian_linear(dim: int, trials: int) -> Problem:
    """``gaussian_linear(dim)`` with ``trials`` iid draws per x, declared as trials."""
    base = gaussian_linear(dim=dim, prior_var=PRIOR_VAR, noise_var=NOISE_VAR)
    noise_std = math.sqrt(NOISE_VAR)

    def simulator(theta: torch.Tensor) -> torch.Tensor:
        x = theta[:, None, :] + noise_std * torch.randn(theta.shape[0], trials, dim)
        return x.reshape(theta.shape[0], trials * dim)

    def reference(x_o: torch.Tensor, num_samples: int, seed: int = 0) -> torch.Tensor:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            post = gaussian_linear_posterior(x_o.reshape(trials, dim), PRIOR_VAR, NOISE_VAR)
            return post.sample((num_samples,)).float()

    return Problem(base.prior, simulator, name=f"iid_gaussian_linear_{dim}x{trials}",
                   x_shape=(trials * dim,), x_trials=(trials, dim),
                   reference_posterior=reference)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=5)
    ap.add_argument("--trials", type=int, default=0,
                    help="iid trials per x, declared as exchangeable (0: plain gaussian_linear)")
    ap.add_argument("--flows", nargs="+", default=["fmaf", "fnsf"],
                    help="flows to compare; 'default' = fit's default (no flow=)")
    ap.add_argument("--options", default="{}", help="JSON keyword options for fit")
    ap.add_argument("--sims", type=int, default=10_000)
    ap.add_argument("--observations", type=int, default=5)
    ap.add_argument("--num-samples", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    problem = (iid_gaussian_linear(args.dim, args.trials) if args.trials
               else gaussian_linear(dim=args.dim))
    options = json.loads(args.options)
    sims = simulate(problem, args.sims, seed=args.seed, progress=False)
    for flow in args.flows:
        flow_option = {} if flow == "default" else {"flow": flow}
        start = time.perf_counter()
        posterior = fit(problem, sims, seed=args.seed, progress=False,
                        **flow_option, **options)
        seconds = time.perf_counter() - start
        scores = []
        for k in range(1, args.observations + 1):
            x_o = problem.observation(k)
            samples = posterior.sample(args.num_samples, x=x_o, seed=k)
            reference = problem.reference_posterior(x_o, args.num_samples, k)
            scores.append(round(float(c2st(samples.reshape(args.num_samples, -1), reference,
                                           seed=0)), 3))
        history = getattr(posterior, "history", None) or {}
        print(json.dumps({"dim": args.dim, "trials": args.trials, "flow": flow,
                          "resolved_flow": posterior.estimator.config.get("flow"),
                          "options": options, "c2st": scores,
                          "mean": round(sum(scores) / len(scores), 3),
                          "epochs": history.get("epochs"),
                          "train_s": round(seconds, 1), "load": round(os.getloadavg()[0], 2)}),
              flush=True)


if __name__ == "__main__":
    main()
