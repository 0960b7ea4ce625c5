"""SNLE's MCMC starts its chains by SIR from one pool per chain (``SNLE_MCMC``), in every
round's proposal and in the final posterior; ``mcmc=`` overrides it (issue 17: slcp)."""

import simulators
from sbi_core.mcmc_posterior import MCMCPosterior
from sbi_core.sequential import SNLE_MCMC, run_sequential

TINY = {"max_epochs": 4, "hidden_features": 16, "num_transforms": 2}


def test_snle_proposals_and_final_posterior_use_per_chain_sir(monkeypatch):
    seen = []
    real = MCMCPosterior.sample

    def spy(self, *args, **kwargs):
        seen.append((self.mcmc_config.init_strategy, self.mcmc_config.init_num_candidates))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MCMCPosterior, "sample", spy)
    problem = simulators.get_problem("gaussian_linear", dim=2)
    x_o = problem.observation(1)
    posterior, _ = run_sequential(problem, x_o, method="snle", rounds=2, sims_per_round=100,
                                  seed=0, progress=False, mcmc={"num_chains": 10}, **TINY)
    assert seen == [("sir_chains", 100_000)]  # round 2's proposal
    assert posterior.mcmc_config.init_strategy == SNLE_MCMC["init_strategy"] == "sir_chains"
    assert posterior.mcmc_config.num_chains == 10  # the user's other settings stay
    seen.clear()
    posterior, _ = run_sequential(problem, x_o, method="snle", rounds=2, sims_per_round=100,
                                  seed=0, progress=False,
                                  mcmc={"num_chains": 10, "init_strategy": "sir"}, **TINY)
    assert seen == [("sir", 100_000)] and posterior.mcmc_config.init_strategy == "sir"
    samples = posterior.sample((50,), x=x_o, seed=0)
    assert samples.shape == (50, 2)
