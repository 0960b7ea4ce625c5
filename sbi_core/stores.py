"""A crash-safe, resumable simulation store on zarr (needs ``pip install sbi-core[scale]``).

Layout of ``PATH.zarr`` (a zarr v3 group)::

    theta  float32 (N, D)          one zarr chunk per simulation chunk
    x      float32 (N, *x_shape)   NaN rows where the simulator failed
    valid  bool    (N,)
    _committed/chunk-000042.json   one small file per finished simulation chunk

Simulation chunk ``i`` (rows ``i*chunk_size ...``) is *committed* only after its three
arrays are fully written: the data go first (zarr writes each chunk file atomically),
then a one-line JSON mark is renamed into ``_committed/``. A run killed with SIGKILL
therefore loses at most the chunks in flight, and a half-written chunk is never counted.
Because chunk ``i`` is determined by ``(i, size, seed)`` (see
:func:`sbi_core.simulation.chunk_plan`), resuming simulates exactly the uncommitted
chunks and the finished store equals an uninterrupted run bit for bit.

Several processes may write one store at once (each chunk is its own file and each mark
its own file); give them disjoint chunks with ``only_chunks`` (e.g. ``range(k, n, K)``).
The group attributes hold the provenance: problem, seed, chunk size, budget, versions.

Example::

    sims = simulate(problem, 100_000, seed=0, store="sims.zarr")          # crash ...
    sims = simulate(problem, 100_000, seed=0, store="sims.zarr", resume=True)
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sbi_core.problem import Problem
from sbi_core.progress import progress_bar
from sbi_core.simulation import ChunkResult
from sbi_core.simulation_set import SimulationSet

try:
    import zarr
except ImportError as _err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "The zarr simulation store needs zarr>=3: pip install 'sbi-core[scale]'."
    ) from _err

__all__ = ["SimulationStore", "simulate_into_store", "load_store", "STORE_FORMAT"]

STORE_FORMAT = "sbi-core-simulation-store"
_FORMAT_VERSION = 1
_MARKS = "_committed"

Plan = list[tuple[int, int, int]]
ChunkSource = Callable[[Problem, Plan], Iterator[ChunkResult]]


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive inter-process lock on ``path`` + ``.lock`` (store creation, resizing)."""
    try:
        import fcntl
    except ImportError:  # Windows: creation races are the user's responsibility
        yield
        return
    lock_path = path.with_name(path.name + ".lock")
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"torch": torch.__version__, "numpy": np.__version__, "zarr": zarr.__version__}
    try:
        out["sbi_core"] = version("sbi-core")
    except PackageNotFoundError:
        out["sbi_core"] = "unknown"
    return out


