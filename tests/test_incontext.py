"""In-context posterior (``method="incontext"``): the shipped weights load code-free and
reproduce a recorded C2ST, out-of-range problems get the clear error, sample and log_prob are
consistent (normalized on a grid in 1-D, bounded and unbounded), save/load and the CLI work,
fine-tuning runs, and a short pretraining run from scratch lowers the loss."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diagnostics.c2st import c2st
from estimators.incontext_method import (
    WEIGHTS_PATH,
    InContextRangeError,
    check_range,
    load_pretrained,
)
from sbi_core import Problem, fit, simulate
from sbi_core.priors import box_uniform, gaussian
from sbi_core.serialization import load, save
from simulators import get_problem
from simulators.gaussian_linear import gaussian_linear, gaussian_linear_posterior

ROOT = Path(__file__).resolve().parents[1]

#: C2ST of the shipped weights on gaussian_linear reduced to D = d = 3, 500 context
#: simulations (seed 0), observation simulated at a prior draw with seed 1001, 1,000 samples,
#: diagnostics.c2st(seed=0), default variant="auto" (it picks "residual-256" here).
#: Recorded with estimators/weights/incontext_v1.pt after 8,500 pretraining steps (see its
#: .json): 0.533 (variant "plain": 0.6715; the 5,756-step weights gave 0.5405 with "auto"
#: and 0.6685 with "plain", the only variant then; the 1,600-step weights 0.670).
#: Threshold: within 0.05 (torch/BLAS differences between machines move it by a few 0.001).
RECORDED_C2ST = 0.533
C2ST_TOLERANCE = 0.05


def linear_1d(bounded: bool) -> Problem:
    prior = box_uniform(-2.0, 2.0, dim=1) if bounded else gaussian([0.0], std=[1.0])
    return Problem(prior, lambda t: t + 0.5 * torch.randn_like(t), x_shape=(1,),
                   name="lin1d")


def test_shipped_weights_load_code_free_with_provenance():
    size_mb = WEIGHTS_PATH.stat().st_size / 1e6
    assert size_mb <= 30
    payload = torch.load(WEIGHTS_PATH, map_location="cpu", weights_only=True)
    meta = payload["meta"]
    assert meta["format"] == "sbi-core-incontext-weights"
    assert meta["seed"] == 0 and meta["steps"] > 0
    assert meta["prior"]["D_max"] == 3 and meta["prior"]["n_max"] == 1000
    side = json.loads(WEIGHTS_PATH.with_suffix(".json").read_text())
    assert side["steps"] == meta["steps"] and side["train_args"]["seed"] == 0
    net, _ = load_pretrained()
    assert sum(p.numel() for p in net.parameters()) < 2_000_000


def test_recorded_c2st_on_reduced_gaussian_linear():
    problem = gaussian_linear(dim=3)
    sims = simulate(problem, 500, seed=0, progress=False)
    post = fit(problem, sims, method="incontext", detector=False)
    assert post.history["epochs"] == 0 and post.history["context_size"] == 500
    assert post.history["variant"] == "residual-256"
    with torch.random.fork_rng():
        torch.manual_seed(1001)
        x_o = problem.simulator(problem.prior.sample((1,)))[0]
    torch.manual_seed(0)
    ref = gaussian_linear_posterior(x_o).sample((1000,)).float()
    score = c2st(post.sample((1000,), x=x_o, seed=0), ref, seed=0)
    assert abs(score - RECORDED_C2ST) <= C2ST_TOLERANCE, score


@pytest.mark.parametrize("theta_dim, x_dim, n, fix", [
    (4, 2, 100, "method='npe'"),
    (2, 11, 100, "summary statistics"),
    (2, 2, 1001, "context_size=1000"),
])
def test_out_of_range_problems_get_the_clear_error(theta_dim, x_dim, n, fix):
    with pytest.raises(InContextRangeError, match="pretrained|context") as err:
        check_range(theta_dim, x_dim, n)
    assert fix in str(err.value) and "npe" in str(err.value)


def test_fit_rejects_too_many_parameters_and_subsamples_large_contexts():
    problem = gaussian_linear(dim=4)
    sims = simulate(problem, 50, seed=0, progress=False)
    with pytest.raises(InContextRangeError, match="D=4 parameters"):
        fit(problem, sims, method="incontext", detector=False)
    small = gaussian_linear(dim=2)
    theta = small.prior.sample((1200,))
    x = small.simulator(theta)
    with pytest.raises(InContextRangeError, match="context_size=1000"):
        fit(small, (theta, x), method="incontext", detector=False)
    post = fit(small, (theta, x), method="incontext", detector=False, context_size=300)
    assert post.estimator.theta_context.shape == (300, 2)
    assert post.history["num_simulations"] == 1200


@pytest.mark.parametrize("bounded", [False, True])
def test_1d_log_prob_is_normalized_and_matches_the_samples(bounded):
    problem = linear_1d(bounded)
    sims = simulate(problem, 300, seed=0, progress=False)
    post = fit(problem, sims, method="incontext", detector=False)
    check_1d_normalized(post, torch.tensor([0.4]), bounded)


def check_1d_normalized(post, x_o: torch.Tensor, bounded: bool) -> None:
    """A 1-D posterior of ``linear_1d``: ``exp(log_prob)`` integrates to 1 on a grid, the
    samples stay in the prior's bounds and follow the density (CDF at three quantiles)."""
    lo, hi = (-2.0, 2.0) if bounded else (-9.0, 9.0)
    grid = torch.linspace(lo, hi, 6001)[:, None]
    dens = post.log_prob(grid, x=x_o).exp()
    assert torch.isfinite(dens).all()
    mass = torch.trapezoid(dens, grid[:, 0])
    assert abs(float(mass) - 1.0) < 0.01, float(mass)
    samples = post.sample((20_000,), x=x_o, seed=1)[:, 0]
    if bounded:
        assert samples.min() >= -2.0 and samples.max() <= 2.0
        assert post.log_prob(torch.tensor([[2.5]]), x=x_o).item() == -math.inf
    # the samples follow exp(log_prob): compare the CDF at a few quantiles
    cdf = torch.cumsum(dens, 0) * (grid[1, 0] - grid[0, 0])
    for q in (0.1, 0.5, 0.9):
        t = samples.quantile(q)
        model_cdf = float(cdf[(grid[:, 0] <= t).sum() - 1])
        assert abs(model_cdf - q) < 0.02, (q, model_cdf)


