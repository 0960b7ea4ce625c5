"""Wave-10 end-to-end sweep (a): bugs found by using the tool on one's own problems.

Each test reproduces one bug that was found by following docs/your_own_problem.md with a
batched torch simulator, a per-sample scipy ODE, an external program and an own embedding.
"""

import sys

import pytest
import torch

from simulators.external import external_simulator

EMPTY_MASK_THEN_CRASH = '''
import sys
import numpy as np
theta = np.load(sys.argv[1])
open(sys.argv[3], "w").close()              # mask file opened up front, nothing listed
np.save(sys.argv[2], np.zeros_like(theta))  # placeholder output
raise SystemExit("solver crashed before writing results")
'''

SAVETXT_MASK = '''
import sys
import numpy as np
theta = np.load(sys.argv[1])
np.save(sys.argv[2], theta * 2)
bad = np.flatnonzero(theta[:, 0] < 0)
if bad.size:
    np.savetxt(sys.argv[3], bad)            # numpy's default format: 1.000000000000000000e+00
    sys.exit(3)
'''


def _program(tmp_path, source):
    script = tmp_path / "model.py"
    script.write_text(source)
    return external_simulator([sys.executable, str(script), "{theta}", "{x}", "{mask}"],
                              timeout=60, x_shape=(2,))


def test_external_program_failing_with_an_empty_mask_file_is_a_failure(tmp_path):
    # before: the placeholder zeros were returned as valid simulations (exit status 1 ignored)
    program = _program(tmp_path, EMPTY_MASK_THEN_CRASH)
    with pytest.raises(RuntimeError, match="exited with status 1.*lists no failed row.*"
                                           "solver crashed"):
        program(torch.ones(3, 2))


def test_external_mask_file_written_by_np_savetxt_defaults_is_read(tmp_path):
    # before: "wrote an unreadable mask file (could not convert string '1.0000e+00' to int64)"
    from sbi_core.failures import RowFailures

    program = _program(tmp_path, SAVETXT_MASK)
    theta = torch.tensor([[1.0, 1.0], [-1.0, 0.0], [2.0, 0.5], [-3.0, 1.0]])
    with pytest.raises(RowFailures) as info:
        program(theta)
    assert info.value.failed.tolist() == [False, True, False, True]
    assert torch.equal(info.value.x[[0, 2]], theta[[0, 2]] * 2)


@pytest.fixture(scope="module")
def cnn_model(tmp_path_factory):
    """An NPE with a user 1-D CNN embedding on a 20-point series, saved to a file."""
    from sbi_core import Problem, box_uniform, fit, save, simulate

    def series(theta):
        t = torch.linspace(0, 1, 20)
        return theta[:, :1] + theta[:, 1:2] * t + 0.05 * torch.randn(len(theta), 20)

    problem = Problem(box_uniform([0.0, 0.0], [1.0, 1.0]), series, param_names=["a", "b"],
                      name="series", x_shape=(20,))
    sims = simulate(problem, 300, seed=0, progress=False)
    torch.manual_seed(0)
    with pytest.warns(UserWarning):
        posterior = fit(problem, sims, embedding=_Cnn(), max_epochs=2, progress=False)
    path = tmp_path_factory.mktemp("cnn") / "cnn.pt"
    save(posterior, path)
    return problem, sims, path


class _Cnn(torch.nn.Module):
    def __init__(self, out: int = 3):
        super().__init__()
        self.c = torch.nn.Sequential(torch.nn.Conv1d(1, 2, 3), torch.nn.ReLU(),
                                     torch.nn.AdaptiveAvgPool1d(2), torch.nn.Flatten(),
                                     torch.nn.Linear(4, out))

    def forward(self, x):
        return self.c(x.unsqueeze(1))


def test_loading_a_user_embedding_model_with_a_builtin_spec_names_the_mismatch(cnn_model):
    # before: "load(..., embedding=...) got a str; give a built-in spec ('cnn1d', ...)" -
    # refused the built-in spec while telling the user to pass one
    from sbi_core import load
    from sbi_core.serialization import ModelFileError

    _, _, path = cnn_model
    with pytest.raises(ModelFileError, match="built-in spec 'cnn1d'.*trained with your own "
                                             "embedding .*_Cnn; pass that nn.Module") as info:
        load(path, embedding="cnn1d")
    assert "give a built-in spec" not in str(info.value)
    assert load(path, embedding=_Cnn).sample((3,), x=torch.zeros(20), seed=0).shape == (3, 2)


