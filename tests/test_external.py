"""External programs as simulators: .npy and stdin/stdout exchange, failures recorded as
invalid rows with the program's stderr, and a timeout."""

import sys

import pytest
import torch

from sbi_core import Problem, box_uniform
from sbi_core.simulation import run_chunk, simulate
from simulators.external import ExternalProgram, external_simulator

NPY_PROGRAM = '''
import sys, time
import numpy as np
theta = np.load(sys.argv[1])
if (theta[:, 0] < -0.5).any():
    sys.stderr.write("boom: theta_1 below -0.5 is unphysical\\n")
    sys.exit(3)
if (theta[:, 0] > 0.6).any():
    time.sleep(30)
np.save(sys.argv[2], np.stack([2 * theta[:, 0], theta.sum(1), theta[:, 1] ** 2], 1))
'''

TEXT_PROGRAM = '''
import sys
for line in sys.stdin:
    a, b = map(float, line.split())
    print(a + b, a - b)
'''


def _program(tmp_path, text: str, name: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_npy_program_simulates_batches(tmp_path):
    sim = external_simulator([sys.executable, _program(tmp_path, NPY_PROGRAM, "m.py"), "{theta}",
                              "{x}"], timeout=20, x_shape=(3,))
    problem = Problem(box_uniform([-0.4, -1.0], [0.5, 1.0]), sim, name="ext", x_shape=(3,))
    sims = simulate(problem, 12, seed=0, chunk_size=6, progress=False)
    t = sims.theta
    assert sims.num_invalid == 0
    assert torch.allclose(sims.x, torch.stack([2 * t[:, 0], t.sum(1), t[:, 1] ** 2], 1), atol=1e-6)


def test_text_program_via_stdin_stdout(tmp_path):
    sim = ExternalProgram(f"{sys.executable} {_program(tmp_path, TEXT_PROGRAM, 't.py')}",
                          io="text", x_shape=(2,), timeout=20)
    theta = torch.tensor([[1.0, 2.0], [0.5, -0.25]])
    assert torch.allclose(sim(theta), torch.tensor([[3.0, -1.0], [0.25, 0.75]]))


def test_failures_become_invalid_rows_with_stderr_and_timeout(tmp_path):
    sim = external_simulator([sys.executable, _program(tmp_path, NPY_PROGRAM, "m.py"), "{theta}",
                              "{x}"], timeout=2.0, x_shape=(3,))
    with pytest.raises(RuntimeError, match="timed out after 2.0 s"):
        sim(torch.tensor([[0.9, 0.0]]))
    with pytest.raises(RuntimeError, match="exited with status 3; stderr: boom"):
        sim(torch.tensor([[-0.9, 0.0]]))
    problem = Problem(box_uniform([-1.0, -1.0], [1.0, 1.0]), sim, name="ext", x_shape=(3,),
                      validate=False)
    torch.manual_seed(0)
    res = run_chunk(problem, 0, 5, seed=4)
    bad = (res.theta[:, 0] < -0.5) | (res.theta[:, 0] > 0.6)
    assert bad.any() and (~bad).any()  # this seed has both kinds of rows
    assert torch.equal(res.valid, ~bad)
    assert "stderr: boom: theta_1 below -0.5 is unphysical" in res.first_error


def test_bad_configuration_is_rejected():
    with pytest.raises(ValueError, match="x_shape"):
        ExternalProgram("prog", io="text")
    with pytest.raises(ValueError, match="empty"):
        ExternalProgram([])
    with pytest.raises(RuntimeError, match="could not be started"):
        ExternalProgram(["/nonexistent/prog"])(torch.zeros(1, 2))
