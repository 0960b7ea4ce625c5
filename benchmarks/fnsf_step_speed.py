"""CPU per training step of the fused NSF: hand-written backward against the autograd graph.

One process, interleaved blocks (``--blocks`` x ``--steps`` steps per side, alternating
which side goes first), so load bursts from other processes hit both alike. A step is the
loss forward (``log_prob`` of a minibatch) plus ``backward``, as in NPE's training loop,
without the optimizer. The flow has slcp's default size (``D = 5``, context 8, ``H = 50``,
``T = 5``, 2 hidden layers, 10 bins) and random weights near the identity initialization.
Prints the median CPU milliseconds per step of each side, their ratio and the load.

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/fnsf_step_speed.py --blocks 16
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from estimators.fast_nsf import FusedNSF  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=5)
    ap.add_argument("--context", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--blocks", type=int, default=16)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    flow = FusedNSF(args.dim, args.context)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(args.batch_size, args.dim) * 1.5
    c = torch.randn(args.batch_size, args.context)

    def step(hand: bool) -> None:
        flow.hand_backward = hand
        loss = -flow.log_prob(x, c).mean()
        loss.backward()
        for p in flow.parameters():
            p.grad = None

    times: dict[str, list[float]] = {"autograd": [], "hand": []}
    for _ in range(5):
        step(True)
        step(False)
    load0 = os.getloadavg()[0]
    for b in range(args.blocks):
        for name in (("autograd", "hand") if b % 2 else ("hand", "autograd")):
            t0 = time.process_time()
            for _ in range(args.steps):
                step(name == "hand")
            times[name].append((time.process_time() - t0) / args.steps * 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({"ms_per_step_autograd": round(med["autograd"], 3),
                      "ms_per_step_hand": round(med["hand"], 3),
                      "ratio": round(med["autograd"] / med["hand"], 3),
                      "load": [round(load0, 2), round(os.getloadavg()[0], 2)]}))


if __name__ == "__main__":
    main()
