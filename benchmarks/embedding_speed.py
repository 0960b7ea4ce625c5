"""Training cost of time-series embeddings against plain NPE, in one run.

NPE (fused MAF, default training options) is trained to convergence on ``--num`` series of
length ``--length`` from a damped noisy oscillator (theta = frequency, damping), once per
embedding, all in this process with the same data, seed and thread count. Printed per
embedding: wall seconds, epochs, seconds per epoch, the best validation loss (-log q(theta |
x) on the same held-out pairs, so lower is more accurate), and the ratios to plain NPE. The
machine's load average is printed before and after (other jobs slow everything alike, but
noisily).

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/embedding_speed.py
    ... --embeddings none cnn1d:1 cnn1d tcn gru transformer --num 4000 --length 100

``cnn1d:1`` is the original 1-D CNN layout (max pooling + GELU), ``cnn1d`` the current one.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sbi_core import Problem, box_uniform, fit, simulate  # noqa: E402


def oscillator_problem(length: int) -> Problem:
    """``x_t = sin(f t) exp(-d t / 5) + 0.1 noise`` on ``t in [0, 10]``; theta = (f, d)."""
    t = torch.linspace(0.0, 10.0, length)

    def simulator(theta: torch.Tensor) -> torch.Tensor:
        f, d = theta[:, :1], theta[:, 1:2]
        return torch.sin(f * t) * torch.exp(-d * t / 5) + 0.1 * torch.randn(len(theta), length)

    return Problem(box_uniform([0.5, 0.1], [3.0, 1.0]), simulator, param_names=["f", "d"],
                   name="oscillator", x_shape=(length,))


def spec(name: str) -> dict | None:
    if name == "none":
        return None
    if name == "cnn1d:1":
        return {"type": "cnn1d", "layout": 1}
    return {"type": name}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num", type=int, default=4000)
    ap.add_argument("--length", type=int, default=100)
    ap.add_argument("--embeddings", nargs="+", default=["none", "cnn1d:1", "cnn1d"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    problem = oscillator_problem(args.length)
    sims = simulate(problem, args.num, seed=args.seed, progress=False)
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; "
          f"threads {args.threads}; N={args.num}, T={args.length}")
    print(f"{'embedding':>12s} {'seconds':>8s} {'epochs':>6s} {'s/epoch':>8s} {'val loss':>9s} "
          f"{'x time':>7s} {'x s/epoch':>9s}")
    base: tuple[float, float] | None = None
    for name in args.embeddings:
        t0 = time.perf_counter()
        post = fit(problem, sims, embedding=spec(name), seed=args.seed, progress=False)
        wall = time.perf_counter() - t0
        h = post.history
        per_epoch = h["seconds"] / h["epochs"]
        if base is None:
            base = (wall, per_epoch)
        print(f"{name:>12s} {wall:8.2f} {h['epochs']:6d} {per_epoch:8.3f} "
              f"{h['best_validation_loss']:9.3f} {wall / base[0]:7.2f} {per_epoch / base[1]:9.2f}",
              flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
