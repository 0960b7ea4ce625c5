r"""Reference posterior sampling from an exact likelihood, with an on-disk cache.

Used by the benchmark problems without a closed-form posterior (slcp, bernoulli_glm, sir,
lotka_volterra). Private to ``simulators/`` (the general MCMC for learned likelihoods lives
in ``sbi_core``).

Algorithm (all chains advance together, batched):

1. **Sampling-importance-resampling from the prior.** ``num_init`` prior draws are weighted
   by their likelihood and ``num_chains`` of them are resampled as starting points, so the
   chains start in every mode in proportion to its mass.
2. **Differential-evolution MCMC** (ter Braak 2006) in the unconstrained space of the prior
   (``sbi_core.priors.unconstrained_transform``, with its log-Jacobian). The chains are split
   in two halves; each half proposes
   :math:`z_i' = z_i + \gamma (z_a - z_b) + \epsilon` with :math:`a, b` drawn from the *other*
   half (held fixed during the update, so the proposal is symmetric and each update leaves
   the target invariant), :math:`\gamma = 2.38/\sqrt{2D}`, and :math:`\gamma = 1` every
   tenth step so that chains jump between modes.
3. After ``warmup`` steps, the states of all chains are recorded every ``thin`` steps until
   ``num_samples`` draws exist; they are shuffled before being returned.

:func:`cached_reference` stores results under
``$SBI_CORE_CACHE/reference/<task>/<hash of x_o>_<num>_<seed>.pt`` (default cache folder
``~/.cache/sbi-core``), so each observation is sampled once per machine.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor
from torch.distributions import Distribution

from sbi_core.priors import unconstrained_transform

__all__ = ["de_mcmc", "sir_init", "cache_dir", "cached_reference"]

LogLikelihood = Callable[[Tensor], Tensor]

#: Bump when a reference sampler changes, so stale cache entries are not reused.
CACHE_VERSION = 1


def _batched(fn: LogLikelihood, theta: Tensor, batch: int) -> Tensor:
    return torch.cat([fn(theta[i:i + batch]) for i in range(0, theta.shape[0], batch)])


def sir_init(log_likelihood: LogLikelihood, prior: Distribution, num_chains: int,
             num_init: int, generator: torch.Generator, batch: int = 10_000) -> Tensor:
    """``num_chains`` starting points ``(C, D)`` resampled from ``num_init`` prior draws."""
    theta = prior.sample((num_init,)).double()
    ll = _batched(log_likelihood, theta, batch).double()
    ll = torch.where(torch.isfinite(ll), ll, torch.full_like(ll, -math.inf))
    if not torch.isfinite(ll).any():
        raise RuntimeError("No prior draw has a finite likelihood for this observation; it is "
                           "not something the simulator can produce.")
    w = torch.softmax(ll, 0)
    idx = torch.multinomial(w, num_chains, replacement=True, generator=generator)
    return theta[idx]


def de_mcmc(log_likelihood: LogLikelihood, prior: Distribution, num_samples: int,
            seed: int = 0, num_chains: int = 1000, num_init: int = 100_000, warmup: int = 300,
            thin: int = 20, batch: int = 10_000) -> Tensor:
    """Posterior samples ``(num_samples, D)`` for ``log_likelihood(theta (N, D)) -> (N,)``.

    Args:
        log_likelihood: exact log-likelihood of the observation, batched over parameters
            (``-inf`` or NaN where impossible). Receives float64 ``theta``.
        prior: the problem's prior (sampled for initialization; its log-density is added).
        num_chains: chains run in parallel (even; they are split in two halves).
        num_init: prior draws for the sampling-importance-resampling initialization.
        warmup: steps discarded before recording.
        thin: steps between recorded states. Keep it large enough (>= ~15) that a chain's
            recorded states are rarely identical (a rejected proposal repeats the state);
            duplicated points inflate C2ST scores against these samples.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        theta0 = sir_init(log_likelihood, prior, num_chains, num_init, gen, batch)
    transform = unconstrained_transform(prior)
    num_chains = theta0.shape[0] - theta0.shape[0] % 2
    theta0 = theta0[:num_chains]
    d = theta0.shape[1]

    def log_target(z: Tensor) -> Tensor:
        theta = transform(z).double()
        lp = prior.log_prob(theta.float()).double()
        lp = lp + transform.log_abs_det_jacobian(z, theta).double()
        ok = torch.isfinite(lp)
        ll = torch.full_like(lp, -math.inf)
        if ok.any():
            ll[ok] = _batched(log_likelihood, theta[ok], batch).double()
        out = lp + ll
        return torch.where(torch.isnan(out), torch.full_like(out, -math.inf), out)

    z = transform.inv(theta0.float()).double()
    z = torch.where(torch.isfinite(z), z, torch.zeros_like(z))
    lp = log_target(z)
    half = num_chains // 2
    halves = [torch.arange(half), torch.arange(half, num_chains)]
    gamma = 2.38 / math.sqrt(2 * d)
    records: list[Tensor] = []
    have, step = 0, 0
    while have < num_samples:
        step += 1
        g = 1.0 if step % 10 == 0 else gamma
        for cur, other in (halves, halves[::-1]):
            a = other[torch.randint(half, (half,), generator=gen)]
            b = other[torch.randint(half, (half,), generator=gen)]
            noise_scale = 1e-3 * z[other].std(0).clamp(min=1e-8)
            prop = z[cur] + g * (z[a] - z[b]) + noise_scale * torch.randn(half, d, generator=gen,
                                                                          dtype=torch.float64)
            lp_prop = log_target(prop)
            accept = torch.log(torch.rand(half, generator=gen, dtype=torch.float64)) < \
                lp_prop - lp[cur]
            z[cur] = torch.where(accept[:, None], prop, z[cur])
            lp[cur] = torch.where(accept, lp_prop, lp[cur])
        if step > warmup and (step - warmup) % thin == 0:
            records.append(z.clone())
            have += num_chains
    samples = torch.cat(records)
    samples = samples[torch.randperm(samples.shape[0], generator=gen)[:num_samples]]
    return transform(samples).float()



def cache_dir() -> Path:
    """Root of the reference-sample cache (``$SBI_CORE_CACHE`` or ``~/.cache/sbi-core``)."""
    root = os.environ.get("SBI_CORE_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "sbi-core"


def cached_reference(task: str, x_o: Tensor, num_samples: int, seed: int,
                     sampler: Callable[[], Tensor]) -> Tensor:
    """Return cached reference samples for ``(task, x_o, num_samples, seed)``, else run
    ``sampler()`` and store its ``(num_samples, D)`` result."""
    x = torch.as_tensor(x_o, dtype=torch.float32).contiguous()
    key = hashlib.sha1(x.numpy().tobytes() + f"v{CACHE_VERSION}".encode()).hexdigest()[:16]
    path = cache_dir() / "reference" / task / f"{key}_{num_samples}_{seed}.pt"
    if path.is_file():
        try:
            return torch.load(path, weights_only=True)
        except Exception:  # unreadable entry (e.g. an interrupted write): recompute
            pass
    samples = sampler()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(samples, tmp)
        tmp.replace(path)
    except OSError:  # a read-only cache is not an error; the samples are still valid
        pass
    return samples
