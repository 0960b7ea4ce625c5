"""External programs as simulators: run a command once per batch of parameters.

Two ways to exchange data (``io=``):

- ``"npy"`` (default): ``theta`` ``(N, D)`` float64 is written to ``theta.npy`` in a fresh
  temporary folder; the command reads it and writes ``x.npy`` ``(N, *x_shape)``. The
  placeholders ``{theta}``, ``{x}`` and ``{dir}`` in the command are replaced by the paths,
  which are also given as environment variables ``SBI_THETA``, ``SBI_X``, ``SBI_DIR``.
- ``{seed}`` / ``SBI_SEED``: an integer drawn from torch's generator, which the simulation
  engine seeds per chunk; a program that seeds its noise with it is reproducible and
  gives identical stores on resume and across executors.
- ``"text"``: ``theta`` goes to the program's stdin as whitespace-separated rows, and the
  program prints one row of ``prod(x_shape)`` numbers per parameter row on stdout.

Failed rows (the program can report them itself, so nothing is rerun):

- NaN rows: write NaN (or inf) in the rows of ``x`` that failed and exit 0; those rows
  are marked invalid.
- Mask file: exit non-zero and write the 0-based indices of the failed rows, whitespace-
  separated, to the path given as ``{mask}`` / ``SBI_MASK`` (plus ``x.npy`` or the printed
  rows for the others; their values in failed rows are ignored). The call raises
  :class:`sbi_core.failures.RowFailures` carrying the good rows and the mask, which the
  engine uses directly. A mask file written with exit status 0 is honoured too.

Any other non-zero exit, a timeout, a missing or misshaped output raise ``RuntimeError``
with the program's stderr; the simulation engine then finds the failing rows by
bisection (:mod:`sbi_core.failures`), marks them invalid and records the message as the
run's ``first_error``. The program runs in its own process group (POSIX), and on timeout
the whole group is killed, including children a wrapper script started.

Example::

    sim = external_simulator(["python", "my_model.py", "{theta}", "{x}"], timeout=60)
    problem = Problem(prior, sim, x_shape=(3,), name="my_model")
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import tempfile
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from sbi_core.display import shown_text
from sbi_core.failures import RowFailures
from sbi_core.problem import as_shape

__all__ = ["ExternalProgram", "external_simulator"]

_STDERR_TAIL = 2000


class ExternalProgram:
    """A batched simulator backed by an external command (picklable; safe in worker processes).

    Args:
        command: argument list or a shell-style string (split with :func:`shlex.split`,
            never run through a shell).
        io: ``"npy"`` (files) or ``"text"`` (stdin/stdout).
        timeout: seconds allowed per call (per batch); ``None`` waits forever.
        x_shape: expected shape of one simulation, to reshape ``"text"`` output and to check
            ``"npy"`` output; inferred from the output when ``None`` (npy only).
        cwd: working directory of the program.
        env: extra environment variables.
    """

    def __init__(self, command: str | Sequence[str], io: str = "npy", timeout: float | None = 600,
                 x_shape: Sequence[int] | None = None, cwd: str | None = None,
                 env: dict[str, str] | None = None):
        self.command = shlex.split(command) if isinstance(command, str) else list(command)
        if not self.command:
            raise ValueError("The external simulator command is empty.")
        if io not in ("npy", "text"):
            raise ValueError(f"io must be 'npy' or 'text', got {io!r}.")
        if io == "text" and x_shape is None:
            raise ValueError("io='text' needs x_shape to reshape the printed numbers.")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive seconds or None, got {timeout}.")
        self.io, self.timeout, self.cwd = io, timeout, cwd
        self.x_shape = as_shape(x_shape) if x_shape is not None else None
        self.env = dict(env or {})

    def __repr__(self) -> str:
        return f"ExternalProgram({shlex.join(self.command)!r}, io={self.io!r})"

    def __call__(self, theta: Tensor) -> Tensor:
        """``theta`` ``(N, D)`` -> ``x`` ``(N, *x_shape)``; raises RuntimeError on failure."""
        values = theta.detach().cpu().numpy().astype(np.float64)
        n = values.shape[0]
        with tempfile.TemporaryDirectory(prefix="sbi-core-ext-") as tmp:
            theta_path, x_path = os.path.join(tmp, "theta.npy"), os.path.join(tmp, "x.npy")
            mask_path = os.path.join(tmp, "failed_rows.txt")
            seed = str(int(torch.randint(0, 2**31 - 1, (1,))))
            subs = {"{theta}": theta_path, "{x}": x_path, "{dir}": tmp, "{seed}": seed,
                    "{mask}": mask_path}
            argv = [_substitute(a, subs) for a in self.command]
            env = {**os.environ, **self.env, "SBI_THETA": theta_path, "SBI_X": x_path,
                   "SBI_DIR": tmp, "SBI_SEED": seed, "SBI_MASK": mask_path}
            stdin = None
            if self.io == "npy":
                np.save(theta_path, values)
            else:
                stdin = "\n".join(" ".join(repr(float(v)) for v in row) for row in values) + "\n"
            proc = self._run(argv, env, stdin)
            failed = self._read_mask(mask_path, n, proc) if os.path.exists(mask_path) else None
            if proc.returncode != 0 and (failed is None or not bool(failed.any())):
                # an empty mask file with a failing exit names no failed row: the whole call
                # failed (its output is not trusted), as if no mask file had been written
                empty = "" if failed is None else " (its mask file lists no failed row)"
                raise RuntimeError(f"{self._name} exited with status {proc.returncode}{empty}"
                                   f"{_stderr_note(proc.stderr)}")
            if failed is not None and bool(failed.all()):
                raise RowFailures(None, torch.ones(n, dtype=torch.bool), (
                    f"{self._name} reported all {n} rows failed (mask file, exit status "
                    f"{proc.returncode}){_stderr_note(proc.stderr)}"))
            if self.io == "npy":
                if not os.path.exists(x_path):
                    raise RuntimeError(f"{self._name} exited {proc.returncode} but wrote no "
                                       f"{x_path}{_stderr_note(proc.stderr)}")
                try:
                    out = np.load(x_path, allow_pickle=False)
                except (ValueError, OSError, EOFError) as err:  # numpy calls any non-.npy file
                    raise RuntimeError(                      # "pickled data": say what it is
                        f"{self._name} wrote {x_path}, but it is not a numeric .npy array "
                        f"(write it with numpy.save(path, x) of a float array; numpy says: "
                        f"{err}){_stderr_note(proc.stderr)}") from err
            else:
                try:
                    out = np.loadtxt(proc.stdout.splitlines(), dtype=np.float64, ndmin=2)
                except ValueError as err:
                    raise RuntimeError(f"{self._name} printed unparsable output ({err})"
                                       f"{_stderr_note(proc.stderr)}") from err
                size = int(np.prod(self.x_shape))  # type: ignore[arg-type]
                if out.size != n * size:  # e.g. it stopped early: say so, not "unparsable"
                    raise RuntimeError(
                        f"{self._name} printed {out.size} numbers in {out.shape[0]} line(s) for "
                        f"{n} parameter rows; expected {n} lines of {size} numbers (one per "
                        f"row of theta){_stderr_note(proc.stderr)}")
                out = out.reshape(n, *self.x_shape)  # type: ignore[misc]
        if out.shape[0] != n or (self.x_shape is not None and out.shape[1:] != self.x_shape):
            expected = (n, *self.x_shape) if self.x_shape is not None else (n, "...")
            raise RuntimeError(f"{self._name} returned shape {out.shape}, expected {expected}.")
        if np.iscomplexobj(out):  # float32 would drop the imaginary parts
            from sbi_core.failures import COMPLEX_ADVICE

            raise RuntimeError(f"{self._name}: " + COMPLEX_ADVICE.format(dtype=out.dtype)
                               .replace("the simulator returned", "wrote"))
        x = torch.as_tensor(np.asarray(out, dtype=np.float32))
        if failed is not None and bool(failed.any()):
            raise RowFailures(x, torch.as_tensor(failed), (
                f"{self._name} reported {int(failed.sum())} of {n} rows failed (mask file, "
                f"exit status {proc.returncode}){_stderr_note(proc.stderr)}"))
        return x

    def _read_mask(self, path: str, n: int, proc: subprocess.CompletedProcess) -> np.ndarray:
        """Bool ``(n,)`` of the rows listed in the mask file (0-based indices)."""
        try:
            with open(path) as f:  # np.savetxt's default float format ("3.0e+00") counts too
                values = np.array([float(v) for v in f.read().replace(",", " ").split()])
            if not np.all(np.isfinite(values) & (values == np.round(values))):
                raise ValueError(f"not whole numbers: {values[values != np.round(values)][:5]}")
            rows = values.astype(np.int64)
        except ValueError as err:
            raise RuntimeError(f"{self._name} wrote an unreadable mask file ({err}); it must "
                               f"list 0-based row indices{_stderr_note(proc.stderr)}") from err
        if rows.size and (rows.min() < 0 or rows.max() >= n):
            raise RuntimeError(f"{self._name} listed failed rows {rows.tolist()[:10]} outside "
                               f"0..{n - 1} in its mask file{_stderr_note(proc.stderr)}")
        failed = np.zeros(n, dtype=bool)
        failed[rows] = True
        return failed

    @property
    def _name(self) -> str:
        return f"external simulator {self.command[0]!r}"

    def _run(self, argv: list[str], env: dict[str, str],
             stdin: str | None) -> subprocess.CompletedProcess:
        """Run the program in its own process group; on timeout kill the whole group."""
        posix = os.name == "posix"
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin is not None else
                                    subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=env, cwd=self.cwd,
                                    # bytes that are not text (a Latin-1 message, binary noise)
                                    # are shown escaped instead of failing the whole call
                                    encoding="utf-8", errors="backslashreplace",
                                    start_new_session=posix)
        except FileNotFoundError as err:
            raise RuntimeError(f"{self._name} could not be started: {err}") from None
        except PermissionError as err:  # a script without the executable bit, or a folder
            raise RuntimeError(
                f"{self._name} could not be started: {err}. Make it executable (chmod +x "
                f"{shlex.quote(argv[0])}), or name its interpreter first, e.g. "
                f"[sys.executable, {argv[0]!r}, ...] for a Python script.") from None
        try:
            stdout, stderr = proc.communicate(stdin, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc, posix)
            stdout, stderr = _drain(proc)
            raise RuntimeError(f"{self._name} timed out after {self.timeout} s (its process "
                               f"group was killed){_stderr_note(stderr)}") from None
        except BaseException:  # Ctrl-C or a worker shutting down: leave nothing running
            _kill_group(proc, posix)
            _drain(proc)
            raise
        return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)


def _kill_group(proc: subprocess.Popen, posix: bool) -> None:
    try:
        if posix:
            os.killpg(proc.pid, signal.SIGKILL)  # the program and every child it started
        else:
            proc.kill()
    except (ProcessLookupError, PermissionError):
        pass


def _drain(proc: subprocess.Popen) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:  # a child escaped the group and holds the pipes
        proc.kill()
        proc.wait()
        return "", ""


def _substitute(arg: str, subs: dict[str, str]) -> str:
    for key, value in subs.items():
        arg = arg.replace(key, value)
    return arg


def _stderr_note(stderr: str | None) -> str:
    text = (stderr or "").strip()
    if not text:
        return ""
    if len(text) > _STDERR_TAIL:
        text = "..." + text[-_STDERR_TAIL:]
    return f"; stderr: {shown_text(text)}"  # escaped: a colour code or \r cannot reach a terminal


def external_simulator(command: str | Sequence[str], io: str = "npy",
                       timeout: float | None = 600, x_shape: Sequence[int] | None = None,
                       cwd: str | None = None,
                       env: dict[str, str] | None = None) -> ExternalProgram:
    """An :class:`ExternalProgram` simulator; see the module docstring for the protocol."""
    return ExternalProgram(command, io=io, timeout=timeout, x_shape=x_shape, cwd=cwd, env=env)
