"""Request and response bodies of the REST API (pydantic models) and observation parsing.

JSON cannot carry NaN or infinity as numbers, so observations and parameters are accepted
as nested lists whose entries are numbers, numeric strings (``"1.5"``, ``"nan"``, ``"inf"``)
or ``null`` (read as NaN). :func:`to_tensor` turns such a list into a float tensor and says
precisely what is wrong when it cannot; non-finite values are then rejected by the posterior
with a message naming the problem. In responses, non-finite numbers (e.g. a ``log_prob`` of
``-inf`` outside the prior support) are written as ``null``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from torch import Tensor

__all__ = [
    "InputError",
    "MCMCOptions",
    "MCMCDiagnostics",
    "SampleRequest",
    "LogProbRequest",
    "MapRequest",
    "SummaryRequest",
    "SampleResponse",
    "LogProbResponse",
    "MapResponse",
    "SummaryResponse",
    "to_tensor",
    "plain",
]

_X_DOC = ("One observation as a (nested) list of shape x_shape. Entries are numbers; 'nan', "
          "'inf' strings and null are accepted so that such values reach the validator (which "
          "rejects them with a clear message). Give either x or xs.")
_XS_DOC = "Several observations, shape (B, *x_shape). Give either x or xs."


_MAX_SEED = 2**63 - 1
# Integer fields (n, seed, steps, num_init, MCMC counts) are StrictInt: pydantic's lax mode
# would read `true` as 1 and `2.0` as 2; a JSON boolean or a number with a decimal point is
# refused with a 422 whose "loc" names the field.


class InputError(ValueError):
    """The request's values cannot be turned into the tensor the posterior needs (→ HTTP 422)."""


class _Observations(BaseModel):
    # an unknown field (e.g. "num_samples" for "n") is an error, never silently ignored
    model_config = ConfigDict(extra="forbid")
    x: list[Any] | float | None = Field(None, description=_X_DOC)
    xs: list[Any] | None = Field(None, description=_XS_DOC)