def test_save_load_round_trip_and_finetune(tmp_path):
    problem = gaussian_linear(dim=2)
    sims = simulate(problem, 200, seed=0, progress=False)
    post = fit(problem, sims, method="incontext", detector=False)
    x_o = torch.tensor([0.2, -0.1])
    theta = post.sample((50,), x=x_o, seed=0)
    path = save(post, tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    assert payload["method"] == "incontext"
    again = load(path)
    assert torch.allclose(again.log_prob(theta, x=x_o), post.log_prob(theta, x=x_o), atol=1e-5)
    tuned = fit(problem, sims, method="incontext", detector=False, finetune_steps=2)
    losses = tuned.history["finetune_losses"]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    # fine-tuning changed this posterior's copy only, not the shipped network
    assert not torch.allclose(tuned.log_prob(theta, x=x_o), post.log_prob(theta, x=x_o))
    assert torch.allclose(fit(problem, sims, method="incontext", detector=False)
                          .log_prob(theta, x=x_o), post.log_prob(theta, x=x_o), atol=1e-5)


def test_cli_train_and_sample(tmp_path):
    sims = simulate(get_problem("two_moons"), 200, seed=0, progress=False)
    sims.save(tmp_path / "sims.pt")
    (tmp_path / "x.csv").write_text("0.1,0.2\n")
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    cli = [sys.executable, "-m", "sbi_core.cli.main"]
    out = subprocess.run(cli + ["train", "--sims", "sims.pt", "--method", "incontext",
                                "--out", "m.pt", "--quiet"], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    out = subprocess.run(cli + ["sample", "m.pt", "--x", "x.csv", "--num", "100", "--out",
                                "s.csv"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert len((tmp_path / "s.csv").read_text().strip().splitlines()) == 101


def test_short_pretraining_from_scratch_lowers_the_loss(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from pretrain_incontext import main, validation_loss

    from estimators.incontext import InContextNet

    net_cfg = {"d_model": 32, "ff_features": 64, "num_heads": 2, "ctx_layers": 1,
               "query_layers": 1, "num_inducing": 4, "num_buckets": 40}
    args = ["--out", str(tmp_path), "--steps", "40", "--seed", "3", "--tokens", "800",
            "--queries", "16", "--net", json.dumps(net_cfg), "--device", "cpu",
            "--lr", "3e-3", "--log-every", "10"]
    main(args)
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 40
    trained = InContextNet(ck["config"])
    trained.load_state_dict(ck["model"])
    torch.manual_seed(3)
    fresh = InContextNet(ck["config"])
    before = validation_loss(fresh, 3, 4, 800, 16, "cpu")
    after = validation_loss(trained, 3, 4, 800, 16, "cpu")
    assert after < before - 0.1, (before, after)


def test_pretraining_continues_from_a_weights_file(tmp_path):
    """``--init-from`` starts at the file's recorded step with its weights (the shipped
    weights were continued this way) and re-warms the fresh optimizer's learning rate."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from pretrain_incontext import main

    net_cfg = {"d_model": 32, "ff_features": 64, "num_heads": 2, "ctx_layers": 1,
               "query_layers": 1, "num_inducing": 4, "num_buckets": 40}
    common = ["--seed", "3", "--tokens", "400", "--queries", "8", "--net", json.dumps(net_cfg),
              "--device", "cpu", "--log-every", "1"]
    main(["--out", str(tmp_path / "a"), "--steps", "4", *common])
    main(["--out", str(tmp_path / "a"), "--export", str(tmp_path / "w.pt")])
    meta = json.loads((tmp_path / "w.json").read_text())
    assert meta["steps"] == 4
    main(["--out", str(tmp_path / "b"), "--steps", "8", "--stop-at", "6", "--init-from",
          str(tmp_path / "w.pt"), "--rewarmup", "4", *common])
    ck = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 6 and ck["rewarm_from"] == 4
    assert [r["step"] for r in ck["log"]][-2:] == [5, 6]  # continued, not restarted at 0
    state = torch.load(tmp_path / "w.pt", weights_only=True)["state_dict"]
    assert any(not torch.equal(state[k], v) for k, v in ck["model"].items())  # it trained
    bad = {**net_cfg, "d_model": 16, "num_heads": 2}
    with pytest.raises(SystemExit, match="network config"):
        main(["--out", str(tmp_path / "c"), "--steps", "6", "--init-from",
              str(tmp_path / "w.pt"), *common[:-4], "--net", json.dumps(bad), "--device", "cpu"])
