# %% [markdown]
# # A scientific example: inferring conductances of a Hodgkin-Huxley neuron
#
# The Hodgkin-Huxley model describes how sodium and potassium currents shape a neuron's
# voltage. We infer the maximal conductances `g_Na` and `g_K` from eight summary
# statistics of a noisy voltage trace recorded under a step current, with NPE, then check
# the posterior by simulating from it (a posterior predictive check). There is no reference
# posterior for this model.
#
# Run it as a script (`python tutorials/02b_hodgkin_huxley.py`) or open it with jupytext.
# `SBI_CORE_FAST=1` shrinks the budgets (used by the test suite).

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from diagnostics.plots import pairplot
from sbi_core import fit, simulate
from simulators.hodgkin_huxley import DT, STAT_NAMES, hodgkin_huxley, simulate_voltage

FAST = os.environ.get("SBI_CORE_FAST") == "1"
OUT = Path(os.environ.get("SBI_CORE_TUTORIAL_OUT", "tutorial-output"))
OUT.mkdir(parents=True, exist_ok=True)
dt = 0.05 if FAST else DT  # coarser steps for a quick run
torch.manual_seed(0)

# %% [markdown]
# ## 1. The simulator
# `simulate_voltage` integrates all parameter sets at once (one torch operation per time
# step for the whole batch). More sodium conductance means more spikes.

# %%
theta = torch.tensor([[20.0, 5.0], [50.0, 5.0], [50.0, 12.0]])
traces = simulate_voltage(theta, dt=dt)
t = torch.arange(traces.shape[1]) * dt
fig, ax = plt.subplots(figsize=(8, 3))
for row, trace in zip(theta.tolist(), traces):
    ax.plot(t, trace, lw=0.8, label=f"g_Na={row[0]:.0f}, g_K={row[1]:.0f}")
ax.set_xlabel("time (ms)")
ax.set_ylabel("V (mV)")
ax.legend(fontsize=7)
fig.savefig(OUT / "hh_traces.png", dpi=100)

# %% [markdown]
# ## 2. The problem and an observation
# The `Problem` maps `(g_Na, g_K)` to the statistics in `STAT_NAMES`.

# %%
problem = hodgkin_huxley(dt=dt)
x_o = problem.observation(1)
print(dict(zip(STAT_NAMES, [round(v, 2) for v in x_o.tolist()])))
print("true parameters:", problem.true_parameters(1).tolist())

# %% [markdown]
# ## 3. Simulate and train NPE

# %%
sims = simulate(problem, 200 if FAST else 10_000, seed=0, workers=1 if FAST else 2,
                progress=not FAST)
posterior = fit(problem, sims, method="npe", seed=0, max_epochs=10 if FAST else 1000,
                progress=not FAST)
samples = posterior.sample((1000,), x=x_o, seed=0)
print("posterior mean", samples.mean(0).tolist(), "std", samples.std(0).tolist())
pairplot(samples, problem.param_names, truth=problem.true_parameters(1),
         path=OUT / "hh_posterior.png", title="Hodgkin-Huxley: NPE posterior")

# %% [markdown]
# ## 4. Posterior predictive check
# Parameters drawn from the posterior should produce statistics like the observed ones.

# %%
predictive = problem.simulator(samples[: 10 if FAST else 200])
for name, obs, mean, std in zip(STAT_NAMES, x_o, predictive.mean(0), predictive.std(0)):
    print(f"{name:<12} observed {obs:8.2f}   predictive {mean:8.2f} ± {std:.2f}")
assert torch.isfinite(predictive).all()
