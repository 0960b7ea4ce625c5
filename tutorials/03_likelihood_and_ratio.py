# %% [markdown]
# # Likelihood and ratio estimation with MCMC, for many iid observations
#
# NPE learns the posterior for one observation. When data arrive as **repeated iid trials**
# (ten measurements of the same system), neural likelihood estimation (NLE) and neural ratio
# estimation (NRE) are the standard answer: they learn from *single* simulations a
# likelihood `q(x | θ)` or a ratio `r(θ, x) = p(x | θ) / p(x)`, and the posterior for any
# number of trials is
#
#     p(θ | x_1..x_n)  ∝  p(θ) · Π_i q(x_i | θ)        (NLE; r(θ, x_i) for NRE)
#
# which `sbi_core` samples by MCMC (`method="auto"`: batched HMC for these differentiable
# estimators, vectorized slice sampling as fallback or on request).
#
# Run as a script: `python tutorials/03_likelihood_and_ratio.py`
# (`SBI_CORE_FAST=1` runs a small, quick version, used by the test suite).

# %%
import os

import torch

from diagnostics.c2st import c2st
from diagnostics.plots import pairplot
from sbi_core import fit, load, save, simulate
from simulators.linear_gaussian import linear_gaussian, linear_gaussian_posterior

FAST = os.environ.get("SBI_CORE_FAST") == "1"
NUM_SIMS = 1000 if FAST else 3000
MAX_SECONDS = 3 if FAST else 60
NUM_SAMPLES = 200 if FAST else 1000
MCMC = {"num_chains": 20, "warmup_steps": 20 if FAST else 100, "progress": not FAST}

# %% [markdown]
# ## A problem with an analytic answer
# `x = θ + 0.5 ε` with `θ ~ N(0, I_2)`: the posterior for `n` iid trials is Gaussian and known,
# so we can check every answer below.

# %%
problem = linear_gaussian(dim=2)
sims = simulate(problem, NUM_SIMS, seed=0)
theta_true = torch.tensor([0.5, -0.3])
torch.manual_seed(1)
trials = problem.simulator(theta_true.expand(10, 2))  # ten iid observations, (10, 2)

# %% [markdown]
# ## Train NLE and NRE on single simulations
# Both go through the same `fit` as NPE. `mcmc={...}` sets how the posterior is sampled
# (saved with the model). NRE defaults to the contrastive NRE-C loss; `method="nre_a"`,
# `"nre_b"`, `"bnre"` or `loss=` choose the others.

# %%
nle = fit(problem, sims, method="nle", seed=0, max_seconds=MAX_SECONDS, progress=not FAST,
          hidden_features=32,
          mcmc=MCMC)
nre = fit(problem, sims, method="nre", seed=0, max_seconds=MAX_SECONDS, progress=not FAST,
          mcmc=MCMC)

# %% [markdown]
# ## Condition on one trial, then on all ten
# Passing a set of trials `(n, *x_shape)` as `x` sums the log-likelihoods over them. The
# posterior narrows as trials accumulate; the MCMC diagnostics come with every run.

# %%
results = {}
for name, posterior in [("nle", nle), ("nre", nre)]:
    for n in (1, 10):
        x_o = trials[0] if n == 1 else trials[:n]
        samples = posterior.sample((NUM_SAMPLES,), x=x_o, seed=0)
        reference = linear_gaussian_posterior(trials[:n]).sample((NUM_SAMPLES,))
        score = c2st(samples, reference, seed=0)
        results[(name, n)] = (samples, score)
        diag = posterior.last_mcmc.summary()
        print(f"{name} n={n:2d}: mean {samples.mean(0).numpy().round(3)}, std "
              f"{samples.std(0).numpy().round(3)}, C2ST {score:.3f}, max R-hat "
              f"{diag['max_rhat']:.3f}, {diag['seconds']:.1f} s")

# %% [markdown]
# `log_prob` is the **unnormalized** log posterior (the MCMC potential): differences
# between parameter values are meaningful, absolute values are not
# (`posterior.normalized_log_prob` is False). `map` climbs the potential by gradient ascent.

# %%
print("MAP (NLE, 10 trials):", nle.map(trials).numpy().round(3),
      " analytic:", linear_gaussian_posterior(trials).mean.numpy().round(3))
theta_grid = torch.tensor([[0.5, -0.3], [0.0, 0.0]])
print("log_prob differences:", nle.log_prob(theta_grid, trials).diff().item())

# %% [markdown]
# ## Slice sampling instead of HMC, and saving
# The potential of both estimators is differentiable, so `auto` ran HMC above; slice
# sampling needs no gradients; any `MCMCConfig` field can be changed per call. Models save
# to one safe file.

# %%
slice_samples = nle.sample((NUM_SAMPLES,), x=trials, seed=0, method="slice")
print("slice mean:", slice_samples.mean(0).numpy().round(3), nle.last_mcmc.summary())
path = save(nre, "nre_linear_gaussian.pt")
assert torch.allclose(load(path).log_prob(theta_grid, trials), nre.log_prob(theta_grid, trials))

# %%
pairplot(results[("nle", 10)][0], problem.param_names,
         reference=linear_gaussian_posterior(trials).sample((NUM_SAMPLES,)), truth=theta_true,
         path="tutorial_03_nle_10_trials.png", title="NLE, 10 iid trials (grey: analytic)")
print("saved tutorial_03_nle_10_trials.png")
