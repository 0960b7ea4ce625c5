"""Wave 13 hardening (h13-e2e13): a scientist's own problem through simulate, stores, the CLI
and the observation files: resumed stores of another prior, whole-number budgets written as
floats, output files named for another format, observation files from ``np.savetxt``."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import torch
from cli_helpers import cli_simulate_and_train
from scipy import stats
from torch.distributions import Independent, Normal

from sbi_core import Problem, box_uniform, simulate
from sbi_core.cli.main import main


def _shift(theta: torch.Tensor) -> torch.Tensor:
    """theta (N, D) -> x (N, 1): the first parameter plus noise."""
    return theta[:, :1] + 0.1 * torch.randn(len(theta), 1)


# ------------------------------------------------------------------ stores of another prior
@pytest.mark.parametrize("other", [
    lambda: box_uniform([0.0], [5.0]),                                   # bounds widened
    lambda: Independent(Normal(torch.zeros(1), torch.ones(1)), 1),       # another family
])
def test_resuming_a_store_with_another_prior_is_refused(tmp_path, other):
    path = tmp_path / "s.zarr"
    first = Problem(box_uniform([0.0], [1.0]), _shift, name="mine")
    simulate(first, 100, seed=0, store=path, chunk_size=50)
    changed = Problem(other(), _shift, name="mine")
    with pytest.raises(ValueError, match="another prior.*new path"):
        simulate(changed, 200, seed=0, store=path, chunk_size=50, resume=True)
    assert simulate(first, 100, seed=0, store=path, chunk_size=50, resume=True).theta.max() <= 1


@pytest.mark.parametrize("prior", [
    lambda: box_uniform([0.0], [1.0]),
    lambda: Independent(Normal(torch.zeros(1), torch.ones(1)), 1),
    lambda: [stats.uniform(0, 1)],
])
def test_resuming_a_store_with_the_same_prior_still_works(tmp_path, prior):
    path = tmp_path / "s.zarr"
    problem = Problem(prior(), _shift, name="mine")
    simulate(problem, 100, seed=0, store=path, chunk_size=50)
    again = Problem(prior(), _shift, name="mine")  # rebuilt, as a new session would
    whole = simulate(again, 200, seed=0, store=path, chunk_size=50, resume=True)
    assert whole.theta.shape == (200, 1) and whole.num_invalid == 0
    ref = simulate(again, 200, seed=0, store=tmp_path / "ref.zarr", chunk_size=50)
    assert torch.equal(whole.theta, ref.theta) and torch.equal(whole.x, ref.x)


def test_resuming_or_appending_to_a_store_with_other_parameters_is_refused(tmp_path):
    path = tmp_path / "s.zarr"
    one = Problem(box_uniform([0.0], [1.0]), _shift, name="mine")
    two = Problem(box_uniform([0.0, 0.0], [1.0, 1.0]), _shift, name="mine")
    simulate(one, 100, seed=0, store=path, chunk_size=50)
    shutil.copytree(path, tmp_path / "copy.zarr")
    with pytest.raises(ValueError, match="parameters.*mixed"):
        simulate(two, 200, seed=0, store=path, chunk_size=50, resume=True)
    with pytest.raises(ValueError, match="parameters.*mixed"):
        simulate(two, theta=torch.rand(10, 2), seed=0, store=path, chunk_size=50, append=True)
    kept = simulate(one, 100, seed=0, store=path, chunk_size=50, resume=True)
    assert torch.equal(kept.theta, simulate(one, 100, seed=0, store=tmp_path / "copy.zarr",
                                            chunk_size=50, resume=True).theta)


def test_cli_resume_with_another_prior_is_one_line(tmp_path, capsys):
    (tmp_path / "p.py").write_text(
        "import torch\nfrom sbi_core import Problem, box_uniform\n"
        "def sim(t):\n    return t + 0.1 * torch.randn_like(t)\n"
        "def narrow():\n    return Problem(box_uniform([0.0], [1.0]), sim, name='p')\n"
        "def wide():\n    return Problem(box_uniform([0.0], [9.0]), sim, name='p')\n")
    out = str(tmp_path / "s.zarr")
    assert main(["simulate", f"{tmp_path / 'p.py'}:narrow", "--num", "40", "--out", out,
                 "--quiet", "--in-process"]) == 0
    assert main(["simulate", f"{tmp_path / 'p.py'}:wide", "--num", "80", "--out", out,
                 "--resume", "--quiet", "--in-process"]) == 2
    err = capsys.readouterr().err
    assert "another prior" in err and "Traceback" not in err


# ------------------------------------------------------------------ budgets written as 1e4
def test_simulate_takes_a_whole_number_written_as_a_float():
    problem = Problem(box_uniform([0.0], [1.0]), _shift, name="mine")
    sims = simulate(problem, 1e2, seed=0, chunk_size=5e1)
    assert sims.theta.shape == (100, 1)
    assert torch.equal(sims.x, simulate(problem, 100, seed=0, chunk_size=50).x)
    assert simulate(problem, np.int64(10), seed=np.int64(0)).theta.shape == (10, 1)
    for bad, name in ((2.5, "num_simulations"), ("10", "num_simulations"), (True, "num_simulations")):
        with pytest.raises(TypeError, match=f"{name} must be a whole number"):
            simulate(problem, bad, seed=0)
    with pytest.raises(TypeError, match="workers must be a whole number"):
        simulate(problem, 10, seed=0, workers="2")


# ------------------------------------------------------------------ outputs named for another format
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A linear_gaussian NPE model file and one observation (CSV)."""
    d = tmp_path_factory.mktemp("tiny")
    sims, model = cli_simulate_and_train(d, num=300, max_epochs=2)
    xfile = d / "x.csv"
    xfile.write_text("0.1,0.2\n")
    return d, sims, model, xfile


