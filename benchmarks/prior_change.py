"""A new prior at query time: importance reweighting vs prior-conditioned NPE.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/prior_change.py \
        [--sims 20000] [--max-epochs 150] [--num-priors 20] [--num-samples 2000] \
        [--problems gaussian_linear two_moons] [--gl-dim 2]

For each problem one NPE (trained under the problem's prior) and one prior-conditioned NPE
(``method="prior_npe"``, trained over a family of Gaussian-mixture priors) get the same
simulation budget. Then 20 new Gaussian priors of increasing distance from the training
prior (the centre moves away and the width shrinks; the distance is KL(new || training
prior)) are applied to both at one observation:

- ``reweight``: ``npe_posterior.with_prior(p, min_ess=0)`` (importance resampling from
  20,000 proposals; ESS reported; min_ess=0 so that the degenerate resample is scored too);
- ``conditioned``: ``prior_npe_posterior.with_prior(p)`` (one forward pass).

References: gaussian_linear (D reduced to 2 for time) has an analytic posterior for any
Gaussian prior; two_moons uses the exact box-prior posterior sampler with rejection by the
new prior's density, bounded by its maximum over 10^6 posterior draws (exact for the new
prior truncated to the box; the new priors put < 0.2% of their mass outside the box),
checked against rejection from the new prior by the analytic likelihood. C2ST (5-fold MLP) on ``--num-samples``
samples per side. ``s/prior``: seconds from ``with_prior`` to ``--num-samples`` samples.
"""

from __future__ import annotations

import argparse
import math
import os
import time

import torch

from diagnostics.c2st import c2st
from estimators.prior_conditioned import gmm_family
from sbi_core import fit, simulate
from sbi_core.priors import gaussian
from simulators.gaussian_linear import gaussian_linear
from simulators.two_moons import two_moons, two_moons_reference


def kl_gauss(m1: torch.Tensor, s1: torch.Tensor, m0: torch.Tensor, s0: torch.Tensor) -> float:
    """KL(N(m1, s1^2) || N(m0, s0^2)) for diagonal Gaussians."""
    return float((torch.log(s0 / s1) + (s1 ** 2 + (m1 - m0) ** 2) / (2 * s0 ** 2) - 0.5).sum())


def gl_setup(dim: int):
    prob = gaussian_linear(dim=dim)
    s0 = math.sqrt(0.1)
    fam = gmm_family(dim, 2, -1.0, 1.0, 0.04, 0.6)
    direction = torch.tensor([1.0, -1.0] + [0.0] * (dim - 2))

    def priors(k: int):
        for t in torch.linspace(0, 1, k).tolist():
            m = 0.9 * t * direction
            s = s0 * (0.05 / s0) ** t * torch.ones(dim)
            yield gaussian(m, std=s), kl_gauss(m, s, torch.zeros(dim), s0 * torch.ones(dim))

    def reference(p, x, n, seed):
        m, s = p.base_dist.loc.double(), p.base_dist.scale.double()
        prec = 1 / s ** 2 + 1 / 0.1
        mean = (m / s ** 2 + x.double() / 0.1) / prec
        g = torch.Generator().manual_seed(seed)
        return (mean + torch.randn(n, dim, generator=g, dtype=torch.float64) / prec.sqrt()).float()

    return prob, fam, priors, reference


def tm_setup():
    prob = two_moons()
    fam = gmm_family(2, 2, -0.8, 0.8, 0.015, 0.5)
    x_o = prob.observation(1)
    far = two_moons_reference(x_o, 1, seed=3)[0]  # a point on the posterior's crescent

    def priors(k: int):
        for t in torch.linspace(0, 1, k).tolist():
            m = t * far
            s = 0.3 * (0.02 / 0.3) ** t * torch.ones(2)
            yield gaussian(m, std=s), float(-torch.distributions.Normal(m, s).entropy().sum()
                                            + math.log(4.0))

    def reference(p, x, n, seed):
        return two_moons_prior_reference(p, x, n, seed)

    return prob, fam, priors, reference


