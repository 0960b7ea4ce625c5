# %% [markdown]
# # 15 — Posteriors with no training: the in-context model
#
# `method="incontext"` does not train on your problem. A set transformer, pretrained once by
# this project on a broad prior over *problems* (random priors and simulators, see
# `docs/incontext.md`), reads your simulations as its context and the observation as its
# query, and returns the posterior in one forward pass per parameter. Its weights ship with
# the package (`estimators/weights/incontext_v1.pt`, 2.4 MB, loaded with
# `torch.load(weights_only=True)`).
#
# Its range is small: at most 3 parameters, 10 data values and 1,000 simulations. Set
# `SBI_CORE_FAST=1` to run this tutorial in seconds (fewer samples; no C2ST).

# %%
import os
import time

import torch

from diagnostics.c2st import c2st
from estimators.incontext_method import InContextRangeError
from sbi_core import fit, simulate
from sbi_core.serialization import load, save
from simulators.gaussian_linear import gaussian_linear, gaussian_linear_posterior

FAST = os.environ.get("SBI_CORE_FAST") == "1"
torch.manual_seed(0)
problem = gaussian_linear(dim=3)  # theta ~ N(0, 0.1 I), x ~ N(theta, 0.1 I), D = d = 3

# %% [markdown]
# ## A posterior in about a second
# `fit` only standardizes the simulations, stores them as the context, and picks the variant
# of the network (plain, or on the residuals of a linear regression of theta on x), or a
# stacked mixture of the variants, with the best held-out likelihood on them
# (`variant="plain"` skips that: < 0.1 s).
# `detector=False` skips the misspecification detector (a few seconds of training that
# `fit` otherwise adds for 500 or more simulations).

# %%
sims = simulate(problem, 500, seed=0, progress=False)
t0 = time.perf_counter()
posterior = fit(problem, sims, method="incontext", detector=False)
print(f"first posterior after {time.perf_counter() - t0:.2f} s "
      f"(context: {posterior.history['context_size']} simulations, no training; variant "
      f"{posterior.history['variant']})")

x_o = problem.simulator(problem.prior.sample((1,)))[0]
samples = posterior.sample((1000 if FAST else 5000,), x=x_o, seed=0)
exact = gaussian_linear_posterior(x_o)
print("posterior mean", samples.mean(0), "exact", exact.mean.float())
print("posterior std ", samples.std(0), "exact", exact.stddev.float())

# %% [markdown]
# `log_prob` is exact for the model and normalized (bounded priors included: each factor is
# truncated to the prior's support and renormalized).

# %%
print("log_prob of 3 samples:", posterior.log_prob(samples[:3], x=x_o))
if not FAST:
    print(f"C2ST against the analytic posterior: "
          f"{c2st(samples, exact.sample((5000,)).float(), seed=0):.3f} (0.5 is perfect)")

# %% [markdown]
# ## Save, load, sample: as for every method
# The model file holds the network weights and the context; it loads code-free.

# %%
save(posterior, "incontext_model.pt")
again = load("incontext_model.pt")
print("reloaded log_prob equal:",
      torch.allclose(again.log_prob(samples[:3], x=x_o), posterior.log_prob(samples[:3], x=x_o)))

# %% [markdown]
# ## Outside the pretrained range
# Too many parameters, too many data values or too many simulations raise
# `InContextRangeError` naming the fixes: subsample the context with `context_size=`, or
# train with `method="npe"` (or `"pfn"`).

# %%
big = simulate(problem, 1500, seed=1, progress=False)
try:
    fit(problem, big, method="incontext", detector=False)
except InContextRangeError as err:
    print("error:", err)
posterior = fit(problem, big, method="incontext", detector=False, context_size=1000)
print("subsampled context:", posterior.history["context_size"], "of", len(big))

# %% [markdown]
# ## Optional: a few steps of fine-tuning
# `finetune_steps=k` continues pretraining for `k` steps on random context/query splits of
# your simulations (this posterior's own copy of the network; the shipped weights are
# unchanged). It costs seconds instead of nothing; benchmarks/RESULTS.md says what it gains.

# %%
tuned = fit(problem, sims, method="incontext", detector=False,
            finetune_steps=2 if FAST else 50)
print("fine-tuning losses (first, last):", tuned.history["finetune_losses"][0],
      tuned.history["finetune_losses"][-1])