@pytest.mark.parametrize("command, out", [
    (lambda d, sims, model, x, out: ["sample", str(model), "--x", str(x), "--num", "5",
                                     "--out", out], "s.npy"),
    (lambda d, sims, model, x, out: ["sample", str(model), "--x", str(x), "--num", "5",
                                     "--out", out], "s.json"),
    (lambda d, sims, model, x, out: ["simulate", "linear_gaussian", "--num", "5", "--out", out,
                                     "--in-process"], "s.csv"),
    (lambda d, sims, model, x, out: ["train", "--sims", str(sims), "--out", out,
                                     "--max-epochs", "1"], "m.npz"),
])
def test_cli_output_named_for_another_format_is_refused(tiny_model, tmp_path, capsys, command,
                                                        out):
    path = tmp_path / out
    assert main(command(*tiny_model, str(path)) + ["--quiet"]) == 2
    err = capsys.readouterr().err
    assert "names" in err and "Use " in err and "Traceback" not in err
    assert not path.exists()  # nothing written under the misleading name


def test_outputs_with_their_own_endings_are_still_written(tiny_model, tmp_path):
    d, sims, model, xfile = tiny_model
    assert main(["sample", str(model), "--x", str(xfile), "--num", "5", "--out",
                 str(tmp_path / "s.csv"), "--quiet"]) == 0
    assert main(["sample", str(model), "--x", str(xfile), "--num", "5", "--out",
                 str(tmp_path / "samples"), "--quiet"]) == 0  # no ending: left to the user
    assert main(["simulate", "linear_gaussian", "--num", "5", "--out", str(tmp_path / "s.npz"),
                 "--quiet", "--in-process"]) == 0
    assert (tmp_path / "s.csv").read_text().startswith("observation")


