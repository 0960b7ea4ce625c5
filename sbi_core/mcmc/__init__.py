"""MCMC for any potential: vectorized slice sampling (default) and HMC over parallel chains.

Chains run in the prior's unconstrained space, start from prior draws resampled by their
likelihood (SIR), are tuned during warm-up, and come back with split R-hat and ESS::

    from sbi_core.mcmc import MCMCConfig, run_mcmc
    result = run_mcmc(potential, prior, num_samples=1000, config=MCMCConfig(method="slice"))
    result.samples, result.rhat, result.ess   # (1000, B, D), (B, D), (B, D)
"""

from sbi_core.mcmc.diagnostics import effective_sample_size, split_rhat
from sbi_core.mcmc.init import INIT_STRATEGIES, initial_chains
from sbi_core.mcmc.run import MCMC_METHODS, MCMCConfig, MCMCResult, run_mcmc

__all__ = [
    "INIT_STRATEGIES",
    "MCMC_METHODS",
    "MCMCConfig",
    "MCMCResult",
    "effective_sample_size",
    "initial_chains",
    "run_mcmc",
    "split_rhat",
]
