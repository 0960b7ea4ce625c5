# %% [markdown]
# # 06 · Can I trust this posterior? Calibration diagnostics and the report card
#
# An amortized posterior is only useful if it is *calibrated*: its 90% credible regions
# should contain the true parameters 90% of the time, for every credibility level. This
# tutorial trains a small NPE, runs the report card (TARP, SBC, HPD coverage, reference
# C2ST/MMD, posterior predictive checks), looks at the individual tests, and shows why
# TARP needs **x-dependent reference points** to catch a posterior that ignores the data.
#
# Runs as a plain script: `python tutorials/06_diagnostics.py`
# (`SBI_CORE_FAST=1` for a quick smoke run with small budgets).

# %%
import os
import tempfile
from pathlib import Path

import torch

from diagnostics import diagnose, posterior_samples, register_check, sbc, tarp_coverage
from diagnostics.coverage import expected_coverage
from diagnostics.report import CHECKS
from sbi_core import Posterior, fit, gaussian, load, save, simulate
from simulators import get_problem

FAST = os.environ.get("SBI_CORE_FAST") == "1"
OUT = Path(os.environ.get("SBI_CORE_TUTORIAL_OUT", tempfile.mkdtemp(prefix="sbi_core_06_")))
NUM_SIMS = 1000 if FAST else 5000
NUM_TEST = 100 if FAST else 300
NUM_SAMPLES = 200 if FAST else 1000
torch.manual_seed(0)

# %% [markdown]
# ## 1. Train a posterior
# The linear Gaussian problem has an analytic posterior, so we know what "right" means.

# %%
problem = get_problem("linear_gaussian")
sims = simulate(problem, NUM_SIMS, seed=0, progress=False)
posterior = fit(problem, sims, seed=0, flow="mdn", num_components=2, hidden_features=32,
                learning_rate=3e-3, max_epochs=30 if FAST else 200, progress=False)
print("trained for", posterior.history["epochs"], "epochs")

# %% [markdown]
# ## 2. The report card
# `diagnose` simulates `num` fresh test pairs from the problem (or takes held-out
# simulations with `sims=`), samples the posterior for all of them in one batched call and
# runs every registered check. Each section says pass / warn / fail and why.

# %%
report = diagnose(posterior, problem=problem, num=NUM_TEST, num_samples=NUM_SAMPLES,
                  progress=False, num_reference_observations=1)
print(report.summary())
figures = report.plots(OUT / "report")
print("figures:", [f.name for f in figures])

# %% [markdown]
# The card travels with the model: `report.save(path)` stores it in
# `posterior.diagnostics` and writes the model file; `load` brings it back.
# The same from the command line:
# `sbi-core diagnose model.pt --problem linear_gaussian --num 200 --out diag/ --save`.

# %%
report.save(OUT / "model.pt")
print("card in the model file:", load(OUT / "model.pt").diagnostics["report_card"]["status"])

# %% [markdown]
# ## 3. The individual tests
# All checks work on one tensor of samples `(n, N, D)`. Here they are on their own, for a
# deliberately over-confident version of the posterior (samples squeezed to half width
# around their mean).

# %%
theta_test, x_test = simulate(problem, NUM_TEST, seed=1, progress=False).training_data()
samples = posterior_samples(posterior, x_test, NUM_SAMPLES, seed=0, progress=False)
squeezed = samples.mean(0) + 0.5 * (samples - samples.mean(0))
for name, s in (("trained", samples), ("over-confident", squeezed)):
    tarp = tarp_coverage(s, theta_test)
    ranks = sbc(s, theta_test)
    print(f"{name:15s} TARP ATC {tarp.atc:+.3f} (KS p {tarp.ks_pvalue:.2g}) -> {tarp.status};"
          f" SBC p {ranks.pvalue:.2g} -> {ranks.verdict()[0]}")
cov = expected_coverage(posterior, samples, theta_test, x_test, progress=False)
print(f"HPD expected coverage of the trained posterior: ATC {cov.atc:+.3f} -> {cov.status}")

# %% [markdown]
# ## 4. A posterior that ignores the data
# TARP paper §4.2: θ ~ N(0, 1), x = θ + N(0, 0.1²), and an "estimator" that returns the
# prior. Averaged over the data, the prior *is* calibrated, so tests with references that
# do not depend on x pass. References near the data (`references="regression"`: a
# regression of θ on x plus noise, or any function of x) expose it.

# %%


class PriorAsPosterior(Posterior):
    def __init__(self):
        super().__init__(torch.nn.Identity(), gaussian(torch.zeros(1), std=torch.ones(1)),
                         {"x_shape": [1]})

    def _sample_batched(self, n, xs, **kwargs):
        return self.prior.sample((n, xs.shape[0]))

    def _log_prob_batched(self, theta, xs, **kwargs):
        return self.prior.log_prob(theta)


g = torch.Generator().manual_seed(3)
theta0 = torch.randn(500, 1, generator=g)
x0 = theta0 + 0.1 * torch.randn(500, 1, generator=g)
prior_samples = posterior_samples(PriorAsPosterior(), x0, NUM_SAMPLES, progress=False)
for refs in ("box", "regression"):
    res = tarp_coverage(prior_samples, theta0, references=refs, xs=x0)
    print(f"references={refs:10s}: {res.status.upper()}  ({res.verdict()[1]})")

# %% [markdown]
# ## 5. Adding your own check
# A check is a function of the diagnosis context returning a section dict; register it
# and every `diagnose` call (and `sbi-core diagnose`) runs it.

# %%


def posterior_width(ctx):
    ratio = float(ctx.samples.std(0).mean() / ctx.theta.std(0).mean())
    status = "warn" if ratio > 0.9 else "pass"
    return {"status": status, "why": f"posterior std / prior std = {ratio:.2f}",
            "metrics": {"ratio": ratio}}


register_check("width", posterior_width, title="Posterior contraction", default=False)
extra = diagnose(posterior, problem=problem, num=NUM_TEST, num_samples=NUM_SAMPLES,
                 checks=["width"], progress=False)
print(extra.summary())
CHECKS.pop("width")
save(posterior, OUT / "model.pt")
print("outputs in", OUT)