def test_python_save_refuses_a_name_of_another_format(tiny_model, tmp_path):
    from sbi_core import load, save
    from sbi_core.simulation_set import SimulationSet

    d, sims, model, xfile = tiny_model
    with pytest.raises(ValueError, match=r"names CSV \(\.csv\).*sims\.pt"):
        SimulationSet.load(sims).save(tmp_path / "sims.csv")
    with pytest.raises(ValueError, match=r"names a NumPy array .*model\.pt"):
        save(load(model), tmp_path / "model.npy")
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------ observation files from np.savetxt
def test_observations_written_by_np_savetxt_defaults_are_read(tmp_path):
    from sbi_core.io import read_observations

    x = np.array([[12.0, 15.0, 9.0], [3.0, 4.5, -5.0]])
    np.savetxt(tmp_path / "spaces.csv", x)                          # delimiter ' '
    np.savetxt(tmp_path / "tabs.txt", x, delimiter="\t")
    np.savetxt(tmp_path / "header.txt", x, header="a b c")          # '# a b c' first
    np.savetxt(tmp_path / "commas.csv", x, delimiter=",")
    for name in ("spaces.csv", "tabs.txt", "header.txt", "commas.csv"):
        got = read_observations(tmp_path / name, (3,))
        assert torch.equal(got, torch.tensor(x, dtype=torch.float32)), name
    (tmp_path / "one_name.csv").write_text("observed count\n4\n5\n")  # a header cell with a space
    assert read_observations(tmp_path / "one_name.csv", (1,)).tolist() == [[4.0], [5.0]]


def test_observations_separated_by_semicolons_get_the_fix(tmp_path):
    from sbi_core.io import read_observations

    (tmp_path / "eu.csv").write_text("12,5;15,0;9,1\n")
    with pytest.raises(ValueError, match="not semicolons; a decimal comma must be a point"):
        read_observations(tmp_path / "eu.csv", (3,))


def test_cli_sample_reads_an_observation_saved_with_np_savetxt(tiny_model, tmp_path, capsys):
    d, sims, model, _ = tiny_model
    np.savetxt(tmp_path / "x.csv", np.array([[0.1, 0.2], [0.3, -0.1]]))
    assert main(["sample", str(model), "--x", str(tmp_path / "x.csv"), "--num", "4", "--out",
                 str(tmp_path / "s.csv"), "--quiet"]) == 0
    assert '"observations": 2' in capsys.readouterr().out


def test_cli_force_keeps_a_name_of_another_format_and_loses_nothing(tiny_model, tmp_path):
    from sbi_core.simulation_set import SimulationSet

    d, sims, model, xfile = tiny_model
    out = tmp_path / "sims.csv"
    assert main(["simulate", "linear_gaussian", "--num", "5", "--out", str(out), "--quiet",
                 "--in-process", "--force"]) == 0
    assert SimulationSet.load(out).theta.shape == (5, 2)
    assert main(["train", "--sims", str(sims), "--out", str(tmp_path / "m.npy"), "--max-epochs",
                 "1", "--quiet", "--force"]) == 0
    assert main(["diagnose", str(tmp_path / "m.npy"), "--problem", "linear_gaussian", "--num",
                 "20", "--samples", "20", "--checks", "sbc", "--save", "--quiet", "--out",
                 str(tmp_path / "diag")]) == 0


def test_resuming_a_store_with_fewer_given_theta_points_to_append(tmp_path):
    problem = Problem(box_uniform([0.0], [1.0]), _shift, name="mine")
    path = tmp_path / "s.zarr"
    simulate(problem, 100, seed=0, store=path, chunk_size=50)
    more = torch.rand(7, 1)
    with pytest.raises(ValueError, match="append=True"):
        simulate(problem, theta=more, seed=0, store=path, chunk_size=50, resume=True)
    grown = simulate(problem, theta=more, seed=0, store=path, chunk_size=50, append=True)
    assert grown.theta.shape == (107, 1) and torch.equal(grown.theta[100:], more)


