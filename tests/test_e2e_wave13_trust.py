"""Wave 13 hardening (h13-trust13): a scientist's own problem on the inference, sequential and
trust side: importance sampling with a trained likelihood over a set of iid trials, device
strings at load, the misspecification error's wording, iid sets of score-based posteriors."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import Tensor, nn

from sbi_core.mcmc_posterior import MCMCPosterior
from sbi_core.posterior import DirectPosterior
from sbi_core.priors import gaussian

NOISE = 0.5  # x_i = theta + NOISE * eps, prior N(0, I): the posterior of n trials is exact
N_TRIALS = 5


def _exact(xs: Tensor) -> tuple[Tensor, float]:
    """Mean (D,) and sd of the posterior given iid trials ``xs`` (n, D)."""
    prec = 1.0 + len(xs) / NOISE ** 2
    return xs.sum(0) / NOISE ** 2 / prec, prec ** -0.5


class _TrialLikelihood(nn.Module):
    """Exact per-trial log-likelihood of one trial ``x`` (N, 2) (an NLE-like estimator)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def log_likelihood(self, theta: Tensor, x: Tensor) -> Tensor:
        return -((x - theta) ** 2).sum(-1) / (2 * NOISE ** 2)


class _SetPosterior(nn.Module):
    """An NPE-like estimator for sets of ``N_TRIALS`` trials ``x`` (B, n, 2), deliberately off
    (mean shifted by 0.3, sd x1.5) so that importance sampling has something to correct."""

    def __init__(self):
        super().__init__()
        self.register_buffer("x_min", torch.full((N_TRIALS, 2), -100.0))
        self.register_buffer("x_max", torch.full((N_TRIALS, 2), 100.0))

    def _mean_std(self, x: Tensor) -> tuple[Tensor, Tensor]:
        prec = 1.0 + x.shape[1] / NOISE ** 2
        return x.sum(1) / NOISE ** 2 / prec + 0.3, torch.full_like(x[:, 0], 1.5 * prec ** -0.5)

    def log_prob(self, theta: Tensor, x: Tensor) -> Tensor:
        mean, std = self._mean_std(x)
        return torch.distributions.Normal(mean, std).log_prob(theta).sum(-1)

    def sample(self, n: int, x: Tensor) -> Tensor:
        mean, std = self._mean_std(x)
        return mean + std * torch.randn(n, *mean.shape)


def _prior():
    return gaussian(torch.zeros(2), std=torch.ones(2))


def _spec(x_shape: list[int]) -> dict:
    return {"param_names": ["a", "b"], "x_shape": x_shape, "prior": _prior().spec}


def _trial_nle() -> MCMCPosterior:
    return MCMCPosterior(_TrialLikelihood(), _prior(), _spec([2]),
                         mcmc={"num_chains": 4, "warmup_steps": 10, "progress": False})


def _set_npe() -> DirectPosterior:
    return DirectPosterior(_SetPosterior(), _prior(), _spec([N_TRIALS, 2]))


# ------------------------------------------------------------------ importance sampling
def test_importance_correction_with_a_trial_likelihood_over_a_set_of_trials():
    """NPE trained on sets of 5 trials, NLE on single trials (docs: ``log_likelihood=`` takes
    a trained NLE posterior): the NLE's likelihood of the set is the sum over its trials.
    Before: ``RuntimeError: shape '[32000, 2]' is invalid for input of size 320000``."""
    torch.manual_seed(0)
    xs = torch.tensor([0.4, -0.3]) + NOISE * torch.randn(N_TRIALS, 2)
    mean, sd = _exact(xs)
    npe = _set_npe()
    raw = npe.sample((4000,), x=xs, seed=0)
    assert (raw.mean(0) - mean).abs().min() > 0.25  # the proposal is off ...
    fixed = npe.sample((4000,), x=xs, seed=0, correct="is", log_likelihood=_trial_nle())
    assert (fixed.mean(0) - mean).abs().max() < 0.03  # ... the correction is exact
    assert (fixed.std(0) / sd - 1).abs().max() < 0.08
    assert npe.last_importance.ess > 1000