class SimulationStore:
    """A zarr simulation store on disk; see the module docstring for the layout.

    Open an existing one with ``SimulationStore(path)``; create with :meth:`create`.
    """

    def __init__(self, path: str | os.PathLike, mode: str = "r"):
        self.path = Path(path)
        if not (self.path / "zarr.json").exists():
            raise FileNotFoundError(f"No simulation store at {self.path} (no zarr.json inside).")
        self.group = zarr.open_group(str(self.path), mode=mode)
        attrs = dict(self.group.attrs)
        if attrs.get("format") != STORE_FORMAT:
            raise ValueError(f"{self.path} is a zarr group but not an sbi-core simulation store.")
        if attrs.get("format_version") != _FORMAT_VERSION:
            raise ValueError(f"{self.path} has store format version {attrs.get('format_version')}; "
                             f"this sbi-core reads version {_FORMAT_VERSION}.")
        self.attrs = attrs
        self.chunk_size = int(attrs["chunk_size"])
        self.num_simulations = int(attrs["num_simulations"])
        self.seed = int(attrs["seed"])

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(cls, path: str | os.PathLike, problem: Problem, num_simulations: int, seed: int,
               chunk_size: int, resume: bool = False) -> SimulationStore:
        """Create the store, or open it for ``resume`` after checking it matches the run.

        A larger ``num_simulations`` than stored extends the budget (append): the arrays grow
        and only the new (or a changed last partial) chunk is simulated.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with _lock(path):
            if (path / "zarr.json").exists():
                if not resume:
                    raise ValueError(
                        f"{path} already exists. Pass resume=True (CLI: --resume) to complete or "
                        "extend it, or choose a new path.")
                store = cls(path, mode="r+")
                store._check_matches(problem, seed, chunk_size, num_simulations)
                if num_simulations > store.num_simulations:
                    store._grow(num_simulations)
                return store
            if path.exists() and any(path.iterdir()):
                raise ValueError(f"{path} exists and is not a simulation store; choose a new path.")
            d, x_shape = problem.dim, tuple(problem.x_shape or ())
            group = zarr.open_group(str(path), mode="w")
            group.create_array("theta", shape=(num_simulations, d), chunks=(chunk_size, d),
                               dtype="float32", fill_value=np.nan)
            group.create_array("x", shape=(num_simulations, *x_shape),
                               chunks=(chunk_size, *x_shape), dtype="float32",
                               fill_value=np.nan)
            group.create_array("valid", shape=(num_simulations,), chunks=(chunk_size,),
                               dtype="bool", fill_value=False)
            group.attrs.update({
                "format": STORE_FORMAT, "format_version": _FORMAT_VERSION,
                "problem": problem.name, "problem_source": problem.source,
                "param_names": list(problem.param_names), "x_shape": list(x_shape),
                "seed": int(seed), "chunk_size": int(chunk_size),
                "num_simulations": int(num_simulations), "versions": _versions(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            })
            (path / _MARKS).mkdir(exist_ok=True)
        return cls(path, mode="r+")

    def _check_matches(self, problem: Problem, seed: int, chunk_size: int, num: int) -> None:
        stored = {"seed": self.seed, "chunk_size": self.chunk_size,
                  "problem": self.attrs.get("problem"), "x_shape": self.attrs.get("x_shape")}
        wanted = {"seed": int(seed), "chunk_size": int(chunk_size), "problem": problem.name,
                  "x_shape": list(problem.x_shape or ())}
        diff = {k: (stored[k], wanted[k]) for k in stored if stored[k] != wanted[k]}
        if diff:
            detail = ", ".join(f"{k}: store has {a!r}, run has {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"Cannot resume {self.path}: {detail}. Resume with the original "
                             "settings or write to a new path.")
        if num < self.num_simulations:
            raise ValueError(f"{self.path} holds a budget of {self.num_simulations} simulations; "
                             f"cannot resume with fewer ({num}).")

    def _grow(self, num: int) -> None:
        old = self.num_simulations
        if old % self.chunk_size:  # the last partial chunk changes size: simulate it again
            (self._mark_dir / _mark_name(old // self.chunk_size)).unlink(missing_ok=True)
        for name in ("theta", "x", "valid"):
            arr = self.group[name]
            arr.resize((num, *arr.shape[1:]))
        self.group.attrs["num_simulations"] = int(num)
        self.num_simulations = num
        self.attrs["num_simulations"] = num

    # ------------------------------------------------------------------ chunks
    @property
    def _mark_dir(self) -> Path:
        return self.path / _MARKS

    @property
    def num_chunks(self) -> int:
        return -(-self.num_simulations // self.chunk_size)

    def chunk_rows(self, index: int) -> tuple[int, int]:
        start = index * self.chunk_size
        return start, min(start + self.chunk_size, self.num_simulations)

    def marks(self) -> dict[int, dict[str, Any]]:
        """Committed chunk index -> its mark (size, num_invalid, first_error, seconds)."""
        out = {}
        if not self._mark_dir.is_dir():
            return out
        for f in self._mark_dir.glob("chunk-*.json"):
            mark = json.loads(f.read_text())
            out[int(mark["index"])] = mark
        return out

    def committed(self) -> set[int]:
        """Indices of fully written chunks whose size matches the current budget."""
        return {i for i, m in self.marks().items()
                if i < self.num_chunks and m["size"] == self.chunk_rows(i)[1] - self.chunk_rows(i)[0]}

    def write_chunk(self, result: ChunkResult) -> None:
        """Write one chunk's data, then commit it with an atomically renamed mark file."""
        start, stop = self.chunk_rows(result.index)
        if result.theta.shape[0] != stop - start:
            raise ValueError(f"Chunk {result.index} has {result.theta.shape[0]} rows; the store "
                             f"expects {stop - start}.")
        self.group["theta"][start:stop] = result.theta.numpy()
        self.group["x"][start:stop] = result.x.numpy()
        self.group["valid"][start:stop] = result.valid.numpy()
        mark = {"index": result.index, "size": stop - start,
                "num_invalid": int((~result.valid).sum()), "first_error": result.first_error,
                "seconds": round(result.seconds, 4), "pid": os.getpid()}
        final = self._mark_dir / _mark_name(result.index)
        tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(mark))
        os.replace(tmp, final)

    def read_rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``theta`` ``(n, D)``, ``x`` ``(n, *x_shape)``, ``valid`` ``(n,)`` of rows ``start:stop``."""
        return (self.group["theta"][start:stop], self.group["x"][start:stop],
                self.group["valid"][start:stop])

    def to_simulation_set(self, partial: bool = False) -> SimulationSet:
        """Load into memory; an incomplete store raises unless ``partial=True`` (committed only)."""
        done = sorted(self.committed())
        if len(done) < self.num_chunks and not partial:
            raise ValueError(
                f"{self.path} is incomplete: {len(done)} of {self.num_chunks} chunks committed. "
                "Finish it with resume=True (CLI: sbi-core simulate ... --out PATH --resume), or "
                "load the committed chunks with load_store(path, partial=True).")
        if not done:
            raise ValueError(f"{self.path} has no committed simulations yet.")
        parts = [self.read_rows(*self.chunk_rows(i)) for i in done]
        theta = torch.from_numpy(np.concatenate([p[0] for p in parts]))
        x = torch.from_numpy(np.concatenate([p[1] for p in parts]))
        valid = torch.from_numpy(np.concatenate([p[2] for p in parts]))
        return SimulationSet(theta, x, valid, self.provenance(done))

    def provenance(self, done: Iterable[int] | None = None) -> dict[str, Any]:
        marks = self.marks()
        done = sorted(self.committed() if done is None else done)
        errors = [marks[i]["first_error"] for i in done if marks[i].get("first_error")]
        return {
            "problem": self.attrs.get("problem"),
            "problem_source": self.attrs.get("problem_source"),
            "seed": self.seed, "chunk_size": self.chunk_size,
            "num_simulations": sum(marks[i]["size"] for i in done),
            "num_invalid": sum(marks[i]["num_invalid"] for i in done),
            "first_error": errors[0] if errors else None,
            "torch_version": torch.__version__, "store": str(self.path),
            "store_versions": self.attrs.get("versions"),
            "complete": len(done) == self.num_chunks,
        }


def _mark_name(index: int) -> str:
    return f"chunk-{index:06d}.json"


def simulate_into_store(problem: Problem, plan: Plan, source: ChunkSource,
                        store: str | os.PathLike, seed: int, chunk_size: int,
                        resume: bool = False, progress: bool | None = None,
                        only_chunks: Iterable[int] | None = None,
                        return_data: bool = True) -> SimulationSet | SimulationStore:
    """Run the chunks of ``plan`` not yet committed in ``store`` and commit each as it finishes.

    Args:
        problem, plan, source: as in :func:`sbi_core.simulation.simulate`.
        store: path of the zarr store (created if absent).
        resume: allow an existing store; only uncommitted chunks are simulated.
        only_chunks: restrict this process to these chunk indices (concurrent writers).
        return_data: load the finished store into a :class:`SimulationSet` (else return the
            :class:`SimulationStore`, e.g. when the data exceed memory).
    """
    num = sum(size for _, size, _ in plan)
    st = SimulationStore.create(store, problem, num, seed, chunk_size, resume=resume)
    done = st.committed()
    wanted = set(only_chunks) if only_chunks is not None else None
    todo = [t for t in plan if t[0] not in done and (wanted is None or t[0] in wanted)]
    start = time.perf_counter()
    with progress_bar(total=sum(t[1] for t in todo),
                      desc=f"simulating {problem.name} -> {st.path.name}", unit="sim",
                      progress=progress) as bar:
        if todo:
            for res in source(problem, todo):
                st.write_chunk(res)
                bar.update(res.theta.shape[0])
    if not return_data:
        return st
    if wanted is not None:
        return st.to_simulation_set(partial=True)
    sims = st.to_simulation_set()
    sims.provenance["seconds"] = round(time.perf_counter() - start, 3)
    return sims


def load_store(path: str | os.PathLike, partial: bool = False) -> SimulationSet:
    """Load a finished store (or, with ``partial=True``, its committed chunks) into memory."""
    st = SimulationStore(path)
    if partial:
        warnings.warn(f"Loading only the committed chunks of {path}.", stacklevel=2)
    return st.to_simulation_set(partial=partial)
