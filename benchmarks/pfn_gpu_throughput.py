"""PFN training throughput (sets per second) on CUDA against the CPU, same model and data.

Runs a fixed number of optimizer steps of the default-size PFN (d_model 64, 4 layers,
100 buckets) on 2-D linear-Gaussian sets of ``n_max`` observations, with one set size
drawn per step exactly as in training, on the CPU and (when available) on the GPU, and
prints sets/second for each and the GPU/CPU ratio. Needs a CUDA machine for the ratio;
without one it reports the CPU number and says so.

Usage::

    PYTHONPATH=. python benchmarks/pfn_gpu_throughput.py [--steps 50] [--batch-size 512]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from estimators.pfn_method import build_pfn
from simulators.linear_gaussian import linear_gaussian


def throughput(device: str, steps: int, batch_size: int, n_max: int, seed: int = 0) -> float:
    """Sets per second of PFN training steps (forward, backward, Adam) on ``device``."""
    torch.manual_seed(seed)
    problem = linear_gaussian(2)
    theta = problem.prior.sample((batch_size,))
    sets = problem.simulator(theta.repeat_interleave(n_max, 0)).reshape(batch_size, n_max, 2)
    est = build_pfn(theta, sets, problem.prior, x_shape=(2,), n_max=n_max).to(device)
    theta, sets = theta.to(device), sets.to(device)
    opt = torch.optim.Adam(est.parameters(), lr=1e-4)
    est.train()

    def step() -> None:
        loss = est.loss(theta, sets).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):  # warm-up (kernels, allocator)
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--n-max", type=int, default=50)
    args = parser.parse_args()
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": platform.node(), "cpu_threads": torch.get_num_threads(),
              "steps": args.steps, "batch_size": args.batch_size, "n_max": args.n_max}
    result["cpu_sets_per_s"] = round(throughput("cpu", args.steps, args.batch_size, args.n_max))
    if torch.cuda.is_available():
        result["gpu"] = torch.cuda.get_device_name(0)
        result["cuda_sets_per_s"] = round(throughput("cuda", args.steps, args.batch_size,
                                                     args.n_max))
        result["cuda_over_cpu"] = round(result["cuda_sets_per_s"] / result["cpu_sets_per_s"], 1)
    else:
        result["gpu"] = "none (no CUDA device: only the CPU number is measured)"
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
