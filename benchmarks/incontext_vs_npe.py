"""In-context posterior (no training) vs NPE trained on the same simulations vs sbi 0.27 NPE.

For each task and context size N, one set of N simulations (seeded) is given to

(a) ``fit(problem, sims, method="incontext", detector=False)`` (the shipped weights; the
    variant, ``--variant``, default ``"auto"``, is recorded in each row),
(b) sbi-core NPE (``benchmarks/_npe_worker.py``, its default flow and preset),
(c) sbi 0.27 NPE (MAF, sbi's defaults) in ``--sbi-python`` (same worker, own process),

and each draws ``--num-samples`` posterior samples for observations ``1..K``; C2ST against
the task's reference posterior uses the same classifier for all. Time to first posterior:
(a) the ``fit`` call, (b)/(c) the training time reported by the worker (process start-up
excluded for both). The machine load is printed (shared machine: time ratios in one run).

Tasks: ``two_moons`` (D=2, d=2), ``gaussian_linear`` reduced to D = d = 3 (the in-context
model's largest D; analytic posterior), ``gaussian_mixture`` (D = d = 2). slcp (D = 5) is
outside the pretrained range; sir's reference needs a DE-MCMC run per observation (not
cached here) and sbi's worker has no log-normal prior, so it is optional (``--tasks ... sir``,
in-context and sbi-core NPE only).

``--truncate`` adds (d) a two-pass truncated in-context posterior per observation (context
restricted to the first posterior's quantile box; :func:`truncated_posterior`; an experiment,
not a package option — it did not help, see RESULTS.md "Issue 21 (wave 10, h10-ic10)").

Usage::

    OMP_NUM_THREADS=1 python benchmarks/incontext_vs_npe.py --sbi-python /work/sbi-venv/bin/python \\
        --sims 200 500 1000 --observations 3 --num-samples 2000 --json incontext.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from compare_sbi import run_workers  # noqa: E402

from diagnostics.c2st import c2st  # noqa: E402
from sbi_core import fit, simulate  # noqa: E402
from sbi_core.priors import prior_spec, support_bounds  # noqa: E402


def get_task(name: str):
    import simulators
    from simulators.gaussian_linear import gaussian_linear

    if name == "gaussian_linear":
        return gaussian_linear(dim=3)
    return simulators.get_problem(name)


def observations(problem, k: int) -> list[torch.Tensor]:
    """Observations 1..k: the problem's own, or (reduced gaussian_linear, which has none)
    simulated at prior draws with seeds 1000 + i."""
    try:
        return [problem.observation(i) for i in range(1, k + 1)]
    except (ValueError, AttributeError, KeyError, TypeError):
        out = []
        for i in range(1, k + 1):
            with torch.random.fork_rng():
                torch.manual_seed(1000 + i)
                out.append(problem.simulator(problem.prior.sample((1,)))[0])
        return out


def reference(problem, xo: torch.Tensor, num: int, draw: int | None, seed: int) -> torch.Tensor:
    """``num`` reference samples for ``xo``: drawn directly, or (``draw``) a seeded random
    subset of ``draw`` reference samples (sir's cached 10,000-sample references)."""
    if not draw or draw <= num:
        return problem.reference_posterior(xo, num, seed)
    ref = problem.reference_posterior(xo, draw, seed)
    gen = torch.Generator().manual_seed(seed)
    return ref[torch.randperm(ref.shape[0], generator=gen)[:num]]


def truncated_posterior(problem, theta: torch.Tensor, x: torch.Tensor, xo: torch.Tensor, post0,
                        options: dict, seed: int, quantile: float, margin: float,
                        min_sims: int, draws: int = 4000):
    """Two in-context passes for one observation ``xo`` (``--truncate``; not in the package,
    see RESULTS.md "Issue 21 (wave 10, h10-ic10)"): the box ``R`` spanned by the
    ``quantile`` / ``1 - quantile`` quantiles of ``draws`` samples of the first posterior
    ``post0``, widened by ``margin`` times its width on each side and intersected with the
    prior's support; then the in-context posterior of the simulations with ``theta`` in ``R``
    (draws from the prior truncated to ``R``), restricted to ``R`` and renormalized (the
    estimator's bounds set to ``R``: ``sample`` / ``log_prob`` stay exact for the model).
    Falls back to ``post0`` when fewer than ``min_sims`` simulations lie in ``R`` or ``xo``
    lies outside their x range. Returns ``(posterior, record)``."""
    s = post0.sample((draws,), x=xo, seed=10_000 + seed)
    a, b = torch.quantile(s, quantile, 0), torch.quantile(s, 1 - quantile, 0)
    plo, phi = support_bounds(problem.prior)
    lo = torch.maximum(a - margin * (b - a), plo.float())
    hi = torch.minimum(b + margin * (b - a), phi.float())
    keep = ((theta >= lo) & (theta <= hi)).all(1)
    rec = {"kept": int(keep.sum()), "low": lo.tolist(), "high": hi.tolist()}
    if rec["kept"] < min_sims:
        return post0, {**rec, "fallback": f"fewer than {min_sims} simulations in R"}
    post = fit(problem, (theta[keep], x[keep]), method="incontext", detector=False, seed=seed,
               **options)
    if post.outside_training_range(xo[None]) is not None:
        return post0, {**rec, "fallback": "x_o outside the truncated context's x range"}
    est = post.estimator
    if hasattr(est, "set_bounds"):
        est.set_bounds(lo, hi)
    else:
        with torch.no_grad():
            est.low.copy_(lo)
            est.high.copy_(hi)
    return post, {**rec, "variant": post.history.get("variant")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sbi-python", default=None, help="python of the venv with sbi==0.27.0")
    ap.add_argument("--tasks", nargs="+", default=["two_moons", "gaussian_linear",
                                                   "gaussian_mixture"])
    ap.add_argument("--sims", type=int, nargs="+", default=[200, 500, 1000])
    ap.add_argument("--observations", type=int, default=3)
    ap.add_argument("--num-samples", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reference-samples", type=int, default=None,
                    help="draw this many reference samples per observation (sir: 10,000 are "
                         "cached for observations 1-10) and use a seeded random subset of "
                         "--num-samples of them (default: draw --num-samples)")
    ap.add_argument("--also-candidates", nargs="+", default=None, metavar="NAME",
                    help="also fit 'auto' with this candidate pool on the same simulations "
                         "(row key 'incontext_alt'), e.g. plain-16 residual-16 residual-64 "
                         "residual-256 nonlinear-16")
    ap.add_argument("--no-npe", action="store_true", help="in-context model only")
    ap.add_argument("--finetune", type=int, nargs="*", default=[],
                    help="also fit with these finetune_steps (e.g. 50)")
    ap.add_argument("--json", help="write all rows to this JSON file")
    ap.add_argument("--weights", default=None,
                    help="in-context weights file (default: the shipped one)")
    ap.add_argument("--variant", default=None, choices=["auto", "stack", "select", "plain", "residual",
                                                          "nonlinear"],
                    help="in-context variant (default: the method's default)")
    ap.add_argument("--candidates", nargs="+", default=None, metavar="NAME",
                    help="candidates of 'auto' / 'stack', e.g. plain-16 residual-64")
    ap.add_argument("--truncate", action="store_true",
                    help="also the two-pass truncated in-context posterior per observation "
                         "(context restricted to the first posterior's quantile box)")
    ap.add_argument("--truncate-quantile", type=float, default=0.001)
    ap.add_argument("--truncate-margin", type=float, default=0.25)
    ap.add_argument("--truncate-min", type=int, default=100,
                    help="fall back to one pass when fewer simulations lie in the box")
    ap.add_argument("--range-check", default="error", choices=["error", "warn"],
                    help="'warn': sample observations outside the simulations' x range "
                         "anyway (sir, seed 1, 200 simulations), for every method")
    ap.add_argument("--baselines-only", action="store_true",
                    help="run only (b) and (c) (they do not depend on the weights)")
    ap.add_argument("--baselines-from", metavar="JSON",
                    help="take (b) and (c) from an earlier run's --json (same tasks, sizes, "
                         "seed, observations) instead of training them again")
    args = ap.parse_args()
    torch.set_num_threads(1)
    weights = {"weights": args.weights} if args.weights else {}
    if args.variant:
        weights["variant"] = args.variant
    if args.candidates:
        weights["candidates"] = args.candidates
    rows = []
    earlier = {}
    if args.baselines_from:
        for r in json.loads(Path(args.baselines_from).read_text()):
            earlier[(r["task"], r["sims"])] = r
    print(f"load at start: {os.getloadavg()}", flush=True)
    for task in args.tasks:
        problem = get_task(task)
        xos = observations(problem, args.observations)
        refs = [reference(problem, xo, args.num_samples, args.reference_samples, i + 1)
                for i, xo in enumerate(xos)]
        for n in args.sims:
            sims = simulate(problem, n, seed=args.seed, progress=False)
            theta, x = sims.training_data()
            row: dict = {"task": task, "sims": int(theta.shape[0]), "load": os.getloadavg()[0]}
            if not args.baselines_only:
                t0 = time.perf_counter()
                post = fit(problem, (theta, x), method="incontext", detector=False,
                           seed=args.seed, **weights)
                t_fit = time.perf_counter() - t0
                post.range_check = args.range_check
                t0 = time.perf_counter()
                samples = [post.sample((args.num_samples,), x=xo, seed=i)
                           for i, xo in enumerate(xos)]
                t_sample = (time.perf_counter() - t0) / len(xos)
                scores = [c2st(s, r, seed=0) for s, r in zip(samples, refs)]
                rec = post.estimator.config.get("variant", {})
                row["incontext"] = {"variant": post.history.get("variant"),
                                    "variant_record": rec if isinstance(rec, dict) else {},
                                    "first_posterior_seconds": round(t_fit, 3),
                                    "sample_seconds": round(t_sample, 3),
                                    "c2st": [round(s, 3) for s in scores],
                                    "c2st_mean": round(float(np.mean(scores)), 3)}
                if args.also_candidates:
                    t0 = time.perf_counter()
                    alt = fit(problem, (theta, x), method="incontext", detector=False,
                              seed=args.seed, **{**weights, "candidates": args.also_candidates})
                    t_alt = time.perf_counter() - t0
                    alt.range_check = args.range_check
                    sc = [c2st(alt.sample((args.num_samples,), x=xo, seed=i), r, seed=0)
                          for i, (xo, r) in enumerate(zip(xos, refs))]
                    row["incontext_alt"] = {"variant": alt.history.get("variant"),
                                            "candidates": args.also_candidates,
                                            "first_posterior_seconds": round(t_alt, 3),
                                            "c2st": [round(v, 3) for v in sc],
                                            "c2st_mean": round(float(np.mean(sc)), 3)}
                if args.truncate:
                    sc, recs, secs = [], [], []
                    for i, (xo, r) in enumerate(zip(xos, refs)):
                        t0 = time.perf_counter()
                        p0 = fit(problem, (theta, x), method="incontext", detector=False,
                                 seed=args.seed, **weights)
                        p1, rec = truncated_posterior(
                            problem, theta, x, xo, p0, weights, args.seed,
                            args.truncate_quantile, args.truncate_margin, args.truncate_min)
                        secs.append(time.perf_counter() - t0)
                        recs.append(rec)
                        sc.append(c2st(p1.sample((args.num_samples,), x=xo, seed=i), r, seed=0))
                        lo, hi = torch.tensor(rec["low"]), torch.tensor(rec["high"])
                        rec["ref_mass_in_R"] = round(float(((r >= lo) & (r <= hi)).all(1)
                                                           .float().mean()), 4)
                    row["incontext_trunc"] = {
                        "first_posterior_seconds": round(float(np.mean(secs)), 3),
                        "max_first_posterior_seconds": round(float(np.max(secs)), 3),
                        "truncation": recs,
                        "c2st": [round(v, 3) for v in sc],
                        "c2st_mean": round(float(np.mean(sc)), 3)}
                for steps in args.finetune:
                    t0 = time.perf_counter()
                    tuned = fit(problem, (theta, x), method="incontext", detector=False,
                                seed=args.seed, finetune_steps=steps, **weights)
                    t_fit = time.perf_counter() - t0
                    sc = [c2st(tuned.sample((args.num_samples,), x=xo, seed=i), r, seed=0)
                          for i, (xo, r) in enumerate(zip(xos, refs))]
                    row[f"incontext_ft{steps}"] = {
                        "first_posterior_seconds": round(t_fit, 2),
                        "c2st": [round(v, 3) for v in sc],
                        "c2st_mean": round(float(np.mean(sc)), 3)}
            if (task, row["sims"]) in earlier:
                for key in ("npe", "sbi_npe"):
                    if key in earlier[(task, row["sims"])]:
                        row[key] = earlier[(task, row["sims"])][key]
            elif not args.no_npe:
                jobs = [("sbi_core", sys.executable)]
                sbi_ok = args.sbi_python and prior_spec(problem.prior)["type"] in \
                    ("box_uniform", "gaussian")
                if sbi_ok:
                    jobs.append(("sbi", args.sbi_python))
                with tempfile.TemporaryDirectory() as tmp:
                    inp = Path(tmp) / "data.npz"
                    np.savez(inp, theta=theta.numpy(), x=x.numpy(),
                             xo=torch.stack(xos).numpy(),
                             prior_spec=json.dumps(prior_spec(problem.prior)),
                             num_samples=args.num_samples)
                    res = run_workers(jobs, inp, "fmaf", args.seed, 1, {"detector": False},
                                      concurrent=False,
                                      run={"range_check": args.range_check})
                for lib, _ in jobs:
                    smp = torch.from_numpy(res[lib]["samples"])
                    sc = [c2st(smp[i], refs[i], seed=0) for i in range(len(xos))]
                    row["npe" if lib == "sbi_core" else "sbi_npe"] = {
                        "first_posterior_seconds": round(float(res[lib]["train_seconds"]), 2),
                        "epochs": int(res[lib]["epochs"]),
                        "c2st": [round(s, 3) for s in sc],
                        "c2st_mean": round(float(np.mean(sc)), 3)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.json:  # after every row, so a partial grid is kept
                Path(args.json).write_text(json.dumps(rows, indent=1))
    print()
    print(f"{'task':18s} {'N':>5s} {'method':10s} {'C2ST':>6s} {'first posterior s':>18s}")
    for row in rows:
        for key in [k for k in row if k.startswith(("incontext", "npe", "sbi_npe"))]:
            if key in row:
                r = row[key]
                print(f"{row['task']:18s} {row['sims']:5d} {key:10s} {r['c2st_mean']:6.3f} "
                      f"{r['first_posterior_seconds']:18.3f}")
    print(f"load at end: {os.getloadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
