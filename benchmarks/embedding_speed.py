"""Training cost of time-series embeddings against plain NPE, in one run.

Data: ``--num`` series of length ``--length`` from a damped noisy oscillator (theta =
frequency, damping). Two measurements, in this process, one thread, same data and seed:

1. Cost of one training step (NPE with the default fused MAF, batch 512, forward + backward +
   Adam) for every embedding in ``--embeddings``, **interleaved** (one step of each in turn,
   ``--repeats`` rounds, median), so a change of machine load hits all alike.
2. Training to convergence (default options, early stopping) for each of ``--train``: wall
   seconds, epochs, seconds per epoch, the best validation loss (-log q(theta | x) on the
   same held-out pairs, so lower is more accurate), and the ratios to the first.

The machine's load average is printed (other jobs slow everything, sequential runs of part 2
unequally).

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/embedding_speed.py
    ... --embeddings none cnn1d:1 cnn1d tcn gru transformer --train none cnn1d:1 cnn1d

``cnn1d:1`` is the original 1-D CNN layout (max pooling + GELU), ``cnn1d`` the current one.
"""

from __future__ import annotations

import argparse
import os
import statistics
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


def step_times(problem: Problem, sims, names: list[str], repeats: int) -> None:
    """Median ms per training step of NPE with each embedding, interleaved; prints a table."""
    from sbi_core.methods import get_method

    theta, x = sims.training_data()
    npe = get_method("npe")
    batch = torch.randperm(len(theta), generator=torch.Generator().manual_seed(0))[:512]
    tb, xb = theta[batch], x[batch]
    models = {}
    for name in names:
        torch.manual_seed(0)
        est = npe.build(theta, x, problem.prior, embedding=spec(name))
        models[name] = (est, torch.optim.Adam(est.parameters(), lr=1e-3))
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats + 2):
        for name, (est, opt) in models.items():
            t0 = time.perf_counter()
            opt.zero_grad()
            est.loss(tb, xb).mean().backward()
            opt.step()
            if r >= 2:  # two warm-up rounds
                times[name].append(time.perf_counter() - t0)
    base = statistics.median(times[names[0]])
    print(f"{'embedding':>12s} {'ms/step':>8s} {'x ' + names[0]:>9s} {'params':>8s}")
    for name in names:
        med = statistics.median(times[name])
        n_par = sum(p.numel() for p in models[name][0].embedding.parameters())
        print(f"{name:>12s} {1000 * med:8.1f} {med / base:9.2f} {n_par:8d}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num", type=int, default=4000)
    ap.add_argument("--length", type=int, default=100)
    ap.add_argument("--embeddings", nargs="+",
                    default=["none", "cnn1d:1", "cnn1d", "tcn", "gru", "transformer"])
    ap.add_argument("--train", nargs="+", default=["none", "cnn1d:1", "cnn1d"])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    problem = oscillator_problem(args.length)
    sims = simulate(problem, args.num, seed=args.seed, progress=False)
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; "
          f"threads {args.threads}; N={args.num}, T={args.length}")
    step_times(problem, sims, args.embeddings, args.repeats)
    print(f"load average: {os.getloadavg()[0]:.2f}")
    print(f"{'embedding':>12s} {'seconds':>8s} {'epochs':>6s} {'s/epoch':>8s} {'val loss':>9s} "
          f"{'x time':>7s} {'x s/epoch':>9s}")
    base: tuple[float, float] | None = None
    for name in args.train:
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
