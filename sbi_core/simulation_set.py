"""SimulationSet: parameters, simulations, a validity mask and where they came from.

Invalid simulations (the simulator raised, or returned NaN/inf) are kept, not dropped:
their rows in ``x`` hold NaN and ``valid`` is False, so nothing simulated is ever lost
and the failure counts travel with the data. Training uses :meth:`SimulationSet.training_data`,
which excludes them with a warning.
"""

from __future__ import annotations

import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sbi_core.atomic import atomic_write, check_suffix, damaged_entry
from sbi_core.display import shown

__all__ = ["SimulationSet", "SIMULATIONS_FORMAT"]

SIMULATIONS_FORMAT = "sbi-core-simulations"
_FORMAT_VERSION = 1


@dataclass
class SimulationSet:
    """Simulations ``x`` ``(N, *x_shape)`` of parameters ``theta`` ``(N, D)``.

    Attributes:
        theta: parameters, float32 ``(N, D)``.
        x: simulations, float32 ``(N, *x_shape)``; rows of invalid simulations may hold NaN.
        valid: bool ``(N,)``, False where the simulator raised or returned NaN/inf.
        provenance: plain-value dict (problem name, seed, chunk size, failure count,
            first error message, library versions).
    """

    theta: Tensor
    x: Tensor
    valid: Tensor
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.theta.shape[0]
        if self.theta.ndim != 2:
            raise ValueError(f"theta must have shape (N, D), got {tuple(self.theta.shape)}.")
        if self.x.ndim < 2 or self.x.shape[0] != n:
            raise ValueError(
                f"x must have shape (N, *x_shape) with N={n} rows to match theta, got "
                f"{tuple(self.x.shape)}."
            )
        if self.valid.shape != (n,):
            raise ValueError(f"valid must have shape ({n},), got {tuple(self.valid.shape)}.")

    @classmethod
    def from_arrays(cls, theta: Tensor | np.ndarray, x: Tensor | np.ndarray,
                    provenance: dict[str, Any] | None = None) -> SimulationSet:
        """Wrap given arrays; rows of ``x`` with NaN/inf are marked invalid."""
        theta_t = torch.as_tensor(np.asarray(theta) if not isinstance(theta, Tensor) else theta)
        x_t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x)
        theta_t, x_t = theta_t.float(), x_t.float()
        if theta_t.ndim == 1:
            theta_t = theta_t[:, None]
        if x_t.ndim == 1:
            x_t = x_t[:, None]
        if theta_t.shape[0] == 0 or x_t.shape[0] == 0:
            where = (provenance or {}).get("source_file")
            raise ValueError(
                f"The simulations{f' in {where}' if where else ''} have 0 rows (theta "
                f"{tuple(theta_t.shape)}, x {tuple(x_t.shape)}); simulate at least a few hundred "
                "(sbi-core simulate) and save them again."
            )
        if x_t.shape[0] != theta_t.shape[0]:
            raise ValueError(
                f"theta has {theta_t.shape[0]} rows but x has {x_t.shape[0]}; each x row must be "
                "the simulation of the matching theta row."
            )
        valid = torch.isfinite(x_t.reshape(x_t.shape[0], -1)).all(1) & torch.isfinite(theta_t).all(1)
        prov = dict(provenance or {})
        prov.setdefault("num_invalid", int((~valid).sum()))
        return cls(theta_t, x_t, valid, prov)

    def __len__(self) -> int:
        return int(self.theta.shape[0])

    @property
    def num_invalid(self) -> int:
        return int((~self.valid).sum())

    @property
    def x_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def training_data(self, warn: bool = True) -> tuple[Tensor, Tensor]:
        """``(theta, x)`` of the valid simulations only, warning when some were excluded."""
        n_bad = self.num_invalid
        if len(self) == 0:
            raise ValueError("The simulation set has 0 rows; simulate (or load) at least a few "
                             "hundred simulations before training.")
        if n_bad == len(self):
            err = self.first_error
            raise ValueError(
                f"All {len(self)} simulations are invalid (NaN/inf or the simulator raised)"
                + (f"; first error: {err}" if err else "") + self._invalid_note()
                + ". Fix the simulator or the prior range before training."
            )
        if n_bad and warn:
            err = self.first_error
            warnings.warn(
                f"Excluding {n_bad} of {len(self)} invalid simulations (NaN/inf or errors) from "
                "training" + (f"; first error: {err}" if err else "") + self._invalid_note()
                + ". Excluding them biases the posterior where the simulator fails; see which "
                "rows failed in sims.valid (CLI: the `valid` array of the simulation file, or "
                "of the zarr store of `sbi-core run --store`).",
                stacklevel=2,
            )
        return self.theta[self.valid], self.x[self.valid]

    @property
    def first_error(self) -> str | None:
        """The recorded first simulation error, escaped and bounded for display (it may hold
        a program's output, or come from a file someone else wrote)."""
        err = self.provenance.get("first_error")
        return shown(err, 1000) if err else None

    def invalid_summary(self, x_names: list[str] | None = None) -> str:
        """Which x columns are NaN/inf and how often, e.g. ``"column 7 (ratio_mean) is NaN
        in 3,996 of 4,000 rows"`` (``""`` when all are finite); names from ``x_names`` or
        the provenance's ``x_names``."""
        from sbi_core.failures import describe_invalid

        return describe_invalid(self.x, x_names or self.provenance.get("x_names"))

    def _invalid_note(self) -> str:
        text = self.invalid_summary()
        return f"; {text}" if text else ""

    def concat(self, other: SimulationSet) -> SimulationSet:
        if other.x_shape != self.x_shape or other.theta.shape[1] != self.theta.shape[1]:
            raise ValueError("Cannot concatenate simulation sets of different shapes.")
        prov = dict(self.provenance)
        prov["num_invalid"] = self.num_invalid + other.num_invalid
        return SimulationSet(torch.cat([self.theta, other.theta]), torch.cat([self.x, other.x]),
                             torch.cat([self.valid, other.valid]), prov)

    def save(self, path: str | Path, *, any_name: bool = False) -> Path:
        """Write to ``.pt`` (loadable without code execution) or ``.npz``.

        A ``path`` whose ending names another format (``sims.csv``, ``.npy``, ...) is
        refused unless ``any_name`` (the CLI's ``--force``).
        """
        path = Path(path)
        if not any_name:
            check_suffix(path, "simulations", "path")  # sims.csv would be a torch archive
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".npz":
            with atomic_write(path) as tmp:  # tmp ends in .npz, so numpy adds no suffix
                np.savez(tmp, theta=self.theta.numpy(), x=self.x.numpy(),
                         valid=self.valid.numpy())
            return path
        payload = {
            "format": SIMULATIONS_FORMAT,
            "format_version": _FORMAT_VERSION,
            "theta": self.theta,
            "x": self.x,
            "valid": self.valid,
            "provenance": _plain(self.provenance),
        }
        with atomic_write(path) as tmp:  # a crash never leaves a half-written file
            torch.save(payload, tmp)
        return path

    @classmethod
    def load(cls, path: str | Path) -> SimulationSet:
        """Read a ``.pt`` written by :meth:`save`, or an ``.npz`` with ``theta`` and ``x``."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"No simulation file at {path}.")
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                missing = {"theta", "x"} - set(data.files)
                if missing:
                    raise ValueError(
                        f"{path} lacks arrays {sorted(missing)}; an .npz needs 'theta' (N, D) and "
                        f"'x' (N, ...); it has {data.files}."
                    )
                if data["theta"].ndim == 0 or data["theta"].shape[0] == 0:
                    raise ValueError(f"{path} holds no simulations (theta has shape "
                                     f"{data['theta'].shape}); simulate some first.")
                return cls.from_arrays(data["theta"], data["x"], {"source_file": str(path)})
        if path.suffix == ".zarr" or path.is_dir():
            from sbi_core.stores import load_store  # optional extra (zarr)

            return load_store(path)
        bad = damaged_entry(path) if zipfile.is_zipfile(path) else None
        if bad is not None:
            raise ValueError(
                f"{path} is damaged: its entry {bad.split('/', 1)[-1]} fails its checksum (bytes "
                "changed on disk or in a copy), so the simulations it would load are wrong. "
                "Copy the file again from its source, or simulate again.")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(
                f"{path} is not a readable sbi-core simulation file ({type(err).__name__}: {err}). "
                "Use a file written by `sbi-core simulate` or an .npz with theta and x."
            ) from err
        if not isinstance(payload, dict) or payload.get("format") != SIMULATIONS_FORMAT:
            raise ValueError(
                f"{path} is not an sbi-core simulation file. Use a file written by "
                "`sbi-core simulate` or an .npz with arrays theta and x."
            )
        if payload.get("format_version") != _FORMAT_VERSION:
            raise ValueError(
                f"{path} has simulation format version {shown(payload.get('format_version'))}; this "
                f"sbi-core reads version {_FORMAT_VERSION}."
            )
        return cls(*_checked_payload(payload, path))


def _checked_payload(payload: dict[str, Any], path: Path
                     ) -> tuple[Tensor, Tensor, Tensor, dict[str, Any]]:
    """``(theta, x, valid, provenance)`` of a simulation file, with every entry of the type
    ``save`` writes (a damaged or edited file gets one message naming the entry). A row
    whose ``x`` is not finite is invalid whatever the file's ``valid`` says."""
    def damaged(key: str, what: str) -> ValueError:
        return ValueError(f"{path} is damaged: its {key!r} entry is {what}; sbi-core never "
                          "writes that. Simulate again (or copy the file again from its source).")

    for key in ("theta", "x", "valid"):
        if not isinstance(payload.get(key), Tensor):
            raise damaged(key, f"a {type(payload.get(key)).__name__}, not a tensor")
    if not payload["theta"].is_floating_point() or not payload["x"].is_floating_point():
        raise damaged("theta" if not payload["theta"].is_floating_point() else "x",
                      "not floating point")
    if payload["valid"].dtype != torch.bool:
        raise damaged("valid", f"of dtype {payload['valid'].dtype}, not bool")
    provenance = payload.get("provenance")
    if not isinstance(provenance, dict):
        raise damaged("provenance", f"a {type(provenance).__name__}, not a dict")
    for key in ("param_names", "x_names"):
        value = provenance.get(key)
        if value is not None and (not isinstance(value, list)
                                  or not all(isinstance(v, str) for v in value)):
            raise damaged(f"provenance.{key}", "not a list of names")
    theta, x, valid = payload["theta"], payload["x"], payload["valid"]
    if theta.ndim == 2 and x.ndim >= 1 and x.shape[0] == theta.shape[0] == valid.shape[0]:
        valid = valid & torch.isfinite(x.reshape(x.shape[0], -1)).all(1) \
            & torch.isfinite(theta).all(1)
    return theta, x, valid, dict(provenance)


def _plain(value: Any) -> Any:
    """Convert to values torch.load(weights_only=True) accepts."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, str):
        return str(value)  # plain str, not a subclass such as torch's TorchVersion
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, Tensor):
        return value.detach().cpu()
    return str(value)
