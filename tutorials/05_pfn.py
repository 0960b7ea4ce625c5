# %% [markdown]
# # 05 — A PFN-style transformer posterior for sets of iid observations
#
# A prior-data fitted network (PFN) is trained only on data drawn from the prior and the
# simulator. Here its context is a *set* of `n` iid observations of one parameter vector,
# and one forward pass per parameter dimension returns the joint posterior for any
# `n` between 1 and `n_max` — one trained model for all set sizes.
#
# We use a 2-D linear Gaussian, whose posterior is known in closed form, so we can check
# the answer. Set `SBI_CORE_FAST=1` to run this tutorial in seconds (tiny budgets; the
# numbers are then not meaningful).

# %%
import os

import torch

from diagnostics.c2st import c2st
from sbi_core import fit, simulate
from sbi_core.serialization import load, save
from simulators.linear_gaussian import linear_gaussian, linear_gaussian_posterior

FAST = os.environ.get("SBI_CORE_FAST") == "1"
torch.manual_seed(0)
problem = linear_gaussian(dim=2)  # theta ~ N(0, I), x = theta + 0.5 * noise

# %% [markdown]
# ## Train
# Each simulated `theta_j` becomes one training set: `sims` supplies its first observation
# and `fit` simulates `n_max - 1` more, so this costs `num_sims * n_max` simulations.
# During training one set size `n ~ U{1..n_max}` is drawn per minibatch.

# %%
num_sims = 300 if FAST else 10_000
sims = simulate(problem, num_sims, seed=0, progress=False)
posterior = fit(
    problem, sims, method="pfn", seed=0,
    n_max=50,               # largest set size the model is trained for
    num_buckets=100,        # bar-distribution buckets per parameter (prior+uniform quantiles)
    d_model=32 if FAST else 64, num_layers=2 if FAST else 4,
    max_epochs=1 if FAST else 200, max_seconds=20 if FAST else 600, progress=False,
)
h = posterior.history
print(f"trained {h['epochs']} epochs in {h['seconds']:.0f} s on {h['num_simulations']} simulations")

# %% [markdown]
# ## One model, any number of observations
# A single observation is a set of one; a set is passed as `(n, *x_shape)`.

# %%
theta_true = torch.tensor([0.7, -0.4])
for n in (1, 10, 50):
    x_o = theta_true + 0.5 * torch.randn(n, 2)
    samples = posterior.sample((1000,), x_o, seed=0)
    exact = linear_gaussian_posterior(x_o).sample((1000,))
    print(f"n={n:2d}: mean {samples.mean(0).numpy().round(2)} (exact "
          f"{exact.mean(0).numpy().round(2)}), std {samples.std(0).numpy().round(3)} (exact "
          f"{exact.std(0).numpy().round(3)}), C2ST {c2st(samples, exact):.2f}")

# %% [markdown]
# ## Densities, MAP and batches
# `log_prob` is exact (a product of bar densities over the dimensions), and batches of sets
# `(B, n, *x_shape)` are evaluated in one call.

# %%
x_sets = theta_true + 0.5 * torch.randn(4, 10, 2)
print("log q(theta_true | set):", posterior.log_prob(theta_true, x_sets[0]).item())
print("MAP of the first set:", posterior.map(x_sets[0]).numpy().round(2))
print("batched samples:", tuple(posterior.sample_batched((100,), x_sets).shape))

# %% [markdown]
# ## Save and load
# The model file holds plain values only (config, weights, bucket borders as buffers).

# %%
path = save(posterior, "pfn_tutorial.pt")
reloaded = load(path)
print("reloaded log_prob:", reloaded.log_prob(theta_true, x_sets[0]).item())
os.remove(path)