def test_importance_likelihood_of_the_wrong_shape_names_both_shapes():
    """A likelihood model of other x than the observation is a clear error, not a reshape."""
    npe = _set_npe()
    bad = MCMCPosterior(_TrialLikelihood(), _prior(), _spec([3]),
                        mcmc={"progress": False})
    with pytest.raises(ValueError, match=r"x_shape \(3,\).*\(5, 2\)"):
        npe.sample((10,), x=torch.zeros(N_TRIALS, 2), correct="is", log_likelihood=bad)


# ------------------------------------------------------------------ devices at load
@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    from sbi_core import Problem, fit, save, simulate

    problem = Problem(_prior(), lambda th: th + NOISE * torch.randn_like(th),
                      param_names=["a", "b"], x_shape=(2,))
    post = fit(problem, simulate(problem, 200, seed=0, progress=False), max_epochs=2,
               progress=False, detector=False)
    path = tmp_path_factory.mktemp("dev") / "m.pt"
    save(post, path)
    return path, post


@pytest.mark.parametrize("device", ["cpu:0", torch.device("cpu", 0)])
def test_load_on_an_indexed_cpu_device(small_model, device):
    """``fit(device="cpu:0")`` works, so ``load`` must. Before: "m.pt is corrupted or not a
    model file (RuntimeError: don't know how to restore data location ... (tagged with cpu:0))"."""
    from sbi_core import load

    path, post = small_model
    again = load(path, device=device)
    theta = torch.zeros(3, 2)
    assert torch.allclose(again.log_prob(theta, x=torch.zeros(2)),
                          post.log_prob(theta, x=torch.zeros(2)))


@pytest.mark.parametrize("device", ["meta", "xla"])
def test_load_on_a_device_that_holds_no_model_is_bad_input(small_model, device):
    """Before: ``meta`` gave "m.pt is damaged: its weights do not match its config" (a good
    file called damaged); the device is named now, as by ``fit``."""
    from sbi_core import load

    path, _ = small_model
    with pytest.raises(ValueError, match=rf"device='{device}' cannot hold a model.*'cpu'") \
            as info:
        load(path, device=device)
    assert "damaged" not in str(info.value) and "corrupted" not in str(info.value)


def test_load_on_a_gpu_index_the_machine_lacks_names_the_gpus(small_model, monkeypatch):
    """``cuda:3`` on a one-GPU machine: named before the file is read (torch.load would fail
    with an error about the file)."""
    from sbi_core import load

    path, _ = small_model
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"device='cuda:3', but this machine has 1 CUDA GPU"):
        load(path, device="cuda:3")


def test_fit_on_a_gpu_index_the_machine_lacks_names_the_gpus(monkeypatch):
    from sbi_core import Problem, fit, simulate

    problem = Problem(_prior(), lambda th: th + NOISE * torch.randn_like(th),
                      param_names=["a", "b"], x_shape=(2,))
    sims = simulate(problem, 100, seed=0, progress=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"device='cuda:3' was requested but this machine has "
                                         r"1 CUDA GPU"):
        fit(problem, sims, device="cuda:3", max_epochs=1, progress=False, detector=False)


# ------------------------------------------------------------------ misspecification wording
def test_misspecification_error_does_not_advise_the_strict_mode_it_came_from(trained_npe):
    """Before, ``strict=True`` raised "... Pass strict=True (--strict) to make this an error"."""
    from diagnostics.misspecification import MisspecificationError, MisspecificationWarning

    x = torch.tensor([3.2, 3.2])  # inside the training range, far in the tails jointly
    with pytest.warns(MisspecificationWarning, match=r"strict=True \(--strict\) to make this "
                                                     r"an error"):
        trained_npe.sample((5,), x=x, seed=0)
    with pytest.raises(MisspecificationError) as info:
        trained_npe.sample((5,), x=x, seed=0, strict=True)
    text = str(info.value)
    assert "to make this an error" not in text
    assert "misspecification = 'off'" not in text  # does not apply to strict=True
    assert "drop strict=True" in text and "docs/trust.md" in text


# ------------------------------------------------------------------ score-based iid sets
@pytest.fixture(scope="module")
def small_fmpe():
    from sbi_core import Problem, fit, simulate

    problem = Problem(_prior(), lambda th: th + NOISE * torch.randn_like(th),
                      param_names=["a", "b"], x_shape=(2,))
    return fit(problem, simulate(problem, 300, seed=0, progress=False), method="fmpe",
               max_epochs=2, progress=False, detector=False)


