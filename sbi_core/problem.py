"""Problem: a prior, a batched simulator and the names that go with them.

A simulator is a callable ``Tensor[N, D] -> Tensor[N, *x_shape]``; see
``simulators.adapters`` for numpy and per-sample functions. Construction runs the
simulator once on a small batch so that shape mistakes show up here, with a message,
rather than deep inside training.

Example::

    problem = Problem(box_uniform([-1, -1], [1, 1]), lambda t: t + 0.1 * torch.randn_like(t),
                      param_names=["a", "b"], name="shifted")
    x_o = problem.observation(1)     # fixed, documented seed
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Distribution

from sbi_core.priors import as_prior, prior_spec, user_prior_class

__all__ = ["Problem", "OBSERVATION_SEED_BASE", "NUM_OBSERVATIONS", "check_trials"]

Simulator = Callable[[Tensor], Tensor]
ReferenceSampler = Callable[[Tensor, int, int], Tensor]

#: Observation k (1..10) of a problem is simulated with seed ``OBSERVATION_SEED_BASE + k``.
OBSERVATION_SEED_BASE = 1_000_000
NUM_OBSERVATIONS = 10


class Problem:
    """A prior over ``D`` parameters and a batched simulator.

    Args:
        prior: any torch distribution with event shape ``(D,)`` and no batch shape, or frozen
            ``scipy.stats`` distributions (one or a list; wrapped by
            :func:`sbi_core.priors.as_prior`). A user-written ``Distribution`` subclass
            works too; a warning here says that loading a saved model will need it again
            (``load(path, prior=...)``).
        simulator: callable mapping ``theta`` ``(N, D)`` to ``x`` ``(N, *x_shape)``.
        param_names: ``D`` names (default ``theta_1..theta_D``).
        name: short identifier used in files and reports.
        x_shape: expected shape of one simulation; checked against a test run.
        reference_posterior: optional ``f(x_o, num_samples, seed) -> (num_samples, D)``
            sampler of the true posterior, for benchmarks and tests.
        source: how to rebuild this problem (a built-in name or ``file.py:function``);
            set by :func:`sbi_core.resolve_problem`.
        validate: run the simulator on a small batch to check shapes and dtype.
        validate_timeout: seconds that test run may take (POSIX, main thread); a simulator
            that hangs for some parameters then gets a clear error naming ``validate=False``
            instead of hanging here. ``None``: no limit.
        observation_seeds: the 10 seeds of :meth:`observation` ``1..10`` (default
            ``OBSERVATION_SEED_BASE + k``); benchmark problems list theirs to skip degenerate
            draws, as the SBI benchmark does.
        x_names: optional names of the ``prod(x_shape)`` columns of the flattened ``x``,
            used in reports of invalid simulations.
        x_discrete: indices into the flattened ``x`` of columns holding integer codes
            (choices, counts, categories); ``fit`` passes them to methods that model them as
            discrete (``mnle``; ``npe`` one-hot encodes them). Saved in :meth:`spec`.
        noise_dim: the simulator exposes its ``k`` random inputs: it is called as
            ``simulator(theta, u)`` with ``u`` ``(N, k)`` uniform in ``[0, 1]`` (see
            :mod:`sbi_core.noise`); ``problem.simulator(theta)`` then draws ``u`` itself and
            ``problem.noise_simulator`` is the two-argument function (used by ABC and the
            optimally weighted MMD). With ``noise_simulator`` given, ``simulator`` stays the
            one-argument function and ``noise_simulator(theta, u)`` is the exposed version.
        x_trials: ``(n, d)``: the flattened ``x`` is ``n`` exchangeable trials of ``d`` values
            each (trial ``i`` is ``x[i*d:(i+1)*d]``), e.g. iid draws given ``theta``, so the
            posterior does not change when trials are reordered. ``fit``'s NPE then uses a
            permutation-invariant embedding by default (docs/embeddings.md, "Declared
            trials"); ``embedding="identity"`` turns that off. ``n * d`` must equal
            ``prod(x_shape)``. Saved in :meth:`spec`.
    """

    def __init__(
        self,
        prior: Distribution,
        simulator: Simulator,
        param_names: Sequence[str] | None = None,
        name: str = "problem",
        x_shape: Sequence[int] | None = None,
        reference_posterior: ReferenceSampler | None = None,
        source: str | None = None,
        validate: bool = True,
        description: str = "",
        observation_seeds: Sequence[int] | None = None,
        x_names: Sequence[str] | None = None,
        x_discrete: Sequence[int] | None = None,
        noise_dim: int | None = None,
        noise_simulator: Callable[[Tensor, Tensor], Tensor] | None = None,
        x_trials: Sequence[int] | None = None,
        validate_timeout: float | None = 300.0,
    ):
        prior = as_prior(prior)
        if len(prior.event_shape) != 1 or prior.batch_shape != torch.Size():
            scalar = len(prior.event_shape) == 0 and prior.batch_shape == torch.Size()
            raise ValueError(
                "The prior must have event shape (D,) and no batch shape; got event shape "
                f"{tuple(prior.event_shape)} and batch shape {tuple(prior.batch_shape)}. "
                + ("For one parameter use sbi_core.independent(dist) (a prior of dimension 1)."
                   if scalar else
                   "Wrap a batch of 1-D distributions with torch.distributions.Independent(dist, "
                   "1) or list per-parameter distributions in sbi_core.independent(...).")
            )
        if not callable(simulator):
            raise TypeError("simulator must be callable: Tensor[N, D] -> Tensor[N, *x_shape].")
        self.noise_dim, self.noise_simulator = _noise_inputs(prior, simulator, noise_dim,
                                                             noise_simulator, validate)
        if noise_dim is not None and noise_simulator is None:
            from sbi_core.noise import DrawsNoise

            simulator = DrawsNoise(simulator, noise_dim)
        self.prior = prior
        self.simulator = simulator
        self.name = name
        self.dim = int(prior.event_shape[0])
        names = list(param_names) if param_names is not None else [
            f"theta_{i + 1}" for i in range(self.dim)
        ]
        if len(names) != self.dim:
            raise ValueError(
                f"param_names has {len(names)} names but the prior has {self.dim} dimensions."
            )
        self.param_names = names
        self.reference_posterior = reference_posterior
        self.source = source
        self.description = description
        self._observations: dict[int, tuple[Tensor, Tensor]] = {}
        self._test_x: Tensor | None = None
        if observation_seeds is not None and len(observation_seeds) != NUM_OBSERVATIONS:
            raise ValueError(f"observation_seeds must list {NUM_OBSERVATIONS} seeds, got "
                             f"{len(observation_seeds)}.")
        self.observation_seeds = [int(s) for s in observation_seeds] if observation_seeds \
            else [OBSERVATION_SEED_BASE + k for k in range(1, NUM_OBSERVATIONS + 1)]
        self.x_shape: tuple[int, ...] | None = as_shape(x_shape) if x_shape is not None else None
        # Savability is settled here, before any simulation or training (never after fit).
        user_class = user_prior_class(prior_spec(prior))
        if user_class is not None:
            warnings.warn(
                f"Problem {name!r}: the prior is a user-written class ({user_class}). Trained "
                "models store only its name, never its code, so loading one needs the prior "
                "again: sbi_core.load(path, prior=...) or `--problem` on the command line. "
                "Priors built from torch.distributions classes (Independent, "
                "TransformedDistribution, MixtureSameFamily, ...), scipy.stats or "
                "sbi_core.independent(...) are stored in full.", UserWarning, stacklevel=2)
        if validate:
            self._validate_in_time(validate_timeout)
        elif self.x_shape is None:
            raise ValueError("x_shape is required when validate=False.")
        self.x_names = list(x_names) if x_names is not None else None
        if self.x_names is not None and len(self.x_names) != int(np.prod(self.x_shape)):
            raise ValueError(f"x_names has {len(self.x_names)} names but x has "
                             f"{int(np.prod(self.x_shape))} columns (x_shape {self.x_shape}).")
        self.x_discrete: list[int] | None = None
        if x_discrete is not None:
            self.x_discrete = _check_discrete(x_discrete, self.x_shape, self._test_x)
        self._test_x = None  # only needed for the check above
        self.x_trials: tuple[int, int] | None = (
            check_trials(x_trials, self.x_shape) if x_trials is not None else None)

    _tried_note = ""

    def _test_rows_that_work(self, err: Exception, n: int, more: int = 16) -> Tensor | None:
        """The simulator raised on the test batch: find rows of the prior it does simulate.

        A simulator may fail for part of the prior (it raises there, or reports failed rows with
        ``RowFailures``); that is recorded per row by ``simulate`` and must not reject the
        problem. The good rows of a ``RowFailures`` report are used; otherwise up to ``more``
        prior draws (the test batch's first) are simulated one at a time, and the first that
        works stands for the test batch (an external program gets them as one batch, and is
        not started again when it reported no failed rows). None when none works (the
        simulator is broken or called the wrong way): the caller reports the first error.
        """
        from sbi_core.failures import RowFailures

        def good_rows(report: Exception, size: int) -> Tensor | None:
            if not isinstance(report, RowFailures) or not isinstance(report.x, Tensor):
                return None
            failed = torch.as_tensor(report.failed, dtype=torch.bool).reshape(-1)
            if len(failed) != size or bool(failed.all()) or report.x.shape[0] != size:
                return None
            return report.x[~failed]

        x = good_rows(err, n)
        if x is not None:
            return x
        try:
            from simulators.external import ExternalProgram

            program = isinstance(self.simulator, ExternalProgram)
        except ImportError:
            program = False
        if program and not isinstance(err, RowFailures):
            return None  # a program that reports no failed rows is not started again
        torch.manual_seed(0)
        draws = self.prior.sample((more,)).reshape(more, -1)
        if program:  # batched by construction: one start for all the draws
            try:
                return self.simulator(draws)
            except Exception as again:
                return good_rows(again, more)
        for row in draws:
            try:
                x = self.simulator(row[None])
            except Exception:
                continue
            if isinstance(x, Tensor) and x.ndim >= 1 and x.shape[0] == 1 \
                    and bool(torch.isfinite(x).any()):
                return x
        self._tried_note = f" (It also raised for each of {more} more prior draws.)"
        return None

    def _validate_in_time(self, seconds: float | None) -> None:
        """:meth:`_validate`, stopped with a clear error after ``seconds`` (a simulator that
        hangs for some parameters would otherwise hang ``Problem(...)`` forever)."""
        from sbi_core.time_limit import TimeLimitExceeded, time_limit

        if seconds is not None and not seconds > 0:
            raise ValueError(f"validate_timeout must be positive seconds or None, got {seconds}.")
        try:
            with time_limit(seconds):
                self._validate()
        except TimeLimitExceeded:
            raise ValueError(
                f"The simulator did not finish its test run on 3 prior draws within {seconds:g} "
                "s (Problem runs it once to check shapes); it may hang for some parameters. "
                "Build the problem with Problem(..., validate=False, x_shape=...) to skip the "
                "test run (simulate(..., timeout=SECONDS), CLI --timeout, then records chunks "
                "that hang as invalid), or give a slow simulator more time with "
                "validate_timeout=SECONDS (None: no limit).") from None

    def _validate(self, n: int = 3) -> None:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            theta = self.prior.sample((n,))
            if theta.shape != (n, self.dim):
                raise ValueError(
                    f"prior.sample(({n},)) returned shape {tuple(theta.shape)}, expected ({n}, {self.dim})."
                )
            first_err: Exception | None = None
            try:
                x = self.simulator(theta)
            except Exception as err:
                first_err = err
                x = self._test_rows_that_work(err, n)
                if x is not None:
                    n, theta = len(x), theta[:len(x)]  # shapes are checked on the working rows
            if first_err is not None and x is None:
                err = first_err
                hint = _raised_hint(self.simulator)
                if hint is None:
                    hint = _adapter_hint(self.simulator, theta) or (
                        " A simulator takes a batch Tensor[N, D]; wrap a per-sample function "
                        "with simulators.per_sample and a numpy one with simulators.from_numpy, "
                        "or let simulators.adapt(fn) detect which it is.")
                raise ValueError(
                    f"The simulator raised on a test batch of {n} prior samples (shape {tuple(theta.shape)}): "
                    f"{type(err).__name__}: {str(err).rstrip('.')}.{hint}{self._tried_note}"
                ) from err
        if isinstance(x, np.ndarray):
            raise TypeError(
                "The simulator returned a numpy array; wrap it with simulators.from_numpy(fn)."
                + _adapter_hint(self.simulator, theta)
            )
        if not isinstance(x, Tensor):
            raise TypeError(f"The simulator must return a torch.Tensor, got {type(x).__name__}.")
        if x.is_complex():
            from sbi_core.failures import COMPLEX_ADVICE

            raise TypeError("T" + COMPLEX_ADVICE.format(dtype=x.dtype)[1:] + ".")
        if not torch.is_floating_point(x):
            raise TypeError(
                f"The simulator must return floating-point values, got dtype {x.dtype}; cast with .float()."
            )
        if x.ndim == 1 and x.shape[0] == n:  # batched, but one bare number per simulation
            raise ValueError(
                f"For a batch of {n} parameters the simulator returned shape {tuple(x.shape)}; "
                f"expected ({n}, *x_shape) with one row per parameter set. For one number per "
                f"simulation return shape ({n}, 1), e.g. x.unsqueeze(-1)."
                + _adapter_hint(self.simulator, theta)
            )
        if x.ndim < 2 or x.shape[0] != n:
            raise ValueError(
                f"For a batch of {n} parameters the simulator returned shape {tuple(x.shape)}; expected "
                f"({n}, *x_shape) with one row per parameter set."
                + (_adapter_hint(self.simulator, theta)
                   or " Per-sample functions need simulators.per_sample(fn).")
            )
        got = tuple(x.shape[1:])
        if self.x_shape is not None and got != self.x_shape:
            raise ValueError(
                f"The simulator returned x of shape {got} per sample; expected x_shape {self.x_shape}."
            )
        self.x_shape = got
        self._test_x = x

    def observation(self, k: int) -> Tensor:
        """Observation ``k`` in ``1..10``, simulated with seed ``observation_seeds[k - 1]``
        (default ``OBSERVATION_SEED_BASE + k``)."""
        return self._observation(k)[1].clone()

    def true_parameters(self, k: int) -> Tensor:
        """The parameters ``(D,)`` that generated :meth:`observation` ``k``."""
        return self._observation(k)[0].clone()

    def _observation(self, k: int) -> tuple[Tensor, Tensor]:
        if not 1 <= k <= NUM_OBSERVATIONS:
            raise ValueError(f"Observations are numbered 1..{NUM_OBSERVATIONS}, got {k}.")
        if k not in self._observations:
            with torch.random.fork_rng():
                seed = self.observation_seeds[k - 1]
                torch.manual_seed(seed)
                np.random.seed(seed)
                theta = self.prior.sample((1,))
                x = self.simulator(theta)
            self._observations[k] = (theta[0].float(), x[0].float())
        return self._observations[k]

    def spec(self) -> dict[str, Any]:
        """Plain-value description saved with trained models."""
        return {
            "name": self.name,
            "param_names": list(self.param_names),
            "prior": prior_spec(self.prior),
            "x_shape": list(self.x_shape or ()),
            "source": self.source,
            **({"x_names": list(self.x_names)} if self.x_names is not None else {}),
            **({"x_discrete": list(self.x_discrete)} if self.x_discrete is not None else {}),
            **({"x_trials": list(self.x_trials)} if self.x_trials is not None else {}),
        }

    def __repr__(self) -> str:
        return f"Problem(name={self.name!r}, dim={self.dim}, x_shape={self.x_shape})"


def _noise_inputs(prior: Distribution, simulator: Callable, noise_dim: int | None,
                  noise_simulator: Callable | None, validate: bool
                  ) -> tuple[int | None, Callable | None]:
    """``(noise_dim, noise_simulator)`` checked (:mod:`sbi_core.noise`), or ``(None, None)``."""
    if noise_dim is None:
        if noise_simulator is not None:
            raise ValueError("noise_simulator needs noise_dim (its number of uniform inputs).")
        return None, None
    g = noise_simulator if noise_simulator is not None else simulator
    if validate:
        from sbi_core.noise import check_noise_simulator

        with torch.random.fork_rng():
            torch.manual_seed(0)
            check_noise_simulator(g, noise_dim, prior.sample((3,)))
    return int(noise_dim), g


def _raised_hint(simulator: Callable) -> str | None:
    """The hint for a simulator that raised when the adapter advice does not apply: an
    external program is batched already, and ``adapt`` has named the kinds it tried."""
    try:
        from simulators.adapters import adapt
        from simulators.external import ExternalProgram
    except ImportError:
        return None
    if isinstance(simulator, ExternalProgram):
        return (" Fix the program (its stderr, if it wrote any, is quoted above); a relative path in the command is "
                "resolved from the current directory (external_simulator(..., cwd=...) sets "
                "another), and with io='text' stdout must hold only the rows of x.")
    if type(simulator) is adapt:  # not from_numpy/per_sample, whose kind is fixed
        return ""  # its message already says what was tried and how to call it
    return None


def _adapter_hint(simulator: Simulator, theta: Tensor) -> str:
    """The adapter call that works for ``simulator`` (probed), or ``""``."""
    try:
        from simulators.adapters import suggest_adapter
    except ImportError:
        return ""
    return suggest_adapter(simulator, theta)


def as_shape(value: object, name: str = "x_shape") -> tuple[int, ...]:
    """``value`` as a shape tuple: a whole number ``n`` means ``(n,)`` (``x_shape=100``), a
    sequence of positive whole numbers is kept; anything else is a ``TypeError`` naming it."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        value = (value,)
    try:
        dims = tuple(value)  # type: ignore[arg-type]
    except TypeError:
        dims = None
    if dims is None or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool)
                               and d >= 1 for d in dims):
        raise TypeError(f"{name} must be a shape: positive whole numbers such as (100,) or "
                        f"(1, 64, 64) (or one number, 100), got {value!r}.")
    return tuple(int(d) for d in dims)


