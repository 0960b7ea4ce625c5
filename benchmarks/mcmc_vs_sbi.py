"""NLE posteriors by MCMC: sbi-core's default sampler against sbi 0.27's ``slice_np_vectorized``.

One run, same simulations for both libraries:

1. **gaussian_linear** (10-D) with ``--trials`` iid observations of one parameter. sbi 0.27
   (in a subprocess under ``--sbi-python``, started first so that both libraries train and
   sample on the same busy machine at the same time) trains its default NLE and samples
   ``--samples`` with its default MCMC (``slice_np_vectorized``, 20 chains, 200 warm-up
   steps). Here sbi-core trains its default NLE and samples the same number with its default
   sampler (``method="auto"`` → HMC, 100 chains) and, as the previous default, slice
   sampling with 20 chains (on ``--old-samples`` draws, since it is slow). C2ST against the
   analytic posterior (same classifier and reference draws for all), max R-hat, ESS, seconds
   and the ratio sbi / sbi-core of the sampling seconds are printed.
2. **sir** (``--sir-sims`` simulations, observation 1): seconds for 1,000 samples with the
   new default and with the previous default (slice, 20 chains, 100 warm-up) on the same
   trained NLE, and their ratio; C2ST against the reference posterior with ``--sir-c2st``.

The load average (1 min) is printed at every phase: 8 helpers share the 2 cores.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/mcmc_vs_sbi.py \\
        --sbi-python /work/sbi-venv/bin/python [--sims 10000] [--samples 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from diagnostics.c2st import c2st  # noqa: E402
from sbi_core import fit, simulate  # noqa: E402
from sbi_core.mcmc import split_rhat  # noqa: E402
from sbi_core.priors import prior_spec  # noqa: E402
from simulators.gaussian_linear import gaussian_linear, gaussian_linear_posterior  # noqa: E402

#: the sampler sbi-core used by default before (issue 18, item 7)
OLD_DEFAULT = {"method": "slice", "num_chains": 20, "warmup_steps": 100, "thin": 1,
               "ess_fraction": None, "warn_rhat": None}


def load() -> float:
    return round(os.getloadavg()[0], 1)


def sample(post, n: int, x, **options) -> tuple[torch.Tensor, float, dict]:
    load0 = load()
    t0 = time.perf_counter()
    s = post.sample((n,), x=x, seed=0, progress=False, **options)
    seconds = time.perf_counter() - t0
    summary = post.last_mcmc.summary()
    summary["load"] = (load0, load())
    return s, seconds, summary


def gaussian_linear_case(args: argparse.Namespace, tmp: Path) -> None:
    problem = gaussian_linear(dim=10)
    sims = simulate(problem, args.sims, seed=args.seed)
    torch.manual_seed(args.seed + 1)
    theta_o = problem.prior.sample()
    xo = problem.simulator(theta_o.expand(args.trials, -1))
    ref = gaussian_linear_posterior(xo).sample((args.samples,)).float()
    inp = tmp / "in.npz"
    np.savez(inp, theta=sims.theta.numpy(), x=sims.x.numpy(), xo=xo.numpy(),
             prior_spec=json.dumps(prior_spec(problem.prior)), num_samples=args.samples)
    proc = None
    if args.sbi_python:
        env = {**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": str(args.threads),
               "MKL_NUM_THREADS": str(args.threads)}
        proc = subprocess.Popen([args.sbi_python, str(HERE / "mcmc_sbi_worker.py"), str(inp),
                                 str(tmp / "sbi.npz"), str(args.seed), str(args.threads)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env, cwd=tmp)
    print(f"gaussian_linear 10-D, {args.trials} iid trials, {args.sims} simulations, "
          f"{args.samples} samples; load {load()}", flush=True)
    t0 = time.perf_counter()
    post = fit(problem, sims, method="nle", seed=args.seed, progress=False)
    post.misspecification = "off"  # time the sampler alone (sbi has no such check)
    print(f"  sbi-core NLE trained in {time.perf_counter() - t0:.1f} s "
          f"({post.history['epochs']} epochs)", flush=True)
    new, new_s, new_sum = sample(post, args.samples, xo)
    new_c2st = c2st(new, ref, seed=0)
    print(f"  sbi-core default ({new_sum['method']}, {new_sum['num_chains']} chains, thin "
          f"{new_sum['thin']}): {new_s:.1f} s, C2ST {new_c2st:.3f}, max R-hat "
          f"{new_sum['max_rhat']:.3f}, min ESS {new_sum['min_ess']:.0f}, accept "
          f"{new_sum['acceptance_rate']:.2f}, load {new_sum['load']}", flush=True)
    if args.old_samples:
        n = args.old_samples
        old, old_s, old_sum = sample(post, n, xo, **OLD_DEFAULT)
        new_n, new_n_s, new_n_sum = sample(post, n, xo)
        print(f"  previous default (slice, 20 chains) on {n} samples: {old_s:.1f} s, C2ST "
              f"{c2st(old, ref[:n], seed=0):.3f}, max R-hat {old_sum['max_rhat']:.3f}; new "
              f"default on {n} samples: {new_n_s:.1f} s, C2ST {c2st(new_n, ref[:n], seed=0):.3f}"
              f", max R-hat {new_n_sum['max_rhat']:.3f}; speed-up x{old_s / new_n_s:.1f}; "
              f"load {old_sum['load']} / {new_n_sum['load']}", flush=True)
    if proc is None:
        return
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"sbi worker failed:\n{err[-4000:]}")
    res = np.load(tmp / "sbi.npz")
    sbi_samples = torch.from_numpy(res["samples"]).float()
    chains = int(res["num_chains"])
    rhat = float(split_rhat(sbi_samples.reshape(chains, -1, 10)).max()) \
        if args.samples % chains == 0 else float("nan")
    sbi_s = float(res["sample_s"])
    print(f"  sbi 0.27 NLE trained in {float(res['train_s']):.1f} s ({int(res['epochs'])} "
          f"epochs); slice_np_vectorized ({chains} chains): {sbi_s:.1f} s, C2ST "
          f"{c2st(sbi_samples, ref, seed=0):.3f}, max R-hat {rhat:.3f}, load "
          f"{tuple(float(v) for v in res['load'])}", flush=True)
    print(f"  sampling time sbi / sbi-core: x{sbi_s / new_s:.1f}", flush=True)


def sir_case(args: argparse.Namespace) -> None:
    from simulators.sir import sir

    problem = sir()
    sims = simulate(problem, args.sir_sims, seed=args.seed)
    x_o = problem.observation(1)
    post = fit(problem, sims, method="nle", seed=args.seed, progress=False)
    post.misspecification = "off"
    print(f"sir: NLE on {args.sir_sims} simulations, observation 1, 1000 samples; load "
          f"{load()}", flush=True)
    runs = [("new default", {}), ("previous default", OLD_DEFAULT),
            ("new default, again", {})]
    ref = problem.reference_posterior(x_o, 1000) if args.sir_c2st else None
    seconds = {}
    for name, options in runs:
        s, sec, summ = sample(post, 1000, x_o, **options)
        seconds.setdefault(name.split(",")[0], []).append(sec)
        score = f", C2ST {c2st(s, ref, seed=0):.3f}" if ref is not None else ""
        print(f"  {name} ({summ['method']}, {summ['num_chains']} chains): {sec:.1f} s, max "
              f"R-hat {summ['max_rhat']:.3f}, min ESS {summ['min_ess']:.0f}{score}, load "
              f"{summ['load']}", flush=True)
    new = float(np.mean(seconds["new default"]))
    print(f"  previous / new default: x{seconds['previous default'][0] / new:.1f}",
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sbi-python", default=None, help="python of an environment with sbi 0.27")
    ap.add_argument("--sims", type=int, default=10_000)
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--old-samples", type=int, default=1000,
                    help="samples for the previous default sampler (0: skip)")
    ap.add_argument("--sir-sims", type=int, default=5000, help="0: skip the SIR case")
    ap.add_argument("--sir-c2st", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {os.cpu_count()} cores, load {load()}, torch threads {args.threads}")
    with tempfile.TemporaryDirectory() as tmp:
        gaussian_linear_case(args, Path(tmp))
    if args.sir_sims:
        sir_case(args)


if __name__ == "__main__":
    main()
