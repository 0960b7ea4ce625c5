# %% [markdown]
# # Your own embedding network for raw time series
#
# Simulators of dynamical systems return whole trajectories, not summary statistics. An
# **embedding network** learns the summary: it maps each observation `x` (here a series of
# `T` steps) to a few features, and is trained *jointly* with the density estimator, so the
# features are the ones the posterior needs. `sbi_core` has built-in embeddings
# (`"cnn1d"`, `"tcn"`, `"gru"`, `"transformer"`, `"cnn2d"`, ...; see `docs/embeddings.md`),
# and accepts **any `torch.nn.Module`** you write.
#
# This tutorial: a raw AR(1) time-series simulator with a posterior we can compute on a grid,
# a custom embedding, training, and saving/loading the model (your module's *weights* go into
# the file; its *code* never does, so you pass the module again at load).
#
# Run as a script: `python tutorials/11_your_own_embedding.py`
# (`SBI_CORE_FAST=1` runs a small, quick version, used by the test suite).

# %%
import os

import torch
from torch import nn

from diagnostics.c2st import c2st
from sbi_core import ModelFileError, Problem, box_uniform, fit, load, save, simulate

FAST = os.environ.get("SBI_CORE_FAST") == "1"
T = 50 if FAST else 100
NUM_SIMS = 1500 if FAST else 10_000
MAX_SECONDS = 8 if FAST else 300

# %% [markdown]
# ## A raw time-series simulator
# An AR(1) process `x_t = phi x_{t-1} + sigma eps_t`, started from its stationary law
# `x_0 ~ N(0, sigma^2 / (1 - phi^2))`; parameters `phi` (memory) and `log sigma` (noise
# scale). The simulator is batched over parameters and loops only over time.

# %%
prior = box_uniform([-0.9, -1.0], [0.9, 0.5])


def ar1(theta: torch.Tensor) -> torch.Tensor:
    """Series ``(N, T)`` for parameters ``(N, 2)`` = (phi, log sigma)."""
    phi, sigma = theta[:, 0], theta[:, 1].exp()
    x = torch.empty(len(theta), T)
    x[:, 0] = sigma / (1 - phi**2).sqrt() * torch.randn(len(theta))
    for t in range(1, T):
        x[:, t] = phi * x[:, t - 1] + sigma * torch.randn(len(theta))
    return x


problem = Problem(prior, ar1, param_names=["phi", "log_sigma"], name="ar1", x_shape=(T,))
sims = simulate(problem, NUM_SIMS, seed=0, progress=not FAST)

# %% [markdown]
# ## A custom embedding network
# Any module mapping a batch `(N, T)` to features `(N, C)` works. Ours suits *stationary*
# series: two small causal convolutions see pairs of neighbouring steps (what `phi` and
# `sigma` are about), then averages over time of the features and of their squares make it
# insensitive to *where* a pattern occurs. `sbi_core` finds `C` itself (one forward pass).

# %%
class StationarySummary(nn.Module):
    """``(N, T)`` series → ``(N, out)`` features, translation invariant in time."""

    def __init__(self, channels: int = 16, out: int = 8):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv1d(1, channels, 2), nn.ReLU(),
                                  nn.Conv1d(channels, channels, 2), nn.ReLU())
        self.head = nn.Linear(2 * channels, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x.unsqueeze(1))  # (N, channels, T - 2)
        return self.head(torch.cat([h.mean(-1), h.square().mean(-1)], dim=-1))


posterior = fit(problem, sims, embedding=StationarySummary(), seed=0, max_seconds=MAX_SECONDS,
                progress=not FAST)
print("trained", posterior.history["epochs"], "epochs; model records the embedding as",
      posterior.estimator.config["embedding"])

# %% [markdown]
# ## Check against the exact posterior
# The AR(1) likelihood is Gaussian and cheap, so the posterior on a 200 × 200 grid is a
# reference. C2ST near 0.5 means the samples are indistinguishable from it.

# %%
def grid_posterior_samples(x: torch.Tensor, n: int, size: int = 200) -> torch.Tensor:
    """Samples from the exact posterior of one series ``x`` ``(T,)`` on a grid of the prior box."""
    phi = torch.linspace(-0.9, 0.9, size)
    log_sigma = torch.linspace(-1.0, 0.5, size)
    p, s = torch.meshgrid(phi, log_sigma, indexing="ij")
    var = s.exp() ** 2
    resid = x[1:] - p[..., None] * x[:-1]
    loglik = (-0.5 * (resid**2).sum(-1) / var - (T - 1) * 0.5 * var.log()
              - 0.5 * x[0] ** 2 * (1 - p**2) / var - 0.5 * (var / (1 - p**2)).log())
    w = torch.softmax(loglik.flatten(), 0)
    idx = torch.multinomial(w, n, replacement=True, generator=torch.Generator().manual_seed(0))
    cell = torch.stack([p.flatten()[idx], s.flatten()[idx]], -1)
    jitter = (torch.rand(n, 2, generator=torch.Generator().manual_seed(1)) - 0.5)
    return cell + jitter * torch.tensor([1.8, 1.5]) / (size - 1)


theta_true = torch.tensor([0.6, -0.5])
torch.manual_seed(3)
x_o = ar1(theta_true[None])[0]
samples = posterior.sample((1000,), x=x_o, seed=0)
reference = grid_posterior_samples(x_o, 1000)
print("posterior mean", samples.mean(0).tolist(), "exact", reference.mean(0).tolist())
print("C2ST against the exact posterior:", round(c2st(samples, reference, seed=0), 3))

# %% [markdown]
# ## Save, and load with your module
# The file holds the embedding's weights and, *for display only*, its class name. Loading
# never imports code named in a file, so `load` asks for the module:

# %%
path = save(posterior, "ar1_custom_embedding.pt")
try:
    load(path)
except ModelFileError as err:
    print("without embedding=:", err)

# a class, an instance, or a zero-argument factory: lambda: StationarySummary(16, 8)
loaded = load(path, embedding=StationarySummary)
assert torch.equal(loaded.sample((5,), x=x_o, seed=1), posterior.sample((5,), x=x_o, seed=1))
print("reloaded: identical samples")

# %% [markdown]
# On the command line, put the module in a file (say `nets.py` with
# `def summary(): return StationarySummary()`) and name it wherever the model is trained or
# loaded:
#
#     sbi-core train --sims sims.pt --out model.pt --embedding nets.py:summary
#     sbi-core sample model.pt --x obs.csv --out samples.csv --embedding nets.py:summary
#
# (`module:function` works too for an installed package). Built-in embeddings need nothing at
# load: `fit(..., embedding="tcn")` or `--embedding tcn` are stored as plain settings.
#
# ## Built-in alternative
# Without writing a module, a causal convolution net (`"tcn"`) or a 1-D CNN (`"cnn1d"`) also
# reads raw series; `docs/embeddings.md` says which to use when.

# %%
if not FAST:
    builtin = fit(problem, sims, embedding="tcn", seed=0, max_seconds=MAX_SECONDS)
    print("tcn C2ST:", round(c2st(builtin.sample((1000,), x=x_o, seed=0), reference, seed=0), 3))