def test_diagnose_refuses_test_simulations_of_another_problem(cnn_model):
    # before: ran on them and reported a confident FAIL (SBC KS p = 1e-27) about a model
    # that may be fine; fit refuses such simulations, diagnose(sims=) did not
    from diagnostics.report import diagnose
    from sbi_core import Problem, box_uniform, load, simulate

    _, _, path = cnn_model
    posterior = load(path, embedding=_Cnn)
    other = Problem(box_uniform([0.0, 0.0], [1.0, 1.0]),
                    lambda th: th.sum(1, keepdim=True) + torch.zeros(len(th), 20),
                    param_names=["c", "d"], name="other", x_shape=(20,))
    sims = simulate(other, 20, seed=1, progress=False)
    with pytest.raises(ValueError, match=r"made by problem 'other' with parameters \['c', 'd'\]"
                                         r".*trained on 'series' with parameters \['a', 'b'\]"):
        diagnose(posterior, sims=sims, checks="sbc", num=20, num_samples=10, progress=False)


def test_per_sample_simulator_that_returns_none_is_reported_as_such():
    # before: None became NaN, Problem accepted x_shape (1,) and every row was invalid with
    # "the simulator returned NaN or inf"
    import numpy as np

    from sbi_core import Problem, box_uniform
    from simulators import adapt

    def forgot_return(theta):
        theta * 2  # noqa: B018 - the missing `return` is the point

    with pytest.raises(ValueError, match=r"returned None \(a missing `return` statement\?\)"):
        Problem(box_uniform([0.0, 0.0], [1.0, 1.0]), adapt(forgot_return))

    def sometimes(theta):
        if theta[0] > 0.5:
            return np.array([theta[0], 1.0])

    sim = adapt(sometimes, batched=False, numpy=True)
    from sbi_core.failures import RowFailures

    with pytest.raises(RowFailures, match="returned None") as info:
        sim(torch.tensor([[0.9, 0.1], [0.1, 0.1], [0.7, 0.3]]))
    assert info.value.failed.tolist() == [False, True, False]


@pytest.mark.parametrize("where", ["store", "workers"])
def test_simulator_output_with_an_autograd_graph_is_stored_as_data(tmp_path, where):
    # before: store= and workers= crashed with "Can't call numpy() on Tensor that requires
    # grad"; in memory the simulations kept the graph (x.requires_grad was True)
    from sbi_core import Problem, box_uniform, simulate

    torch.manual_seed(0)
    layer = torch.nn.Linear(2, 3)  # a simulator built from nn layers (e.g. a surrogate)
    problem = Problem(box_uniform([0.0, 0.0], [1.0, 1.0]), lambda th: layer(th),
                      param_names=["a", "b"])
    kwargs = {"store": str(tmp_path / "s.zarr")} if where == "store" else {"workers": 2}
    sims = simulate(problem, 40, seed=0, progress=False, **kwargs)
    assert sims.num_invalid == 0 and not sims.x.requires_grad
    with torch.no_grad():
        assert torch.allclose(sims.x, layer(sims.theta), atol=1e-6)
    assert not simulate(problem, 5, seed=0, progress=False).x.requires_grad


def test_range_error_for_several_observations_names_the_row(cnn_model):
    # before: "x[5] = 100 (training [...])" without saying which of the observations it is
    from sbi_core import load
    from sbi_core.posterior import ObservationError

    _, sims, path = cnn_model
    posterior = load(path, embedding=_Cnn)
    xs = sims.x[:4].clone()
    xs[2, 5] = 100.0
    with pytest.raises(ObservationError, match=r"x\[5\] = 100 .*in 1 of 4 observations "
                                               r"\(row\(s\) 2, counting from 0\)"):
        posterior.sample_batched((3,), xs)
    with pytest.raises(ObservationError) as one:
        posterior.sample((3,), x=xs[2])
    assert "observations (row" not in str(one.value)  # one observation: no row to name


