"""Per-call cost of NLE's likelihood flow, nflows MAF (``maf``) against the fused MAF
(``fmaf``), on slcp-sized data (x: 8 values, θ: 5): a training step (batch 256, Adam), the
gradient of the log-likelihood in θ for 100 rows (one HMC leapfrog step of 100 chains; the
fused flow runs its autograd path there) and a no-grad evaluation of 1,000 rows (SIR
initialization). Both flows in the same process, one after the other:

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/nle_flow_step.py
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _time(est, name: str, theta, x, reps: int) -> float:
    """Milliseconds per call of operation ``name`` on estimator ``est``."""
    import torch

    t, x_o = torch.randn(100, 5), x[:1].expand(100, -1)
    opt = torch.optim.Adam(est.parameters(), 1e-3)

    def call() -> None:
        if name.startswith("train"):
            opt.zero_grad()
            est.loss(theta[:256], x[:256]).mean().backward()
            opt.step()
        elif name.startswith("grad"):
            tt = t.clone().requires_grad_(True)
            torch.autograd.grad(est.log_likelihood(tt, x_o).sum(), tt)
        else:
            with torch.no_grad():
                est.log_likelihood(theta[:1000], x[:1].expand(1000, -1))

    for _ in range(10):
        call()
    t0 = time.perf_counter()
    for _ in range(reps):
        call()
    return (time.perf_counter() - t0) / reps * 1e3


def main() -> None:
    import torch

    import simulators
    from estimators.nle import build_nle

    torch.set_num_threads(1)
    torch.manual_seed(0)
    problem = simulators.get_problem("slcp")
    theta = problem.prior.sample((2000,))
    x = problem.simulator(theta)
    ms = {}
    for flow in ("maf", "fmaf"):
        for name, reps in (("train step (256)", 200), ("grad in theta (100)", 300),
                           ("no-grad (1000)", 50)):
            ms[flow, name] = _time(build_nle(theta, x, problem.prior, flow=flow), name, theta,
                                   x, reps)
    for name in ("train step (256)", "grad in theta (100)", "no-grad (1000)"):
        print(f"{name:20s} maf {ms['maf', name]:6.2f} ms  fmaf {ms['fmaf', name]:6.2f} ms  "
              f"ratio {ms['maf', name] / ms['fmaf', name]:.2f}")
    print(f"load average: {os.getloadavg()}")


if __name__ == "__main__":
    main()
