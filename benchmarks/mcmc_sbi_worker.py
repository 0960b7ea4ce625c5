"""Worker for mcmc_vs_sbi.py: ``sbi`` 0.27 NLE + ``slice_np_vectorized`` MCMC, in its own process.

Runs under the sbi virtual environment (never imported by sbi-core):

    /work/sbi-venv/bin/python benchmarks/mcmc_sbi_worker.py IN.npz OUT.npz SEED THREADS

IN.npz holds theta (N, D), x (N, X), xo (n, X) (n iid trials of one observation),
prior_spec (JSON), num_samples. sbi trains its default NLE (MAF) on the same simulations,
then samples with its default MCMC settings (``slice_np_vectorized``, 20 chains, 200
warm-up steps, thin 1, init by resampling). OUT.npz: samples (num_samples, D), train and
sample seconds, the load average at the start and end of sampling.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import torch


def main() -> None:
    inp, out, seed, threads = sys.argv[1:5]
    torch.set_num_threads(int(threads))
    data = np.load(inp)
    theta = torch.from_numpy(data["theta"]).float()
    x = torch.from_numpy(data["x"]).float()
    xo = torch.from_numpy(data["xo"]).float()
    spec = json.loads(str(data["prior_spec"]))
    num_samples = int(data["num_samples"])
    from sbi.inference import NLE
    from torch.distributions import Independent, Normal

    if spec["type"] != "gaussian":
        raise ValueError("this worker builds Gaussian priors only")
    prior = Independent(Normal(torch.tensor(spec["mean"]), torch.tensor(spec["std"])), 1)
    torch.manual_seed(int(seed))
    inference = NLE(prior=prior, show_progress_bars=False)
    t0 = time.perf_counter()
    inference.append_simulations(theta, x).train()
    train_s = time.perf_counter() - t0
    posterior = inference.build_posterior(mcmc_method="slice_np_vectorized")
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    samples = posterior.sample((num_samples,), x=xo, show_progress_bars=False)
    sample_s = time.perf_counter() - t0
    np.savez(out, samples=samples.numpy(), train_s=train_s, sample_s=sample_s,
             load=np.array([load0, os.getloadavg()[0]]),
             epochs=inference._summary["epochs_trained"][-1],
             num_chains=posterior.num_chains)


if __name__ == "__main__":
    main()
