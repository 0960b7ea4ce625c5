"""Sequential inference against amortized NPE and against sbi 0.27, by C2ST and wall time.

For each task, observation, seed and total simulation budget:

- ours: ``tsnpe``, ``snpe_c`` (needs ``estimators.apt``; reported as not available
  otherwise), ``snle`` (``sbi_core.run_sequential`` with ``--rounds`` rounds of
  ``budget / rounds``), amortized ``npe`` (one round of the whole budget) and
  ``tsnpe_nobudget`` (TSNPE with ``round_steps=None``: the rounds before the last train to
  early stopping, as before the step budget) and ``tsnpe_fullfinal`` (TSNPE with
  ``final_steps=None``: the last round runs the preset's full schedule, as before its
  step budget), ``tsnpe_plain`` (TSNPE with the plain 1e-4 HPR in every round:
  ``region_temperature=None, region_union=False``, as before the conservative small-budget
  region) and ``tsnpe_union`` (the tempered region united with the previous round's,
  ``region_union="auto"``);
- sbi 0.27 (in a subprocess of ``--sbi-python``, never imported here): ``sbi_snpe_c``
  (``NPE_C`` with the posterior as proposal, atomic loss) and ``sbi_tsnpe`` (``NPE`` +
  ``get_density_thresholder(quantile=1e-4, 100,000 samples)`` + ``RestrictedPrior``
  sampled by rejection, ``force_first_round_loss=True``), each on the same simulator (the
  worker imports this repository's ``simulators`` package; a product prior such as sir's
  log-normals is passed to sbi as the same law in one torch ``Independent`` distribution).

For our TSNPE each row also gives, per round, the fraction of reference-posterior samples
inside the truncation region (about ``1 - epsilon`` when the truncation is safe; lower means
a round cut off posterior mass). C2ST (``diagnostics.c2st``, the same classifier for every method) compares
``--num-samples`` posterior samples at x_o with the task's reference posterior. Wall time
covers simulating, training and proposal sampling of all rounds (not the final C2ST
samples); ``cpu_seconds`` is the process CPU time of the same span (every process runs one
thread, so it depends less on the machine's load than wall time). The machine load
(``os.getloadavg()``) is printed with the results.

Full run (for a quiet machine; many hours on 2 cores):

    OMP_NUM_THREADS=1 python benchmarks/sequential_vs_sbi.py --sbi-python /work/sbi-venv/bin/python \\
        --tasks two_moons slcp gaussian_mixture sir --budgets 1000 2000 5000 10000 \\
        --observations 1 2 3 --seeds 0 1 2

Options of ours (a named variant, repeatable): ``--variant NAME=METHOD:JSON`` adds a row
``NAME`` of our ``METHOD`` with the JSON options passed to ``run_sequential`` (``fit`` for
``npe``); ``"rounds"`` overrides ``--rounds`` and ``"sample"`` is a dict of
``posterior.sample`` options, e.g. ``--variant 'snpe_c_mdn=snpe_c:{"flow": "mdn"}'``.

Rows of runs in separate processes (or on different commits) in one table: ``--grid
ROWS.json [...]`` prints, per task and budget, our method (``--best TASK=METHOD``; default
TSNPE, SNLE on slcp) against sbi's TSNPE: C2ST means, runs and seeds behind each, the mean
same-run wall ratio and the ``commit`` of the rows (``grid_table``). ``--json`` is rewritten
after every row, so a stopped grid keeps what it measured.

Reduced run:

    OMP_NUM_THREADS=1 python benchmarks/sequential_vs_sbi.py --sbi-python /work/sbi-venv/bin/python \\
        --tasks two_moons --budgets 1000 2000 --observations 1 --seeds 0 --num-samples 2000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

OURS = ["tsnpe", "snpe_c", "snle", "npe", "tsnpe_nobudget", "tsnpe_fullfinal", "tsnpe_plain",
        "tsnpe_union"]
#: our variants: method name -> (sequential method, extra run_sequential options)
VARIANTS = {"tsnpe_nobudget": ("tsnpe", {"round_steps": None}),  # the wave-4 round training
            "tsnpe_fullfinal": ("tsnpe", {"final_steps": None}),  # last round: full schedule
            # the plain 1e-4 HPR in every round (before the conservative small-budget region)
            "tsnpe_plain": ("tsnpe", {"region_temperature": None, "region_union": False}),
            # the tempered region and the union with the previous round's region
            "tsnpe_union": ("tsnpe", {"region_union": "auto"})}
SBI = ["sbi_snpe_c", "sbi_tsnpe"]


# ---------------------------------------------------------------------------- sbi worker
def sbi_worker(task: str, k: int, seed: int, budget: int, rounds: int, method: str,
               num_samples: int, out: str) -> None:
    """Runs inside the sbi venv: multi-round sbi on this repository's simulator."""
    import torch
    from sbi.inference import NPE, NPE_C
    from sbi.utils import RestrictedPrior, get_density_thresholder

    import simulators

    torch.manual_seed(seed)
    problem = simulators.get_problem(task)
    prior = problem.prior
    if type(prior).__name__ == "IndependentPrior":  # sbi cannot transform its support (sir)
        from _npe_worker import _prior_for_sbi

        from sbi_core.priors import prior_spec

        prior = _prior_for_sbi(prior_spec(prior))  # the same law as one torch distribution
    x_o = problem.observation(k)
    n = budget // rounds
    start, cpu_start = time.perf_counter(), time.process_time()
    acceptance = []
    if method == "sbi_snpe_c":
        inference = NPE_C(prior=prior, show_progress_bars=False)
        proposal = prior
        for _ in range(rounds):
            theta = proposal.sample((n,))
            x = problem.simulator(theta)
            estimator = inference.append_simulations(theta, x, proposal=proposal).train()
            posterior = inference.build_posterior(estimator)
            proposal = posterior.set_default_x(x_o)
    else:
        inference = NPE(prior=prior, show_progress_bars=False)
        proposal = prior
        for _ in range(rounds):
            theta = proposal.sample((n,))
            x = problem.simulator(theta)
            inference.append_simulations(theta, x).train(force_first_round_loss=True)
            posterior = inference.build_posterior().set_default_x(x_o)
            accept = get_density_thresholder(posterior, quantile=1e-4,
                                             num_samples_to_estimate_support=100_000)
            proposal = RestrictedPrior(prior, accept, sample_with="rejection")
            acceptance.append(float(accept(prior.sample((10_000,))).float().mean()))
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    samples = posterior.sample((num_samples,), x=x_o, show_progress_bars=False)
    np.savez(out, samples=samples.numpy(), seconds=seconds, cpu_seconds=cpu,
             acceptance=np.array(acceptance))


