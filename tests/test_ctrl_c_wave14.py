"""Ctrl-C claims run as a user would (wave 14, h14-e2e14): an interruption inside a
sequential round's training ends the run (it used to be swallowed by the training loop,
which went on to the next round with a part-trained network and exited 0)."""

import json

import pytest
import torch

import simulators
from sbi_core.sequential import run_sequential

TINY = {"max_epochs": 25, "hidden_features": 16, "num_transforms": 2}


class CtrlC:
    """A training callback that presses Ctrl-C (raises ``KeyboardInterrupt``) at the 3rd
    epoch of the training run numbered ``at`` (1-based; 0: never)."""

    def __init__(self, at: int = 0):
        self.at, self.run, self.epoch = at, 1, 0

    def on_epoch_end(self, epoch, *args):
        self.epoch += 1
        if self.run == self.at and self.epoch == 3:
            raise KeyboardInterrupt

    def on_stop(self, *args):
        self.run, self.epoch = self.run + 1, 0


def _run(problem, x_o, store, cb, **kw):
    return run_sequential(problem, x_o, rounds=3, sims_per_round=200, seed=5, store=store,
                          chunk_size=50, progress=False, callbacks=[cb], detector=False,
                          **TINY, **kw)


def test_ctrl_c_in_a_rounds_training_stops_the_run_and_resume_equals_uninterrupted(tmp_path):
    problem = simulators.get_problem("gaussian_linear", dim=2)
    x_o = problem.observation(2)
    full, _ = _run(problem, x_o, tmp_path / "full.zarr", CtrlC())

    store = tmp_path / "run.zarr"
    with pytest.raises(KeyboardInterrupt, match="while training round 2.*retrains round 2"):
        _run(problem, x_o, store, CtrlC(at=2))
    state = json.loads((store / "_sequential" / "state.json").read_text())
    assert len(state["rounds"]) == 1  # round 2 is not recorded as finished
    resumed, hist = _run(problem, x_o, store, CtrlC(), resume=True)
    assert [h.total_simulations for h in hist] == [200, 400, 600]
    a, b = full.estimator.state_dict(), resumed.estimator.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ctrl_c_in_training_without_a_store_says_nothing_is_kept():
    problem = simulators.get_problem("gaussian_linear", dim=2)
    with pytest.raises(KeyboardInterrupt, match="round 1; nothing is kept"):
        run_sequential(problem, problem.observation(1), rounds=2, sims_per_round=200, seed=0,
                       progress=False, callbacks=[CtrlC(at=1)], detector=False, **TINY)


def test_a_run_with_training_callbacks_resumes_with_new_callback_objects(tmp_path):
    """A logger (``callbacks=[TensorBoardLogger(...)]``) only observes training: it was
    recorded by its repr (a memory address), so such a store refused every resume."""
    problem = simulators.get_problem("gaussian_linear", dim=2)
    x_o = problem.observation(1)
    store = tmp_path / "cb.zarr"

    def stop(rec):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sequential(problem, x_o, rounds=2, sims_per_round=200, seed=0, store=store,
                       progress=False, callbacks=[CtrlC()], detector=False, on_round=stop,
                       **TINY)
    _, hist = run_sequential(problem, x_o, rounds=2, sims_per_round=200, seed=0, store=store,
                             resume=True, progress=False, callbacks=[CtrlC()], detector=False,
                             **TINY)
    assert [h.total_simulations for h in hist] == [200, 400]


DEMO = ["demo", "--num-simulations", "300", "--num-samples", "200", "--max-seconds", "2",
        "--quiet"]


