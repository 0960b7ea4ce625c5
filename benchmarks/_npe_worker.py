"""Worker for compare_sbi.py: trains one library's NPE on given simulations, samples, reports.

Runs under either interpreter (ours, or the sbi virtual environment) so that each library
is measured in its own process: train seconds, epochs, sample seconds, peak memory (RSS).
One-time process costs (importing the library's NPE code, torch's lazy imports on the first
optimizer) are paid before the training clock starts, the same way for both libraries, and
reported as ``startup_seconds``.

Usage: python _npe_worker.py {sbi|sbi_core} IN.npz OUT.npz FLOW SEED THREADS [OPTIONS_JSON [RUN_JSON]]

IN.npz holds theta (N, D), x (N, X), xo (K, X), prior_spec (JSON string), num_samples, and
optionally x_trials (JSON: the task's declared exchangeable trials ``[n, d]`` or null, given to
sbi-core's ``Problem``; sbi has no such declaration).
THREADS is passed to ``torch.set_num_threads`` in both libraries (same setting for both).
OPTIONS_JSON (sbi-core only) holds extra keyword options for ``sbi_core.fit``.
RUN_JSON (both libraries) holds ``device`` (default ``"cpu"``; training data, network and
sampling on that device, prior included for sbi) and ``max_epochs`` (default: none, train
to convergence), used by gpu_npe_vs_sbi.py. On CUDA the clocks stop after a
``torch.cuda.synchronize()`` and ``peak_gpu_mb`` (``torch.cuda.max_memory_allocated``) is
reported too.
"""

from __future__ import annotations

import functools
import json
import resource
import sys
import time

import numpy as np
import torch

# sbi-core's flow -> the same model family in sbi 0.27 (nflows): the fused MAF / NSF have no
# sbi counterpart but nflows' MAF / NSF; "auto" (fmaf or fnsf by dimension) compares with
# sbi's default (MAF).
SBI_FLOW = {"fmaf": "maf", "fnsf": "nsf", "auto": "maf"}

# independent one-dimensional components sbi 0.27 can take as one torch distribution
_COMPONENTS = {"lognormal": ("LogNormal", "loc", "scale"), "normal": ("Normal", "loc", "scale"),
               "uniform": ("Uniform", "low", "high")}


def sbi_flow(flow: str) -> str:
    """The ``density_estimator`` sbi 0.27 runs for sbi-core's ``flow``."""
    return SBI_FLOW.get(flow, flow)


def _prior_for_sbi(spec: dict, device: str = "cpu"):
    import torch.distributions as D
    from torch.distributions import Independent, MultivariateNormal, Normal

    if spec["type"] == "independent":
        kinds = {c["type"] for c in spec["components"]}
        if len(kinds) != 1 or next(iter(kinds)) not in _COMPONENTS:
            raise ValueError(f"independent prior with components {sorted(kinds)} not supported "
                             f"by this benchmark (one kind of {sorted(_COMPONENTS)} only)")
        name, a, b = _COMPONENTS[next(iter(kinds))]
        first = torch.tensor([float(c[a]) for c in spec["components"]], device=device)
        second = torch.tensor([float(c[b]) for c in spec["components"]], device=device)
        return Independent(getattr(D, name)(first, second), 1)
    if spec["type"] == "box_uniform":
        from sbi.utils import BoxUniform

        return BoxUniform(torch.tensor(spec["low"]), torch.tensor(spec["high"]), device=device)
    if spec["type"] == "gaussian" and "cov" in spec:
        return MultivariateNormal(torch.tensor(spec["mean"], device=device),
                                  torch.tensor(spec["cov"], device=device))
    if spec["type"] == "gaussian":
        return Independent(Normal(torch.tensor(spec["mean"], device=device),
                                  torch.tensor(spec["std"], device=device)), 1)
    raise ValueError(f"prior {spec['type']} not supported by this benchmark")


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB: ``VmHWM`` (Linux), which starts afresh
    at ``exec``; ``ru_maxrss`` would also count the parent's peak, inherited across
    fork + exec on Linux."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def warm_up(lib: str) -> None:
    """One-time costs of a fresh process, paid before timing and reported separately: the
    library's NPE modules, and torch's lazy imports on the first ``torch.optim.Adam``
    (~0.9 s with torch 2.13 for either library)."""
    if lib == "sbi":
        import sbi.inference  # noqa: F401
    else:
        from sbi_core.methods import get_method

        get_method("npe")
    torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])


