# %% [markdown]
# # Score-based posteriors and many iid observations
#
# NPSE learns the score of the diffused posterior of a *single* observation. Sets of iid
# observations are then answered by **composing** single-observation scores, so the
# simulation budget does not grow with the number of observations (Geffner et al. 2023;
# Linhart et al. 2024). This tutorial trains NPSE and FMPE on the linear Gaussian toy,
# whose posterior is known exactly, and compares the compositional methods.
#
# Run as a script; `SBI_CORE_FAST=1` shrinks budgets (used by the test suite).

# %%
import os
import time

import torch

from diagnostics.c2st import c2st
from sbi_core import fit, load, save, simulate
from simulators.linear_gaussian import linear_gaussian, linear_gaussian_posterior

FAST = os.environ.get("SBI_CORE_FAST") == "1"
NUM_SIMS = 1500 if FAST else 10_000
TRAIN_SECONDS = 6 if FAST else 120
NUM = 200 if FAST else 2000
torch.manual_seed(0)

problem = linear_gaussian(2)
sims = simulate(problem, NUM_SIMS, seed=0)

# %% [markdown]
# ## Train NPSE (VP diffusion) and FMPE
# Options: `sde="vp" | "subvp" | "ve"`, `net="ada_mlp" | "mlp"`, `hidden_features`,
# `num_layers`, `time_embedding_dim`, `embedding` and every training option.

# %%
npse = fit(problem, sims, method="npse", seed=0, max_seconds=TRAIN_SECONDS, progress=False)
fmpe = fit(problem, sims, method="fmpe", seed=0, max_seconds=TRAIN_SECONDS, progress=False)
print("NPSE epochs:", npse.history["epochs"], " FMPE epochs:", fmpe.history["epochs"])

# %% [markdown]
# ## One observation: samplers and log_prob
# `sampler="sde"` (Euler-Maruyama, NPSE default), `"pc"` (predictor-corrector),
# `"ddim"`, `"ode"` (probability-flow ODE, FMPE default); `steps` sets their cost.

# %%
theta_true = torch.tensor([0.5, -0.3])
x_all = theta_true + 0.5 * torch.randn(20, 2)
x_o = x_all[0]
ref = linear_gaussian_posterior(x_o).sample((NUM,))
for name, post, sampler in [("npse", npse, "sde"), ("npse", npse, "ode"), ("fmpe", fmpe, "ode")]:
    t0 = time.perf_counter()
    samples = post.sample((NUM,), x_o, seed=0, sampler=sampler, steps=100 if sampler == "sde" else 30)
    print(f"{name:5s} {sampler:4s} C2ST {c2st(samples, ref):.3f}  ({time.perf_counter() - t0:.1f} s)")
print("log_prob (NPSE, exact trace):", npse.log_prob(ref[:3], x_o, steps=20))
print("log_prob (analytic):         ", linear_gaussian_posterior(x_o).log_prob(ref[:3]))

# %% [markdown]
# ## Many observations: GAUSS, JAC and F-NPSE
# Pass the set `(n, *x_shape)` as `x`. `iid_method="gauss"` (default) estimates each
# single-observation posterior precision from samples; `"jac"` uses the Jacobian of the
# score network instead (slower); `"fnpe"` is Geffner's annealed Langevin sampler.

# %%
for n in ([5] if FAST else [5, 20]):
    x_set = x_all[:n]
    ref_n = linear_gaussian_posterior(x_set).sample((NUM,))
    for method in ("gauss", "jac", "fnpe"):
        kw = {"levels": 40 if FAST else 400, "steps_per_level": 2 if FAST else 5} \
            if method == "fnpe" else {"steps": 30 if FAST else 200, "precision_samples": 300 if FAST else None}
        t0 = time.perf_counter()
        samples = npse.sample((NUM,), x_set, seed=0, iid_method=method, **kw)
        print(f"n={n:2d} {method:5s} C2ST {c2st(samples, ref_n):.3f} "
              f"({time.perf_counter() - t0:.1f} s)")

# %% [markdown]
# ## Save and load
# The model file holds plain values only; sampling defaults travel with it.

# %%
path = save(npse, "npse_linear_gaussian.pt")
again = load(path)
print(again.method, again.sample((3,), x_all[:5], seed=0, steps=20))
os.remove(path)