def test_score_map_of_an_iid_set_is_refused_naming_map_before_sampling(small_fmpe, monkeypatch):
    """Before: 1,000 iid draws (seconds to minutes) and then "log_prob for a set of iid
    observations is not available ... evaluate log_prob for single observations" from a
    ``map`` call that never mentioned log_prob."""
    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled before refusing")

    monkeypatch.setattr(type(small_fmpe), "_sample_batched", no_sampling)
    xs = torch.zeros(3, 2)
    with pytest.raises(ValueError, match=r"^map for a set of iid observations is not available"):
        small_fmpe.map(xs)
    with pytest.raises(ValueError, match=r"^correct='is' for a set of iid observations"):
        small_fmpe.sample((10,), x=xs, correct="is", log_likelihood=_trial_nle())
    with pytest.raises(ValueError, match=r"^log_prob for a set of iid observations"):
        small_fmpe.log_prob(torch.zeros(4, 2), x=xs)


def test_score_map_and_correction_of_one_observation_still_work(small_fmpe):
    x = torch.tensor([0.3, -0.2])
    assert small_fmpe.map(x, num_init=50, steps=5).shape == (2,)
    mean, sd = _exact(x[None])
    fixed = small_fmpe.sample((200,), x=x, seed=0, correct="is", log_likelihood=_trial_nle(),
                              oversampling=3)
    ess = small_fmpe.last_importance.ess  # IS and resampling error of the mean
    assert (fixed.mean(0) - mean).abs().max() < 4 * sd * math.sqrt(1 / ess + 1 / 200)


def test_report_names_a_rejected_set_whose_rows_all_pass(trained_npe):
    """Observations each typical but together too narrow: before, the card said "0 of 20
    observation(s) and the set as a whole do not look like the training simulations"."""
    from diagnostics.misspecification_check import misspecification_section

    theta = torch.randn(20, 2)
    xs = (theta + NOISE * torch.randn(20, 2)) * 0.4 + 0.5  # shrunk and shifted
    sec = misspecification_section(trained_npe, xs)
    assert sec["status"] == "fail" and sec["metrics"]["num_flagged"] == 0
    assert sec["why"].startswith("the set of 20 observations as a whole does not look like "
                                 "the training simulations (MMD test p = ")
    assert "no single observation is rejected" in sec["why"] and "0 of 20" not in sec["why"]