def _sync(device: str) -> None:
    """Wait for queued GPU work before reading a clock (no-op on CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


EXTRA: dict[str, float] = {}  # train_cpu_seconds; sbi-core only: loop_seconds


def run_sbi(theta, x, xo, spec, flow, seed, num_samples, options, run):
    """sbi 0.27 NPE with its defaults (batch 200, lr 5e-4, patience 20).

    ``flow`` is mapped by :func:`sbi_flow` (fused MAF / NSF -> nflows MAF / NSF).
    """
    from sbi.inference import NPE

    device = run.get("device", "cpu")
    limit = {} if run.get("max_epochs") is None else {"max_num_epochs": int(run["max_epochs"])}
    torch.manual_seed(seed)
    prior = _prior_for_sbi(spec, device)
    inference = NPE(prior=prior, density_estimator=sbi_flow(flow), device=device,
                    show_progress_bars=False)
    t0, cpu0 = time.perf_counter(), time.process_time()
    inference.append_simulations(theta, x).train(training_batch_size=200, learning_rate=5e-4,
                                                 stop_after_epochs=20, **limit)
    _sync(device)
    train_s = time.perf_counter() - t0
    # CPU seconds of this process (all threads): steadier than wall time on a shared machine
    EXTRA["train_cpu_seconds"] = time.process_time() - cpu0
    posterior = inference.build_posterior()
    samples, sample_s = [], []
    for k in range(xo.shape[0]):
        torch.manual_seed(seed + k)
        t0 = time.perf_counter()
        samples.append(posterior.sample((num_samples,), x=xo[k].to(device),
                                        show_progress_bars=False).cpu())
        _sync(device)
        sample_s.append(time.perf_counter() - t0)
    epochs = inference._summary["epochs_trained"][-1]
    return train_s, epochs, torch.stack(samples), sample_s


def run_ours(theta, x, xo, spec, flow, seed, num_samples, options, run, x_trials=None):
    """sbi-core NPE with its defaults, plus any ``options`` for ``fit``; ``x_trials`` is the
    task's declaration of exchangeable trials (as on the built-in problem)."""
    from sbi_core import Problem, fit, prior_from_spec

    prior = prior_from_spec(spec)
    problem = Problem(prior, lambda t: t, x_shape=tuple(x.shape[1:]), validate=False,
                      x_trials=x_trials)
    device = run.get("device", "cpu")
    limit = {} if run.get("max_epochs") is None else {"max_epochs": int(run["max_epochs"])}
    if device != "cpu":
        limit["device"] = device
    t0, cpu0 = time.perf_counter(), time.process_time()
    posterior = fit(problem, (theta, x), method="npe", flow=flow, seed=seed, progress=False,
                    **{**limit, **options})
    _sync(device)
    train_s = time.perf_counter() - t0
    EXTRA["train_cpu_seconds"] = time.process_time() - cpu0
    posterior.range_check = run.get("range_check", "error")
    samples, sample_s = [], []
    for k in range(xo.shape[0]):
        t0 = time.perf_counter()
        samples.append(posterior.sample((num_samples,), x=xo[k], seed=seed + k))
        _sync(device)
        sample_s.append(time.perf_counter() - t0)
    # the training loop alone (fit's train_s adds building the estimator and training the
    # misspecification detector, which sbi does not have)
    EXTRA["loop_seconds"] = float(posterior.history["seconds"])
    return train_s, posterior.history["epochs"], torch.stack(samples), sample_s


def main() -> None:
    lib, inp, out, flow, seed, threads = sys.argv[1:7]
    options = json.loads(sys.argv[7]) if len(sys.argv) > 7 else {}
    run = json.loads(sys.argv[8]) if len(sys.argv) > 8 else {}
    torch.set_num_threads(int(threads))
    data = np.load(inp)
    theta = torch.from_numpy(data["theta"]).float()
    x = torch.from_numpy(data["x"]).float()
    xo = torch.from_numpy(data["xo"]).float()
    spec = json.loads(str(data["prior_spec"]))
    num_samples = int(data["num_samples"])
    runner = run_sbi if lib == "sbi" else run_ours
    if lib == "sbi_core" and "x_trials" in data.files:
        trials = json.loads(str(data["x_trials"]))
        runner = functools.partial(run_ours, x_trials=trials)
    t0 = time.perf_counter()
    warm_up(lib)
    startup_s = time.perf_counter() - t0
    train_s, epochs, samples, sample_s = runner(theta, x, xo, spec, flow, int(seed), num_samples,
                                                options, run)
    peak_mb = peak_rss_mb()
    gpu = run.get("device", "cpu").startswith("cuda")
    peak_gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if gpu else 0.0
    np.savez(out, samples=samples.numpy(), train_seconds=train_s, startup_seconds=startup_s,
             epochs=epochs,
             sample_seconds=np.asarray(sample_s), peak_mb=peak_mb, peak_gpu_mb=peak_gpu_mb,
             torch_threads=torch.get_num_threads(), **EXTRA)


if __name__ == "__main__":
    main()
