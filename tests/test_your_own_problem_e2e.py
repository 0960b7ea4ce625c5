"""Bring your own problem (issue 16), end to end, written as a scientist's code.

A scientist's folder (written to ``tmp_path``) holds ``my_problem.py`` with their own
simulators, outside the built-ins, and a sibling ``epi_helpers.py`` it imports:

* a torch batched binomial SIR returning 100 days of new infections, prior
  ``Independent(LogNormal)``, and a custom ``nn.Module`` embedding for the series;
* a per-sample numpy Ricker model wrapped with ``simulators.adapt``, scipy prior;
* an external program (a small Python script) that fails on some rows and reports them by
  the mask file or by NaN rows.

Each goes the whole way: simulate (workers, a zarr store, ``theta=``, ``timeout``) -> fit ->
save -> load (``embedding=`` / ``prior=``) -> sample -> diagnose -> serve, and the CLI
(``sbi-core simulate/train/sample/diagnose --problem my_problem.py:make --embedding
my_problem.py:Net``). ``my_problem.py`` appends a line to ``imports.log`` whenever it is
imported: loading a model or simulation file that names it must never import it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from torch.distributions import (
    Distribution,
    Gamma,
    Independent,
    LogNormal,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
    Uniform,
    constraints,
)

from diagnostics.report import diagnose
from sbi_core import ModelFileError, Problem, SimulationSet, fit, independent, load, save, simulate
from sbi_core.cli.main import main as cli
from sbi_core.priors import within_support
from sbi_core.server import create_app

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"hidden_features": 16, "num_transforms": 2, "progress": False}
DEFAULT_CHECKS = {"tarp", "tarp_x", "sbc", "coverage", "reference", "predictive"}
STATUSES = {"pass", "warn", "fail", "skip"}

HELPERS = '''
"""Sibling module of my_problem.py (imported by it: works with --problem my_problem.py:...)."""
import torch

def binomial_sir(theta, days=100, population=1000, infected=5):
    """theta (N, 2) = (beta, gamma) -> new infections per day (N, days); batched."""
    beta, gamma = theta[:, 0], theta[:, 1]
    s = torch.full((len(theta),), float(population - infected))
    i = torch.full((len(theta),), float(infected))
    out = []
    for _ in range(days):
        new_i = torch.distributions.Binomial(s, 1 - torch.exp(-beta * i / population)).sample()
        new_r = torch.distributions.Binomial(i, 1 - torch.exp(-gamma)).sample()
        s, i = s - new_i, i + new_i - new_r
        out.append(new_i)
    return torch.stack(out, 1)
'''

MY_PROBLEM = '''
"""A scientist's own problems."""
import os
import sys

import numpy as np
import torch
from scipy import stats
from torch import nn
from torch.distributions import Distribution, Independent, LogNormal, constraints

from epi_helpers import binomial_sir
from sbi_core import Problem, box_uniform
from simulators import adapt, external_simulator

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "imports.log"), "a") as log:
    log.write("imported\\n")


class Net(nn.Module):
    """(N, 100) series -> (N, 6) features."""

    def __init__(self, channels=8, out=6):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv1d(1, channels, 5, stride=2), nn.ReLU(),
                                  nn.Conv1d(channels, channels, 5, stride=2), nn.ReLU(),
                                  nn.AdaptiveAvgPool1d(4), nn.Flatten())
        self.head = nn.Linear(4 * channels, out)

    def forward(self, x):
        return self.head(self.conv(torch.log1p(x.clamp(min=-0.99)).unsqueeze(1)))


class HalfNormalRates(Distribution):
    """A user-written prior: two positive rates."""
    arg_constraints = {}
    support = constraints.independent(constraints.positive, 1)

    def __init__(self):
        super().__init__(event_shape=torch.Size([2]), validate_args=False)
        self.scale = torch.tensor([0.5, 0.2])

    def sample(self, sample_shape=torch.Size()):
        return (torch.randn(*sample_shape, 2) * self.scale).abs() + 0.01

    def log_prob(self, value):
        inside = (value > 0.01).all(-1)
        lp = (-0.5 * ((value - 0.01) / self.scale) ** 2).sum(-1) - self.scale.log().sum()
        return torch.where(inside, lp, torch.tensor(float("-inf")))


