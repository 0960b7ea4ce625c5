# %% [markdown]
# # Tutorial 8: scaling out — external programs, a resumable zarr store, Dask, streaming, DDP
#
# Slow simulators and big budgets need four things, all shown here on a toy model:
#
# 1. an **external program** as the simulator (any language; θ and x exchanged as `.npy`),
# 2. a **crash-safe, resumable zarr store** written chunk by chunk,
# 3. **Dask** to run the chunks on a cluster (here a local one),
# 4. **streaming training** from the store with bounded memory, and **DDP** with `torchrun`.
#
# Needs `pip install 'sbi-core[scale]'`. Run as a script; `SBI_CORE_FAST=1` makes it quick
# (and skips starting a Dask cluster).

# %%
import os
import sys
import tempfile
from pathlib import Path

import torch

from sbi_core import Problem, box_uniform, fit
from sbi_core.simulation import simulate
from sbi_core.stores import SimulationStore
from simulators import external_simulator

FAST = os.environ.get("SBI_CORE_FAST") == "1"
NUM = 600 if FAST else 20_000
CHUNK = 100 if FAST else 1000
work = Path(tempfile.mkdtemp(prefix="sbi-core-tutorial8-"))

# %% [markdown]
# ## 1. An external program as the simulator
#
# The program reads `theta.npy` (N, D) and writes `x.npy` (N, ...). `{theta}` and `{x}` in the
# command are replaced by the paths, and `{seed}` by a seed drawn from the engine's per-chunk
# generator, so the program's noise is reproducible. A crash, a non-zero exit or a timeout marks the batch's
# rows invalid (the engine retries row by row) and the program's stderr is kept in the
# provenance as `first_error`.

# %%
program = work / "model.py"
program.write_text(
    "import sys\n"
    "import numpy as np\n"
    "theta = np.load(sys.argv[1])\n"
    "rng = np.random.default_rng(int(sys.argv[3]))  # seeded by sbi-core: reproducible\n"
    "x = np.stack([theta[:, 0] + theta[:, 1], theta[:, 0] * theta[:, 1]], 1)\n"
    "np.save(sys.argv[2], x + 0.05 * rng.standard_normal(x.shape))\n"
)
simulator = external_simulator([sys.executable, str(program), "{theta}", "{x}", "{seed}"], timeout=60,
                               x_shape=(2,))
problem = Problem(box_uniform([-1.0, -1.0], [1.0, 1.0]), simulator, name="external_toy",
                  param_names=["a", "b"])
print(problem)

# %% [markdown]
# ## 2. A resumable zarr store
#
# `simulate(..., store=PATH)` commits chunk by chunk. We imitate a crash by simulating only
# some chunks (`only_chunks`), then resume: only the missing chunks run, and the result is
# identical to an uninterrupted run. On the command line:
# `sbi-core simulate PROBLEM --num N --out sims.zarr [--resume] [--workers K | --dask ADDR]`.

# %%
from sbi_core.simulation import chunk_plan, chunk_source  # noqa: E402
from sbi_core.stores import simulate_into_store  # noqa: E402

store_path = work / "sims.zarr"
plan = chunk_plan(NUM, seed=0, chunk_size=CHUNK)
simulate_into_store(problem, plan, chunk_source(), store_path, seed=0, chunk_size=CHUNK,
                    progress=False, only_chunks=range(0, len(plan), 2), return_data=False)
store = SimulationStore(store_path)
print(f"after the 'crash': {len(store.committed())} of {store.num_chunks} chunks committed")
assert 0 < len(store.committed()) < store.num_chunks
sims = simulate(problem, NUM, seed=0, chunk_size=CHUNK, store=store_path, resume=True,
                workers=2, progress=False)
uninterrupted = simulate(problem, NUM, seed=0, chunk_size=CHUNK, workers=2, progress=False)
identical = torch.equal(sims.x, uninterrupted.x) and torch.equal(sims.theta, uninterrupted.theta)
print("resumed store identical to an uninterrupted run:", identical)
assert identical and len(sims) == NUM
print(f"resumed: {len(sims)} simulations, {sims.num_invalid} invalid; provenance keys: "
      f"{sorted(store.attrs)}")

# %% [markdown]
# ## 3. Dask
#
# `executor="local:N"` starts a LocalCluster on 127.0.0.1; `executor="tcp://HOST:PORT"` uses
# a running scheduler (e.g. one started by dask-jobqueue on Slurm, see docs/scale_out.md).
# Lost workers have their chunks rerun elsewhere; the result is identical for a seed.

# %%
if not FAST:
    sims_dask = simulate(problem, 2 * CHUNK, seed=0, chunk_size=CHUNK, executor="local:2",
                         progress=False)
    assert torch.equal(sims_dask.x, sims.x[: 2 * CHUNK])
    print("Dask result identical to the local one")

# %% [markdown]
# ## 4. Training from the store with bounded memory
#
# `streaming=True` reads a few chunks at a time (shuffling chunk order and rows inside the
# buffer), computes exact z-scoring statistics in one streaming pass, and trains through the
# same loop as in-memory data. CLI: `sbi-core train --sims sims.zarr --stream --out model.pt`.

# %%
posterior = fit(problem, store_path, streaming=True, seed=0, flow="mdn", progress=False,
                max_epochs=2 if FAST else 200, buffer_chunks=4)
x_o = torch.tensor([0.5, 0.0])
samples = posterior.sample((1000,), x=x_o, seed=0)
print(f"posterior mean for x_o={x_o.tolist()}: {samples.mean(0).tolist()} "
      f"({posterior.history['epochs']} epochs)")

# %% [markdown]
# ## 5. Data-parallel training with torchrun
#
# Every process takes an equal slice of each global minibatch and DDP averages the gradients
# (gloo on CPU, NCCL on GPUs); rank 0 saves:
#
# ```
# torchrun --standalone --nproc_per_node 2 -m sbi_core.cli.main train \
#     --sims sims.zarr --stream --problem PROBLEM --out model.pt --ddp
# ```

# %%
print(f"files written under {work}")
