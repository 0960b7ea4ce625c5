"""Reading observations and writing samples for the CLI and the server."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["read_observations", "write_samples_csv", "read_samples_csv"]


def read_observations(path: str | Path, x_shape: tuple[int, ...]) -> Tensor:
    """Read one or several observations from ``.csv`` or ``.npy`` → ``(B, *x_shape)``.

    A CSV holds one observation per row (flattened; an optional header line is skipped).
    A ``.npy`` holds ``x_shape`` (one observation) or ``(B, *x_shape)``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No observation file at {path}.")
    size = math.prod(x_shape)
    if path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except ValueError as err:
            raise ValueError(f"{path} is not a plain numeric .npy file: {err}") from err
    elif path.suffix in (".csv", ".txt"):
        rows = []
        with open(path, newline="") as fh:
            for i, row in enumerate(csv.reader(fh)):
                if not row or all(not c.strip() for c in row):
                    continue
                try:
                    rows.append([float(c) for c in row])
                except ValueError:
                    if i == 0:
                        continue  # header line
                    raise ValueError(f"{path}, line {i + 1}: non-numeric value in {row}.") from None
        if not rows:
            raise ValueError(f"{path} holds no observations.")
        widths = {len(r) for r in rows}
        if len(widths) != 1:
            raise ValueError(f"{path}: rows have different numbers of values {sorted(widths)}.")
        arr = np.asarray(rows, dtype=np.float32)
    else:
        raise ValueError(f"Observations must be a .csv or .npy file, got {path.name}.")
    arr = np.asarray(arr, dtype=np.float32)
    if tuple(arr.shape) == tuple(x_shape):
        arr = arr[None]
    elif (arr.ndim >= 2 and math.prod(arr.shape[1:]) == size) or (arr.ndim == 1 and arr.size == size):
        arr = arr.reshape(-1, *x_shape)
    else:
        raise ValueError(
            f"{path} holds an array of shape {arr.shape}; expected one observation of shape "
            f"{tuple(x_shape)} or several, one per row ({size} values each)."
        )
    return torch.from_numpy(arr)


def write_samples_csv(path: str | Path, samples: Tensor, param_names: list[str],
                      observation_index: bool = True) -> Path:
    """Write samples ``(n, B, D)`` to CSV with an ``observation`` column and parameter names."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n, b, d = samples.shape
    flat = samples.permute(1, 0, 2).reshape(b * n, d).numpy()
    obs = np.repeat(np.arange(b), n)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow((["observation"] if observation_index else []) + list(param_names))
        for i in range(b * n):
            writer.writerow(([int(obs[i])] if observation_index else []) +
                            [f"{v:.7g}" for v in flat[i]])
    return path


def read_samples_csv(path: str | Path) -> tuple[list[str], Tensor]:
    """Read a CSV written by :func:`write_samples_csv` → (parameter names, ``(N, D)`` samples)."""
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        rows = [[float(c) for c in r] for r in reader if r]
    data = torch.tensor(rows, dtype=torch.float32)
    if header and header[0] == "observation":
        return header[1:], data[:, 1:]
    return header, data
