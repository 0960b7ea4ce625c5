# %% [markdown]
# # Quickstart: from a simulator to a trained, saved posterior
#
# This tutorial defines a problem (a prior and a simulator), simulates it in parallel,
# trains a neural posterior estimator (NPE), samples the posterior for an observation,
# checks it against the exact posterior, and saves the model.
#
# Run it as a script (`python tutorials/01_quickstart.py`) or open it with jupytext.
# `SBI_CORE_FAST=1` shrinks the budgets (used by the test suite).

# %%
import os

import torch

from diagnostics import c2st
from sbi_core import Problem, box_uniform, fit, load, save, simulate

FAST = os.environ.get("SBI_CORE_FAST") == "1"
torch.manual_seed(0)

# %% [markdown]
# ## 1. The problem
# A prior over two parameters and a *batched* simulator: it receives `theta` of shape
# `(N, 2)` and returns `x` of shape `(N, 2)`. Per-sample or numpy simulators can be
# wrapped with `simulators.per_sample` / `simulators.from_numpy`.


# %%
def simulator(theta: torch.Tensor) -> torch.Tensor:
    return theta + 0.1 * torch.randn_like(theta)


problem = Problem(box_uniform([-1.0, -1.0], [1.0, 1.0]), simulator,
                  param_names=["offset", "slope"], name="quickstart")
print(problem)

# %% [markdown]
# ## 2. Simulate
# The seed fixes the result whatever the number of worker processes.

# %%
sims = simulate(problem, 1000 if FAST else 5000, seed=0, workers=2)
print(len(sims), "simulations,", sims.num_invalid, "invalid")

# %% [markdown]
# ## 3. Train NPE and sample

# %%
posterior = fit(problem, sims, method="npe", seed=0, max_epochs=20 if FAST else 2000)
print("trained for", posterior.history["epochs"], "epochs in",
      round(posterior.history["seconds"], 1), "s")
x_o = torch.tensor([0.3, -0.5])
samples = posterior.sample((2000,), x=x_o, seed=0)
print("posterior mean", samples.mean(0), "std", samples.std(0))

# %% [markdown]
# ## 4. Check against the exact posterior
# Here the exact posterior is a Gaussian N(x_o, 0.1^2 I) truncated to the box; C2ST
# near 0.5 means the classifier cannot tell the two sample sets apart.

# %%
exact = x_o + 0.1 * torch.randn(20_000, 2)
exact = exact[(exact.abs() <= 1).all(1)][:2000]
score = c2st(samples, exact)
print(f"C2ST = {score:.3f}")

# %% [markdown]
# ## 5. Save and load
# One file, loaded without running any code from it (`torch.load(weights_only=True)`).

# %%
path = save(posterior, "quickstart_model.pt")
again = load(path)
assert torch.equal(again.sample((10,), x=x_o, seed=1), posterior.sample((10,), x=x_o, seed=1))
os.remove(path)
print("saved and reloaded: identical samples")
