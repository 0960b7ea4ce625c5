"""Sequential APT (SNPE-C) against amortized NPE at the same simulation budget on two_moons.

For each observation: round 1 trains NPE on ``n`` prior simulations, each further round
samples ``n`` parameters from the current posterior at ``x_o``, simulates them and
retrains with ``train_apt`` on all rounds; the baseline trains NPE once on ``rounds * n``
prior simulations. Both use the same flow and training settings. C2ST (0.5 best) against
the reference posterior, 2,000 samples each. Prints per-observation rows, the means and
the load average.

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/apt_two_moons.py \
        --n 500 --rounds 2 --observations 1 2 3
"""

from __future__ import annotations

import argparse
import os
import time

import torch

import simulators
from diagnostics.c2st import c2st
from estimators.apt import train_apt
from estimators.npe import METHOD, build_npe
from sbi_core import simulate
from sbi_core.training import TrainConfig, train


def run(problem, n: int, rounds: int, obs: int, opts: dict, cfg: TrainConfig) -> dict:
    x_o = problem.observation(obs)
    ref = problem.reference_posterior(x_o, 2000, seed=0)
    s = simulate(problem, n, seed=1, progress=False)
    theta, x = s.theta, s.x
    torch.manual_seed(0)
    est = build_npe(theta, x, problem.prior, **opts)
    train(est, theta, x, cfg)
    post = METHOD.make_posterior(est, problem.prior, problem.spec())
    per_round = [c2st(ref, post.sample((2000,), x=x_o, seed=0))]
    for r in range(1, rounds):
        s = simulate(problem, theta=post.sample((n,), x=x_o, seed=r), seed=r + 1, progress=False)
        theta, x = torch.cat([theta, s.theta]), torch.cat([x, s.x])
        train_apt(est, theta, x, problem.prior, config=cfg)
        per_round.append(c2st(ref, post.sample((2000,), x=x_o, seed=0)))
    s = simulate(problem, n * rounds, seed=1, progress=False)
    torch.manual_seed(0)
    base = build_npe(s.theta, s.x, problem.prior, **opts)
    train(base, s.theta, s.x, cfg)
    bpost = METHOD.make_posterior(base, problem.prior, problem.spec())
    return {"apt_rounds": per_round, "npe": c2st(ref, bpost.sample((2000,), x=x_o, seed=0))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500, help="simulations per round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--observations", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--transforms", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    problem = simulators.get_problem("two_moons")
    opts = {"flow": "fmaf", "hidden_features": args.hidden, "num_transforms": args.transforms}
    cfg = TrainConfig(max_epochs=500, batch_size=128, learning_rate=2e-3, min_delta=0.005,
                      progress=False, seed=0)
    t0 = time.time()
    apt, npe = [], []
    for obs in args.observations:
        res = run(problem, args.n, args.rounds, obs, opts, cfg)
        apt.append(res["apt_rounds"][-1])
        npe.append(res["npe"])
        print(f"obs {obs}: APT per round {[round(v, 3) for v in res['apt_rounds']]}, "
              f"NPE({args.n * args.rounds}) {res['npe']:.3f}", flush=True)
    print(f"mean C2ST: APT {sum(apt) / len(apt):.3f}  NPE {sum(npe) / len(npe):.3f}  "
          f"(APT - NPE = {(sum(apt) - sum(npe)) / len(apt):+.3f}); {time.time() - t0:.0f} s, "
          f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