def test_cli_train_embedding_that_is_not_a_factory_is_named_in_cli_words(tmp_path):
    # before: "fit(..., embedding=...) got 'simulate', which cannot be called without
    # arguments ... e.g. embedding=lambda: MyNet(32)" for `sbi-core train --embedding F:simulate`
    from estimators.embedding import UserEmbeddingError
    from sbi_core.resolve import resolve_embedding

    nets = tmp_path / "nets_w10a.py"
    nets.write_text("def simulate(theta):\n    return theta\n\n\ndef problem():\n    return 3\n")
    with pytest.raises(UserEmbeddingError, match=r"--embedding '.*nets_w10a.py:simulate' cannot "
                                                 r"be called without arguments") as info:
        resolve_embedding(f"{nets}:simulate")()
    assert "fit(" not in str(info.value) and "lambda" not in str(info.value)
    with pytest.raises(UserEmbeddingError, match=r"nets_w10a.py:problem' returned int, not a "
                                                 r"torch.nn.Module"):
        resolve_embedding(f"{nets}:problem")()


def test_problem_with_a_failing_external_program_gets_advice_about_the_program(tmp_path):
    # before: "... A simulator takes a batch Tensor[N, D]; wrap a per-sample function with
    # simulators.per_sample ..." - advice about Python functions for a batched program
    from sbi_core import Problem, box_uniform

    script = tmp_path / "chatty.py"
    script.write_text("import sys\nprint('model v1.2 starting')\n"
                      "for line in sys.stdin:\n    print(line)\n")
    program = external_simulator([sys.executable, str(script)], io="text", x_shape=(2,),
                                 timeout=30)
    with pytest.raises(ValueError, match="printed unparsable output") as info:
        Problem(box_uniform([0.0, 0.0], [1.0, 1.0]), program)
    text = str(info.value)
    assert "per_sample" not in text and "stdout must hold only the rows of x" in text


def test_log_prob_of_samples_with_a_sample_shape_keeps_that_shape(cnn_model):
    # before: log_prob(sample((2, 3))) returned shape (6,) - the sample shape was flattened
    from sbi_core import load

    _, sims, path = cnn_model
    posterior = load(path, embedding=_Cnn)
    x = sims.x[0]
    samples = posterior.sample((2, 3), x=x, seed=0)
    lp = posterior.log_prob(samples, x=x)
    assert samples.shape == (2, 3, 2) and lp.shape == (2, 3)
    assert torch.allclose(lp.reshape(-1), posterior.log_prob(samples.reshape(6, 2), x=x))
    assert posterior.log_prob(samples[0, 0], x=x).shape == ()


@pytest.mark.parametrize("method", ["npe", "nle"])
def test_misspelled_training_option_gets_a_did_you_mean(method):
    # before: "Unknown NPE options ['max_epoch']; valid: [...estimator options...]" - the
    # list of valid names did not include max_epochs, so the typo was hard to see
    from sbi_core import Problem, box_uniform, fit, simulate

    problem = Problem(box_uniform([0.0, 0.0], [1.0, 1.0]), lambda th: th + 0.1,
                      param_names=["a", "b"])
    sims = simulate(problem, 50, seed=0, progress=False)
    with pytest.raises(TypeError, match=r"Did you mean 'max_epochs' \(not 'max_epoch'\)\?"):
        fit(problem, sims, method=method, max_epoch=1, progress=False)
    with pytest.raises(TypeError) as info:
        fit(problem, sims, method=method, zzz_option=1, progress=False)
    assert "Did you mean" not in str(info.value)


def test_fit_warns_when_a_few_blown_up_simulations_dominate_the_x_scale():
    # before: 22 of 2,000 simulations at x = 1e30 (a simulator that blew up instead of failing)
    # made z-scoring squeeze all others to one point; the posterior at x_o = (0.3, 0.7) came
    # out as the prior (mean 0.48, std 0.24 instead of about 0.05) without any warning
    from sbi_core import Problem, box_uniform, fit, simulate

    def blows_up(theta):
        x = theta + 0.05 * torch.randn_like(theta)
        x[theta[:, 0] > 0.98] = 1e30
        return x

    problem = Problem(box_uniform([0.0, 0.0], [1.0, 1.0]), blows_up, param_names=["a", "b"])
    sims = simulate(problem, 500, seed=0, progress=False)
    n_blown = int((sims.x[:, 0] > 1e20).sum())
    assert n_blown > 0
    with pytest.warns(UserWarning, match=rf"{n_blown} of 500 simulations have x values far "
                                         r"beyond the bulk .*return NaN for them"):
        fit(problem, sims, max_epochs=1, progress=False, detector=False)
    clean = simulate(Problem(box_uniform([0.0, 0.0], [1.0, 1.0]),
                             lambda th: torch.exp(3 * torch.randn_like(th)) + th,
                             param_names=["a", "b"]), 500, seed=0, progress=False)
    import warnings as _w

    with _w.catch_warnings(record=True) as caught:
        _w.simplefilter("always")
        fit(problem, clean, max_epochs=1, progress=False, detector=False)
    assert not [w for w in caught if "far beyond the bulk" in str(w.message)]


