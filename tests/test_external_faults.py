"""External programs: a timeout kills the program's whole process group (children of a
wrapper script too), and programs report failed rows themselves (mask file or NaN rows)
so the engine reruns nothing."""

import sys
import time

import pytest
import torch

from sbi_core import Problem, box_uniform
from sbi_core.failures import RowFailures
from sbi_core.simulation import run_chunk
from simulators.external import external_simulator

MASK_PROGRAM = '''
import os, sys
import numpy as np
theta = np.load(os.environ["SBI_THETA"])
bad = np.nonzero(theta[:, 0] < 0)[0]
np.save(os.environ["SBI_X"], np.stack([theta[:, 0] * 2, theta[:, 1] + 1], 1))
if bad.size:
    np.savetxt(sys.argv[1], bad, fmt="%d")
    sys.stderr.write(f"{bad.size} rows diverged\\n")
    sys.exit(4)
'''

NAN_PROGRAM = '''
import sys
import numpy as np
theta = np.load(sys.argv[1])
x = np.stack([theta[:, 0] * 2, theta[:, 1] + 1], 1)
x[theta[:, 0] < 0] = np.nan
np.save(sys.argv[2], x)
'''


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # zombies are dead
    except FileNotFoundError:
        return False


def test_timeout_kills_the_programs_children(tmp_path):
    pid_file = tmp_path / "child.pid"
    wrapper = tmp_path / "wrapper.sh"
    wrapper.write_text(f"#!/bin/sh\nsleep 1000 >/dev/null 2>&1 &\necho $! > {pid_file}\nwait\n")
    wrapper.chmod(0o755)
    sim = external_simulator([str(wrapper)], timeout=1.0, x_shape=(2,))
    with pytest.raises(RuntimeError, match="timed out after 1.0 s"):
        sim(torch.zeros(2, 2))
    child = int(pid_file.read_text())
    deadline = time.time() + 5
    while _alive(child) and time.time() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the wrapper's `sleep 1000` survived the timeout"


def _chunk(tmp_path, text, args, size=12):
    prog = tmp_path / "prog.py"
    prog.write_text(text)
    sim = external_simulator([sys.executable, str(prog), *args], timeout=30, x_shape=(2,))
    calls = []

    def counted(theta):
        calls.append(theta.shape[0])
        return sim(theta)

    problem = Problem(box_uniform([-1.0, -1.0], [1.0, 1.0]), counted, x_shape=(2,),
                      validate=False)
    return sim, run_chunk(problem, 0, size, seed=7), calls


def test_mask_file_protocol_marks_rows_without_rerun(tmp_path):
    sim, res, calls = _chunk(tmp_path, MASK_PROGRAM, ["{mask}"])
    bad = res.theta[:, 0] < 0
    assert bad.any() and (~bad).any()
    assert calls == [12]  # one program start, no bisection
    assert torch.equal(res.valid, ~bad)
    assert torch.allclose(res.x[~bad], torch.stack([2 * res.theta[~bad, 0],
                                                      res.theta[~bad, 1] + 1], 1))
    assert "reported" in res.first_error and "rows diverged" in res.first_error
    with pytest.raises(RowFailures) as info:  # called directly: the good rows travel along
        sim(torch.tensor([[0.5, 0.0], [-0.5, 0.0]]))
    assert info.value.failed.tolist() == [False, True]
    assert torch.allclose(info.value.x[0], torch.tensor([1.0, 1.0]))
    with pytest.raises(RowFailures, match="all 1 rows failed"):
        sim(torch.tensor([[-0.5, 0.0]]))


def test_nan_row_protocol_marks_rows_without_rerun(tmp_path):
    _, res, calls = _chunk(tmp_path, NAN_PROGRAM, ["{theta}", "{x}"])
    bad = res.theta[:, 0] < 0
    assert calls == [12] and torch.equal(res.valid, ~bad) and bad.any()
    assert res.first_error == "the simulator returned NaN or inf"


def test_failing_program_without_report_is_bisected(tmp_path):
    text = MASK_PROGRAM.replace("np.savetxt(sys.argv[1], bad, fmt=\"%d\")", "pass")
    _, res, calls = _chunk(tmp_path, text, ["{mask}"], size=16)
    bad = res.theta[:, 0] < 0
    assert torch.equal(res.valid, ~bad) and "exited with status 4" in res.first_error
    k = int(bad.sum())
    assert calls[0] == 16 and max(calls[1:]) == 8  # halves, never the whole batch again
    assert len(calls) <= 1 + 2 * k * 4  # at most two calls per level per failing row


def test_broken_program_at_construction_is_not_probed_again(tmp_path):
    prog = tmp_path / "count.py"
    log = tmp_path / "starts.txt"
    prog.write_text(f"open({str(log)!r}, 'a').write('x')\nraise SystemExit(2)\n")
    sim = external_simulator([sys.executable, str(prog)], timeout=30, x_shape=(2,))
    with pytest.raises(ValueError, match="exited with status 2"):
        Problem(box_uniform([-1.0, -1.0], [1.0, 1.0]), sim, x_shape=(2,))
    assert log.read_text() == "x"  # one start: the adapter probe does not rerun a program