def run_sbi(python: str, task: str, k: int, seed: int, budget: int, rounds: int, method: str,
            num_samples: int, timeout: float | None = None) -> dict:
    """One sbi run in a subprocess of ``python``; ``timeout`` (seconds, ``None``: no limit)
    kills a worker that does not finish (e.g. sbi's SNPE-C posterior leaking outside the
    prior, whose rejection sampling of the C2ST draws can run for many minutes) and returns
    an ``error`` row instead of stopping the grid."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.npz"
        cmd = [python, str(Path(__file__).resolve()), "--sbi-worker", task, str(k), str(seed),
               str(budget), str(rounds), method, str(num_samples), str(out)]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"sbi worker killed after --sbi-timeout {timeout:g} s (not "
                             "finished; raise --sbi-timeout to wait longer)"}
        if proc.returncode != 0:
            return {"error": proc.stderr.strip().splitlines()[-1][:300] if proc.stderr else
                    f"exit {proc.returncode}"}
        res = np.load(out)
        return {"samples": res["samples"], "seconds": float(res["seconds"]),
                "cpu_seconds": float(res["cpu_seconds"]),
                "acceptance": [round(a, 4) for a in res["acceptance"].tolist()]}


# ---------------------------------------------------------------------------- ours
def run_ours(problem, x_o, method: str, budget: int, rounds: int, seed: int,
             num_samples: int, reference, options: dict | None = None) -> dict:
    """One run of our ``method``; ``options``: a ``--variant``'s (``rounds``, ``sample``,
    the rest to ``run_sequential`` / ``fit``)."""
    from sbi_core import fit, simulate
    from sbi_core.sequential import run_sequential

    options = dict(options or {})
    rounds = options.pop("rounds", rounds)
    sample_options = options.pop("sample", {})
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        if method == "npe":
            posterior = fit(problem, simulate(problem, budget, seed=seed, progress=False),
                            method="npe", seed=seed, progress=False, **options)
            acceptance, inside = [], []
        else:
            name, extra = VARIANTS.get(method, (method, {}))
            posterior, history = run_sequential(problem, x_o, method=name, rounds=rounds,
                                                sims_per_round=budget // rounds, seed=seed,
                                                progress=False, reference_samples=reference,
                                                **{**extra, **options})
            acceptance = [None if h.prior_mass is None else round(h.prior_mass, 4)
                          for h in history]
            inside = [None if h.reference_inside is None else round(h.reference_inside, 4)
                      for h in history]
    except ValueError as err:
        if "not available" in str(err):
            return {"error": "not available in this installation"}
        raise
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    # x_o outside the range of the training simulations (sir observation 3 at 1,000): sample
    # anyway (sbi's posterior has no such check) and say so in the row
    from sbi_core.posterior import ObservationError

    outside = False
    if getattr(posterior, "range_check", None) == "error":
        try:
            posterior._check_range(x_o)
        except ObservationError:
            outside = True
            posterior.range_check = "off"
    samples = posterior.sample((num_samples,), x=x_o, seed=seed, max_seconds=None,
                               **sample_options)
    return {"samples": samples.numpy(), "seconds": seconds, "cpu_seconds": cpu,
            "acceptance": acceptance,
            "reference_inside": inside, "x_o_outside_training_range": outside}


def parse_variants(specs: list[str]) -> dict[str, tuple[str, dict]]:
    """``["NAME=METHOD:JSON", ...]`` -> ``{NAME: (METHOD, options)}`` (clear errors)."""
    out: dict[str, tuple[str, dict]] = {}
    for spec in specs:
        name, _, rest = spec.partition("=")
        base, _, text = rest.partition(":")
        if not name or base not in OURS or name in OURS + SBI or name in out:
            raise SystemExit(f"--variant {spec!r}: expected NAME=METHOD:JSON with METHOD one of "
                             f"{OURS} and a new NAME, e.g. "
                             "'snpe_c_mdn=snpe_c:{\"flow\": \"mdn\"}'.")
        try:
            options = json.loads(text or "{}")
        except json.JSONDecodeError as err:
            raise SystemExit(f"--variant {spec!r}: the options are not JSON ({err}).") from None
        if not isinstance(options, dict):
            raise SystemExit(f"--variant {spec!r}: the options must be a JSON object.")
        out[name] = (base, options)
    return out


def grid_table(rows: list[dict], best: dict[str, str], baseline: str = "sbi_tsnpe") -> list[dict]:
    """The consolidated grid: per (task, budget), ``best[task]``'s C2ST mean against
    ``baseline``'s, over every (observation, seed) run in ``rows``.

    ``rows``: benchmark rows (``task``, ``budget``, ``observation``, ``seed``, ``method``,
    ``c2st``, ``seconds``; optional ``commit``, the code a row was measured on, and
    ``process``, the benchmark process it came from); rows without ``c2st`` (failed runs) are
    skipped. The wall ratio is the mean over the runs where both methods ran in the same
    process (same ``process``, or same ``commit`` where a row has no ``process``) of
    ``baseline seconds / ours`` (back to back, so at the same load); C2ST means use every run.
    Returns one dict per cell: ``task``, ``budget``, ``method``, ``ours`` / ``theirs`` (C2ST
    means, ``None`` without runs), ``n_ours`` / ``n_theirs`` (runs), ``seeds_ours`` /
    ``seeds_theirs`` (sorted seeds), ``ratio`` (``None`` without pairs), ``n_pairs``,
    ``min_ratio``, ``commits_ours`` / ``commits_theirs`` (sorted, of each method's rows).
    Raises ``ValueError`` on two rows for the same run (task, budget, observation, seed,
    method): pick one per run first.
    """
    runs: dict[tuple, dict] = {}
    for r in rows:
        if "c2st" not in r:
            continue
        key = (r["task"], r["budget"], r["observation"], r["seed"], r["method"])
        if key in runs:
            raise ValueError(f"two rows for the same run {key} (commits "
                             f"{runs[key].get('commit')} and {r.get('commit')}): keep one per "
                             "run before building the grid.")
        runs[key] = r
    cells = sorted({(k[0], k[1]) for k in runs if k[0] in best})
    out = []
    for task, budget in cells:
        mine = {k[2:4]: r for k, r in runs.items() if k[:2] == (task, budget)
                and k[4] == best[task]}
        base = {k[2:4]: r for k, r in runs.items() if k[:2] == (task, budget)
                and k[4] == baseline}
        def process(r: dict):
            return r.get("process", r.get("commit"))

        pairs = [base[k]["seconds"] / mine[k]["seconds"] for k in mine.keys() & base.keys()
                 if process(mine[k]) == process(base[k]) and mine[k].get("seconds")
                 and base[k].get("seconds")]
        out.append({
            "task": task, "budget": budget, "method": best[task],
            "ours": float(np.mean([r["c2st"] for r in mine.values()])) if mine else None,
            "theirs": float(np.mean([r["c2st"] for r in base.values()])) if base else None,
            "n_ours": len(mine), "n_theirs": len(base),
            "seeds_ours": sorted({k[1] for k in mine}), "seeds_theirs": sorted({k[1] for k in base}),
            "ratio": float(np.mean(pairs)) if pairs else None, "n_pairs": len(pairs),
            "min_ratio": float(min(pairs)) if pairs else None,
            "commits_ours": sorted({str(r.get("commit", "?")) for r in mine.values()}),
            "commits_theirs": sorted({str(r.get("commit", "?")) for r in base.values()}),
        })
    return out


def print_grid(cells: list[dict]) -> None:
    """``grid_table``'s cells as one markdown table."""
    print("| task | budget | ours | C2ST ours (runs; seeds) | C2ST sbi TSNPE (runs; seeds) | "
          "sbi/ours wall (pairs; lowest) | commits ours / sbi |")
    print("|---|---|---|---|---|---|---|")
    for c in cells:
        def fmt(mean, n, seeds):
            return "-" if mean is None else f"{mean:.3f} ({n}; {','.join(map(str, seeds))})"
        ratio = "-" if c["ratio"] is None else f"x{c['ratio']:.1f} ({c['n_pairs']}; x{c['min_ratio']:.1f})"
        print(f"| {c['task']} | {c['budget']:,} | {c['method']} | "
              f"{fmt(c['ours'], c['n_ours'], c['seeds_ours'])} | "
              f"{fmt(c['theirs'], c['n_theirs'], c['seeds_theirs'])} | {ratio} | "
              f"{', '.join(c['commits_ours'])} / {', '.join(c['commits_theirs'])} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sbi-python", help="python of the venv with sbi==0.27.0 (omit: ours only)")
    ap.add_argument("--tasks", nargs="+", default=["two_moons", "slcp", "gaussian_mixture", "sir"])
    ap.add_argument("--budgets", type=int, nargs="+", default=[1000, 2000, 5000, 10000])
    ap.add_argument("--observations", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rounds", type=int, default=5, help="rounds of the sequential methods")
    ap.add_argument("--methods", nargs="+", default=OURS + SBI, choices=OURS + SBI)
    ap.add_argument("--num-samples", type=int, default=10_000)
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=METHOD:JSON",
                    help="an extra method NAME: our METHOD with JSON options (see above)")
    ap.add_argument("--json", help="also write all rows to this JSON file")
    ap.add_argument("--grid", nargs="+", metavar="JSON",
                    help="print the consolidated grid of these row files (one list of rows "
                         "each, e.g. from --json; a row's 'commit' names its code) and exit")
    ap.add_argument("--best", nargs="+", default=["two_moons=tsnpe", "slcp=snle",
                                                  "gaussian_mixture=tsnpe", "sir=tsnpe"],
                    metavar="TASK=METHOD", help="with --grid: our method per task")
    ap.add_argument("--sbi-timeout", type=float, default=None, metavar="SECONDS",
                    help="kill an sbi run after this many seconds and record it as an error "
                         "row (default: no limit)")
    ap.add_argument("--sbi-worker", nargs=8, metavar="ARG", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.grid:
        rows = [r for f in args.grid for r in json.loads(Path(f).read_text())]
        print_grid(grid_table(rows, dict(b.split("=", 1) for b in args.best)))
        return
    if args.sbi_worker:
        task, k, seed, budget, rounds, method, num, out = args.sbi_worker
        sbi_worker(task, int(k), int(seed), int(budget), int(rounds), method, int(num), out)
        return
    variants = parse_variants(args.variant)

    import torch

    import simulators
    from diagnostics.c2st import c2st

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="Reached max_epochs")
    methods = [m for m in args.methods if m in OURS or args.sbi_python] + list(variants)
    rows = []
    load_before = os.getloadavg()
    for task in args.tasks:
        problem = simulators.get_problem(task)
        for k in args.observations:
            x_o = problem.observation(k)
            ref = problem.reference_posterior(x_o, args.num_samples, seed=k)
            for seed in args.seeds:
                for budget in args.budgets:
                    for method in methods:
                        if method in OURS or method in variants:
                            base, opts = variants.get(method, (method, {}))
                            res = run_ours(problem, x_o, base, budget, args.rounds, seed,
                                           args.num_samples, ref, opts)
                        else:
                            res = run_sbi(args.sbi_python, task, k, seed, budget, args.rounds,
                                          method, args.num_samples, args.sbi_timeout)
                        row = {"task": task, "observation": k, "seed": seed, "budget": budget,
                               "method": method,
                               "rounds": 1 if method == "npe" else
                               variants.get(method, ("", {}))[1].get("rounds", args.rounds)}
                        if method in variants:
                            row["options"] = variants[method][1]
                        if "error" in res:
                            row["error"] = res["error"]
                        else:
                            row["c2st"] = round(c2st(torch.as_tensor(res["samples"]), ref,
                                                     seed=0), 3)
                            row["seconds"] = round(res["seconds"], 1)
                            row["cpu_seconds"] = round(res["cpu_seconds"], 1)
                            row["prior_mass_per_round"] = res["acceptance"]
                            if res.get("x_o_outside_training_range"):
                                row["x_o_outside_training_range"] = True
                            if any(v is not None for v in res.get("reference_inside") or []):
                                # fraction of reference samples inside each truncation region
                                row["reference_inside_per_round"] = res["reference_inside"]
                        row["load"] = round(os.getloadavg()[0], 2)
                        rows.append(row)
                        print(json.dumps(row), flush=True)
                        if args.json:  # after every row: a stopped grid keeps its rows
                            Path(args.json).write_text(json.dumps(rows, indent=1))
    print(f"\nload average before: {load_before}, after: {os.getloadavg()}")
    print(f"{'task':17s} {'budget':>6s} {'method':15s} {'C2ST mean':>9s} {'seconds':>8s} "
          f"{'min ref in':>10s}  runs")
    for task in args.tasks:
        for budget in args.budgets:
            for method in methods:
                group = [r for r in rows if (r["task"], r["budget"], r["method"]) ==
                         (task, budget, method) and "c2st" in r]
                if not group:
                    err = next((r.get("error") for r in rows if (r["task"], r["budget"],
                                r["method"]) == (task, budget, method)), "")
                    print(f"{task:17s} {budget:6d} {method:15s} {'-':>9s} {'-':>8s}  {err}")
                    continue
                # the smallest fraction of reference draws inside any round's region, over
                # the group's runs (TSNPE only)
                inside = [v for r in group for v in r.get("reference_inside_per_round") or []
                          if v is not None]
                low = f"{min(inside):10.3f}" if inside else f"{'':10s}"
                print(f"{task:17s} {budget:6d} {method:15s} "
                      f"{np.mean([r['c2st'] for r in group]):9.3f} "
                      f"{np.mean([r['seconds'] for r in group]):8.1f} {low}  {len(group)}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
