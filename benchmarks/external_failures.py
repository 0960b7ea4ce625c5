"""External program failing on ~14% of rows: old row-by-row rescue vs. the new protocols.

The program is a Python script started once per batch (interpreter + numpy import, plus
``--startup`` seconds of sleep to stand for a real model's start-up). Rows with
``theta_1 < FAIL_FRACTION`` fail (~14% under the U(0, 1) prior). Modes of the program:

- ``mask``: exits 3 and lists the failed rows in ``{mask}`` (new protocol, no rerun);
- ``nan``: writes NaN rows, exits 0 (new protocol, no rerun);
- ``raise``: exits 1 when any row fails, reporting nothing: the engine bisects.

Measured in this run: the new ``mask`` and ``nan`` runs (2,000 rows, 2 workers, chunks of
1,000), and the cost of one program start. The old behaviour (the batch fails, then every
row of the chunk is rerun alone: ``chunk_size + 1`` starts per failing chunk) is too slow
to run in full by default: it is timed on a subset of ``--old-rows`` single-row starts and
extrapolated to the full run's number of starts (``--old-full`` runs it instead). Bisection
of the non-reporting ``raise`` program is counted exactly (same theta, same failure rule,
through ``isolate_failures`` with a counting stand-in) and converted to seconds with the
measured cost per start (``--bisect-full`` runs it for real).

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/external_failures.py
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from sbi_core import Problem, box_uniform, simulate
from sbi_core.failures import isolate_failures
from sbi_core.simulation import chunk_plan
from simulators import external_simulator

FAIL_FRACTION = 0.14

PROGRAM = '''
import sys, time
import numpy as np
mode, startup, theta_path, x_path, mask_path = sys.argv[1:6]
time.sleep(float(startup))
theta = np.load(theta_path)
x = np.stack([theta.sum(1), theta[:, 0] * theta[:, 1], np.sin(theta[:, 2])], 1)
bad = theta[:, 0] < FAILFRAC
if mode == "raise" and bad.any():
    sys.stderr.write(f"{int(bad.sum())} rows diverged\\n")
    sys.exit(1)
if mode == "nan":
    x[bad] = np.nan
np.save(x_path, x)
if mode == "mask" and bad.any():
    np.savetxt(mask_path, np.nonzero(bad)[0], fmt="%d")
    sys.exit(3)
'''.replace("FAILFRAC", str(FAIL_FRACTION))


def _problem(script: Path, mode: str, startup: float) -> Problem:
    sim = external_simulator([sys.executable, str(script), mode, str(startup), "{theta}", "{x}",
                              "{mask}"], timeout=120, x_shape=(3,))
    return Problem(box_uniform([0.0] * 3, [1.0] * 3), sim, x_shape=(3,), name=f"ext_{mode}",
                   validate=False)


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _count_bisection_starts(n: int, seed: int, chunk_size: int, fail: float) -> int:
    """Exact number of program starts bisection makes for the ``raise`` program."""
    starts = 0

    def stand_in(theta):
        nonlocal starts
        starts += 1
        if bool((theta[:, 0] < fail).any()):
            raise RuntimeError("rows diverged")
        return torch.zeros(theta.shape[0], 3)

    for _, size, chunk_seed in chunk_plan(n, seed, chunk_size):
        torch.manual_seed(chunk_seed)
        theta = box_uniform([0.0] * 3, [1.0] * 3).sample((size,)).float()
        isolate_failures(stand_in, theta, (3,), chunk_seed)
    return starts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=1000)
    parser.add_argument("--startup", type=float, default=0.2,
                        help="extra seconds of start-up per program start (sleep)")
    parser.add_argument("--old-rows", type=int, default=20,
                        help="single-row starts timed to extrapolate the old behaviour")
    parser.add_argument("--old-full", action="store_true", help="run the old behaviour fully")
    parser.add_argument("--bisect-full", action="store_true",
                        help="run the non-reporting program with bisection fully")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}, cpus: {os.cpu_count()}")
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "model.py"
        script.write_text(PROGRAM)
        seed = 0
        results = {}
        for mode in ("mask", "nan"):
            sims, secs = _timed(lambda mode=mode: simulate(_problem(script, mode, args.startup), args.n,
                                                 seed=seed, workers=args.workers,
                                                 chunk_size=args.chunk_size, progress=False))
            results[mode] = secs
            print(f"new, program reports failures ({mode}): {secs:.2f} s, "
                  f"{sims.num_invalid} of {len(sims)} invalid "
                  f"({sims.num_invalid / len(sims):.1%}); first_error: "
                  f"{(sims.provenance['first_error'] or '')[:80]}")

        # cost of one start, single rows (what the old rescue does per row)
        raise_sim = _problem(script, "raise", args.startup).simulator
        theta = box_uniform([0.0] * 3, [1.0] * 3).sample((args.old_rows,))
        _, secs = _timed(lambda: [_try(raise_sim, theta[i:i + 1]) for i in range(args.old_rows)])
        per_start = secs / args.old_rows
        n_chunks = len(chunk_plan(args.n, seed, args.chunk_size))
        # every chunk of 1,000 rows at 14% holds failing rows: 1 batch + chunk_size row starts
        old_starts = n_chunks + args.n
        parallel = min(args.workers, n_chunks)
        if args.old_full:
            old_problem = _problem(script, "raise", args.startup)
            old_problem.simulator = _OldRescue(old_problem.simulator)
            _, old = _timed(lambda: simulate(old_problem, args.n, seed=seed,
                                             workers=args.workers, chunk_size=args.chunk_size,
                                             progress=False))
            how = "measured"
        else:
            old = per_start * old_starts / parallel
            how = (f"extrapolated: {per_start:.3f} s per start (from {args.old_rows} single-row "
                   f"starts) x {old_starts} starts / {parallel} workers")
        print(f"old, row-by-row rescue: {old:.1f} s ({how})")

        starts = _count_bisection_starts(args.n, seed, args.chunk_size, FAIL_FRACTION)
        sparse = _count_bisection_starts(args.n, seed, args.chunk_size, 0.01)
        if args.bisect_full:
            _, bis = _timed(lambda: simulate(_problem(script, "raise", args.startup), args.n,
                                             seed=seed, workers=args.workers,
                                             chunk_size=args.chunk_size, progress=False))
            bis_how = "measured"
        else:
            bis = per_start * starts / parallel
            bis_how = f"estimated: {starts} starts counted x {per_start:.3f} s / {parallel}"
        print(f"new, non-reporting program, bisection: {bis:.1f} s ({bis_how}); "
              f"starts at 14% failures: {starts} (row by row: {old_starts}); "
              f"at 1% failures: {sparse}")
        best = min(results.values())
        print(f"ratio old / new (program reports failures): {old / best:.0f}x "
              f"(new {best:.2f} s, target < 10 s: {'met' if best < 10 else 'NOT met'})")
        print(f"ratio old / new (bisection, no report): {old / bis:.2f}x")
    print(f"load average after: {os.getloadavg()}")


def _try(sim, theta):
    try:
        return sim(theta)
    except RuntimeError:
        return None


class _OldRescue:
    """The old rescue inside the simulator: when the batch fails, every row alone."""

    def __init__(self, sim):
        self.sim = sim

    def __call__(self, theta):
        out = _try(self.sim, theta)
        if out is not None:
            return out
        rows = [_try(self.sim, theta[i:i + 1]) for i in range(theta.shape[0])]
        return torch.cat([r if r is not None else torch.full((1, 3), float("nan"))
                          for r in rows])


if __name__ == "__main__":
    main()