def test_demo_ctrl_c_in_training_is_reported_in_its_summary(tmp_path, capsys, monkeypatch):
    """Ctrl-C in the demo's training keeps the best weights (as `train` does) and the JSON
    line and the training step say so; it used to report the C2ST of a part-trained model
    with nothing but a Python warning."""
    import sbi_core.inference as inference
    from sbi_core.cli.main import main

    real_fit = inference.fit
    monkeypatch.setattr(inference, "fit",
                        lambda *a, **kw: real_fit(*a, callbacks=[CtrlC(at=1)], **kw))
    assert main([*DEMO, "--no-report", "--out", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["stopped"] == "interrupted" and summary["epochs"] == 3
    assert "stopped by Ctrl-C" in out


def test_demo_ctrl_c_after_training_keeps_the_model_and_drops_stale_files(tmp_path, capsys,
                                                                         monkeypatch):
    """A second run into the same folder: the earlier run's report.json and pairplot describe
    another model and are removed; a Ctrl-C in the C2ST keeps the freshly trained model."""
    import importlib

    from sbi_core import load
    from sbi_core.cli.main import main

    out = tmp_path / "d"
    out.mkdir()
    (out / "report.json").write_text("{}")  # an earlier run's
    (out / "pairplot.png").write_bytes(b"old")

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    # the module (the package's `c2st` attribute is the function of the same name)
    monkeypatch.setattr(importlib.import_module("diagnostics.c2st"), "c2st", ctrl_c)
    assert main([*DEMO, "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert f"the trained model is saved in {out / 'model.pt'}" in err
    assert load(out / "model.pt").history["epochs"] >= 1
    assert not (out / "report.json").exists() and not (out / "pairplot.png").exists()


def test_ctrl_c_in_the_detectors_training_is_reported_not_absorbed(tmp_path, monkeypatch):
    """A Ctrl-C after the estimator's training lands in the misspecification detector's
    flow: `train` wrote "stopped": "converged"/"max_epochs" as if nothing happened. Now the
    history says `detector_stopped: interrupted`, a warning explains it, the model saves."""
    from dataclasses import replace

    import sbi_core.training as training
    from diagnostics.misspecification import _DensityFlow
    from sbi_core import fit, load, save, simulate

    real_train = training.train

    def train(estimator, *args, **kwargs):
        if isinstance(estimator, _DensityFlow):  # the detector's flow only
            args = (*args[:2], replace(args[2], callbacks=[CtrlC(at=1)]), *args[3:])
        return real_train(estimator, *args, **kwargs)

    monkeypatch.setattr(training, "train", train)
    problem = simulators.get_problem("gaussian_linear", dim=2)
    sims = simulate(problem, 5000, seed=0, progress=False)
    with pytest.warns(UserWarning, match="Interrupted while training the misspecification"):
        posterior = fit(problem, sims, seed=0, max_epochs=2, hidden_features=16)
    assert posterior.history["detector_stopped"] == "interrupted"
    assert posterior.detector.config["flow_stopped"] == "interrupted"
    save(posterior, tmp_path / "m.pt")
    again = load(tmp_path / "m.pt")
    assert again.history["detector_stopped"] == "interrupted" and again.detector is not None


def test_train_ctrl_c_in_the_report_card_says_the_model_is_saved(tmp_path, capsys,
                                                                  monkeypatch):
    import diagnostics.report
    from sbi_core import load
    from sbi_core.cli.main import main

    sims, model = tmp_path / "s.pt", tmp_path / "m.pt"
    assert main(["simulate", "linear_gaussian", "--num", "300", "--out", str(sims),
                 "--in-process", "--quiet"]) == 0

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(diagnostics.report, "diagnose", ctrl_c)
    assert main(["train", "--sims", str(sims), "--out", str(model), "--max-epochs", "2",
                 "--quiet", "--report-card"]) == 130
    assert f"the trained model is saved in {model}" in capsys.readouterr().err
    assert load(model).history["epochs"] == 2


@pytest.mark.parametrize("flag", ["--report-num", "--report-samples"])
def test_demo_refuses_a_report_card_it_cannot_make_before_training(tmp_path, capsys, flag):
    """`--report-num 1` failed only after training, naming `--sims` / `--num 200`, options
    the demo does not have; now it is refused at once, naming the demo's own flags."""
    from sbi_core.cli.main import main

    assert main([*DEMO, flag, "1", "--out", str(tmp_path / "d")]) == 2
    captured = capsys.readouterr()
    assert f"{flag} " in captured.err and "--no-report" in captured.err
    assert "training" not in captured.out and not (tmp_path / "d").exists()


def test_a_round_whose_every_simulation_fails_stops_and_resumes_after_the_fix(tmp_path):
    """A simulator that breaks from round 2 on (a crashed licence server) made the run spend
    rounds 2-3 on failures and commit them to the store as invalid, so no resume could
    simulate them again. Now the run stops at round 2 with the first error, uncommits the
    round, and a resume after the fix equals a run whose simulator never broke."""
    problem = simulators.get_problem("gaussian_linear", dim=2)
    x_o = problem.observation(2)
    real = problem.simulator
    full, _ = _run(problem, x_o, tmp_path / "full.zarr", CtrlC())

    broken = {"on": False}

    def flaky(theta):
        if broken["on"]:
            raise RuntimeError("license server down")
        return real(theta)

    def breaks(rec):
        broken["on"] = True

    store = tmp_path / "run.zarr"
    problem.simulator = flaky
    try:
        with pytest.raises(ValueError, match="Every simulation of round 2 .*license server "
                                             "down.*round 1 is kept.*resume=True"):
            _run(problem, x_o, store, CtrlC(), on_round=breaks)
        broken["on"] = False
        resumed, hist = _run(problem, x_o, store, CtrlC(), resume=True)
    finally:
        problem.simulator = real
    assert [h.num_invalid for h in hist] == [0, 0, 0]
    a, b = full.estimator.state_dict(), resumed.estimator.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_failed_round_without_a_store_names_the_rounds_first_error():
    problem = simulators.get_problem("gaussian_linear", dim=2)
    real = problem.simulator
    broken = {"on": False}

    def flaky(theta):
        if broken["on"]:
            raise RuntimeError("license server down")
        return real(theta)

    problem.simulator = flaky
    try:
        with pytest.raises(ValueError, match="round 2 .*license server down.*nothing is kept"):
            run_sequential(problem, problem.observation(1), rounds=2, sims_per_round=200,
                           seed=0, progress=False, detector=False,
                           on_round=lambda rec: broken.__setitem__("on", True), **TINY)
    finally:
        problem.simulator = real
