"""A crash-safe, resumable simulation store on zarr (needs ``pip install sbi-core[scale]``).

Layout of ``PATH.zarr`` (a zarr v3 group)::

    theta  float32 (N, D)          one zarr chunk per simulation chunk
    x      float32 (N, *x_shape)   NaN rows where the simulator failed
    valid  bool    (N,)
    _committed/chunk-000042.json   one small file per finished simulation chunk (size,
                                   invalid count, first error, SHA-256 of its three arrays)

Simulation chunk ``i`` (rows ``i*chunk_size ...``) is *committed* only after its three
arrays are fully written: the data go first (zarr writes each chunk file atomically),
then a one-line JSON mark is renamed into ``_committed/``. A run killed with SIGKILL
therefore loses at most the chunks in flight, and a half-written chunk is never counted.
Because chunk ``i`` is determined by ``(i, size, seed)`` (see
:func:`sbi_core.simulation.chunk_plan`), resuming simulates exactly the uncommitted
chunks and the finished store equals an uninterrupted run bit for bit.

Several processes may write one store at once (each chunk is its own file and each mark
its own file); give them disjoint chunks with ``only_chunks`` (e.g. ``range(k, n, K)``).
The group attributes hold the provenance: problem, seed, chunk size, budget, versions,
the prior's spec (``prior``; a resume with another prior or other parameters is refused, so
a store never mixes draws from two priors), and ``theta_source`` (``"prior"`` draws or
``"given"`` parameters, ``simulate(theta=...)``).

A chunk file damaged on disk is detected when read (:class:`StoreDamagedError` names the
store, array, chunk and rows) or by :meth:`SimulationStore.damaged_chunks`, which also
compares each chunk with the checksums recorded at commit; ``simulate(..., resume=True,
repair=True)`` (CLI ``--resume --repair``) re-simulates exactly those chunks.

Example::

    sims = simulate(problem, 100_000, seed=0, store="sims.zarr")          # crash ...
    sims = simulate(problem, 100_000, seed=0, store="sims.zarr", resume=True)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sbi_core.display import shown
from sbi_core.failures import ExecutorLostError, describe_invalid
from sbi_core.problem import Problem
from sbi_core.progress import progress_bar
from sbi_core.simulation import ChunkResult, chunk_plan, closing_chunks, prior_text, recorded_prior
from sbi_core.simulation_set import SimulationSet

try:
    import zarr
except ImportError as _err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "The zarr simulation store needs zarr>=3: pip install 'sbi-core[scale]'."
    ) from _err

__all__ = ["SimulationStore", "simulate_into_store", "load_store", "STORE_FORMAT",
           "StoreDamagedError"]

STORE_FORMAT = "sbi-core-simulation-store"
_FORMAT_VERSION = 1
_MARKS = "_committed"

_ARRAYS = ("theta", "x", "valid")

Plan = list[tuple]


class StoreDamagedError(ValueError):
    """A committed chunk of a store cannot be read back (or no longer matches its checksum)."""


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
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
        try:
            self.group = zarr.open_group(str(self.path), mode=mode)
        except (ValueError, KeyError, TypeError) as err:  # e.g. metadata naming a pickle codec
            raise ValueError(
                f"{self.path} is not a readable sbi-core simulation store: zarr refuses its "
                f"metadata ({type(err).__name__}: {err}). Nothing in it was run; simulate again "
                "into a new store (sbi-core simulate PROBLEM --out new.zarr).") from err
        attrs = dict(self.group.attrs)
        if attrs.get("format") != STORE_FORMAT:
            raise ValueError(f"{self.path} is a zarr group but not an sbi-core simulation store.")
        if attrs.get("format_version") != _FORMAT_VERSION:
            raise ValueError(f"{self.path} has store format version "
                             f"{shown(attrs.get('format_version'))}; "
                             f"this sbi-core reads version {_FORMAT_VERSION}.")
        self.attrs = attrs
        self._check_attrs(attrs)
        self.chunk_size = int(attrs["chunk_size"])
        self.num_simulations = int(attrs["num_simulations"])
        self.seed = int(attrs["seed"])
        self.theta_source = str(attrs.get("theta_source", "prior"))
        self.repaired: list[int] = []  # chunks re-simulated by the last repair

    def _check_attrs(self, attrs: dict[str, Any]) -> None:
        """Refuse attributes no sbi-core run writes (a damaged or doctored store) with one
        message, instead of a division by zero, ``int('abc')`` or a count of billions of
        missing chunks later."""
        def damaged(key: str, what: str) -> ValueError:
            return ValueError(
                f"{self.path} is damaged: its attribute {key!r} is "
                f"{shown(repr(attrs.get(key)))}, {what}; sbi-core never writes that, so the "
                "store was damaged or edited. Simulate again into a new store (sbi-core "
                "simulate PROBLEM --out new.zarr).")

        for key, low in (("chunk_size", 1), ("num_simulations", 0), ("seed", None)):
            value = attrs.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or \
                    (low is not None and value < low):
                raise damaged(key, "not an integer" + (f" >= {low}" if low is not None else ""))
        if "theta" in self.group:  # the arrays were created with these numbers
            theta = self.group["theta"]
            if attrs["num_simulations"] > theta.shape[0]:  # fewer: a crash while growing
                raise damaged("num_simulations",
                              f"more than the {theta.shape[0]:,} rows its arrays hold")
            if attrs["chunk_size"] != theta.chunks[0]:
                raise damaged("chunk_size", f"but its arrays are stored in chunks of "
                                            f"{theta.chunks[0]:,} rows")
        for key in ("param_names", "x_names"):
            value = attrs.get(key)
            if value is not None and (not isinstance(value, list)
                                      or not all(isinstance(v, str) for v in value)):
                raise damaged(key, "not a list of names")

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(cls, path: str | os.PathLike, problem: Problem, num_simulations: int, seed: int,
               chunk_size: int, resume: bool = False,
               theta_given: bool = False) -> SimulationStore:
        """Create the store, or open it for ``resume`` after checking it matches the run.

        A larger ``num_simulations`` than stored extends the budget (append): the arrays grow
        and only the new (or a changed last partial) chunk is simulated. ``theta_given``: the
        run simulates given parameters (a store written so must be resumed with them).
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
                store._check_matches(problem, seed, chunk_size, num_simulations, theta_given)
                if store.theta_source == "given" and not theta_given:
                    raise ValueError(
                        f"{path} was simulated at given parameters (theta=...); resume it with "
                        "the same theta (CLI: --theta FILE), or write to a new path.")
                if theta_given and store.theta_source != "given":
                    store.group.attrs["theta_source"] = "given"
                    store.attrs["theta_source"] = "given"
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
                "theta_source": "given" if theta_given else "prior",
                "x_names": None if getattr(problem, "x_names", None) is None
                else [str(n) for n in problem.x_names],
                "prior": recorded_prior(problem),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            })
            (path / _MARKS).mkdir(exist_ok=True)
        return cls(path, mode="r+")

    def check_problem(self, problem: Problem) -> None:
        """Refuse to add rows of a problem with other parameters or another prior: resuming
        or extending would mix them with the stored ones (θ of another dimension written into
        the store's columns, or draws from two priors that no posterior is trained for)."""
        stored_names = self.attrs.get("param_names")
        dim = int(self.group["theta"].shape[1]) if "theta" in self.group else None
        if (dim is not None and dim != problem.dim) or (
                stored_names is not None and list(stored_names) != list(problem.param_names)):
            raise ValueError(
                f"Cannot resume {self.path}: its rows have parameters "
                f"{shown(repr(stored_names))} ({dim} columns), the problem has "
                f"{list(problem.param_names)}; the rows would be mixed. Write to a new path.")
        stored_prior = self.attrs.get("prior")
        if isinstance(stored_prior, dict):  # stores written before wave 13 have none
            from sbi_core.priors import same_prior_spec

            now = recorded_prior(problem)
            if now is not None and not same_prior_spec(stored_prior, now):
                raise ValueError(
                    f"Cannot resume {self.path}: its θ were drawn from another prior "
                    f"({prior_text(stored_prior)}) than the problem's "
                    f"({prior_text(now)}); the store would mix draws from two priors and a "
                    "posterior trained on it would be wrong. Resume with the original prior, "
                    "or simulate into a new path.")

    def _check_matches(self, problem: Problem, seed: int, chunk_size: int, num: int,
                       theta_given: bool = False) -> None:
        stored = {"seed": self.seed, "chunk_size": self.chunk_size,
                  "problem": self.attrs.get("problem"), "x_shape": self.attrs.get("x_shape")}
        wanted = {"seed": int(seed), "chunk_size": int(chunk_size), "problem": problem.name,
                  "x_shape": list(problem.x_shape or ())}
        diff = {k: (stored[k], wanted[k]) for k in stored if stored[k] != wanted[k]}
        if diff:
            detail = ", ".join(f"{k}: store has {shown(repr(a))}, run has {shown(repr(b))}"
                               for k, (a, b) in diff.items())
            raise ValueError(f"Cannot resume {self.path}: {detail}. Resume with the original "
                             "settings or write to a new path.")
        self.check_problem(problem)
        if num < self.num_simulations:
            hint = (" To add these given θ after the rows it holds, pass append=True (CLI: "
                    "--append)." if theta_given else "")
            raise ValueError(f"{self.path} holds a budget of {self.num_simulations} simulations; "
                             f"cannot resume with fewer ({num}).{hint}")

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

    def committed(self, marks: dict[int, dict[str, Any]] | None = None) -> set[int]:
        """Indices of fully written chunks whose size matches the current budget (from
        ``marks`` when given: one snapshot, as other processes may commit meanwhile)."""
        marks = self.marks() if marks is None else marks
        return {i for i, m in marks.items()
                if i < self.num_chunks and m["size"] == self.chunk_rows(i)[1] - self.chunk_rows(i)[0]}

    def write_chunk(self, result: ChunkResult, theta_given: bool = False) -> None:
        """Write one chunk's data, then commit it with an atomically renamed mark file.

        The mark records the SHA-256 of the chunk's three arrays (checked by ``repair``) and
        whether its θ were given (``theta_given``) or drawn from the prior.
        """
        start, stop = self.chunk_rows(result.index)
        if result.theta.shape[0] != stop - start:
            raise ValueError(f"Chunk {result.index} has {result.theta.shape[0]} rows; the store "
                             f"expects {stop - start}.")
        arrays = {"theta": result.theta.float().numpy(), "x": result.x.float().numpy(),
                  "valid": result.valid.numpy()}
        for name, values in arrays.items():
            self.group[name][start:stop] = values
        mark = {"index": result.index, "size": stop - start,
                "num_invalid": int((~result.valid).sum()), "first_error": result.first_error,
                "seconds": round(result.seconds, 4), "pid": os.getpid(),
                "theta_given": bool(theta_given),
                "batch_error": getattr(result, "batch_error", None),
                "sha256": {name: _sha(values) for name, values in arrays.items()}}
        final = self._mark_dir / _mark_name(result.index)
        tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(mark))
        os.replace(tmp, final)

    def read_rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``theta`` ``(n, D)``, ``x`` ``(n, *x_shape)``, ``valid`` ``(n,)`` of rows ``start:stop``.

        Raises:
            StoreDamagedError: a chunk file cannot be decoded; the message names the store,
                the array, the chunk and its rows, and how to repair it.
        """
        try:
            return tuple(self.group[name][start:stop] for name in _ARRAYS)  # type: ignore
        except Exception as err:
            for i in range(start // self.chunk_size, -(-stop // self.chunk_size)):
                problem = self._chunk_problem(i)
                if problem is not None:
                    raise self._damaged_error({i: problem}) from err
            raise StoreDamagedError(
                f"Cannot read rows {start}-{stop - 1} of {self.path}: {type(err).__name__}: "
                f"{err}. {self.repair_hint()}") from err

    def _chunk_file(self, name: str, index: int) -> Path:
        ndim = len(self.group[name].shape)
        return self.path / name / "c" / "/".join([str(index)] + ["0"] * (ndim - 1))

    def _chunk_problem(self, index: int, mark: dict[str, Any] | None = None) -> str | None:
        """Why chunk ``index`` is damaged (cannot decode; checksum differs), or None if fine."""
        start, stop = self.chunk_rows(index)
        sums = (mark or {}).get("sha256") or {}
        for name in _ARRAYS:
            try:
                values = self.group[name][start:stop]
            except Exception as err:
                return (f"array '{name}' cannot be decoded ({type(err).__name__}: {err}; file "
                        f"{self._chunk_file(name, index)})")
            if name in sums and _sha(values) != sums[name]:
                return (f"array '{name}' differs from the checksum recorded when it was written "
                        f"(file {self._chunk_file(name, index)})")
            if name == "valid" and mark is not None and not sums and \
                    int((~values).sum()) != int(mark.get("num_invalid", -1)):
                return "array 'valid' does not match the invalid count of its commit mark"
        return None

    def damaged_chunks(self) -> dict[int, str]:
        """Committed chunks that cannot be read back intact: index -> reason (reads the store)."""
        marks = self.marks()
        out = {}
        for i in sorted(self.committed()):
            problem = self._chunk_problem(i, marks[i])
            if problem is not None:
                out[i] = problem
        return out

    def repair_hint(self) -> str:
        """How to re-simulate damaged chunks of this store (CLI and Python)."""
        a = self.attrs
        theta = " --theta THETA_FILE" if self.theta_source == "given" else ""
        py_theta = ", theta=THETA" if self.theta_source == "given" else ""
        # shown, never imported; quoted (it comes from the store and the command may be pasted
        # into a shell)
        problem = shlex.quote(shown(a.get("problem_source"))) if a.get("problem_source") \
            else "PROBLEM"
        return (f"Re-simulate the damaged chunks with their original seeds: `sbi-core simulate "
                f"{problem} --num {self.num_simulations} --seed {self.seed} --chunk-size "
                f"{self.chunk_size}{theta} --out {shlex.quote(str(self.path))} --resume --repair` "
                "(Python: "
                f"simulate(problem, {self.num_simulations}, seed={self.seed}, chunk_size="
                f"{self.chunk_size}{py_theta}, store={str(self.path)!r}, resume=True, "
                "repair=True)).")

    def _damaged_error(self, damaged: dict[int, str]) -> StoreDamagedError:
        parts = []
        for i, why in sorted(damaged.items()):
            a, b = self.chunk_rows(i)
            parts.append(f"chunk {i} (rows {a}-{b - 1}): {shown(why)}")
        return StoreDamagedError(f"{self.path} is damaged: " + "; ".join(parts) + ". "
                                 + self.repair_hint())

    def uncommit(self, index: int) -> None:
        """Remove chunk ``index``'s commit mark, so that a resume simulates it again."""
        (self._mark_dir / _mark_name(index)).unlink(missing_ok=True)

    def check_theta(self, theta: np.ndarray) -> None:
        """Refuse given parameters ``(N, D)`` that differ from the θ of committed chunks."""
        marks = self.marks()
        for i in sorted(self.committed()):
            a, b = self.chunk_rows(i)
            want = np.ascontiguousarray(theta[a:b], dtype=np.float32)
            recorded = (marks[i].get("sha256") or {}).get("theta")
            same = (_sha(want) == recorded if recorded is not None
                    else np.array_equal(self.read_rows(a, b)[0], want))
            if not same:
                raise ValueError(
                    f"Cannot resume {self.path}: the given theta differ from the θ stored for "
                    f"chunk {i} (rows {a}-{b - 1}). Pass the same theta as the run that wrote "
                    "the store (to add new parameters use append=True / --append), or write to "
                    "a new path.")

    def read_theta(self) -> np.ndarray:
        """All stored θ ``(N, D)`` (a complete store; damaged chunks raise)."""
        done = self.committed()
        if len(done) < self.num_chunks:
            raise ValueError(f"{self.path} is incomplete ({len(done)} of {self.num_chunks} "
                             "chunks); finish it with resume=True (CLI: --resume) first.")
        try:
            return self.group["theta"][:]
        except Exception:
            return np.concatenate([self.read_rows(*self.chunk_rows(i))[0]
                                   for i in range(self.num_chunks)])

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
        prov = self.provenance(done)
        if prov["num_invalid"]:
            prov["invalid_columns"] = describe_invalid(x, self.attrs.get("x_names"))
        return SimulationSet(theta, x, valid, prov)

    def invalid_summary(self) -> str:
        """Which rows / columns of the committed chunks are NaN/inf (as
        :func:`sbi_core.failures.describe_invalid`), reading one chunk at a time and keeping
        only the invalid rows."""
        done = sorted(self.committed())
        bad, total = [], 0
        for i in done:
            _, x, valid = self.read_rows(*self.chunk_rows(i))
            bad.append(x[~valid])
            total += len(valid)
        if not bad:
            return ""
        return describe_invalid(torch.from_numpy(np.concatenate(bad)), self.attrs.get("x_names"),
                                total=total)

    def provenance(self, done: Iterable[int] | None = None) -> dict[str, Any]:
        marks = self.marks()  # one snapshot: concurrent writers may commit chunks meanwhile
        done = sorted(self.committed(marks) if done is None else done)
        errors = [marks[i]["first_error"] for i in done if marks[i].get("first_error")]
        batch_errors = [marks[i]["batch_error"] for i in done if marks[i].get("batch_error")]
        extra: dict[str, Any] = {}
        if batch_errors:
            extra["batch_error"] = batch_errors[0]
        if self.attrs.get("x_names"):
            extra["x_names"] = list(self.attrs["x_names"])
        if self.attrs.get("param_names"):
            extra["param_names"] = list(self.attrs["param_names"])
        if isinstance(self.attrs.get("prior"), dict):
            extra["prior"] = self.attrs["prior"]
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
            "theta_source": self.theta_source,
            **extra,
        }