# ------------------------------------------------------------------ external programs
def test_external_script_without_executable_bit_names_the_fix(tmp_path):
    from simulators import external_simulator

    script = tmp_path / "model.py"
    script.write_text("import sys, numpy as np\nnp.save(sys.argv[2], np.load(sys.argv[1]))\n")
    script.chmod(0o644)
    program = external_simulator([str(script), "{theta}", "{x}"], timeout=30, x_shape=(1,))
    with pytest.raises(ValueError, match=r"chmod \+x .*sys\.executable"):
        Problem(box_uniform([0.0], [1.0]), program, x_shape=(1,))


# ------------------------------------------------------------------ simulators that write into theta
def _scales_its_input(theta: torch.Tensor) -> torch.Tensor:
    """A batched simulator that rescales its input in place (as model code often does)."""
    theta[:, 0] *= 100.0
    return theta + 0.01 * torch.randn_like(theta)


@pytest.mark.parametrize("workers", [1, 2])
def test_simulator_writing_into_its_input_does_not_change_the_stored_theta(workers):
    problem = Problem(box_uniform([0.0, 0.0], [1.0, 1.0]), _scales_its_input, x_shape=(2,))
    sims = simulate(problem, 200, seed=0, workers=workers, chunk_size=50)
    assert float(sims.theta.max()) <= 1.0  # prior draws, not the simulator's rescaled copy
    assert torch.allclose(sims.x[:, 0], 100 * sims.theta[:, 0], atol=0.1)
    design = torch.full((4, 2), 0.5)
    at = simulate(problem, theta=design, seed=0)
    assert torch.equal(at.theta, design) and torch.equal(design, torch.full((4, 2), 0.5))


# ------------------------------------------------------------------ robustness of your own model
_OWN_MODEL = '''
import torch
from torch import nn
from torch.distributions import Distribution, constraints

from sbi_core import Problem


class Rates(Distribution):
    """Two positive rates (a prior class of your own)."""
    arg_constraints = {}
    support = constraints.independent(constraints.positive, 1)

    def __init__(self):
        super().__init__(event_shape=torch.Size([2]), validate_args=False)

    def sample(self, sample_shape=torch.Size()):
        return torch.rand(*sample_shape, 2) + 0.1

    def log_prob(self, value):
        inside = ((value > 0.1) & (value < 1.1)).all(-1)
        return torch.where(inside, torch.tensor(0.0), torch.tensor(float("-inf")))


def sim(theta):
    return theta + 0.05 * torch.randn_like(theta)


def make():
    return Problem(Rates(), sim, name="rates", x_shape=(2,))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 3)

    def forward(self, x):
        return self.lin(x)


def net():
    return Net()
'''


def test_cli_robustness_takes_the_embedding_and_prior_of_your_own_model(tmp_path, capsys):
    (tmp_path / "own.py").write_text(_OWN_MODEL)
    prob, net = f"{tmp_path / 'own.py'}:make", f"{tmp_path / 'own.py'}:net"
    sims, held, model = tmp_path / "s.pt", tmp_path / "held.pt", tmp_path / "m.pt"
    with pytest.warns(UserWarning, match="prior"):
        assert main(["simulate", prob, "--num", "300", "--out", str(sims), "--quiet",
                     "--in-process"]) == 0
    assert main(["simulate", prob, "--num", "20", "--seed", "1", "--out", str(held), "--quiet",
                 "--in-process"]) == 0
    assert main(["train", "--sims", str(sims), "--problem", prob, "--embedding", net, "--out",
                 str(model), "--max-epochs", "2", "--quiet"]) == 0
    capsys.readouterr()
    common = ["robustness", str(model), "--sims", str(held), "--num", "8", "--steps", "3",
              "--num-samples", "16", "--eps", "0.5", "--no-predictive", "--quiet"]
    assert main(common) == 2  # the error names both things to pass ...
    assert main(common + ["--embedding", net]) == 2
    assert "--problem" in capsys.readouterr().err
    assert main(common + ["--embedding", net, "--problem", prob]) == 0  # ... and both work
    assert capsys.readouterr().out.startswith("status:")


