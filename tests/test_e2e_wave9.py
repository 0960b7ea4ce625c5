"""End-to-end probes of wave 9 (own problems pushed through the whole path, not the built-in
benchmarks): each test pins a problem met on the way (a silently wrong result or an unclear
message) and its fix."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.distributions import Independent, Uniform

from sbi_core import Problem, fit, load, save, simulate
from sbi_core.serialization import ModelFileError
from sbi_core.simulation_set import SimulationSet


def _sim(theta: torch.Tensor) -> torch.Tensor:
    """theta (N, 2) -> x (N, 3)."""
    return torch.cat([theta, theta.sum(1, keepdim=True)], 1) + 0.1 * torch.randn(len(theta), 3)


@pytest.fixture(scope="module")
def small():
    prior = Independent(Uniform(torch.zeros(2), torch.ones(2)), 1)
    problem = Problem(prior, _sim, param_names=["a", "b"], name="small", x_shape=(3,))
    sims = simulate(problem, 300, seed=0, progress=False)
    post = fit(problem, sims, seed=0, progress=False, max_epochs=2, hidden_features=8,
               num_transforms=1)
    return problem, sims, post


def _zero_bytes_in_largest_entry(src: Path, dst: Path) -> str:
    """Copy ``src`` to ``dst`` with 16 bytes zeroed in the middle of its largest zip entry."""
    with zipfile.ZipFile(src) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)
    raw = bytearray(src.read_bytes())
    # local header: 30 bytes + name + extra field, then the (stored) data
    name_len = int.from_bytes(raw[info.header_offset + 26:info.header_offset + 28], "little")
    extra_len = int.from_bytes(raw[info.header_offset + 28:info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    raw[start:start + 16] = bytes(16)
    dst.write_bytes(bytes(raw))
    return info.filename.split("/", 1)[-1]


def test_model_file_with_damaged_weights_is_refused(small, tmp_path):
    """A model file with zeroed bytes inside a weight tensor loaded silently (torch.load does
    not check the archive's CRCs) and gave another posterior; now a ModelFileError names the
    damaged entry and the fix."""
    _, _, post = small
    save(post, tmp_path / "m.pt")
    entry = _zero_bytes_in_largest_entry(tmp_path / "m.pt", tmp_path / "bad.pt")
    with pytest.raises(ModelFileError, match=rf"bad.pt is damaged: its entry {entry} fails its "
                                             r"checksum.*Copy the file again"):
        load(tmp_path / "bad.pt")
    load(tmp_path / "m.pt")  # the intact file still loads


def test_simulation_file_with_damaged_bytes_is_refused(small, tmp_path):
    """The same for a simulation file: damaged x values were read back silently."""
    _, sims, _ = small
    sims.save(tmp_path / "s.pt")
    _zero_bytes_in_largest_entry(tmp_path / "s.pt", tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"bad.pt is damaged.*simulate again"):
        SimulationSet.load(tmp_path / "bad.pt")
    assert torch.equal(SimulationSet.load(tmp_path / "s.pt").x, sims.x)


def test_loading_an_npz_as_a_model_says_what_it_is(tmp_path):
    """An .npz of simulations passed as a model got torch's internal 'enforce fail at
    inline_container.cc' message; now it is named as simulation arrays with the command."""
    np.savez(tmp_path / "sims.npz", theta=np.zeros((4, 2)), x=np.zeros((4, 3)))
    with pytest.raises(ModelFileError, match=r"numpy .npz archive \(arrays \['theta', 'x'\]\), "
                                             r"not a model file.*sbi-core train --sims"):
        load(tmp_path / "sims.npz")


_PROBLEM_FILE = '''
import torch
from torch.distributions import Independent, Uniform
from sbi_core import Problem


def _sim(theta):
    return torch.cat([theta, theta.sum(1, keepdim=True)], 1) + 0.1 * torch.randn(len(theta), 3)


def make():
    prior = Independent(Uniform(torch.zeros(2), torch.ones(2)), 1)
    return Problem(prior, _sim, param_names=["a", "b"], name="small", x_shape=(3,))


def other():
    prior = Independent(Uniform(torch.zeros(2), torch.ones(2)), 1)
    return Problem(prior, _sim, param_names=["rate", "scale"], name="other", x_shape=(3,))
'''


def test_cli_sample_refuses_a_problem_with_other_parameters(small, tmp_path, capsys):
    """`sbi-core sample MODEL --problem other.py:make` with another problem was silently
    accepted (the problem is ignored when the prior is rebuilt from the file), hiding a mix-up
    of model files; now exit 2 naming both problems' parameters. The right problem still works."""
    from sbi_core.cli.main import main

    _, _, post = small
    save(post, tmp_path / "m.pt")
    (tmp_path / "probs.py").write_text(_PROBLEM_FILE)
    np.savetxt(tmp_path / "obs.csv", np.array([[0.5, 0.5, 1.0]]), delimiter=",")
    args = ["sample", str(tmp_path / "m.pt"), "--x", str(tmp_path / "obs.csv"), "--num", "5",
            "--out", str(tmp_path / "s.csv")]
    assert main([*args, "--problem", f"{tmp_path / 'probs.py'}:other"]) == 2
    err = capsys.readouterr().err
    assert "('other', parameters ['rate', 'scale']) is not the one the model was trained on " \
           "('small', parameters ['a', 'b'])" in err
    assert not (tmp_path / "s.csv").exists()
    assert main([*args, "--problem", f"{tmp_path / 'probs.py'}:make"]) == 0
    assert (tmp_path / "s.csv").exists()


def test_cli_simulate_theta_outside_the_prior_warns_once(tmp_path, capsys):
    """`sbi-core simulate --theta FILE --out x.npz` with rows outside the prior printed the same
    warning twice (once when the file was read, again inside simulate)."""
    from sbi_core.cli.main import main

    (tmp_path / "probs.py").write_text(_PROBLEM_FILE)
    (tmp_path / "theta.csv").write_text("a,b\n2.0,0.5\n0.2,0.5\n")
    with pytest.warns(UserWarning, match="lie outside the prior's support") as record:
        code = main(["simulate", f"{tmp_path / 'probs.py'}:make", "--theta",
                     str(tmp_path / "theta.csv"), "--out", str(tmp_path / "s.npz"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert sum("lie outside the prior" in str(w.message) for w in record) == 1


def _normal_draws(theta: np.ndarray) -> np.ndarray:
    """Per-sample numpy: theta (2,) = (mu, sd) -> 10 draws; raises for sd < 0."""
    return np.random.normal(theta[0], theta[1], size=10)


def test_problem_accepts_a_simulator_that_fails_in_part_of_the_prior():
    """A per-sample simulator that raises for part of the prior (documented: those rows are
    recorded invalid) was rejected by Problem(...) whenever a row of its 3-row test batch fell
    there, with a wrong adapter hint ('works per-sample (torch tensors) ... instead of
    per_sample(fn, numpy=True)'); now the problem is built and simulate records those rows."""
    from sbi_core import box_uniform
    from simulators import adapt, per_sample

    prior = box_uniform([-1.0, -1.0], [1.0, 1.0])  # sd < 0 in half of it
    for sim in (adapt(_normal_draws), per_sample(_normal_draws, numpy=True)):
        problem = Problem(prior, sim, param_names=["mu", "sd"], x_shape=(10,))
        sims = simulate(problem, 60, seed=0, progress=False)
        assert torch.equal(sims.valid, sims.theta[:, 1] >= 0)
        assert "scale < 0" in sims.provenance["first_error"]


def test_problem_accepts_an_external_program_reporting_failed_rows(tmp_path):
    """The documented external program that reports its failed rows in the mask file was
    rejected by Problem(...) when the test batch hit its failure region ('The simulator raised
    on a test batch ... RowFailures'); now its good rows set the shapes."""
    import sys

    from sbi_core import box_uniform
    from simulators import external_simulator

    prog = tmp_path / "model.py"
    prog.write_text(
        "import sys\nimport numpy as np\n"
        "theta_path, x_path, mask_path = sys.argv[1:4]\n"
        "theta = np.load(theta_path)\nnp.save(x_path, theta + 0.1)\n"
        "bad = np.flatnonzero(theta[:, 0] > 0.5)\n"
        "if len(bad):\n    open(mask_path, 'w').write(' '.join(map(str, bad)))\n"
        "    sys.exit(3)\n")
    sim = external_simulator([sys.executable, str(prog), "{theta}", "{x}", "{mask}"],
                             timeout=60, x_shape=(2,))
    problem = Problem(box_uniform([0.0, 0.0], [2.0, 2.0]), sim, param_names=["a", "b"],
                      x_shape=(2,))
    sims = simulate(problem, 40, seed=0, progress=False)
    assert torch.equal(sims.valid, sims.theta[:, 0] <= 0.5)


def test_per_sample_adapter_reports_failed_rows_without_rerunning_good_ones():
    """A per-sample simulator that raised on some rows made the engine bisect the batch: good
    rows were simulated again (3,123 calls for 2,000 rows at 1/6 failures) with other random
    numbers; the adapter now reports the failed rows itself, so each row runs once."""
    from sbi_core import box_uniform
    from simulators import adapt

    calls = []

    def counted(theta: np.ndarray) -> np.ndarray:
        calls.append(1)
        return _normal_draws(theta)

    problem = Problem(box_uniform([-1.0, -0.2], [1.0, 1.0]), adapt(counted),
                      param_names=["mu", "sd"], x_shape=(10,))
    calls.clear()
    sims = simulate(problem, 400, seed=0, progress=False, chunk_size=200)
    assert len(calls) == 400
    assert torch.equal(sims.valid, sims.theta[:, 1] >= 0) and sims.num_invalid > 20
    assert "ValueError: scale < 0" in sims.provenance["first_error"]


def test_too_few_simulations_error_gives_a_fix_that_works(small):
    """fit on 2 simulations said 'simulate more or set validation_fraction=0', but
    validation_fraction=0 is refused ('strictly between 0 and 1'); now it says how many
    simulations are needed."""
    problem, sims, _ = small
    with pytest.raises(ValueError, match=r"2 valid simulations are too few to train: with "
                                         r"validation_fraction=0.1 training needs at least 6"):
        fit(problem, (sims.theta[:2], sims.x[:2]), progress=False, max_epochs=1)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        fit(problem, sims, progress=False, max_epochs=1, validation_fraction=0)


@pytest.mark.parametrize("store", [True, False])
def test_cli_run_interrupted_says_what_is_kept(tmp_path, capsys, monkeypatch, store):
    """Ctrl-C during `sbi-core run` printed only 'sbi-core run: interrupted'; now it says that
    the store keeps the finished rounds and to rerun with --resume (or, without --store, that
    nothing is kept and how to make a run resumable)."""
    import sbi_core.sequential
    from sbi_core.cli.main import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sbi_core.sequential, "run_sequential", interrupted)
    (tmp_path / "probs.py").write_text(_PROBLEM_FILE)
    np.savetxt(tmp_path / "obs.csv", np.array([[0.5, 0.5, 1.0]]), delimiter=",")
    argv = ["run", f"{tmp_path / 'probs.py'}:make", "--x", str(tmp_path / "obs.csv"),
            "--out", str(tmp_path / "m.pt"), "--quiet"]
    if store:
        argv += ["--store", str(tmp_path / "run.zarr")]
    assert main(argv) == 130
    err = capsys.readouterr().err
    if store:
        assert "run.zarr: rerun the same command with --resume" in err
    else:
        assert "nothing is kept (no --store)" in err and "--resume" in err


def test_cli_problem_file_is_built_once_per_command(small, tmp_path, capsys):
    """`--problem FILE.py:make` is imported and built once per command (each build runs the
    simulator's test batch: an external program starts again), also now that sample and
    diagnose check it against the model."""
    from sbi_core.cli.main import main

    _, _, post = small
    save(post, tmp_path / "m.pt")
    log = tmp_path / "builds.txt"
    (tmp_path / "probs.py").write_text(
        _PROBLEM_FILE + f"\n_make = make\n\ndef counted():\n    open({str(log)!r}, 'a').write('x')"
                        "\n    return _make()\n")
    np.savetxt(tmp_path / "obs.csv", np.array([[0.5, 0.5, 1.0]]), delimiter=",")
    problem = f"{tmp_path / 'probs.py'}:counted"
    assert main(["sample", str(tmp_path / "m.pt"), "--x", str(tmp_path / "obs.csv"), "--num",
                 "5", "--out", str(tmp_path / "s.csv"), "--problem", problem]) == 0
    assert log.read_text() == "x"
    assert main(["diagnose", str(tmp_path / "m.pt"), "--problem", problem, "--num", "20",
                 "--samples", "20", "--checks", "sbc", "--out", str(tmp_path / "diag"),
                 "--quiet"]) == 0, capsys.readouterr().err
    assert log.read_text() == "xx"


def test_diagnose_warns_when_test_pairs_are_training_simulations(small, tmp_path):
    """diagnose(post, problem, sims=TRAINING_SIMS) ran without a word although the docs say
    'never the training set' (calibration on training data looks better than it is); the model
    now keeps a fingerprint of its first training rows (also through save/load) and diagnose
    warns, naming the fix. Fresh simulations of another seed give no warning."""
    import warnings

    from diagnostics.report import diagnose

    problem, sims, post = small
    save(post, tmp_path / "m.pt")
    again = load(tmp_path / "m.pt")
    with pytest.warns(UserWarning, match=r"100 of the first 100 test pairs are simulations this "
                                         r"model was trained on.*--seed OTHER"):
        report = diagnose(again, problem, sims=sims, num=100, num_samples=10, checks=["sbc"],
                          progress=False)
    assert "100 of them the model's training simulations" in report.meta["test_data"]
    assert "NOTE: test pairs from given simulations, 100 of them" in report.summary()
    fresh = simulate(problem, 120, seed=1, progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        diagnose(again, problem, sims=fresh, num=100, num_samples=10, checks=["sbc"],
                 progress=False)
    assert not [w for w in caught if "trained on" in str(w.message)]


def test_load_with_a_problem_of_other_parameters_is_refused(small, tmp_path):
    """load(path, prior=other_problem) with the same dimension but other parameters only
    warned that the priors differ and then sampled under the other problem's prior; now the
    mix-up is an error naming both problems. The model's own problem loads."""
    problem, _, post = small
    save(post, tmp_path / "m.pt")
    other = Problem(Independent(Uniform(torch.zeros(2), 2 * torch.ones(2)), 1), _sim,
                    param_names=["rate", "scale"], name="other", x_shape=(3,))
    with pytest.raises(ValueError, match=r"\('other', parameters \['rate', 'scale'\]\) is not "
                                         r"the one the model was trained on \('small'"):
        load(tmp_path / "m.pt", prior=other)
    assert load(tmp_path / "m.pt", prior=problem).param_names == ["a", "b"]


def test_fit_on_arrays_with_nan_rows_leaves_them_out_with_a_warning(small):
    """fit(problem, (theta, x)) with NaN rows in plain arrays stopped with 'pass
    SimulationSet.training_data()' (there is no SimulationSet); now the rows are left out with
    the same warning as for simulations from simulate."""
    problem, sims, _ = small
    theta, x = sims.theta.numpy().copy(), sims.x.numpy().copy()
    x[:10, 0] = np.nan
    with pytest.warns(UserWarning, match=r"Excluding 10 of 300 invalid simulations"):
        post = fit(problem, (theta, x), progress=False, max_epochs=1, hidden_features=8,
                   num_transforms=1)
    assert post.history["num_train"] + post.history["num_validation"] == 290


def test_cli_sample_refuses_a_csv_header_with_the_x_columns_reordered(tmp_path, capsys):
    """A CSV observation whose header names the problem's x columns in another order was read
    silently in file order (the header was just skipped), so the values went into the wrong
    columns; the model now keeps x_names and the header is checked against them. The right
    order and generic labels still work."""
    from sbi_core.cli.main import main

    prior = Independent(Uniform(torch.zeros(2), torch.ones(2)), 1)
    problem = Problem(prior, _sim, param_names=["a", "b"], name="named", x_shape=(3,),
                      x_names=["first", "second", "total"])
    sims = simulate(problem, 300, seed=0, progress=False)
    post = fit(problem, sims, seed=0, progress=False, max_epochs=2, hidden_features=8,
               num_transforms=1)
    save(post, tmp_path / "m.pt")
    assert load(tmp_path / "m.pt").problem_spec["x_names"] == ["first", "second", "total"]

    def sample(header: str) -> int:
        (tmp_path / "obs.csv").write_text(f"{header}\n0.5,0.5,1.0\n")
        return main(["sample", str(tmp_path / "m.pt"), "--x", str(tmp_path / "obs.csv"),
                     "--num", "5", "--out", str(tmp_path / "s.csv"), "--force"])

    assert sample("second,first,total") == 2
    assert "lists the x columns in another order (['second', 'first', 'total'])" in \
        capsys.readouterr().err
    assert sample("first,second,sum") == 2
    assert "the model's x columns are ['first', 'second', 'total']" in capsys.readouterr().err
    assert sample("first,second,total") == 0
    assert sample("c1,c2,c3") == 0


def test_a_chunk_timeout_also_stops_the_external_program(tmp_path):
    """simulate(..., timeout=) killed a hung chunk's worker with SIGKILL, so the external
    program it ran (in its own process group) was left running, orphaned, after the run (the
    same on Ctrl-C with --workers); the worker now gets SIGTERM first and kills the program's
    process group on the way out."""
    import os
    import sys
    import time

    from sbi_core import box_uniform
    from simulators import external_simulator

    pid_file = tmp_path / "pid.txt"
    prog = tmp_path / "hang.py"
    prog.write_text(f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
                    "time.sleep(60)\n")
    sim = external_simulator([sys.executable, str(prog), "{theta}", "{x}"], x_shape=(2,))
    problem = Problem(box_uniform([0.0, 0.0], [1.0, 1.0]), sim, param_names=["a", "b"],
                      x_shape=(2,), validate=False)
    sims = simulate(problem, 4, seed=0, timeout=2, progress=False)
    assert not sims.valid.any() and "timed out" in sims.provenance["first_error"]
    pid = int(pid_file.read_text())
    for _ in range(50):  # the group is killed as the worker unwinds
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, 9)  # leave nothing running, then fail
        pytest.fail("the external program was left running after its chunk timed out")
