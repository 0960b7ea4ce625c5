"""Simulators that expose their random inputs: ``x = G(theta, u)`` with ``u ~ U[0, 1]^k``.

``Problem(prior, g, noise_dim=k)`` takes such a ``g(theta (N, D), u (N, k)) -> x``; the
problem's ordinary ``simulator(theta)`` then draws ``u`` itself (:class:`DrawsNoise`), so
``simulate``, training and everything else work unchanged, while methods that can use the
inputs (the optimally weighted MMD of :mod:`diagnostics.mmd`, ABC with common random
numbers, quasi-Monte Carlo) call ``problem.noise_simulator(theta, u)``. A built-in problem
whose plain simulator must keep its random stream passes both:
``Problem(prior, simulator, noise_simulator=g, noise_dim=k)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["DrawsNoise", "check_noise_simulator", "qmc_uniform"]

NoiseSimulator = Callable[[Tensor, Tensor], Tensor]


class DrawsNoise:
    """``simulator(theta)`` for a ``g(theta, u)``: draws ``u ~ U[0, 1]^k`` with torch's RNG
    (a picklable callable, so worker processes can run it)."""

    def __init__(self, noise_simulator: NoiseSimulator, noise_dim: int):
        self.noise_simulator = noise_simulator
        self.noise_dim = int(noise_dim)

    def __call__(self, theta: Tensor) -> Tensor:
        u = torch.rand(theta.shape[0], self.noise_dim, dtype=torch.float64)
        return self.noise_simulator(theta, u)


def check_noise_simulator(g: NoiseSimulator, noise_dim: int, theta: Tensor) -> None:
    """Run ``g`` twice on ``theta`` ``(n, D)`` with the same ``u``: it must return ``(n, ...)``
    and be a deterministic function of ``(theta, u)`` (else the inputs are not all exposed)."""
    if int(noise_dim) < 1:
        raise ValueError(f"noise_dim must be a positive number of random inputs, got {noise_dim}.")
    gen = torch.Generator().manual_seed(0)
    u = torch.rand(theta.shape[0], int(noise_dim), generator=gen, dtype=torch.float64)
    try:
        a, b = g(theta, u), g(theta, u.clone())
    except Exception as err:
        raise ValueError(
            f"With noise_dim={noise_dim} the simulator is called as simulator(theta, u) with "
            f"theta {tuple(theta.shape)} and uniform inputs u {tuple(u.shape)} in [0, 1]; it "
            f"raised {type(err).__name__}: {err}. Give noise_dim only for a simulator taking "
            "(theta, u).") from err
    if not isinstance(a, Tensor) or a.shape[:1] != theta.shape[:1]:
        raise ValueError(f"simulator(theta, u) must return a Tensor with {theta.shape[0]} rows, "
                         f"got {type(a).__name__} {tuple(getattr(a, 'shape', ()))}.")
    same = torch.equal(a, b) or bool(torch.allclose(a, b, equal_nan=True))
    if not same:
        raise ValueError(
            f"simulator(theta, u) returned different x for the same (theta, u): it draws random "
            f"numbers besides u. With noise_dim={noise_dim} every random input must come from "
            "u (map uniforms through inverse CDFs, e.g. torch.special.ndtri(u) for normals), or "
            "leave noise_dim out (methods then fall back to the V-statistic MMD).")


def qmc_uniform(m: int, noise_dim: int, seed: int = 0) -> Tensor:
    """``m`` scrambled Sobol points ``(m, noise_dim)`` in ``(0, 1)`` (randomized QMC, fixed
    seed), as float64."""
    from scipy.stats import qmc

    sampler = qmc.Sobol(d=int(noise_dim), scramble=True, seed=seed)
    pts = sampler.random(int(m))  # m need not be a power of 2 (balance is best when it is)
    return torch.as_tensor(pts, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
