# %% [markdown]
# # Benchmark problems with reference posteriors
#
# sbi-core ships the eight problems of the SBI benchmark (Lueckmann et al., AISTATS 2021)
# with the paper's priors, simulators and data layout, ten fixed observations each, and a
# sampler of the *true* posterior for any observation. This tutorial looks at them, checks
# a reference posterior, and benchmarks NPE with C2ST (0.5 = indistinguishable from the
# truth).
#
# Run it as a script (`python tutorials/02_benchmark_problems.py`) or open it with jupytext.
# `SBI_CORE_FAST=1` shrinks the budgets (used by the test suite).

# %%
import os
from pathlib import Path

import torch

from diagnostics.c2st import c2st
from diagnostics.plots import pairplot
from sbi_core.benchmark import run_benchmark
from simulators import BENCHMARK_PROBLEMS, get_problem

FAST = os.environ.get("SBI_CORE_FAST") == "1"
OUT = Path(os.environ.get("SBI_CORE_TUTORIAL_OUT", "tutorial-output"))
OUT.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)

# %% [markdown]
# ## 1. The problems
# Each is a `Problem`: a prior, a batched simulator `theta (N, D) -> x (N, *x_shape)`, and
# `problem.reference_posterior(x_o, num_samples, seed)`.

# %%
for name in BENCHMARK_PROBLEMS:
    p = get_problem(name)
    print(f"{name:<24} D={p.dim:<3} x_shape={p.x_shape}  {p.description}")

# %% [markdown]
# ## 2. Observations and true parameters
# Observation k (1..10) is simulated from fixed, documented seeds, so everyone gets the
# same ten observations.

# %%
problem = get_problem("two_moons")
for k in (1, 2):
    print(k, "theta =", problem.true_parameters(k).tolist(), "x =", problem.observation(k).tolist())

# %% [markdown]
# ## 3. A reference posterior
# Two moons has an exact sampler; its posterior has two crescents. Gaussian linear has a
# closed-form posterior, so its reference can be checked with C2ST against the formula.

# %%
reference = problem.reference_posterior(problem.observation(1), 2000 if FAST else 10_000, 0)
pairplot(reference, problem.param_names, truth=problem.true_parameters(1),
         path=OUT / "two_moons_reference.png", title="two moons: reference posterior")

gl = get_problem("gaussian_linear")
x_o = gl.observation(1)
n_check = 500 if FAST else 5000
ref = gl.reference_posterior(x_o, n_check, 0)
exact = torch.distributions.MultivariateNormal(0.5 * x_o, 0.05 * torch.eye(10)).sample((n_check,))
score = c2st(ref, exact)
print("gaussian_linear: C2ST(reference, closed form) =", round(score, 3))
assert score < 0.6, "the reference sampler should match the closed form"

# %% [markdown]
# ## 4. Benchmark NPE
# `run_benchmark` simulates, trains once per budget (amortized) and scores every requested
# observation. The same is available as
# `sbi-core benchmark --task two_moons --method npe --sims 1000 10000 --observations 1 2`.
# Problems whose reference needs MCMC (slcp, bernoulli_glm, sir, lotka_volterra) sample it
# once per observation and cache it on disk.

# %%
budgets = [300] if FAST else [1000, 10_000]
options = {"max_epochs": 20} if FAST else {}
rows = run_benchmark("two_moons", "npe", sims=budgets, observations=[1, 2],
                     num_samples=500 if FAST else 10_000, method_options=options)
for row in rows:
    print(row.to_dict())
assert all(0.4 <= row.c2st <= 1.0 for row in rows)