# ------------------------------------------------------------------ x_shape=100
def test_x_shape_may_be_one_number_and_a_bad_one_is_named():
    from simulators import external_simulator

    problem = Problem(box_uniform([0.0], [1.0]), _shift, x_shape=1)
    assert problem.x_shape == (1,) and simulate(problem, 5, seed=0).x.shape == (5, 1)
    assert Problem(box_uniform([0.0], [1.0]), _shift, x_shape=np.int64(1)).x_shape == (1,)
    assert external_simulator(["prog"], io="text", x_shape=3).x_shape == (3,)
    for bad in ("3", 2.5, (0,), (-1, 2), True):
        with pytest.raises(TypeError, match="x_shape must be a shape"):
            Problem(box_uniform([0.0], [1.0]), _shift, x_shape=bad)


# ------------------------------------------------------------------ files saved by Excel (BOM)
def test_files_starting_with_a_byte_order_mark_are_read(tmp_path, capsys):
    from sbi_core.io import read_observations
    from sbi_core.simulation_set import SimulationSet

    bom = "\ufeff"
    (tmp_path / "x.csv").write_text(bom + "12,15,9\r\n", encoding="utf-8")
    (tmp_path / "xh.csv").write_text(bom + "a,b,c\r\n12,15,9\r\n", encoding="utf-8")
    (tmp_path / "x.json").write_text(bom + "[12, 15, 9]", encoding="utf-8")
    for name in ("x.csv", "xh.csv", "x.json"):
        assert read_observations(tmp_path / name, (3,), ["a", "b", "c"]).tolist() == \
            [[12.0, 15.0, 9.0]], name
    theta = tmp_path / "theta.csv"
    theta.write_text(bom + "theta_1,theta_2\r\n0.5,0.1\r\n0.2,0.3\r\n", encoding="utf-8")
    out = tmp_path / "s.pt"
    assert main(["simulate", "linear_gaussian", "--theta", str(theta), "--out", str(out),
                 "--quiet", "--in-process"]) == 0, capsys.readouterr().err
    assert SimulationSet.load(out).theta.tolist() == [[0.5, 0.10000000149011612],
                                                      [0.20000000298023224, 0.30000001192092896]]


# ------------------------------------------------------------------ per-sample functions reusing a buffer
@pytest.mark.parametrize("make_buffer", [lambda: torch.zeros(2), lambda: np.zeros(2, np.float32)])
def test_per_sample_simulator_returning_one_buffer_keeps_every_row(make_buffer):
    from simulators import adapt

    buffer = make_buffer()

    def model(theta):
        """Writes each result into one preallocated buffer and returns it."""
        buffer[0], buffer[1] = float(theta[0]), 2 * float(theta[0])
        return buffer

    sims = simulate(Problem(box_uniform([0.0], [1.0]), adapt(model), x_shape=(2,)), 20, seed=0)
    assert torch.allclose(sims.x[:, 0], sims.theta[:, 0])
    assert torch.allclose(sims.x[:, 1], 2 * sims.theta[:, 0])


# ------------------------------------------------------------------ given theta: tables and float64
class _Table:
    """The part of a pandas DataFrame that ``simulate(theta=...)`` uses (pandas is optional)."""

    def __init__(self, data: dict[str, list[float]]):
        self.data = data
        self.columns = list(data)

    def __getitem__(self, names: list[str]) -> _Table:
        return _Table({n: self.data[n] for n in names})

    def __array__(self, dtype=None, copy=None):
        return np.array([self.data[c] for c in self.columns], dtype=dtype).T


