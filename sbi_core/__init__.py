"""sbi-core: fast, trustworthy simulation-based and amortized Bayesian inference.

The path from a simulator to a posterior::

    from sbi_core import Problem, box_uniform, simulate, fit, save, load

    problem = Problem(box_uniform([-1, -1], [1, 1]), simulator, param_names=["a", "b"])
    sims = simulate(problem, 10_000, seed=0, workers=2)
    posterior = fit(problem, sims, method="npe")
    samples = posterior.sample((1000,), x=x_o)
    save(posterior, "model.pt"); posterior = load("model.pt")
"""

from sbi_core.inference import fit
from sbi_core.mcmc import MCMCConfig, MCMCResult, run_mcmc
from sbi_core.mcmc_posterior import MCMCPosterior
from sbi_core.methods import Method, available_methods, get_method, register_method
from sbi_core.posterior import DirectPosterior, ObservationError, Posterior, SamplingError
from sbi_core.priors import (
    box_uniform,
    gaussian,
    independent,
    prior_from_spec,
    support_bounds,
    unconstrained_transform,
    within_support,
)
from sbi_core.problem import Problem
from sbi_core.resolve import resolve_problem
from sbi_core.sequential import run_sequential
from sbi_core.serialization import ModelFileError, load, save
from sbi_core.simulation import simulate
from sbi_core.simulation_set import SimulationSet
from sbi_core.training import TrainConfig, TrainingHistory, train

__version__ = "0.1.0"

__all__ = [
    "DirectPosterior",
    "MCMCConfig",
    "MCMCPosterior",
    "MCMCResult",
    "Method",
    "ModelFileError",
    "ObservationError",
    "Posterior",
    "Problem",
    "SamplingError",
    "SimulationSet",
    "TrainConfig",
    "TrainingHistory",
    "available_methods",
    "box_uniform",
    "fit",
    "gaussian",
    "get_method",
    "independent",
    "load",
    "prior_from_spec",
    "register_method",
    "resolve_problem",
    "run_mcmc",
    "run_sequential",
    "save",
    "simulate",
    "support_bounds",
    "train",
    "unconstrained_transform",
    "within_support",
]
