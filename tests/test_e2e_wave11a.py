"""Wave 11 end-to-end sweep, own problems: an external program that writes bytes that are not
UTF-8 or a file that is not .npy, an observation beyond float32, and the explorer on a server
with a small --max-samples."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch
from serve_helpers import tiny_posterior

from sbi_core.posterior import ObservationError
from simulators import external_simulator

PROGRAM = """
import sys
import numpy as np
mode, theta_path, x_path = sys.argv[1:4]
theta = np.load(theta_path)
if mode == "latin1":      # a message in Latin-1 (or binary noise) on stderr, output fine
    sys.stderr.buffer.write(b"Temp\\xe9rature ok\\n")
    np.save(x_path, theta)
elif mode == "colour":    # a failure reported in colour, with a byte that is not UTF-8
    sys.stderr.buffer.write(b"\\x1b[31mdiverged \\xff\\x1b[0m\\r\\n")
    sys.exit(2)
elif mode == "not_npy":   # wrote something, but not a .npy array
    open(x_path, "wb").write(b"1.0 2.0 3.0")
"""


@pytest.fixture
def program(tmp_path):
    path = tmp_path / "prog.py"
    path.write_text(PROGRAM)
    return lambda mode: external_simulator([sys.executable, str(path), mode, "{theta}", "{x}"],
                                           timeout=60, x_shape=(2,))


def test_external_program_with_non_utf8_stderr_still_simulates(program):
    theta = torch.rand(4, 2)
    x = program("latin1")(theta)  # was: UnicodeDecodeError, the whole batch failed
    assert torch.allclose(x, theta)


def test_external_program_failure_shows_its_stderr_escaped(program):
    with pytest.raises(RuntimeError, match="exited with status 2") as err:
        program("colour")(torch.rand(3, 2))
    message = str(err.value)
    assert "\\x1b[31mdiverged \\xff" in message  # escaped, readable
    assert "\x1b" not in message and "\r" not in message


def test_external_program_writing_a_non_npy_file_is_named_as_such(program):
    with pytest.raises(RuntimeError, match="not a numeric .npy array") as err:
        program("not_npy")(torch.rand(3, 2))
    assert "numpy.save" in str(err.value)


@pytest.fixture(scope="module")
def moons():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tiny_posterior()


def test_observation_beyond_float32_is_not_called_nan(moons):
    x = torch.tensor([1e39, 0.0], dtype=torch.float64)
    with pytest.raises(ObservationError, match="beyond float32's range") as err:
        moons.sample((10,), x=x)
    assert "NaN" not in str(err.value)


def test_server_observation_beyond_float32_is_not_called_nan(moons):
    from fastapi.testclient import TestClient

    from sbi_core.server import create_app

    client = TestClient(create_app({"m": moons}))
    r = client.post("/api/models/m/sample", json={"x": [1e39, 0.0], "n": 5})
    assert r.status_code == 422
    assert "beyond float32's range" in r.json()["detail"]


def test_explorer_with_small_max_samples_and_an_unbounded_prior(moons):
    """The sample count field starts at 1000; a server started with --max-samples 200 answered
    the explorer's first request with 413 and showed no posterior."""
    from serve_helpers import explorer_page

    from sbi_core.server import create_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gaussian = tiny_posterior("linear_gaussian")
    app = create_app({"m": moons, "g": gaussian}, max_samples=200)
    with explorer_page(app) as (srv, page, _):
        page.goto(srv.url + "/")
        page.wait_for_function("document.querySelector('#pairplot').dataset.updates === '1'",
                               timeout=20_000)
        assert page.locator("#pairplot").get_attribute("data-sample-count") == "200"
        assert page.locator("#num").input_value() == "200"
        # an unbounded prior's bounds read as infinite, not as empty "[, ]"
        page.goto(srv.url + "/?model=g")
        page.wait_for_function("document.querySelector('#pairplot').dataset.updates === '1'",
                               timeout=20_000)
        card = page.locator("#model-card").inner_text()
        assert "[-∞, -∞]" in card and "[∞, ∞]" in card and "[, ]" not in card


def test_server_labels_a_sequential_model_by_its_sequential_method(moons):
    """`sbi-core serve` listed a `sbi-core run` model as method 'npe' (an amortized posterior)
    in the explorer's model selector and card; it now also gives the label of the report card."""
    import copy

    from fastapi.testclient import TestClient

    from sbi_core.server import create_app

    seq = copy.copy(moons)
    seq.problem_spec = {**moons.problem_spec,
                        "sequential": {"method": "tsnpe", "x_o": [0.1, 0.2]}}
    client = TestClient(create_app({"seq": seq}))
    listed = client.get("/api/models").json()["models"][0]
    info = client.get("/api/models/seq").json()
    label = "tsnpe (sequential, for one x_o; estimator npe)"
    assert listed["method_label"] == info["method_label"] == label
    assert listed["method"] == "npe"  # the registry name is unchanged


def test_text_program_that_stops_early_is_told_how_many_lines_it_printed(tmp_path):
    path = tmp_path / "text.py"
    path.write_text("import sys\nrows = [l.split() for l in sys.stdin if l.strip()]\n"
                    "for r in rows[:-1]:\n    print(r[0], r[1])\n")
    sim = external_simulator([sys.executable, str(path)], io="text", timeout=60, x_shape=(2,))
    with pytest.raises(RuntimeError, match=r"printed 4 numbers in 2 line\(s\) for 3 parameter "
                                           r"rows; expected 3 lines of 2 numbers"):
        sim(torch.rand(3, 2))


def test_simulator_that_hangs_in_the_problem_test_run_gets_a_clear_error():
    """Problem(...) runs the simulator on 3 prior draws with no time limit: a simulator that
    hangs for some parameters hung there forever, before simulate(..., timeout=) could
    supervise anything. Now the test run is limited and the error names validate=False."""
    import time

    from sbi_core import Problem, box_uniform

    def hangs(theta):
        time.sleep(100)
        return theta

    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"did not finish its test run .* validate=False"):
        Problem(box_uniform([0.0], [1.0]), hangs, validate_timeout=0.5)
    assert time.perf_counter() - start < 10
    problem = Problem(box_uniform([0.0], [1.0]), hangs, validate=False, x_shape=(1,))
    assert problem.x_shape == (1,)


def test_time_limit_leaves_a_sigalrm_handler_of_the_caller_alone():
    import signal

    from sbi_core.time_limit import time_limit

    calls = []
    previous = signal.signal(signal.SIGALRM, lambda *a: calls.append(a))
    try:
        with time_limit(0.01):  # someone else owns SIGALRM: no limit, nothing replaced
            assert signal.getsignal(signal.SIGALRM) is not signal.SIG_DFL
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert not calls
