# %% [markdown]
# # Sequential inference for one observation: TSNPE on a slow simulator that fails
#
# Amortized NPE learns the posterior for *every* observation, and spends most simulations
# on parameters far from the one observation you care about. When simulations are slow,
# **sequential** inference focuses the budget: each round trains on all simulations so far,
# then proposes new parameters only where the posterior for `x_o` lives.
#
# `sbi_core.run_sequential` (CLI: `sbi-core run`) does this with **TSNPE** (truncated
# sequential NPE): the next round's proposal is the prior *truncated* to the current
# posterior's highest-probability region, so the loss stays the plain NPE loss (no leakage,
# no atoms) and the result is an ordinary NPE posterior, valid inside that region.
#
# This tutorial: a slow simulator that *fails* in part of its prior, a sequential run that
# is killed and resumed from its zarr store, a check against the exact posterior, and the
# model's record that it is valid near `x_o` only.
#
# Run as a script: `python tutorials/10_sequential.py`
# (`SBI_CORE_FAST=1` runs a small, quick version, used by the test suite).

# %%
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import torch

from diagnostics.c2st import c2st
from sbi_core import Problem, box_uniform, fit, load, save, simulate
from sbi_core.sequential import run_sequential

FAST = os.environ.get("SBI_CORE_FAST") == "1"
ROUNDS = 3 if FAST else 5
PER_ROUND = 300 if FAST else 1000
TRAIN = {"max_epochs": 40, "hidden_features": 32, "preset": "fast"} if FAST else {}
SECONDS_PER_SIM = 2e-4 if FAST else 1e-3

# %% [markdown]
# ## A slow simulator that fails in a region of its prior
# A decay `dy/dt = -k y`, `y(0) = a`, integrated by explicit Euler with step `dt = 0.5` and
# observed at 10 steps with Gaussian noise (sd 0.1). Like many solvers, ours refuses when
# the step is too large for the rate: for `k dt > 1.5` (k > 3, a quarter of the prior) it
# raises. sbi-core records those rows as invalid (the run goes on) and trains on the rest.
# `time.sleep` stands in for an expensive model.

# %%
DT, T, NOISE = 0.5, 10, 0.1
prior = box_uniform([0.0, 0.5], [4.0, 2.0])  # (k, a)


def mean_curve(theta: torch.Tensor) -> torch.Tensor:
    k, a = theta[:, :1], theta[:, 1:]
    steps = torch.arange(1, T + 1, dtype=theta.dtype)
    return a * (1 - k * DT) ** steps


def decay(theta: torch.Tensor) -> torch.Tensor:
    time.sleep(SECONDS_PER_SIM * len(theta))
    if bool((theta[:, 0] * DT > 1.5).any()):
        raise FloatingPointError("Euler step unstable: k * dt > 1.5")
    return mean_curve(theta) + NOISE * torch.randn(len(theta), T)


problem = Problem(prior, decay, param_names=["k", "a"], name="decay", x_shape=(T,))
theta_true = torch.tensor([1.0, 1.2])
torch.manual_seed(1)
x_o = decay(theta_true[None])[0]

# %% [markdown]
# The likelihood is Gaussian, so the exact posterior is available on a grid (prior × likelihood,
# zero where the simulator fails) — our yardstick.

# %%
def exact_posterior_samples(n: int, grid: int = 400) -> torch.Tensor:
    k = torch.linspace(0, 4, grid)
    a = torch.linspace(0.5, 2, grid)
    kk, aa = torch.meshgrid(k, a, indexing="ij")
    theta = torch.stack([kk.flatten(), aa.flatten()], 1)
    loglik = -0.5 * ((x_o - mean_curve(theta)) ** 2).sum(1) / NOISE**2
    loglik[theta[:, 0] * DT > 1.5] = -torch.inf
    idx = torch.multinomial(torch.softmax(loglik, 0), n, replacement=True)
    cell = torch.tensor([4.0 / (grid - 1), 1.5 / (grid - 1)])
    return theta[idx] + (torch.rand(n, 2) - 0.5) * cell


reference = exact_posterior_samples(2000)