# ------------------------------------------------------------------ ensembles and embeddings
class _SetNet(nn.Module):
    """A small permutation-invariant net for sets of trials (N, n, 2) -> (N, 4)."""

    def __init__(self):
        super().__init__()
        self.phi = nn.Linear(2, 8)
        self.rho = nn.Linear(8, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.rho(torch.relu(self.phi(x)).mean(1))


def _set_sims(n: int = 300):
    theta = torch.randn(n, 2)
    return theta, theta[:, None, :] + NOISE * torch.randn(n, N_TRIALS, 2)


@pytest.mark.parametrize("embedding, warned", [(_SetNet(), True), (_SetNet, False),
                                               (lambda: _SetNet(), False)])
def test_ensemble_with_one_embedding_instance_warns_that_members_share_its_start(
        embedding, warned, recwarn):
    """An instance is deep-copied into every member, so all K start from the same embedding
    weights (before: silently; 0.123 vs 0.157 member disagreement in log density than with the
    class, one problem). A class or factory builds one per member."""
    from sbi_core import Problem, fit

    problem = Problem(_prior(), lambda th: th[:, None, :] + NOISE * torch.randn(len(th),
                                                                                N_TRIALS, 2),
                      param_names=["a", "b"], x_shape=(N_TRIALS, 2))
    post = fit(problem, _set_sims(), ensemble=2, embedding=embedding, max_epochs=1,
               progress=False, detector=False)
    shared = [str(w.message) for w in recwarn if "every member starts from a copy" in
              str(w.message)]
    assert bool(shared) == warned
    if warned:
        assert "embedding=Net" in shared[0]
    first = [m.embedding.phi.weight for m in post.estimator.members]
    assert first[0].shape == first[1].shape


# ------------------------------------------------------------------ report card, iid sets
@pytest.fixture(scope="module")
def nle_with_detector():
    """The exact single-trial likelihood as an MCMC posterior, with a misspecification
    detector trained on 2,000 simulations (400 held out: p-values down to 1/401, enough for
    Simes over 5 trials)."""
    torch.manual_seed(1)
    theta = torch.randn(2000, 2)
    post = _trial_nle()
    post.fit_detector((theta, theta + NOISE * torch.randn(2000, 2)))
    return post


def test_report_card_tests_an_iid_set_of_trials_as_one_set(nle_with_detector):
    """``x`` of shape ``(1, n, *x_shape)`` (one set of n iid trials, as ``sample_batched``
    takes it). Before: "[FAIL] ... the check raised RuntimeError: The size of tensor a (10)
    must match the size of tensor b (2)"."""
    from diagnostics.report import diagnose

    torch.manual_seed(2)
    typical = (torch.tensor([0.3, -0.4]) + NOISE * torch.randn(N_TRIALS, 2))[None]
    rep = diagnose(nle_with_detector, checks=["misspecification"], x=typical, progress=False)
    sec = rep.sections["misspecification"]
    assert sec["status"] == "pass", sec["why"]
    assert sec["why"].startswith("the 1 set(s) of 5 iid trials look like the training")
    assert sec["metrics"]["iid_set_size"] == N_TRIALS
    odd = typical.clone()
    odd[0, 0] = torch.tensor([3.0, -3.0])  # one trial far off, inside the range
    sec = diagnose(nle_with_detector, checks=["misspecification"], x=odd,
                   progress=False).sections["misspecification"]
    assert sec["status"] == "fail" and sec["why"].startswith("1 of 1 set(s) of iid trials")


def test_report_card_skips_lc2st_for_an_iid_set_before_training_classifiers(
        nle_with_detector, monkeypatch):
    """Before: the L-C2ST classifiers were trained (one MCMC run per calibration pair) and
    the section then failed with "L-C2ST tests one observation x_shape at a time"."""
    import diagnostics.lc2st as lc2st
    from diagnostics.report import diagnose

    def no_fit(self):
        raise AssertionError("trained L-C2ST classifiers for an iid set")

    monkeypatch.setattr(lc2st.LC2ST, "fit", no_fit)
    torch.manual_seed(3)
    theta = torch.randn(60, 2)
    sims = (theta, theta + NOISE * torch.randn(60, 2))
    x = (torch.tensor([0.3, -0.4]) + NOISE * torch.randn(N_TRIALS, 2))[None]
    sec = diagnose(nle_with_detector, sims=sims, checks=["lc2st"], x=x,
                   progress=False).sections["lc2st"]
    assert sec["status"] == "skip" and "set(s) of 5 iid trials" in sec["why"]


class _PaddedSetPosterior(_SetPosterior):
    """As ``_SetPosterior`` for sets padded with all-NaN trials (a varying number of trials,
    a set embedding: docs/embeddings.md)."""

    config = {"embedding": {"type": "set"}}

    def _mean_std(self, x: Tensor) -> tuple[Tensor, Tensor]:
        real = torch.isfinite(x).all(-1)  # (B, n)
        prec = 1.0 + real.sum(1, keepdim=True) / NOISE ** 2
        total = torch.where(real[..., None], x, torch.zeros_like(x)).sum(1)
        return total / NOISE ** 2 / prec + 0.3, (1.5 * prec ** -0.5).expand_as(total)


def test_importance_correction_of_a_padded_set_scores_only_its_real_trials():
    """A set of 3 real trials padded with 2 all-NaN ones: the NPE takes it, and the trial
    likelihood must score the 3 real trials. Before the fix for item 1 it crashed; with that
    fix alone the NLE refused the padding as NaN."""
    torch.manual_seed(4)
    real = torch.tensor([-0.5, 0.2]) + NOISE * torch.randn(3, 2)
    padded = torch.cat([real, torch.full((2, 2), float("nan"))])
    mean, sd = _exact(real)
    npe = DirectPosterior(_PaddedSetPosterior(), _prior(), _spec([N_TRIALS, 2]))
    fixed = npe.sample((4000,), x=padded, seed=0, correct="is", log_likelihood=_trial_nle())
    assert (fixed.mean(0) - mean).abs().max() < 0.03
    assert (fixed.std(0) / sd - 1).abs().max() < 0.08


# ------------------------------------------------------------------ detector on failed rows
def test_detector_fitted_on_pairs_with_failed_rows_leaves_them_out():
    """``posterior.fit_detector((theta, x))`` with the NaN rows of failed simulations. Before:
    "Every feature of the training x is constant; there is nothing to test observations
    against" (the NaN made every feature's spread NaN); a SimulationSet already worked."""
    torch.manual_seed(5)
    theta = torch.randn(800, 2)
    x = theta + NOISE * torch.randn(800, 2)
    x[theta[:, 0] > 1.0] = float("nan")  # the simulator failed there
    failed = int(torch.isnan(x[:, 0]).sum())
    post = _trial_nle()
    with pytest.warns(UserWarning, match=rf"leaving out {failed} of 800 rows of x_train"):
        det = post.fit_detector((theta, x))
    assert det.test(torch.tensor([[0.0, 0.0]])).verdict(0) == "ok"
    assert det.test(torch.tensor([[0.0, 4.5]])).verdict(0) == "misspecified"


def test_importance_likelihood_that_is_infinite_somewhere_is_named():
    """A user log-likelihood returning +inf at some proposals. Before: ``RuntimeError:
    invalid multinomial distribution (encountering probability entry < 0)``."""
    from sbi_core.importance import ImportanceSamplingError

    def singular(theta: Tensor, x: Tensor) -> Tensor:
        out = -(theta ** 2).sum(-1)
        out[theta[:, 0] > 0.2] = float("inf")  # e.g. a noise scale that reaches 0
        return out

    with pytest.raises(ImportanceSamplingError, match=r"infinite at [\d,]+ of 3,200 proposals: "
                                                      r"log_likelihood returned \+inf"):
        _set_npe().sample((100,), x=torch.zeros(N_TRIALS, 2), correct="is",
                          log_likelihood=singular, seed=0)


def test_sequential_run_on_a_missing_gpu_fails_before_simulating():
    """Before: round 1's simulations ran (and, without a store, were lost) before training
    found that ``device='cuda'`` has no GPU here."""
    from sbi_core import Problem, run_sequential

    calls = []

    def simulator(theta: Tensor) -> Tensor:
        calls.append(len(theta))
        return theta + NOISE * torch.randn_like(theta)

    problem = Problem(_prior(), simulator, param_names=["a", "b"], x_shape=(2,))
    calls.clear()  # the Problem's test run
    for device in ["gpu", "meta"]:
        with pytest.raises(ValueError, match=rf"device='{device}'"):
            run_sequential(problem, torch.zeros(2), rounds=2, sims_per_round=100,
                           progress=False, device=device)
    assert calls == []


@pytest.mark.parametrize("names", [["a", "b", "c"], ["b", "a"]])
def test_importance_likelihood_of_other_parameters_is_refused(names):
    """A likelihood model of 3 parameters: before, a ``RuntimeError`` about expanded sizes;
    of the same 2 in another order: before, silently weighted by the wrong parameters."""
    prior = gaussian(torch.zeros(len(names)), std=torch.ones(len(names)))
    other = MCMCPosterior(_TrialLikelihood(), prior,
                          {"param_names": names, "x_shape": [2], "prior": prior.spec},
                          mcmc={"progress": False})
    with pytest.raises(ValueError, match=re.escape(f"log_likelihood= is a model of the "
                                                   f"parameters {names}, but this posterior's "
                                                   "are ['a', 'b']")):
        _set_npe().sample((10,), x=torch.zeros(N_TRIALS, 2), correct="is",
                          log_likelihood=other)


# ------------------------------------------------------------------ CLI: diagnose --iid
def test_cli_diagnose_iid_tests_the_rows_as_one_set(tmp_path, capsys):
    """`sbi-core diagnose MODEL --x trials.csv --iid` tests the rows as one set of iid trials
    (before: the CLI could only test each row as its own observation)."""
    import json

    import numpy as np

    from sbi_core import Problem, fit, save, simulate
    from sbi_core.cli.main import main

    prob = Problem(_prior(), lambda th: th + NOISE * torch.randn_like(th), name="g2")
    sims = simulate(prob, 1000, seed=0, progress=False)
    with pytest.warns(UserWarning, match="max_epochs"):
        nle = fit(prob, sims, method="nle", max_epochs=5, seed=0, progress=False)
    save(nle, tmp_path / "nle.pt")
    torch.manual_seed(4)
    trials = torch.tensor([0.3, -0.4]) + NOISE * torch.randn(N_TRIALS, 2)
    np.savetxt(tmp_path / "trials.csv", trials.numpy(), delimiter=",")
    out = tmp_path / "d"
    assert main(["diagnose", str(tmp_path / "nle.pt"), "--x", str(tmp_path / "trials.csv"),
                 "--iid", "--quiet", "--out", str(out)]) == 0
    sec = json.loads((out / "report.json").read_text())["sections"]["misspecification"]
    assert sec["why"].startswith(f"the 1 set(s) of {N_TRIALS} iid trials"), sec["why"]
    capsys.readouterr()
    # --iid without --x, and --iid for a model that cannot take sets: one-line errors
    assert main(["diagnose", str(tmp_path / "nle.pt"), "--iid", "--out", str(tmp_path / "e")]) == 2
    assert "--iid applies to --x FILE" in capsys.readouterr().err
    npe = fit(prob, sims, method="npe", max_epochs=2, seed=0, progress=False)
    save(npe, tmp_path / "npe.pt")
    assert main(["diagnose", str(tmp_path / "npe.pt"), "--x", str(tmp_path / "trials.csv"),
                 "--iid", "--out", str(tmp_path / "f")]) == 2
    assert "cannot condition on a set of iid observations" in capsys.readouterr().err


def test_one_number_observation_may_be_a_plain_number():
    """``posterior.sample(x=0.5)`` for ``x_shape (1,)`` (before: 'The observation has shape
    ()'); the same draws as ``x=[0.5]``. Other shapes still name the expected one."""
    from sbi_core.posterior import ObservationError

    class _Shift(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("x_min", torch.full((1,), -100.0))
            self.register_buffer("x_max", torch.full((1,), 100.0))

        def log_prob(self, theta: Tensor, x: Tensor) -> Tensor:
            return torch.distributions.Normal(x, 1.0).log_prob(theta).sum(-1)

        def sample(self, n: int, x: Tensor) -> Tensor:
            return x + torch.randn(n, *x.shape)

    prior = gaussian(torch.zeros(1), std=torch.ones(1))
    post = DirectPosterior(_Shift(), prior, {"param_names": ["a"], "x_shape": [1],
                                             "prior": prior.spec})
    assert torch.equal(post.sample((5,), x=0.5, seed=1), post.sample((5,), x=[0.5], seed=1))
    assert torch.allclose(post.log_prob(torch.zeros(3, 1), 0.5),
                          post.log_prob(torch.zeros(3, 1), torch.tensor([0.5])))
    post2 = DirectPosterior(_SetPosterior(), _prior(), _spec([N_TRIALS, 2]))
    with pytest.raises(ObservationError, match=r"shape \(\)"):
        post2.sample((5,), x=0.5)


def test_detector_warning_tells_padded_sets_from_failed_simulations():
    """Sets padded with all-NaN trials (a varying number of trials) are not failed
    simulations; the detector's warning counts the two apart (before: every left-out row was
    called a failed simulation)."""
    from diagnostics.misspecification import _finite_rows

    x = torch.randn(5, 3, 2)
    x[1, 2] = float("nan")  # padded: its last trial is all NaN
    x[3, 1:] = float("nan")  # padded: two trials
    x[4, 0, 0] = float("nan")  # a failed simulation: one NaN value inside a trial
    with pytest.warns(UserWarning) as rec:
        kept = _finite_rows(x, "x_train")
    msg = str(rec[0].message)
    assert kept.shape[0] == 2
    assert "leaving out 3 of 5 rows of x_train" in msg
    assert "1 with NaN/inf values (failed simulations)" in msg
    assert "2 set(s) padded with all-NaN trials" in msg
