"""Reading observations and writing samples for the CLI and the server."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from sbi_core.atomic import atomic_write
from sbi_core.display import from_spreadsheet_safe, spreadsheet_safe

__all__ = ["read_observations", "parse_csv_observations", "write_samples_csv",
           "read_samples_csv", "write_json"]

#: Largest observation file read into memory (bytes); larger data belong in a .npy.
MAX_TEXT_BYTES = 512 * 2**20


def read_observations(path: str | Path, x_shape: tuple[int, ...],
                      x_names: list[str] | None = None) -> Tensor:
    """Read one or several observations from ``.csv``, ``.npy`` or ``.json`` → ``(B, *x_shape)``.

    A CSV holds one observation per row (flattened), its values separated by commas, or by
    spaces or tabs as ``np.savetxt`` writes them by default (lines starting with ``#`` are
    comments). Its first line is skipped as a header
    only if every cell is a non-numeric name; any other non-numeric value is an error naming
    the line. A ``.npy`` holds ``x_shape`` (one observation) or ``(B, *x_shape)``; a ``.json``
    holds the same as nested lists of numbers. The number of observations is never changed
    silently: a file either parses completely or raises ``ValueError``. With ``x_names`` (the
    problem's names of the flattened x columns), a CSV header that names some of them must
    list exactly them, in that order: columns in another order would be read silently wrong.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; pass an observation file (.csv, .npy or .json).")
    if not path.is_file():
        raise FileNotFoundError(f"No observation file at {path}.")
    if path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise ValueError(f"{path} is not a plain numeric .npy file: {err}") from err
        if arr.dtype.kind == "b":
            raise ValueError(f"{path} holds booleans (dtype {arr.dtype}); observations are "
                             "numbers and True/False would silently be read as 1/0. Save it "
                             "as numbers, e.g. np.save(path, x.astype('float32')), if 1/0 is "
                             "meant.")
        if arr.dtype.kind not in "iuf":
            raise ValueError(f"{path} holds {arr.dtype} values; observations must be numbers.")
    elif path.suffix in (".csv", ".txt", ".json"):
        if path.stat().st_size > MAX_TEXT_BYTES:
            raise ValueError(f"{path} is larger than {MAX_TEXT_BYTES // 2**20} MiB; store many "
                             "observations as a .npy file.")
        try:
            text = path.read_text(encoding="utf-8-sig")  # Excel's "CSV UTF-8" starts with a BOM
        except UnicodeDecodeError as err:
            raise ValueError(f"{path} is not a text file ({err.reason}); observations must be "
                             "a .csv, .npy or .json file.") from err
        if path.suffix == ".json":
            arr = _parse_json(text, str(path))
        else:
            arr = parse_csv_observations(text, str(path), x_names)
    else:
        raise ValueError(f"Observations must be a .csv, .npy or .json file, got {path.name}.")
    return _to_observations(arr, x_shape, str(path))


def parse_csv_observations(text: str, name: str = "CSV",
                           x_names: list[str] | None = None) -> np.ndarray:
    """CSV text → ``(rows, values)`` float32; header rules as in :func:`read_observations`."""
    rows: list[list[float]] = []
    first = True
    try:
        lines = list(csv.reader(text.splitlines()))
    except csv.Error as err:
        raise ValueError(f"{name} is not a valid CSV file: {err}") from err
    header_width = None
    for i, row in enumerate(lines):
        if not row or all(not c.strip() for c in row):
            continue
        if row[0].lstrip().startswith("#"):  # a comment, e.g. np.savetxt(..., header=...)
            continue
        if len(row) == 1 and len(row[0].split()) > 1 \
                and all(_number(c) is not None for c in row[0].split()):
            row = row[0].split()  # np.savetxt's default: values separated by spaces or tabs
        values = [_number(c) for c in row]
        if first and all(v is None and _is_name(c) for v, c in zip(values, row)):
            header_width = len(row)
            _check_header([c.strip() for c in row], x_names, name)
            first = False
            continue
        first = False
        bad = [c for v, c in zip(values, row) if v is None]
        if bad:
            hint = (" Separate the values with commas (or spaces), not semicolons; a decimal "
                    "comma must be a point." if any(";" in c for c in row) else "")
            raise ValueError(f"{name}, line {i + 1}: non-numeric value {bad[0].strip()!r} in "
                             f"{row}. Only a first line made entirely of column names is "
                             f"skipped as a header.{hint}")
        rows.append(values)  # type: ignore[arg-type]
    if not rows:
        raise ValueError(f"{name} holds no observations.")
    widths = {len(r) for r in rows}
    if len(widths) != 1:
        raise ValueError(f"{name}: rows have different numbers of values {sorted(widths)}.")
    if header_width is not None and header_width != len(rows[0]):
        raise ValueError(f"{name}: the header has {header_width} columns but the rows have "
                         f"{len(rows[0])} values.")
    return np.asarray(rows, dtype=np.float32)


def _check_header(header: list[str], x_names: list[str] | None, name: str) -> None:
    """A header naming the problem's x columns must list them in the problem's order."""
    if not x_names or header == list(x_names) or not set(header) & set(x_names):
        return  # no names to check against, the same names, or generic labels
    if sorted(header) == sorted(x_names):
        raise ValueError(f"{name}: the header lists the x columns in another order ({header}) "
                         f"than the model's ({list(x_names)}); the values would be read into "
                         "the wrong columns. Write the columns in the model's order.")
    raise ValueError(f"{name}: the header names columns {header}, but the model's x columns are "
                     f"{list(x_names)}. Write exactly these columns, in this order (or remove "
                     "the header line).")


def _number(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def _is_name(cell: str) -> bool:
    """A header cell: non-empty text starting with a letter or underscore."""
    cell = cell.strip()
    return bool(cell) and (cell[0].isalpha() or cell[0] == "_")


def _parse_json(text: str, name: str) -> np.ndarray:
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{name} is not valid JSON: {err}") from err
    if isinstance(value, dict):
        keys = [k for k in ("xs", "x") if k in value]
        if len(keys) != 1:
            raise ValueError(f"{name}: a JSON object must hold exactly one of 'x' (one "
                             "observation) or 'xs' (several).")
        value = value[keys[0]]
    if _holds_bool(value):
        raise ValueError(f"{name} holds JSON booleans (true/false); observations are numbers "
                         "and true/false would silently be read as 1/0. Write 1 and 0 (or the "
                         "values the simulator returns) instead.")
    try:
        arr = np.asarray(value, dtype=np.float32)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{name}: observations must be a (nested) list of numbers of equal "
                         f"lengths ({err}).") from err
    return arr


def _holds_bool(value: object) -> bool:
    """Whether a parsed JSON value has ``true`` / ``false`` anywhere in it."""
    if isinstance(value, bool):
        return True
    return isinstance(value, list) and any(_holds_bool(v) for v in value)


def _to_observations(arr: np.ndarray, x_shape: tuple[int, ...], name: str) -> Tensor:
    size = math.prod(x_shape)
    arr = np.asarray(arr, dtype=np.float32)
    if arr.size == 0:
        raise ValueError(f"{name} holds no observations (an empty array of shape {arr.shape}).")
    if tuple(arr.shape) == tuple(x_shape):
        arr = arr[None]
    elif (arr.ndim >= 2 and math.prod(arr.shape[1:]) == size) or (arr.ndim == 1 and arr.size == size):
        arr = arr.reshape(-1, *x_shape)
    else:
        raise ValueError(
            f"{name} holds an array of shape {arr.shape}; expected one observation of shape "
            f"{tuple(x_shape)} or several, one per row ({size} values each)."
        )
    return torch.from_numpy(np.ascontiguousarray(arr))


def write_samples_csv(path: str | Path, samples: Tensor, param_names: list[str],
                      observation_index: bool = True) -> Path:
    """Write samples ``(n, B, D)`` to CSV with an ``observation`` column and parameter names.

    Written atomically: a crash leaves the previous file or none, never a partial CSV. Names
    pass through :func:`sbi_core.display.spreadsheet_safe` (a name such as ``=HYPERLINK(..)``
    from a model file is not run as a formula by a spreadsheet); numbers are written as is.
    """
    path = Path(path)
    n, b, d = samples.shape
    flat = samples.detach().cpu().permute(1, 0, 2).reshape(b * n, d).numpy()
    header = ((["observation"] if observation_index else [])
              + [spreadsheet_safe(str(name)) for name in param_names])
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        if observation_index:
            obs = np.repeat(np.arange(b), n)
            np.savetxt(fh, np.column_stack([obs, flat]),
                       fmt=["%d"] + ["%.7g"] * d, delimiter=",")
        else:
            np.savetxt(fh, flat, fmt="%.7g", delimiter=",")
    return path


def write_json(path: str | Path, value) -> Path:
    """Write ``value`` as indented JSON, atomically."""
    path = Path(path)
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(value, indent=1))
    return path


def read_samples_csv(path: str | Path) -> tuple[list[str], Tensor]:
    """Read a CSV written by :func:`write_samples_csv` → (parameter names, ``(N, D)`` samples)."""
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        header = [from_spreadsheet_safe(cell) for cell in next(reader)]
        rows = [[float(c) for c in r] for r in reader if r]
    data = torch.tensor(rows, dtype=torch.float32).reshape(len(rows), len(header))
    if header and header[0] == "observation":
        return header[1:], data[:, 1:]
    return header, data
