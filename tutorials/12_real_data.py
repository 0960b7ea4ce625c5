# %% [markdown]
# # Real data: is my observation like the simulations?
#
# A posterior trained on simulations answers for *any* `x`, also for an observation the
# simulator could never have produced: a sensor offset, noise of a kind the simulator lacks,
# a wrong model. Its answer there looks as confident as ever and is meaningless. `fit` trains
# a **misspecification detector** alongside the posterior (a few seconds) and saves it in
# the model file; `sample` then warns when an observation does not look like the training
# simulations, naming the test and its p-value (`docs/trust.md`).
#
# This tutorial: a well-specified observation passes, an observation shifted by 3 noise
# standard deviations is caught (warning, `strict=True` error, report card, server
# response), a set of observations is tested as a whole, and the false-alarm rate is checked.
#
# Run as a script: `python tutorials/12_real_data.py`
# (`SBI_CORE_FAST=1` runs a small, quick version, used by the test suite).

# %%
import os
import tempfile
import warnings
from pathlib import Path

import torch

from diagnostics.misspecification import MisspecificationError, MisspecificationWarning
from diagnostics.report import diagnose
from sbi_core import fit, load, save, simulate
from simulators import get_problem

FAST = os.environ.get("SBI_CORE_FAST") == "1"
NUM_SIMS = 2000 if FAST else 10_000
torch.set_num_threads(1)

# %% [markdown]
# ## Train: the detector comes with the posterior
# `gaussian_linear`: 10 parameters, `x = theta + N(0, 0.1 I)` (noise sd 0.316). `fit` trains
# the NPE and then the detector on the embedding of the training `x`; the rows the training
# loop held out for validation (never seen by the estimator) give its null distributions.
# (`fit(..., detector=False)` skips it; `posterior.fit_detector(sims)` retrains it.)

# %%
problem = get_problem("gaussian_linear")
sims = simulate(problem, NUM_SIMS, seed=0)
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Reached max_epochs")
    posterior = fit(problem, sims, seed=0, max_epochs=5 if FAST else 200, progress=False)
print(posterior.detector)

# %% [markdown]
# ## A well-specified observation, and a misspecified one
# `x_o` comes from the simulator at `theta = 0`. `x_bad` is the same observation with an
# offset of 3 noise sd in every coordinate (as a miscalibrated instrument would add). Each
# coordinate of `x_bad` stays inside the range of the training simulations, so the coarse
# range check lets it through; the detector's tests do not.

# %%
noise_sd = 0.1 ** 0.5
x_o = noise_sd * torch.randn(10, generator=torch.Generator().manual_seed(1))
x_bad = x_o + 3 * noise_sd
for name, x in (("x_o", x_o), ("x_bad", x_bad)):
    print(name, posterior.misspecification_test(x).to_dict(0))

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    posterior.sample((1000,), x=x_o)
    assert not any(issubclass(w.category, MisspecificationWarning) for w in caught)
    posterior.sample((1000,), x=x_bad)
flagged = [w for w in caught if issubclass(w.category, MisspecificationWarning)]
assert flagged, "the shifted observation should have been flagged"
print("warning:", flagged[0].message)

try:
    posterior.sample((1000,), x=x_bad, strict=True)  # CLI: sbi-core sample --strict
except MisspecificationError as err:
    print("strict:", type(err).__name__)

# %% [markdown]
# Noise of a kind the simulator lacks: heavy-tailed (Cauchy) disturbances on top of the
# Gaussian noise. Many such observations get flagged, a few mild ones do not: no test can
# tell a small disturbance from the simulator's own noise.

# %%
gen = torch.Generator().manual_seed(2)
clean = simulate(problem, 200, seed=7).training_data()[1]
cauchy = torch.distributions.Cauchy(0.0, 0.5 * noise_sd).sample(clean.shape)
res = posterior.detector.test(clean + cauchy)
print(f"heavy-tailed noise: {float(res.flagged().float().mean()):.0%} of 200 flagged; "
      f"clean: {float(posterior.detector.test(clean).flagged().float().mean()):.0%}")

# %% [markdown]
# ## Sets of observations: the MMD test
# Several observations of the same system can be tested together. A shift of 0.5 noise sd
# is invisible in one observation but clear in a set of 20 (Schmitt et al. 2023).

# %%
fresh = simulate(problem, 40, seed=9).training_data()[1]
single = posterior.detector.test(fresh[:20] + 0.5 * noise_sd)
print(f"one at a time: {int(single.flagged().sum())} of 20 flagged")
print("the set:", posterior.detector.test_set(fresh[:20] + 0.5 * noise_sd).to_dict(0))
print("a clean set:", posterior.detector.test_set(fresh[20:]).to_dict(0))

# %% [markdown]
# ## The report card and the saved model
# `diagnose(posterior, observations=xs)` adds a `misspecification` section (CLI:
# `sbi-core diagnose model.pt --x obs.csv`); with `checks=["misspecification"]` it needs no
# test simulations. The detector is saved inside the model file (plain tensors, loaded with
# `weights_only=True`) and works again after `load`, in `sbi-core serve` responses
# (`"misspecification": {"density_p", "mmd_p", "verdict"}`) and as a badge in the explorer.

# %%
card = diagnose(posterior, checks=["misspecification"], observations=torch.stack([x_o, x_bad]))
print(card.summary())
path = Path(tempfile.mkdtemp()) / "glin.pt"
save(posterior, path)
again = load(path)
assert again.misspecification_test(x_bad).verdict() == "misspecified"

# %% [markdown]
# ## How often does it cry wolf?
# Each test's p-value is uniform for well-specified observations, so each rejects with
# probability `alpha = 0.05`; the combined verdict (Bonferroni over the two) at most 5%.

# %%
null = simulate(problem, 500 if FAST else 2000, seed=11).training_data()[1]
r = posterior.detector.test(null)
print(f"false alarms: density {float(r.density_reject.float().mean()):.3f}, "
      f"MMD {float(r.mmd_reject.float().mean()):.3f}, combined "
      f"{float(r.flagged().float().mean()):.3f} (level 0.05)")