def make_sir():
    prior = Independent(LogNormal(torch.tensor([-0.9, -2.0]), torch.tensor([0.3, 0.3])), 1)
    return Problem(prior, binomial_sir, param_names=["beta", "gamma"], name="my_sir",
                   x_shape=(100,))


def make_sir_user_prior():
    return Problem(HalfNormalRates(), binomial_sir, param_names=["beta", "gamma"],
                   name="my_sir_user_prior", x_shape=(100,))


def ricker(theta):
    """One parameter set (3,) numpy = (log r, sigma, phi) -> 4 summaries of 30 counts."""
    log_r, sigma, phi = theta
    n, ys = 1.0, []
    for _ in range(30):
        n = np.exp(log_r) * n * np.exp(-n + sigma * np.random.normal())
        ys.append(np.random.poisson(phi * n))
    ys = np.array(ys, dtype=float)
    return np.array([ys.mean(), ys.std(), (ys == 0).mean(), np.log1p(ys).mean()])


def make_ricker():
    prior = [stats.uniform(3, 2), stats.uniform(0.1, 0.5), stats.uniform(5, 10)]
    return Problem(prior, adapt(ricker), param_names=["log_r", "sigma", "phi"], name="ricker",
                   x_shape=(4,), x_names=["mean", "std", "zeros", "log_mean"])


def make_external(report="mask"):
    program = [sys.executable, os.path.join(HERE, "ext_model.py"), "{theta}", "{x}", "{seed}",
               "{mask}", report]
    return Problem(box_uniform([0.0, 0.0], [2.0, 2.0]),
                   external_simulator(program, timeout=60, x_shape=(2,)),
                   param_names=["a", "b"], name="external_" + report, x_shape=(2,))


def make_external_nan():
    return make_external("nan")
'''

EXT_MODEL = '''
"""An external model: theta.npy in, x.npy out; rows with a > 1.5 fail and are reported."""
import os
import sys

import numpy as np

theta_path, x_path, seed, mask_path, report = sys.argv[1:6]
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "starts.log"), "a") as log:
    log.write("start\\n")
theta = np.load(theta_path)
x = theta + 0.1 * np.random.default_rng(int(seed)).standard_normal(theta.shape)
bad = np.flatnonzero(theta[:, 0] > 1.5)
if report == "nan":
    x[bad] = np.nan
    np.save(x_path, x)
    sys.exit(0)
np.save(x_path, x)
if len(bad):
    with open(mask_path, "w") as f:
        f.write(" ".join(map(str, bad)))
    sys.exit(3)