def _check_discrete(columns: Sequence[int], x_shape: tuple[int, ...] | None,
                    test_x: Tensor | None) -> list[int]:
    """Validated ``x_discrete``: distinct indices of the flattened x, integer-valued on the
    validation batch when there is one."""
    cols = [int(c) for c in columns]
    size = int(np.prod(x_shape)) if x_shape is not None else 0
    bad = [c for c in cols if not 0 <= c < size]
    if not cols or bad or len(set(cols)) != len(cols):
        raise ValueError(f"x_discrete={list(columns)} must list distinct indices of the flattened "
                         f"x, which has {size} values (0..{size - 1}).")
    if test_x is not None:
        v = test_x.reshape(test_x.shape[0], -1)[:, cols]
        frac = ((v - v.round()).abs() > 1e-6).any(0)
        if bool(frac.any()):
            wrong = [c for c, f in zip(cols, frac.tolist()) if f]
            raise ValueError(f"x_discrete declares columns {wrong} discrete, but the simulator "
                             "returned non-integer values there on a test batch. Declare only "
                             "columns of integer codes (choices, counts, categories).")
    return cols


def check_trials(trials: Sequence[int], x_shape: Sequence[int] | None) -> tuple[int, int]:
    """Validated ``x_trials``: ``(n, d)`` positive integers with ``n * d == prod(x_shape)``
    (``x_shape`` None: not checked against it)."""
    try:
        n, d = (int(v) for v in trials)
        ok = all(float(v) == int(v) for v in trials) and n >= 1 and d >= 1
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"x_trials={trials!r} must be two positive integers (n, d): n "
                         "exchangeable trials of d values each in the flattened x, e.g. "
                         "x_trials=(4, 2) for 4 iid draws of a 2-D vector.")
    if x_shape is not None and n * d != int(np.prod(x_shape)):
        size = int(np.prod(x_shape))
        raise ValueError(f"x_trials=({n}, {d}) covers {n * d} values, but x has {size} "
                         f"(x_shape {tuple(x_shape)}). Declare (n, d) with n * d = {size}: n "
                         "trials of d values each, trial i being x.flatten()[i*d:(i+1)*d].")
    return n, d
