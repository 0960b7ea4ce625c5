"""Safe output files: refuse to clobber inputs or other kinds of files, write atomically.

Every writer (``sbi_core.save``, ``SimulationSet.save``, the CLI subcommands) goes through
:func:`atomic_write`, so a crash leaves either the old file or the complete new one, never
a half-written model or CSV; the CLI checks ``--out`` with :func:`check_output` first.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["OutputPathError", "check_output", "check_suffix", "file_kind", "atomic_write", "damaged_entry"]

_UMASK = os.umask(0)
os.umask(_UMASK)

#: What each kind of file is called in messages.
KIND_NAMES = {"model": "an sbi-core model file", "simulations": "a simulation file",
              "csv": "a CSV file", "json": "a JSON file", "directory": "a folder",
              "zarr": "a zarr simulation store", "png": "an image", "other": "a file"}


#: File name endings that name a format, and what they name (for :func:`check_output`).
FORMAT_SUFFIXES = {".csv": "CSV", ".tsv": "tab-separated text", ".txt": "text", ".json": "JSON",
                   ".npy": "a NumPy array", ".npz": "NumPy arrays", ".pt": "a torch file",
                   ".pth": "a torch file", ".nc": "netCDF", ".h5": "HDF5", ".hdf5": "HDF5",
                   ".parquet": "Parquet", ".xlsx": "an Excel workbook", ".pkl": "a pickle",
                   ".pickle": "a pickle", ".zarr": "a zarr store", ".png": "an image",
                   ".pdf": "a PDF"}

#: The endings each kind of output may have, and what it is written as.
KIND_SUFFIXES = {"model": ((".pt", ".pth"), "a torch file (.pt)"),
                 "simulations": ((".pt", ".pth", ".npz"), "a torch file (.pt) or NumPy arrays "
                                 "(.npz), or a zarr store (PATH.zarr)"),
                 "csv": ((".csv", ".txt"), "CSV (.csv; `sbi-core sample` also writes an ArviZ "
                                          "file, .nc)"),
                 "json": ((".json",), "JSON (.json)")}


class OutputPathError(ValueError):
    """An output path that would destroy an input or a file of another kind."""


def damaged_entry(path: str | os.PathLike) -> str | None:
    """The first entry of the zip archive ``path`` (a torch file) whose bytes fail their CRC-32,
    or None when every entry is intact.

    ``torch.load`` does not check the checksums torch.save writes, so a file damaged on disk or in
    transfer (flipped or zeroed bytes inside a tensor) would load silently with wrong weights or
    simulations; reading the archive once here costs about as much as loading it.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        return f"(the archive itself: {type(err).__name__}: {err})"


def file_kind(path: str | os.PathLike) -> str:
    """What an existing ``path`` holds: model, simulations, csv, json, zarr, directory, other.

    Sniffs the content without running code (torch archives are read with
    ``weights_only=True`` and memory-mapped).
    """
    path = Path(path)
    if path.is_dir():
        return "zarr" if path.suffix == ".zarr" or (path / ".zgroup").exists() \
            or (path / "zarr.json").exists() else "directory"
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError:
        return "other"
    if head.startswith(b"\x89PNG"):
        return "png"
    if zipfile.is_zipfile(path):
        if path.suffix == ".npz":
            return "simulations"
        try:
            import torch

            payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:
            return "other"
        fmt = payload.get("format") if isinstance(payload, dict) else None
        return {"sbi-core-model": "model", "sbi-core-simulations": "simulations"}.get(fmt, "other")
    if path.suffix == ".json":
        return "json"
    if path.suffix in (".csv", ".txt"):
        return "csv"
    return "other"


def check_output(path: str | os.PathLike, kind: str,
                 inputs: Iterable[str | os.PathLike | None] = (), force: bool = False,
                 flag: str = "--out") -> Path:
    """Check that writing ``kind`` to ``path`` destroys nothing; returns ``Path(path)``.

    Refuses an output that is one of ``inputs`` (always), a folder where a file is written (or
    a file where a folder is written), and, unless ``force``, an existing file of another kind
    or a name whose ending names another format (:func:`check_suffix`).
    """
    out = Path(path)
    for inp in inputs:
        if inp is not None and _same(out, Path(inp)):
            raise OutputPathError(f"{flag} {out} is also an input; write to another path "
                                  "(the input would be overwritten).")
    if not force:
        check_suffix(out, kind, flag)
    if not out.exists():
        _check_parent(out, flag)
        return out
    existing = file_kind(out)
    if kind == "directory":
        if existing != "directory":
            raise OutputPathError(f"{flag} {out} is {KIND_NAMES[existing]}, not a folder; pass a "
                                  "folder path.")
        return out
    if existing == "directory":
        raise OutputPathError(f"{flag} {out} is a folder; pass a file path (e.g. "
                              f"{out / ('out.' + _suffix(kind))}).")
    if existing != kind and not force:
        raise OutputPathError(f"{flag} {out} already exists and is {KIND_NAMES[existing]}, not "
                              f"{KIND_NAMES.get(kind, kind)}; choose another path or pass --force "
                              "to overwrite it.")
    return out


def check_suffix(out: Path, kind: str, flag: str = "--out") -> None:
    """Refuse an ``out`` whose ending names another format than ``kind`` is written as
    (``sample --out s.npy`` would hold CSV text that ``np.load`` cannot read); an ending
    that names no format, or none, is left to the user."""
    suffix = out.suffix.lower()
    if kind not in KIND_SUFFIXES or suffix not in FORMAT_SUFFIXES:
        return
    allowed, written = KIND_SUFFIXES[kind]
    if suffix in allowed:
        return
    raise OutputPathError(f"{flag} {out} names {FORMAT_SUFFIXES[suffix]} ({suffix}), but it "
                          f"would be written as {written}: not what its name says. Use "
                          f"{out.with_suffix(allowed[0])} instead"
                          + (" (or pass --force to keep this name)." if flag.startswith("--")
                             else "."))


def _check_parent(out: Path, flag: str) -> None:
    """Refuse, before any work, an ``out`` that cannot be created: its nearest existing
    ancestor is a file, or a folder this process cannot write into (found only after the
    work otherwise, as 'File exists' / 'Permission denied')."""
    parent = out.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputPathError(f"{flag} {out} cannot be created: {parent} is a file, not a "
                              "folder; pass a path inside a folder.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"{flag} {out} cannot be created: no permission to write in "
                              f"{parent}; pass a path in a folder you can write to.")


def _suffix(kind: str) -> str:
    return {"model": "pt", "simulations": "pt", "csv": "csv", "json": "json"}.get(kind, "out")


def _same(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return a.samefile(b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it over ``path``.

    On any exception (or Ctrl-C) the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{path} is a folder; pass a file path.")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix,
                                    dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