def _mark_name(index: int) -> str:
    return f"chunk-{index:06d}.json"


def simulate_into_store(problem: Problem, plan: Plan | None, source: ChunkSource,
                        store: str | os.PathLike, seed: int, chunk_size: int,
                        resume: bool = False, progress: bool | None = None,
                        only_chunks: Iterable[int] | None = None,
                        return_data: bool = True, *, num_simulations: int | None = None,
                        theta: np.ndarray | None = None, repair: bool = False,
                        append: bool = False) -> SimulationSet | SimulationStore:
    """Run the chunks of ``plan`` not yet committed in ``store`` and commit each as it finishes.

    Args:
        problem, plan, source: as in :func:`sbi_core.simulation.simulate`; ``plan=None``
            builds it from ``num_simulations`` (or ``theta``), ``seed`` and ``chunk_size``.
        store: path of the zarr store (created if absent).
        resume: allow an existing store; only uncommitted chunks are simulated.
        only_chunks: restrict this process to these chunk indices (concurrent writers).
        return_data: load the finished store into a :class:`SimulationSet` (else return the
            :class:`SimulationStore`, e.g. when the data exceed memory).
        theta: given parameters ``(N, D)`` float32 (validated); on resume they must equal the
            θ of the committed chunks.
        repair: first check every committed chunk (decodes, matches its checksums) and
            re-simulate the damaged ones; their indices go to ``provenance["repaired_chunks"]``
            (``store.repaired`` with ``return_data=False``).
        append: ``theta`` are new rows after those the (complete) store holds.
    """
    path = Path(store)
    if append and theta is not None and (path / "zarr.json").exists():
        existing = SimulationStore(path)
        existing.check_problem(problem)
        theta = np.concatenate([existing.read_theta(), theta])
    if plan is None:
        if theta is not None:
            num_simulations = len(theta)
        if num_simulations is None:
            raise ValueError("Pass a plan, num_simulations or theta.")
        plan = chunk_plan(num_simulations, seed, chunk_size, theta)
    elif theta is None and plan and len(plan[0]) > 3:
        theta = np.concatenate([t[3] for t in plan])
    num = sum(t[1] for t in plan)
    st = SimulationStore.create(store, problem, num, seed, chunk_size, resume=resume,
                                theta_given=theta is not None)
    repaired: dict[int, str] = {}
    if repair:
        repaired = st.damaged_chunks()
        for i in repaired:
            st.uncommit(i)
        if repaired:
            warnings.warn(f"Re-simulating {len(repaired)} damaged chunk(s) of {st.path}: "
                          + "; ".join(f"chunk {i}: {shown(why)}" for i, why in repaired.items()),
                          stacklevel=2)
    if theta is not None:
        st.check_theta(theta)
    done = st.committed()
    wanted = set(only_chunks) if only_chunks is not None else None
    todo = [t for t in plan if t[0] not in done and (wanted is None or t[0] in wanted)]
    given = theta is not None
    start = time.perf_counter()
    written = 0
    with progress_bar(total=sum(t[1] for t in todo),
                      desc=f"simulating {problem.name} -> {st.path.name}", unit="sim",
                      progress=progress) as bar:
        try:
            if todo:
                with closing_chunks(source(problem, todo)) as chunks:
                    for res in chunks:
                        st.write_chunk(res, theta_given=given)
                        written += 1
                        bar.update(res.theta.shape[0])
        except KeyboardInterrupt:
            raise KeyboardInterrupt(
                f"interrupted: {len(done) + written} of {st.num_chunks} chunks are committed in "
                f"{st.path} ({written} this run) and kept; rerun with resume=True (CLI: "
                "--resume) to simulate the rest.") from None
        except ExecutorLostError as err:
            raise ExecutorLostError(
                f"{err} {len(done) + written} of {st.num_chunks} chunks are committed in "
                f"{st.path} ({written} this run) and kept; once the cluster is back, rerun with "
                "resume=True (CLI: the same command with --resume) to simulate the rest.") from None
    st.repaired = sorted(repaired)
    prov = st.provenance()
    if prov.get("batch_error"):
        warnings.warn(
            "The batched simulator raised on chunk(s) whose rows all succeeded in smaller "
            "(re-seeded) batches, so it is broken for batches or fails at random (results were "
            f"rescued by re-simulating sub-batches). First error: {prov['batch_error']}",
            stacklevel=2)
    if not return_data:
        return st
    if wanted is not None:
        return st.to_simulation_set(partial=True)
    sims = st.to_simulation_set()
    sims.provenance["seconds"] = round(time.perf_counter() - start, 3)
    if repair:
        sims.provenance["repaired_chunks"] = sorted(repaired)
    return sims


def load_store(path: str | os.PathLike, partial: bool = False) -> SimulationSet:
    """Load a finished store (or, with ``partial=True``, its committed chunks) into memory."""
    st = SimulationStore(path)
    if partial:
        warnings.warn(f"Loading only the committed chunks of {path}.", stacklevel=2)
    return st.to_simulation_set(partial=partial)
