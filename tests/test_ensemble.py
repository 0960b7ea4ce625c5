"""Ensembles of NPE estimators (estimators.ensemble): one batched model, mixture posterior.

Checks (also with your own embedding module): the mixture density equals a hand-written logsumexp over the members; the batched
(vmapped) pass equals member-by-member evaluation; sampling picks members uniformly and
in random order; members start from different weights; fit / save / load / sample /
log_prob / a diagnostic / a server request work unchanged; bad options are explained.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from fastapi.testclient import TestClient
from torch import nn

from diagnostics.tarp import run_tarp
from estimators.ensemble import EnsembleEstimator, build_ensemble
from sbi_core import fit, load, save, simulate
from sbi_core.server import create_app
from simulators import get_problem

TINY = {"hidden_features": 16, "num_transforms": 2, "progress": False}


@pytest.fixture(scope="module")
def moons():
    problem = get_problem("two_moons")
    return problem, simulate(problem, 600, seed=0)


@pytest.fixture(scope="module")
def trained(moons):
    problem, sims = moons
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = fit(problem, sims, ensemble=3, seed=0, max_epochs=4, detector=False, **TINY)
    return problem, post


def test_mixture_log_prob_is_logsumexp_of_members(moons):
    problem, sims = moons
    theta, x = sims.training_data()
    torch.manual_seed(0)
    est = build_ensemble(theta, x, problem.prior, ensemble=4, hidden_features=16,
                         num_transforms=2)
    with torch.no_grad():
        got = est.log_prob(theta[:50], x[:50])
        members = torch.stack([m.log_prob(theta[:50], x[:50]) for m in est.members])
    assert est._vmap_ok is True  # the default flow runs as one vmapped pass
    assert torch.allclose(got, torch.logsumexp(members, 0) - math.log(4), atol=1e-5)
    assert torch.allclose(est.loss(theta[:50], x[:50]), -members.mean(0), atol=1e-5)
    # the members differ (different initial weights), so the mixture is not one of them
    assert float((members[0] - members[1]).abs().max()) > 1e-3


@pytest.mark.parametrize("flow", ["maf", "nsf"])
def test_nflows_members_get_their_own_initial_weights(moons, flow):
    """nflows flows are built under a fixed seed; the ensemble still starts members apart,
    and the result is the same batched (maf: vmap) or member by member (nsf)."""
    problem, sims = moons
    theta, x = sims.training_data()
    torch.manual_seed(0)
    est = build_ensemble(theta, x, problem.prior, ensemble=2, flow=flow, hidden_features=8,
                         num_transforms=1)
    with torch.no_grad():
        lps = est._member_log_probs(theta[:20], x[:20])
        loop = torch.stack([m.log_prob(theta[:20], x[:20]) for m in est.members])
    assert float((lps[0] - lps[1]).abs().max()) > 1e-3
    assert torch.allclose(lps, loop, atol=1e-5)
    assert est._vmap_ok is (flow == "maf")


class _Constant(nn.Module):
    """A fake member whose draws are all equal to ``value`` (to trace member choice)."""

    def __init__(self, value: float):
        super().__init__()
        self.value = value
        self.theta_dim, self.x_shape = 1, (1,)
        self.config = {"theta_dim": 1, "x_shape": [1]}
        self.w = nn.Parameter(torch.zeros(()))

    def sample(self, n: int, x: torch.Tensor) -> torch.Tensor:
        return torch.full((n, x.shape[0], 1), self.value)

    def log_prob(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.full((theta.shape[0],), self.value)


def test_sampling_picks_members_uniformly_in_random_order():
    est = EnsembleEstimator({"ensemble": 4}, members=[_Constant(float(j)) for j in range(4)])
    torch.manual_seed(0)
    draws = est.sample(8000, torch.zeros(3, 1))[..., 0]  # (n, B)
    assert draws.shape == (8000, 3)
    counts = torch.stack([(draws == j).sum(0) for j in range(4)])  # (K, B)
    assert int(counts.sum()) == 8000 * 3
    # each member count is Binomial(8000, 1/4): sd ~39; 5 sd band
    assert bool(((counts - 2000).abs() < 200).all())
    # random order, not blocks: about 3/4 of consecutive draws come from different members
    switches = (draws[1:] != draws[:-1]).float().mean()
    assert abs(float(switches) - 0.75) < 0.03
    # observations draw their members independently
    assert float((draws[:, 0] == draws[:, 1]).float().mean()) == pytest.approx(0.25, abs=0.03)


def test_fit_save_load_sample_and_log_prob(trained, tmp_path):
    problem, post = trained
    assert post.method == "npe_ensemble" and post.estimator.num_members == 3
    assert post.estimator.config["ensemble"] == 3
    assert post.history["epochs"] == 4
    x_o = problem.observation(1)
    samples = post.sample((300,), x=x_o, seed=0)
    assert samples.shape == (300, 2) and bool(torch.isfinite(samples).all())
    lp = post.log_prob(samples[:20], x=x_o)
    assert post.map(x=x_o, num_init=100, steps=5).shape == (2,)  # gradients through vmap
    path = save(post, tmp_path / "ens.pt")
    loaded = load(path)
    assert loaded.method == "npe_ensemble" and loaded.estimator.num_members == 3
    assert torch.allclose(loaded.log_prob(samples[:20], x=x_o), lp, atol=1e-5)
    assert torch.allclose(loaded.sample((300,), x=x_o, seed=0), samples, atol=1e-5)


def test_diagnostic_and_server_unchanged(trained):
    problem, post = trained
    theta = problem.prior.sample((20,))
    xs = problem.simulator(theta)
    result = run_tarp(post, theta, xs, num_samples=100, seed=0, progress=False)
    assert result.ecp.shape[0] == result.alpha.shape[0] and bool(torch.isfinite(result.ecp).all())
    client = TestClient(create_app({"ens": post}, max_samples=1000))
    x = [0.0, 0.1]
    r = client.post("/api/models/ens/sample", json={"x": x, "n": 100, "seed": 3})
    assert r.status_code == 200
    got = torch.tensor(r.json()["samples"])
    assert torch.allclose(got, post.sample((100,), torch.tensor(x), seed=3), atol=1e-5)
    r = client.post("/api/models/ens/log_prob", json={"x": x, "theta": [[0.1, 0.2]]}).json()
    want = post.log_prob(torch.tensor([[0.1, 0.2]]), torch.tensor(x))
    assert r["log_prob"] == pytest.approx(want.tolist(), abs=1e-4)


def test_bad_ensemble_options_are_explained(moons):
    problem, sims = moons
    for bad in (1, 0, 2.5, "3", True):
        with pytest.raises(ValueError, match="integer >= 2"):
            fit(problem, sims, ensemble=bad, max_epochs=1, **TINY)
    with pytest.raises(ValueError, match="method='npe'"):
        fit(problem, sims, method="nle", ensemble=3, max_epochs=1, **TINY)
    with pytest.raises(ValueError, match="regularizer='fim'"):
        fit(problem, sims, ensemble=2, regularizer="fim", max_epochs=1, **TINY)


def test_ensemble_matches_analytic_posterior(linear_problem):
    """Accuracy: an ensemble of 3 passes the same C2ST < 0.6 bound as a single NPE against
    the analytic 2-D linear Gaussian posterior (seeded)."""
    from diagnostics.c2st import c2st
    from simulators.linear_gaussian import linear_gaussian_posterior

    sims = simulate(linear_problem, 2000, seed=1, progress=False)
    post = fit(linear_problem, sims, ensemble=3, seed=1, progress=False, max_epochs=60,
               hidden_features=32, num_transforms=2, detector=False)
    for k in (1, 2):
        x_o = linear_problem.observation(k)
        samples = post.sample((2000,), x=x_o, seed=0)
        reference = linear_gaussian_posterior(x_o).sample((2000,))
        assert c2st(samples, reference, seed=0) < 0.6


def test_cli_train_ensemble_then_sample(tmp_path, capsys):
    import json

    from sbi_core.cli.main import main

    sims = tmp_path / "sims.pt"
    assert main(["simulate", "linear_gaussian", "--num", "500", "--seed", "1", "--out",
                 str(sims), "--quiet"]) == 0
    model = tmp_path / "m.pt"
    assert main(["train", "--sims", str(sims), "--out", str(model), "--ensemble", "2",
                 "--max-epochs", "2", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["epochs"] == 2
    post = load(model)
    assert post.method == "npe_ensemble" and post.estimator.num_members == 2
    xfile = tmp_path / "x.csv"
    xfile.write_text("x1,x2\n0.1,0.2\n")
    assert main(["sample", str(model), "--x", str(xfile), "--num", "50", "--out",
                 str(tmp_path / "s.csv")]) == 0
    assert len((tmp_path / "s.csv").read_text().splitlines()) == 51
    assert main(["train", "--sims", str(sims), "--out", str(tmp_path / "bad.pt"), "--ensemble",
                 "1", "--quiet"]) == 2  # one member is not an ensemble: one-line error
    assert "integer >= 2" in capsys.readouterr().err


class _MyEmbedding(nn.Module):
    """A user's own embedding (not a built-in spec)."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, width), nn.Tanh(), nn.Linear(width, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_ensemble_with_your_own_embedding_module(moons, tmp_path):
    """Each member gets its own copy of the user's module (diversified initial weights);
    the file stores the weights, never the class; load needs the module again."""
    from estimators.embedding import UserEmbeddingError
    from sbi_core.serialization import ModelFileError

    problem, sims = moons
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = fit(problem, sims, ensemble=3, embedding=_MyEmbedding(8), seed=0, max_epochs=3,
                   detector=False, **TINY)
    members = post.estimator.members
    w = [m.embedding.net[0].weight for m in members]
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])
    x_o = problem.observation(1)
    s = post.sample((200,), x_o, seed=0)
    lp = post.log_prob(s[:20], x_o)
    assert s.shape == (200, 2) and bool(torch.isfinite(lp).all())
    save(post, tmp_path / "m.pt")
    with pytest.raises((UserEmbeddingError, ModelFileError), match="_MyEmbedding"):
        load(tmp_path / "m.pt")
    with pytest.raises((UserEmbeddingError, ModelFileError), match="does not match"):
        load(tmp_path / "m.pt", embedding=lambda: _MyEmbedding(16))
    again = load(tmp_path / "m.pt", embedding=lambda: _MyEmbedding(8))
    assert torch.allclose(again.log_prob(s[:20], x_o), lp, atol=1e-5)
    assert torch.equal(again.sample((200,), x_o, seed=0), s)