# %% [markdown]
# ## Round by round, into a store — killed after round 1, then resumed
# Every round's simulations are committed to the zarr store chunk by chunk as they are made;
# the finished rounds' posteriors and the proposals are kept next to them. Here we stop the
# run after round 1 (as a crash or Ctrl-C would), then call it again with `resume=True`: it
# picks up at round 2, simulates only what is missing, and gives exactly the posterior an
# uninterrupted run gives.

# %%
workdir = Path(tempfile.mkdtemp())
store = workdir / "decay.zarr"


def crash_after_round_1(record):
    if record.round == 1:
        raise KeyboardInterrupt("simulated crash")


with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # invalid rows, max_epochs
    try:
        run_sequential(problem, x_o, method="tsnpe", rounds=ROUNDS, sims_per_round=PER_ROUND,
                       seed=0, store=store, on_round=crash_after_round_1, progress=True, **TRAIN)
    except KeyboardInterrupt:
        print("-- the run stopped after round 1; resuming --")
    posterior, history = run_sequential(problem, x_o, method="tsnpe", rounds=ROUNDS,
                                        sims_per_round=PER_ROUND, seed=0, store=store,
                                        resume=True, progress=True, **TRAIN)

print(f"{'round':>5s} {'proposal':26s} {'prior mass kept':>15s} {'invalid':>8s} {'val loss':>9s}")
for h in history:
    print(f"{h.round:5d} {h.proposal:26s} {h.prior_mass:15.3f} {h.num_invalid:8d} "
          f"{h.validation_loss:9.3f}")

# %% [markdown]
# The first round wastes about a quarter of its simulations where the solver fails. After it,
# the truncation keeps only the small region where the posterior lives, which lies away from
# the failing region, so later rounds have (almost) no failures and every simulation lands
# where it informs the posterior at `x_o`.

# %%
first, later = history[0].num_invalid, sum(h.num_invalid for h in history[1:])
assert first > 0.1 * PER_ROUND and later < 0.02 * PER_ROUND * (ROUNDS - 1), (first, later)
assert all(h.prior_mass < 0.5 for h in history[1:])

# %% [markdown]
# ## Against the exact posterior, and against amortized NPE with the same budget

# %%
budget = ROUNDS * PER_ROUND
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    amortized = fit(problem, simulate(problem, budget, seed=0), method="npe", seed=0,
                    progress=False, **TRAIN)
c2st_seq = c2st(posterior.sample((2000,), x=x_o, seed=0), reference)
c2st_amortized = c2st(amortized.sample((2000,), x=x_o, seed=0), reference)
print(f"C2ST vs exact posterior ({budget} simulations): TSNPE {c2st_seq:.3f}, "
      f"amortized NPE {c2st_amortized:.3f}  (0.5 = indistinguishable)")
assert c2st_seq < (0.75 if FAST else 0.65)

# %% [markdown]
# ## The model knows it is for `x_o` only
# The saved model records the observation, the rounds and the truncation
# (`problem_spec["sequential"]`). Sampling at an `x` far from `x_o` warns: the estimator was
# trained only on parameters inside the truncation region, so elsewhere its output is not
# the posterior.

# %%
path = save(posterior, workdir / "decay_tsnpe.pt")
model = load(path, prior=prior)
print({k: v for k, v in model.problem_spec["sequential"].items() if k != "x_o"})
far = mean_curve(torch.tensor([[0.2, 1.9]]))[0]
model.range_check = "warn"
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    model.sample((10,), x=far)
assert any("valid only near it" in str(w.message) for w in caught)
print("warning:", next(str(w.message) for w in caught if "valid only near" in str(w.message))[:150],
      "...")
shutil.rmtree(workdir)  # the store and model of this tutorial

# %% [markdown]
# ## On the command line
#
# ```
# sbi-core run my_decay.py:make_problem --x x_o.csv --method tsnpe --rounds 5 \
#     --sims-per-round 1000 --out decay.pt --store decay.zarr
# # killed? the same command with --resume continues where it stopped
# sbi-core sample decay.pt --x x_o.csv --num 1000 --out samples.csv
# ```
#
# See `docs/sequential.md` for when to choose TSNPE, SNPE-C, SNLE or SNRE, and for the
# conditions under which the truncation is safe.