'''


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks run fastest on one torch thread on a busy machine; restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """The scientist's folder, importable as in their own scripts (``import my_problem``)."""
    (tmp_path / "epi_helpers.py").write_text(HELPERS)
    (tmp_path / "my_problem.py").write_text(MY_PROBLEM)
    (tmp_path / "ext_model.py").write_text(EXT_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    for name in ("my_problem", "epi_helpers"):
        sys.modules.pop(name, None)


def _imports(folder: Path) -> int:
    log = folder / "imports.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def _serve_one(posterior, x_o: torch.Tensor, n: int = 7) -> np.ndarray:
    from fastapi.testclient import TestClient

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        client = TestClient(create_app({"mine": posterior}))
    r = client.post("/api/models/mine/sample", json={"x": x_o.tolist(), "n": n, "seed": 0})
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["samples"], dtype=float)


def test_torch_sir_with_own_embedding_whole_path(folder):
    from my_problem import Net, make_sir

    problem = make_sir()
    sims = simulate(problem, 300, seed=0, workers=2, store=folder / "sims.zarr", progress=False)
    assert sims.x.shape == (300, 100) and bool(sims.valid.all())
    # the store and the worker count do not change the simulations
    assert torch.equal(simulate(problem, 300, seed=0, progress=False).x, sims.x)

    posterior = fit(problem, folder / "sims.zarr", embedding=Net(), seed=0, max_epochs=3, **SMALL)
    path = save(posterior, folder / "sir.pt")
    with pytest.raises(ModelFileError, match=r"my_problem\.Net.*embedding=Net"):
        load(path)
    loaded = load(path, embedding=Net)

    held_out = simulate(problem, 40, seed=1, progress=False)
    x_o = held_out.x[0]
    theta = posterior.sample((200,), x=x_o, seed=0)
    assert theta.shape == (200, 2) and bool((theta > 0).all())  # LogNormal support
    assert torch.equal(loaded.log_prob(theta, x=x_o), posterior.log_prob(theta, x=x_o))
    assert torch.equal(loaded.sample((20,), x=x_o, seed=3), posterior.sample((20,), x=x_o, seed=3))

    q = loaded.set_default_x(x_o).condition()  # a torch Distribution at x_o
    assert q.sample((5,)).shape == (5, 2) and q.log_prob(theta[:3]).shape == (3,)

    report = diagnose(loaded, problem, sims=held_out, num=40, num_samples=50, progress=False)
    assert set(report.sections) == DEFAULT_CHECKS
    assert {s["status"] for s in report.sections.values()} <= STATUSES
    assert report.sections["reference"]["status"] == "skip"  # no reference posterior: said so
    assert report.sections["predictive"]["status"] != "skip"  # the simulator was used

    samples = _serve_one(loaded, x_o)
    assert samples.shape == (7, 2) and (samples > 0).all()


def test_numpy_ricker_with_scipy_prior_whole_path(folder):
    from my_problem import make_ricker

    problem = make_ricker()
    assert problem.simulator.kind == "per-sample (numpy arrays)"
    box_low, box_high = torch.tensor([3.0, 0.1, 5.0]), torch.tensor([5.0, 0.6, 15.0])
    sims = simulate(problem, 300, seed=0, progress=False)
    assert bool(sims.valid.all())
    at = simulate(problem, theta=torch.tensor([[4.0, 0.3, 10.0]] * 4), seed=1, timeout=60,
                  progress=False)  # given parameters, in a supervised worker with a time limit
    assert at.provenance["theta_source"] == "given" and bool(at.valid.all())

    posterior = fit(problem, sims, seed=0, max_epochs=3, **SMALL)
    path = save(posterior, folder / "ricker.pt")
    loaded = load(path)  # a scipy prior is stored as data: nothing to pass
    x_o = at.x[0]
    theta = loaded.sample((200,), x=x_o, seed=0)
    assert bool(((theta >= box_low) & (theta <= box_high)).all())
    assert torch.equal(loaded.log_prob(theta, x=x_o), posterior.log_prob(theta, x=x_o))

    report = diagnose(loaded, problem, num=30, num_samples=50, checks=["sbc", "predictive"],
                      progress=False)
    assert set(report.sections) == {"sbc", "predictive"}
    assert report.sections["predictive"]["status"] in {"pass", "warn", "fail"}
    assert _serve_one(loaded, x_o).shape == (7, 3)


@pytest.mark.parametrize("make", ["make_external", "make_external_nan"])
def test_external_program_reporting_failed_rows_whole_path(folder, make):
    import my_problem

    problem = getattr(my_problem, make)()  # Problem(...) ran the program once, on a test batch
    (folder / "starts.log").unlink()
    sims = simulate(problem, 300, seed=0, chunk_size=100, progress=False)
    fails = sims.theta[:, 0] > 1.5
    assert 0 < int(fails.sum()) < 300
    assert torch.equal(~sims.valid, fails)  # exactly the reported rows are invalid
    # the program reported its failures: one start per chunk, no bisection reruns
    assert len((folder / "starts.log").read_text().splitlines()) == 3
    expected = f"{int(fails.sum())} of 300 rows have no finite value in any column"
    assert sims.provenance["invalid_columns"].startswith(expected)
    if make == "make_external":
        assert "mask file, exit status 3" in sims.provenance["first_error"]

    with pytest.warns(UserWarning, match="Excluding .* invalid simulations"):
        posterior = fit(problem, sims, seed=0, max_epochs=3, **SMALL)
    loaded = load(save(posterior, folder / "ext.pt"))
    x_o = sims.x[sims.valid][0]
    theta = loaded.sample((200,), x=x_o, seed=0)
    assert bool(((theta >= 0) & (theta <= 2)).all())
    assert torch.equal(loaded.log_prob(theta, x=x_o), posterior.log_prob(theta, x=x_o))
    report = diagnose(loaded, sims=simulate(problem, 60, seed=1, progress=False), num=60,
                      num_samples=50, checks=["tarp", "coverage"], progress=False)
    assert report.meta["num_test_pairs"] < 60  # invalid test rows dropped
    assert {s["status"] for s in report.sections.values()} <= {"pass", "warn", "fail"}
    # the predictive check runs the program on posterior draws, some in the failing region:
    # those replicates are dropped like failed simulations, the check does not crash
    with pytest.warns(UserWarning, match="predictive simulations that failed"):
        card = diagnose(loaded, problem, num=40, num_samples=100, checks=["predictive"],
                        num_predictive_observations=40, progress=False).sections["predictive"]
    assert "raised" not in card["why"] and card["metrics"]["num_invalid"] > 0
    assert _serve_one(loaded, x_o).shape == (7, 2)


def test_cli_whole_path_with_problem_and_embedding_files(folder, capsys):
    """``--problem my_problem.py:make_sir`` works from another folder (the sibling import of
    epi_helpers is found next to the file), and ``--embedding my_problem.py:Net`` at every
    step that builds the network."""
    sys.path.remove(str(folder))  # the CLI must find the file and its sibling by path alone
    work = folder / "run"
    work.mkdir()
    os.chdir(work)
    prob, net = "../my_problem.py:make_sir", "../my_problem.py:Net"
    assert cli(["simulate", prob, "--num", "300", "--workers", "2", "--out", "sims.pt",
                "--quiet"]) == 0
    assert cli(["simulate", prob, "--num", "40", "--seed", "1", "--out", "test.pt",
                "--quiet"]) == 0
    np.save("obs.npy", SimulationSet.load("test.pt").x[:2].numpy())
    assert cli(["train", "--sims", "sims.pt", "--problem", prob, "--embedding", net,
                "--max-epochs", "3", "--out", "model.pt", "--quiet"]) == 0
    assert cli(["sample", "model.pt", "--x", "obs.npy", "--num", "20", "--out", "s.csv",
                "--embedding", net]) == 0
    rows = np.loadtxt("s.csv", delimiter=",", skiprows=1)
    assert rows.shape == (40, 3) and (rows[:, 1:] > 0).all()
    assert cli(["diagnose", "model.pt", "--problem", prob, "--embedding", net, "--num", "30",
                "--samples", "50", "--checks", "sbc,coverage,predictive", "--out", "diag",
                "--quiet"]) == 0
    card = json.loads(Path("diag/report.json").read_text())
    assert set(card["sections"]) == {"sbc", "coverage", "predictive"}
    capsys.readouterr()
    # without --embedding: exit 2 and one line naming the recorded class and the fix
    assert cli(["sample", "model.pt", "--x", "obs.npy", "--out", "t.csv"]) == 2
    err = capsys.readouterr().err
    assert "my_problem.py:Net" in err and "--embedding" in err and "_sbi_core_user" not in err


def test_user_module_named_in_files_is_never_imported_on_load(folder):
    """Model files, simulation files and zarr stores name my_problem (its prior class, its
    embedding, the problem); a fresh interpreter that loads them, with my_problem importable from its
    folder, never imports it: the user passes the classes again."""
    from my_problem import Net, make_sir_user_prior

    problem = make_sir_user_prior()
    sims = simulate(problem, 200, seed=0, progress=False)
    sims.save(folder / "sims.pt")
    simulate(problem, 100, seed=2, store=folder / "s.zarr", progress=False)
    save(fit(problem, sims, embedding=Net(), seed=0, max_epochs=2, **SMALL), folder / "m.pt")
    before = _imports(folder)
    script = folder / "load_it.py"  # in the folder: `import my_problem` would succeed here
    script.write_text(textwrap.dedent(f'''
        import sys, torch
        from torch import nn
        from torch.distributions import Distribution, constraints
        from sbi_core import SimulationSet, load
        from diagnostics.report import diagnose

        {textwrap.indent(_class_source("Net"), " " * 8).strip()}

        {textwrap.indent(_class_source("HalfNormalRates"), " " * 8).strip()}

        errors = []
        for kwargs in ({{}}, {{"embedding": Net}}, {{"prior": HalfNormalRates()}}):
            try:
                load("m.pt", **kwargs)
            except Exception as err:
                errors.append(type(err).__name__ + ": " + str(err))
        post = load("m.pt", prior=HalfNormalRates(), embedding=Net)
        sims = SimulationSet.load("sims.pt")
        assert len(SimulationSet.load("s.zarr")) == 100
        theta = post.sample((50,), x=sims.x[0], seed=0)
        report = diagnose(post, sims=sims, num=30, num_samples=20, checks=["sbc"])
        print(len(errors), bool((theta > 0).all()), sorted(report.sections))
        print("\\n".join(errors))
        print("MODULES", [m for m in sys.modules if "my_problem" in m or "epi_helpers" in m])
    '''))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(script)], cwd=folder, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "3 True ['sbc']"
    assert "prior=HalfNormalRates(...)" in out.stdout and "embedding=Net" in out.stdout
    assert lines[-1] == "MODULES []"
    assert _imports(folder) == before


def _class_source(name: str) -> str:
    """The source of class ``name`` in MY_PROBLEM (the user pastes their class)."""
    start = MY_PROBLEM.index(f"class {name}(")
    end = MY_PROBLEM.index("\n\n\n", start)
    return MY_PROBLEM[start:end]


class _UserRates(Distribution):
    """A user-written prior class (not allow-listed: stored as a name)."""

    arg_constraints: dict = {}
    support = constraints.independent(constraints.positive, 1)

    def __init__(self):
        super().__init__(event_shape=torch.Size([2]), validate_args=False)
        self.base = Independent(Gamma(torch.tensor([2.0, 3.0]), torch.tensor([2.0, 2.0])), 1)

    def sample(self, sample_shape=torch.Size()):  # noqa: B008
        return self.base.sample(sample_shape)

    def log_prob(self, value):
        return self.base.log_prob(value)


PRIORS = {
    "lognormal": lambda: Independent(LogNormal(torch.zeros(2), 0.4 * torch.ones(2)), 1),
    "correlated_gaussian": lambda: MultivariateNormal(
        torch.zeros(2), torch.tensor([[1.0, 0.7], [0.7, 1.0]])),
    "product": lambda: independent(Gamma(2.0, 2.0), Uniform(0.0, 3.0)),
    "mixture": lambda: MixtureSameFamily(
        torch.distributions.Categorical(torch.tensor([0.3, 0.7])),
        Independent(Normal(torch.tensor([[-1.0, -1.0], [1.0, 1.0]]), 0.3 * torch.ones(2, 2)), 1)),
    "scipy": lambda: [stats.norm(0, 1), stats.lognorm(s=0.5)],
    "user_class": _UserRates,
}


@pytest.mark.parametrize("kind", sorted(PRIORS))
def test_prior_kinds_fit_save_load_sample_diagnose_serve(kind, tmp_path):
    def noisy(theta):
        return theta + 0.1 * torch.randn_like(theta)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the user-class note is tested elsewhere
        problem = Problem(PRIORS[kind](), noisy, param_names=["a", "b"], name=kind)
    sims = simulate(problem, 300, seed=0, progress=False)
    posterior = fit(problem, sims, seed=0, max_epochs=3, **SMALL)
    path = save(posterior, tmp_path / "m.pt")
    if kind == "user_class":
        with pytest.raises(ModelFileError, match="prior=_UserRates"):
            load(path)
        loaded = load(path, prior=_UserRates())
    else:
        loaded = load(path)
    x_o = sims.x[0]
    theta = loaded.sample((300,), x=x_o, seed=0)
    assert bool(within_support(loaded.prior, theta).all())
    assert torch.equal(loaded.log_prob(theta, x=x_o), posterior.log_prob(theta, x=x_o))
    report = diagnose(loaded, problem, num=20, num_samples=30, checks=["sbc", "coverage"],
                      progress=False)
    assert set(report.sections) == {"sbc", "coverage"}
    samples = _serve_one(loaded, x_o)
    assert samples.shape == (7, 2)
    assert bool(within_support(loaded.prior, torch.as_tensor(samples, dtype=torch.float32)).all())


def test_user_classes_from_a_problem_file_are_labelled_by_the_file(folder):
    """A prior class from ``--problem my_problem.py:...`` is recorded as
    ``my_problem.py:HalfNormalRates`` (what the command line takes), not under the private
    module name the file was imported as."""
    from sbi_core.priors import prior_spec
    from sbi_core.resolve import resolve_problem

    with pytest.warns(UserWarning, match=r"my_problem\.py:HalfNormalRates"):
        problem = resolve_problem("my_problem.py:make_sir_user_prior")
    assert prior_spec(problem.prior)["class"] == "my_problem.py:HalfNormalRates"


def test_failed_rows_are_told_apart_from_failing_columns():
    from sbi_core.failures import describe_invalid

    x = torch.zeros(10, 3)
    x[:4] = float("nan")  # four runs failed entirely
    x[5, 1] = float("inf")  # one column of one run overflowed
    assert describe_invalid(x) == (
        "4 of 10 rows have no finite value in any column (the simulation raised, was reported "
        "failed, timed out, or returned only NaN/inf); column 1 is inf in 1 of 10 rows")
    assert describe_invalid(torch.full((3, 1), float("nan"))) == "column 0 is NaN in 3 of 3 rows"


def test_cli_serve_takes_the_problem_of_a_user_prior_and_the_embedding(folder, monkeypatch,
                                                                      capsys):
    """``sbi-core serve`` of a model with a user-written prior class and an own embedding:
    ``--problem`` gives the prior (as for sample/diagnose), ``--embedding`` the network."""
    import uvicorn
    from fastapi.testclient import TestClient
    from my_problem import Net, make_sir_user_prior

    problem = make_sir_user_prior()
    sims = simulate(problem, 200, seed=0, progress=False)
    save(fit(problem, sims, embedding=Net(), seed=0, max_epochs=2, **SMALL), folder / "m.pt")
    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.update(app=app))
    args = ["serve", "m.pt", "--port", "0", "--embedding", "my_problem.py:Net"]
    assert cli(args) == 2  # the prior is a user class: its code is not in the file
    assert "--problem FILE.py:FUNCTION" in capsys.readouterr().err
    assert cli([*args, "--problem", "my_problem.py:make_sir_user_prior"]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        client = TestClient(served["app"])
    r = client.post("/api/models/m/sample", json={"x": sims.x[0].tolist(), "n": 5, "seed": 0})
    assert r.status_code == 200, r.text
    assert np.asarray(r.json()["samples"]).shape == (5, 2)


def test_batched_simulator_returning_one_bare_number_per_row_gets_the_fix():
    prior = Independent(LogNormal(torch.zeros(2), torch.ones(2)), 1)
    with pytest.raises(ValueError, match=r"return shape \(\d+, 1\), e\.g\. x\.unsqueeze\(-1\)"):
        Problem(prior, lambda theta: theta.sum(1))
    problem = Problem(prior, lambda theta: theta.sum(1, keepdim=True))
    assert problem.x_shape == (1,)


def test_a_store_explains_its_invalid_rows_like_a_simulation_file(folder, capsys):
    """``simulate(..., store=)`` and ``sbi-core simulate --out PATH.zarr`` say which rows or
    columns are invalid, as without a store (they said nothing before)."""
    from my_problem import make_external

    problem = make_external()
    sims = simulate(problem, 200, seed=0, store=folder / "ext.zarr", progress=False)
    plain = simulate(problem, 200, seed=0, progress=False)
    assert sims.num_invalid > 0
    assert sims.provenance["invalid_columns"] == plain.provenance["invalid_columns"]
    assert "rows have no finite value" in sims.provenance["invalid_columns"]
    assert cli(["simulate", "my_problem.py:make_external", "--num", "200", "--out", "cli.zarr",
                "--quiet"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["invalid_columns"] == plain.provenance["invalid_columns"]

    def half_nan(theta):  # one named column fails where a < 0
        x = torch.cat([theta, theta.sum(1, keepdim=True)], 1)
        x[theta[:, 0] < 0, 2] = float("nan")
        return x

    named = Problem(torch.distributions.Independent(Normal(torch.zeros(2), 1.0), 1), half_nan,
                    x_shape=(3,), x_names=["a", "b", "total"])
    stored = simulate(named, 100, seed=0, store=folder / "named.zarr", progress=False)
    assert "column 2 (total) is NaN in" in stored.provenance["invalid_columns"]