def test_cli_robustness_refuses_test_simulations_of_another_problem(tmp_path, capsys):
    # before: `sbi-core robustness model.pt --sims other_sims.pt` ran on the other problem's
    # simulations (diagnose --sims did the same; both now refuse them)
    from sbi_core import Problem, box_uniform, fit, save, simulate
    from sbi_core.cli.main import main

    def sim(theta):
        return theta + 0.1 * torch.randn_like(theta)

    mine = Problem(box_uniform([0.0, 0.0], [1.0, 1.0]), sim, param_names=["a", "b"], name="mine")
    other = Problem(box_uniform([0.0, 0.0], [1.0, 1.0]), sim, param_names=["c", "d"],
                    name="other")
    post = fit(mine, simulate(mine, 200, seed=0, progress=False), max_epochs=1,
               progress=False, hidden_features=8, num_transforms=1)
    save(post, tmp_path / "model.pt")
    simulate(other, 20, seed=1, progress=False).save(tmp_path / "other.pt")
    code = main(["robustness", str(tmp_path / "model.pt"), "--sims", str(tmp_path / "other.pt"),
                 "--num", "5", "--eps", "0.1", "--steps", "2", "--no-predictive"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "made by problem 'other' with parameters ['c', 'd']" in err


def test_per_sample_rows_of_another_length_fail_alone_with_the_reason():
    # before: torch.stack raised "stack expects each tensor to be equal size" for the whole
    # batch, which was then re-run by bisection; now the odd rows are reported failed at once
    import numpy as np

    from sbi_core import Problem, box_uniform, simulate
    from simulators import adapt

    calls = []

    def stops_early(theta):  # like solve_ivp returning fewer time points when it fails
        calls.append(1)
        return np.ones(3 if theta[0] > 0.8 else 4) * theta[1]

    problem = Problem(box_uniform([0.0, 0.0], [1.0, 1.0]), adapt(stops_early), x_shape=(4,))
    calls.clear()
    sims = simulate(problem, 50, seed=0, progress=False)
    short = sims.theta[:, 0] > 0.8
    assert torch.equal(~sims.valid, short) and int(short.sum()) > 0
    assert "returned x of shape (3,) while the others returned (4,)" in \
        sims.provenance["first_error"]
    assert len(calls) == 50  # each row ran once: no bisection re-runs


def test_load_on_an_unavailable_device_does_not_call_the_file_corrupted(cnn_model, monkeypatch):
    # before: "cnn.pt is corrupted or not a model file (RuntimeError: Attempting to deserialize
    # object on a CUDA device ...). Re-save the model or retrain it." - the file was fine
    from sbi_core import load

    _, _, path = cnn_model
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"CUDA is not available on this machine \(the model "
                                         r"file is fine\); load it with device='cpu'") as info:
        load(path, device="cuda", embedding=_Cnn)
    assert "corrupted" not in str(info.value)
    with pytest.raises(ValueError, match=r"device='gpu' is not a torch device"):
        load(path, device="gpu", embedding=_Cnn)


def test_fit_on_a_misspelled_device_is_bad_input(capsys, tmp_path):
    # before: `sbi-core train --device gpu` ended in "internal error (RuntimeError): Expected
    # one of cpu, cuda, ... (please report it)"; fit raised RuntimeError
    from sbi_core import Problem, box_uniform, fit, simulate

    problem = Problem(box_uniform([0.0, 0.0], [1.0, 1.0]), lambda th: th + 0.1,
                      param_names=["a", "b"])
    sims = simulate(problem, 50, seed=0, progress=False)
    with pytest.raises(ValueError, match=r"device='gpu' is not a torch device .*use 'cpu'"):
        fit(problem, sims, device="gpu", max_epochs=1, progress=False)