def test_given_theta_table_is_read_by_parameter_name():
    problem = Problem(box_uniform([0.0, 0.0], [1.0, 1.0]), _shift, param_names=["a", "b"])
    swapped = _Table({"b": [0.3, 0.4], "a": [0.1, 0.2]})
    sims = simulate(problem, theta=swapped, seed=0)
    assert torch.allclose(sims.theta, torch.tensor([[0.1, 0.3], [0.2, 0.4]]))
    assert torch.allclose(simulate(problem, theta=_Table({"x": [0.5], "y": [0.6]}), seed=0).theta,
                          torch.tensor([[0.5, 0.6]]))  # no parameter names: by position
    with pytest.raises(ValueError, match=r"columns \['b', 'c'\] are not the problem's"):
        simulate(problem, theta=_Table({"b": [0.3], "c": [0.1]}), seed=0)


def test_given_theta_beyond_float32_is_not_called_nan():
    problem = Problem(box_uniform([0.0, 0.0], [1.0, 1.0]), _shift)
    with pytest.raises(ValueError, match="beyond float32's range") as err:
        simulate(problem, theta=np.array([[0.5, 0.5], [1e300, 0.1]]), seed=0)
    assert "NaN" not in str(err.value) and "row 1" in str(err.value)


# ------------------------------------------------------------------ complex output (an FFT)
def _spectrum(theta: np.ndarray) -> np.ndarray:
    """One parameter set -> the first 4 complex FFT coefficients of a noisy sine."""
    return np.fft.fft(np.sin(np.arange(8) * theta[0] * 3) + 0.1 * np.random.normal(size=8))[:4]


def test_complex_simulator_output_is_refused_not_cut_to_its_real_part(tmp_path):
    from simulators import adapt, external_simulator

    prior = box_uniform([0.0], [1.0])
    with pytest.raises(ValueError, match="complex values.*imaginary parts"):
        Problem(prior, adapt(_spectrum, batched=False, numpy=True))
    with pytest.raises(TypeError, match="complex values.*x.real, x.imag"):
        Problem(prior, lambda t: torch.fft.fft(torch.sin(t * torch.arange(8)))[:, :4])
    sims = simulate(Problem(prior, adapt(_spectrum, batched=False, numpy=True), validate=False,
                            x_shape=(4,)), 5, seed=0)  # no test run: every row is a failure
    assert sims.num_invalid == 5 and "complex" in sims.provenance["first_error"]
    script = tmp_path / "fft.py"
    script.write_text("import sys, numpy as np\n"
                      "np.save(sys.argv[2], np.fft.fft(np.load(sys.argv[1]), axis=1))\n")
    import sys
    program = external_simulator([sys.executable, str(script), "{theta}", "{x}"], timeout=60,
                                 x_shape=(1,))
    with pytest.raises(RuntimeError, match="complex values"):
        program(torch.rand(3, 1))


# ------------------------------------------------------------------ fit on simulations of another prior
def test_fit_warns_when_the_simulations_were_drawn_from_another_prior(tmp_path):
    from sbi_core import fit
    from sbi_core.simulation_set import SimulationSet

    narrow = Problem(box_uniform([0.0], [1.0]), _shift, name="mine")
    wide = Problem(box_uniform([0.0], [5.0]), _shift, name="mine")  # the file edited later
    sims = simulate(narrow, 200, seed=0)
    sims.save(tmp_path / "s.pt")
    store = simulate(narrow, 200, seed=0, store=tmp_path / "s.zarr", chunk_size=100)
    for data in (sims, SimulationSet.load(tmp_path / "s.pt"), store, str(tmp_path / "s.zarr")):
        with pytest.warns(UserWarning, match="drawn from another prior"):
            fit(wide, data, max_epochs=1)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*another prior")
        fit(narrow, SimulationSet.load(tmp_path / "s.pt"), max_epochs=1)  # same prior: silent
        fit(wide, simulate(wide, theta=torch.rand(200, 1), seed=0), max_epochs=1)  # given θ