class MCMCOptions(BaseModel):
    """Per-request MCMC settings (MCMC posteriors only: NLE, NRE); unset fields keep the
    model's saved settings. The work they imply counts against the server's limits."""

    model_config = ConfigDict(extra="forbid")
    method: Literal["auto", "slice", "hmc"] | None = Field(None, description="sampler")
    num_chains: StrictInt | None = Field(None, ge=1, le=1_000_000, description="parallel chains")
    warmup_steps: StrictInt | None = Field(None, ge=0, le=1_000_000,
                                     description="transitions per chain discarded for tuning")
    thin: StrictInt | None = Field(None, ge=1, le=10_000, description="keep every thin-th transition")

    def options(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


_MCMC_DOC = ("MCMC settings for this request (MCMC posteriors only), e.g. {\"warmup_steps\": "
             "300, \"num_chains\": 40} when the response warns that the chains have not mixed")


class SampleRequest(_Observations):
    n: StrictInt | None = Field(None, description="samples per observation; default 1000 (or the "
                                           "server's max_samples if smaller)")
    seed: StrictInt | None = Field(None, ge=0, le=_MAX_SEED,
                             description="fix the random numbers (same seed, same draws)")
    mcmc: MCMCOptions | None = Field(None, description=_MCMC_DOC)


class LogProbRequest(_Observations):
    theta: list[Any] = Field(..., description="parameters: (N, D) for x, or (N, B, D) for xs")


class MapRequest(_Observations):
    num_init: StrictInt | None = Field(None, ge=1, description="posterior samples used to initialize "
                                 "the search; default 1000 (or max_samples if smaller)")
    steps: StrictInt = Field(100, ge=0, description="gradient refinement steps (0 to skip)")
    seed: StrictInt | None = Field(0, ge=0, le=_MAX_SEED, description="seed of the initial samples")


class SummaryRequest(_Observations):
    n: StrictInt | None = Field(None, description="samples used to estimate the summaries; default "
                                           "10000 (or max_samples if smaller)")
    quantiles: list[float] = Field([0.05, 0.25, 0.5, 0.75, 0.95],
                                   description="levels in [0, 1]")
    seed: StrictInt | None = Field(0, ge=0, le=_MAX_SEED, description="fix the random numbers")
    mcmc: MCMCOptions | None = Field(None, description=_MCMC_DOC)


class MCMCDiagnostics(BaseModel):
    method: str
    num_chains: int
    warmup_steps: int
    thin: int
    max_rhat: float | None = Field(..., description="largest split R-hat (null: too few "
                                   "draws per chain to compute); above ~1.1 the chains have not "
                                   "mixed")
    min_ess: float | None = Field(..., description="smallest effective sample size")
    rhat: list[Any] = Field(..., description="R-hat (D,) for x, or (B, D) for xs")
    ess: list[Any] = Field(..., description="ESS (D,) for x, or (B, D) for xs")
    acceptance_rate: float | None
    num_divergent: int
    seconds: float


_WARNINGS_DOC = ("problems a user must see before trusting the answer (e.g. MCMC chains that "
                 "have not mixed); empty when there are none")


class SampleResponse(BaseModel):
    param_names: list[str]
    samples: list[Any] = Field(..., description="(n, D) for x, or (B, n, D) for xs")
    seconds: float
    mcmc: MCMCDiagnostics | None = Field(None, description="MCMC diagnostics (MCMC posteriors "
                                         "only; null otherwise)")
    warnings: list[str] = Field(default_factory=list, description=_WARNINGS_DOC)
    misspecification: dict[str, Any] | None = Field(
        None, description="misspecification tests of the observation(s) against the training "
        "simulations: density_p, mmd_p, verdict ('ok' / 'misspecified'), alpha (lists for xs);"
        " null when the model has no detector (docs/trust.md)")


class LogProbResponse(BaseModel):
    log_prob: list[Any] = Field(..., description="(N,) for x or (N, B) for xs; -inf as null")
    normalized: bool


class MapResponse(BaseModel):
    param_names: list[str]
    map: list[Any] = Field(..., description="(D,) for x, or (B, D) for xs")


class SummaryResponse(BaseModel):
    param_names: list[str]
    n: int
    mean: list[Any] = Field(..., description="(D,) for x, or (B, D) for xs")
    std: list[Any]
    quantiles: dict[str, list[Any]] = Field(..., description="level -> (D,) or (B, D)")
    mcmc: MCMCDiagnostics | None = None
    warnings: list[str] = Field(default_factory=list, description=_WARNINGS_DOC)
    misspecification: dict[str, Any] | None = None


def _scalar(value: Any, where: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool):
        raise InputError(f"{where} is a boolean ({value}); expected a number.")
    if isinstance(value, float):
        return value
    if isinstance(value, int):
        return float(value) if abs(value) < 2**1000 else (math.inf if value > 0 else -math.inf)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            raise InputError(f"{where} is the string {value[:40]!r}, which is not a number.") \
                from None
    raise InputError(f"{where} is a {type(value).__name__}; expected a number.")


def to_tensor(value: Any, name: str, max_values: int) -> Tensor:
    """A float32 tensor from a nested list of numbers (ragged or non-numeric → :class:`InputError`).

    Args:
        value: a number or a (nested) list of numbers / numeric strings / null.
        name: the field's name, used in messages.
        max_values: the most numbers accepted (bounds memory and time).
    """
    flat: list[float] = []

    def walk(v: Any, path: str, depth: int) -> tuple[int, ...]:
        if depth > 8:
            raise InputError(f"{name} is nested deeper than 8 levels.")
        if isinstance(v, list):
            if not v:
                raise InputError(f"{name}{path} is an empty list.")
            shapes = [walk(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(v)]
            if any(s != shapes[0] for s in shapes):
                raise InputError(f"{name}{path} is ragged: its entries have different shapes "
                                 f"({sorted(set(shapes))[:3]}); give a regular array.")
            return (len(v), *shapes[0])
        flat.append(_scalar(v, f"{name}{path}"))
        if len(flat) > max_values:
            raise InputError(f"{name} has more than {max_values} numbers, the most this server "
                             "accepts in one request.")
        return ()

    shape = walk(value, "", 0)
    big = [v for v in flat if math.isfinite(v) and abs(v) > _FLOAT32_MAX]
    if big:  # would become inf in float32 and be reported as "NaN or inf"
        raise InputError(f"{name} holds finite values beyond float32's range (|value| up to "
                         f"{max(abs(v) for v in big):.3g} > 3.4e38); the model computes in "
                         "float32. Rescale the data the way the training simulations were "
                         "scaled.")
    return torch.tensor(flat, dtype=torch.float32).reshape(shape)


#: Largest finite float32.
_FLOAT32_MAX = 3.4028234663852886e38


def plain(value: Any) -> Any:
    """JSON-safe copy: tensors → lists, non-finite floats → ``None``, keys → strings."""
    if isinstance(value, Tensor):
        value = value.detach().cpu().tolist()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str | int | bool) or value is None:
        return value
    if hasattr(value, "item"):
        return plain(value.item())
    return str(value)