def two_moons_log_likelihood(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Exact log p(x | theta) ``(N,)`` of two_moons: u = x - shift(theta) - (0.25, 0) is
    (r cos a, r sin a) with a ~ U(-pi/2, pi/2), r ~ N(0.1, 0.01^2), so
    p = N(|u|; 0.1, 0.01^2) / (pi |u|) for u_1 > 0 and 0 otherwise."""
    t = theta.double()
    shift = torch.stack([-(t[:, 0] + t[:, 1]).abs(), -t[:, 0] + t[:, 1]], -1) / math.sqrt(2.0)
    u = x.double().reshape(1, 2) - shift - torch.tensor([0.25, 0.0], dtype=torch.float64)
    r = u.norm(dim=-1)
    lp = (-0.5 * ((r - 0.1) / 0.01) ** 2 - math.log(0.01 * math.sqrt(2 * math.pi))
          - math.log(math.pi) - r.log())
    return torch.where(u[:, 0] > 0, lp, torch.full_like(lp, -math.inf))


def two_moons_prior_reference(p, x: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Exact posterior samples under prior ``p`` truncated to the box [-1, 1]^2: draws of
    the exact box-prior posterior (``two_moons_reference``, the crescents) accepted with
    probability p(θ) / M, where M is the largest new-prior density on a pool of 10^6 such
    draws (so acceptance stays workable however far the new prior's centre is from the
    crescents). ``two_moons_likelihood_reference`` (rejection from ``p`` by the likelihood)
    is an independent check of it."""
    pool = two_moons_reference(x, 1_000_000, seed=seed)
    log_m = float(p.log_prob(pool).max())
    out, have = [], 0
    for k in range(1, 1000):
        draws = two_moons_reference(x, 500_000, seed=seed + 7919 * k)
        lp = p.log_prob(draws)
        if float(lp.max()) > log_m:  # keep exactness: restart with the larger bound
            log_m = float(lp.max())
            out, have = [], 0
        g = torch.Generator().manual_seed(seed + k)
        keep = torch.rand(draws.shape[0], generator=g).log() < lp - log_m
        out.append(draws[keep])
        have += int(keep.sum())
        if have >= n:
            return torch.cat(out)[:n]
    raise RuntimeError("two_moons reference: too few accepted draws.")


def two_moons_likelihood_reference(p, x: torch.Tensor, n: int, seed: int,
                                   batch: int = 1_000_000, max_batches: int = 200) -> torch.Tensor:
    """Exact posterior samples under ``p`` truncated to the box by rejection from ``p`` with
    acceptance p(x | θ) / max p(x | θ) (fast when ``p`` covers the crescents)."""
    grid = torch.linspace(0.05, 0.15, 100_001, dtype=torch.float64)
    log_max = float((-0.5 * ((grid - 0.1) / 0.01) ** 2 - math.log(0.01 * math.sqrt(2 * math.pi))
                     - math.log(math.pi) - grid.log()).max())
    out, have = [], 0
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for _ in range(max_batches):
            th = p.sample((batch,)).float()
            th = th[(th.abs() <= 1).all(-1)]
            keep = torch.rand(th.shape[0]).double().log() < two_moons_log_likelihood(th, x) - log_max
            out.append(th[keep].clone())
            have += int(keep.sum())
            if have >= n:
                return torch.cat(out)[:n]
    raise RuntimeError("two_moons likelihood reference: acceptance too low for this prior.")


def run(name: str, args: argparse.Namespace) -> list[dict]:
    prob, fam, priors, reference = gl_setup(args.gl_dim) if name == "gaussian_linear" \
        else tm_setup()
    sims = simulate(prob, args.sims, seed=0)
    x_o = prob.observation(1)
    t0 = time.perf_counter()
    npe = fit(prob, sims, method="npe", seed=0, max_epochs=args.max_epochs, detector=False)
    t_npe = time.perf_counter() - t0
    t0 = time.perf_counter()
    pc = fit(prob, sims, method="prior_npe", family=fam, seed=0, max_epochs=args.max_epochs,
             detector=False)
    t_pc = time.perf_counter() - t0
    print(f"{name}: NPE trained in {t_npe:.0f} s ({npe.history.get('epochs')} epochs), "
          f"prior_npe in {t_pc:.0f} s ({pc.history.get('epochs')} epochs); x_o={x_o.tolist()}; "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    for i, (p, dist) in enumerate(priors(args.num_priors)):
        ref = reference(p, x_o, args.num_samples, seed=100 + i)
        t0 = time.perf_counter()
        rw = npe.with_prior(p, min_ess=0, max_outside_mass=0.01)
        s_rw = rw.sample((args.num_samples,), x_o, seed=i)
        t_rw = time.perf_counter() - t0
        t0 = time.perf_counter()
        s_pc = pc.with_prior(p).sample((args.num_samples,), x_o, seed=i)
        t_pc1 = time.perf_counter() - t0
        row = {"problem": name, "i": i, "kl": dist, "ess": float(rw.last_ess[0]),
               "c2st_rw": c2st(s_rw, ref, seed=0), "c2st_pc": c2st(s_pc, ref, seed=0),
               "t_rw": t_rw, "t_pc": t_pc1, "std": float(p.base_dist.scale[0])}
        rows.append(row)
        print(f"| {name} | {i} | {dist:.2f} | {row['std']:.3f} | {row['ess']:.0f} | "
              f"{row['c2st_rw']:.3f} | {row['c2st_pc']:.3f} | {t_rw:.3f} | {t_pc1:.4f} |",
              flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sims", type=int, default=20_000)
    ap.add_argument("--max-epochs", type=int, default=150)
    ap.add_argument("--num-priors", type=int, default=20)
    ap.add_argument("--num-samples", type=int, default=2000)
    ap.add_argument("--gl-dim", type=int, default=2)
    ap.add_argument("--problems", nargs="+", default=["gaussian_linear", "two_moons"])
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"args {vars(args)}; load at start {os.getloadavg()}", flush=True)
    print("| problem | prior | KL(new‖train) | new prior std | ESS of 20k | C2ST reweight | "
          "C2ST conditioned | s/prior reweight | s/prior conditioned |")
    print("|---|---|---|---|---|---|---|---|---|")
    all_rows = []
    for name in args.problems:
        all_rows += run(name, args)
    for name in args.problems:
        rows = [r for r in all_rows if r["problem"] == name]
        t_rw = sum(r["t_rw"] for r in rows) / len(rows)
        t_pc = sum(r["t_pc"] for r in rows) / len(rows)
        print(f"{name}: mean s/prior reweight {t_rw:.3f}, conditioned {t_pc:.4f} "
              f"(ratio {t_rw / t_pc:.1f}x); C2ST mean reweight "
              f"{sum(r['c2st_rw'] for r in rows) / len(rows):.3f}, conditioned "
              f"{sum(r['c2st_pc'] for r in rows) / len(rows):.3f}; worst reweight "
              f"{max(r['c2st_rw'] for r in rows):.3f}, conditioned "
              f"{max(r['c2st_pc'] for r in rows):.3f}")
    print(f"load at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
