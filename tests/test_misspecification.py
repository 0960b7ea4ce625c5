"""Misspecification detector: calibration under the null, power, hooks in sample / CLI /
report card / server, save and load (diagnostics/misspecification.py, docs/trust.md)."""

from __future__ import annotations

import functools
import json
import warnings

import numpy as np
import pytest
import torch
from scipy import stats

from diagnostics.misspecification import (
    MisspecificationError,
    MisspecificationWarning,
    fit_detector,
)
from sbi_core import fit, load, save, simulate
from simulators import get_problem

#: gaussian_linear: x = theta + N(0, 0.1 I), theta ~ N(0, 0.1 I); noise sd 0.316.
NOISE_SD = 0.1 ** 0.5


def _x_o() -> torch.Tensor:
    """A well-specified gaussian_linear observation: x = theta + N(0, 0.1 I) at theta = 0
    (a 3 noise-sd shift of it stays inside the training range, so only the detector, not the
    coarse range check, can catch it)."""
    return NOISE_SD * torch.randn(10, generator=torch.Generator().manual_seed(1))


@functools.cache
def _sims(problem: str, n: int, seed: int) -> torch.Tensor:
    return simulate(get_problem(problem), n, seed=seed, progress=False).training_data()[1]


@functools.cache
def _posterior():
    """A small NPE on gaussian_linear (2,000 simulations; the detector comes from fit)."""
    prob = get_problem("gaussian_linear")
    sims = simulate(prob, 2000, seed=0, progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fit(prob, sims, seed=0, max_epochs=3, hidden_features=16, num_transforms=2,
                       progress=False)
    finally:
        torch.set_num_threads(threads)


# Under the null each test rejects with probability alpha = 0.05. With 1,000 fresh
# observations and a null of 600 held-out simulations the realized rate has sd ~0.011
# (binomial 0.0069 and the null's 5% quantile 0.0089), so [0.025, 0.075] is a ~2.3 sd band.
FAR_BAND = (0.025, 0.075)


@pytest.mark.parametrize("problem,density", [("gaussian_linear", "gaussian"),
                                             ("two_moons", "flow")])
def test_false_alarm_rate_and_uniform_pvalues(problem, density):
    torch.set_num_threads(1)
    det = fit_detector(None, _sims(problem, 3000, 0), seed=0, density=density,
                       max_epochs=20)
    assert det.config["density"] == density
    res = det.test(_sims(problem, 1000, 11))  # fresh, well-specified observations
    for name, p in (("density", res.density_p), ("mmd", res.mmd_p)):
        far = float((p < 0.05).float().mean())
        assert FAR_BAND[0] <= far <= FAR_BAND[1], (name, far)
        # p-values uniform: given its null of n_null = 600 held-out values, comparing p to
        # U(0, 1) is a two-sample KS test (1,000 fresh vs 600 null); 1% critical value
        # 1.63 * sqrt(1/1000 + 1/600) = 0.084
        assert det.config["num_holdout"] == 600
        assert stats.kstest(p.numpy(), "uniform").statistic < 0.084, name
    assert float(res.flagged().float().mean()) <= 0.05 + 0.02  # combined: Bonferroni


def test_shift_scale_contamination_are_detected():
    det = fit_detector(None, _sims("gaussian_linear", 3000, 0), seed=0, density="gaussian")
    fresh = _sims("gaussian_linear", 1000, 11)[:200]
    shifted = det.test(fresh + 3 * NOISE_SD)             # 3 noise sd in every coordinate
    scaled = det.test(fresh * 3.0)                       # three times wider
    assert float(shifted.flagged().float().mean()) >= 0.95
    assert float(scaled.flagged().float().mean()) >= 0.6
    # a set of 20 observations of which 25% are gross outliers ...
    gen = torch.Generator().manual_seed(3)
    contaminated = fresh[:20].clone()
    contaminated[:5] += 3 * NOISE_SD * torch.randn(5, 10, generator=gen).sign()
    # ... each outlier gets the smallest p-value the null allows (1 / 601: too coarse for a
    # Bonferroni correction over 20 rows, see docs/trust.md), each clean row does not, and
    # the set density p-value (Simes, reported but not in the set verdict) is small
    rows = det.test(contaminated)
    assert torch.allclose(rows.density_p[:5], torch.full((5,), 1 / 601))
    assert bool(rows.flagged()[:5].all()) and int(rows.flagged()[5:].sum()) <= 1
    assert det.test_set(contaminated).density_p[0] < 0.01
    # a set of 20 shifted by 0.5 noise sd (each too close to tell alone): the MMD rejects
    assert float(det.test(fresh[40:60] + 0.5 * NOISE_SD).flagged().float().mean()) < 0.3
    assert det.test_set(fresh[40:60] + 0.5 * NOISE_SD).mmd_p[0] < 0.05
    assert not bool(det.test_set(fresh[20:40]).flagged()[0])


def test_set_test_false_alarm_rate():
    det = fit_detector(None, _sims("gaussian_linear", 3000, 0), seed=0, density="gaussian")
    fresh = _sims("gaussian_linear", 10_000, 12)
    p = torch.stack([det.test_set(fresh[10 * i:10 * i + 10]).mmd_p[0] for i in range(1000)])
    far = float((p < 0.05).float().mean())
    # binomial(1000, 0.05) sd 0.007 plus the noise of a null of 1,000 sets (~0.007): ~2.5 sd
    assert 0.025 <= far <= 0.08, far


def test_sample_warns_on_shifted_observation_and_strict_raises():
    post = _posterior()
    assert post.detector is not None and post.detector.config["features"] == "context"
    x_o = _x_o()
    with warnings.catch_warnings():
        warnings.simplefilter("error", MisspecificationWarning)
        post.sample((10,), x=x_o, seed=0)  # well-specified: no warning
    bad = x_o + 3 * NOISE_SD
    with pytest.warns(MisspecificationWarning, match=r"density test p = .*MMD test p = "):
        post.sample((10,), x=bad, seed=0)
    with pytest.raises(MisspecificationError, match="does not look like the training"):
        post.sample((10,), x=bad, seed=0, strict=True)
    with pytest.raises(MisspecificationError):
        post.sample_batched((10,), torch.stack([x_o, bad]), seed=0, strict=True)
    post.misspecification = "off"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", MisspecificationWarning)
            post.sample((10,), x=bad, seed=0)
    finally:
        post.misspecification = "warn"
    r = post.misspecification_test(bad).to_dict(0)
    assert r["verdict"] == "misspecified" and r["density_p"] < 0.025


def test_fit_skips_detector_when_asked_and_for_few_simulations():
    prob = get_problem("gaussian_linear")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = fit(prob, simulate(prob, 600, seed=0, progress=False), seed=0, max_epochs=1,
                   hidden_features=8, num_transforms=1, detector=False, progress=False)
        small = fit(prob, simulate(prob, 300, seed=0, progress=False), seed=0, max_epochs=1,
                    hidden_features=8, num_transforms=1, progress=False)
    assert post.detector is None and small.detector is None
    with pytest.raises(ValueError, match="fit_detector"):
        post.misspecification_test(prob.observation(1))


def test_detector_survives_save_and_load(tmp_path):
    post = _posterior()
    path = save(post, tmp_path / "m.pt")
    raw = torch.load(path, weights_only=True)  # plain values and tensors only
    assert raw["detector"]["config"]["features"] == "context"
    loaded = load(path)
    xs = torch.cat([_sims("gaussian_linear", 50, 5), _sims("gaussian_linear", 50, 5) + 1.0])
    a, b = post.detector.test(xs), loaded.detector.test(xs)
    assert torch.equal(a.density_p, b.density_p) and torch.equal(a.mmd_p, b.mmd_p)
    # a damaged detector entry: the posterior loads, without detector, with a warning
    raw["detector"]["tensors"].pop("null_logq")
    torch.save(raw, tmp_path / "bad.pt")
    with pytest.warns(UserWarning, match="misspecification detector could not be rebuilt"):
        damaged = load(tmp_path / "bad.pt")
    assert damaged.detector is None


def test_server_sample_response_has_misspecification():
    from fastapi.testclient import TestClient

    from sbi_core.server import create_app

    post = _posterior()
    client = TestClient(create_app({"g": post}))
    x_o = _x_o()
    ok = client.post("/api/models/g/sample", json={"x": x_o.tolist(), "n": 5, "seed": 0}).json()
    bad = client.post("/api/models/g/sample",
                      json={"x": (x_o + 3 * NOISE_SD).tolist(), "n": 5, "seed": 0}).json()
    assert ok["misspecification"]["verdict"] == "ok"
    assert bad["misspecification"]["verdict"] == "misspecified"
    assert bad["misspecification"]["density_p"] < 0.025
    both = client.post("/api/models/g/summary", json={
        "xs": [x_o.tolist(), (x_o + 3 * NOISE_SD).tolist()], "n": 20, "seed": 0}).json()
    assert both["misspecification"]["verdict"] == ["ok", "misspecified"]


def test_cli_sample_strict_and_diagnose_x(tmp_path, capsys):
    from sbi_core.cli.main import main

    post = _posterior()
    model = save(post, tmp_path / "m.pt")
    x_o = _x_o()
    np.savetxt(tmp_path / "good.csv", x_o[None].numpy(), delimiter=",")
    np.savetxt(tmp_path / "bad.csv", (x_o + 3 * NOISE_SD)[None].numpy(), delimiter=",")
    assert main(["sample", str(model), "--x", str(tmp_path / "good.csv"), "--num", "5",
                 "--out", str(tmp_path / "s.csv"), "--strict"]) == 0
    assert main(["sample", str(model), "--x", str(tmp_path / "bad.csv"), "--num", "5",
                 "--out", str(tmp_path / "s2.csv"), "--strict"]) == 2  # a user error
    err = capsys.readouterr().err
    assert "density test p" in err and "internal error" not in err
    assert not (tmp_path / "s2.csv").exists()
    out = tmp_path / "diag"
    assert main(["diagnose", str(model), "--x", str(tmp_path / "bad.csv"), "--out", str(out),
                 "--strict", "--quiet"]) == 1
    card = json.loads((out / "report.json").read_text())
    sec = card["sections"]["misspecification"]
    assert sec["status"] == "fail" and sec["metrics"]["density_p"][0] < 0.025
    out2 = tmp_path / "diag2"
    assert main(["diagnose", str(model), "--x", str(tmp_path / "good.csv"), "--out", str(out2),
                 "--quiet"]) == 0
    card = json.loads((out2 / "report.json").read_text())
    assert card["sections"]["misspecification"]["status"] == "pass"
    assert list(card["sections"]) == ["misspecification"]


def test_per_observation_cost_is_small():
    import time

    post = _posterior()
    xs = _sims("gaussian_linear", 1000, 5)
    post.detector.test(xs[:10])
    t0 = time.perf_counter()
    post.detector.test(xs)
    per = (time.perf_counter() - t0) / 1000
    assert per < 0.01, per  # target < 10 ms per observation (batched); measured ~0.05 ms


def test_iid_sets_are_tested_as_sets():
    """The hook of posteriors that take iid sets ``(B, n, *x_shape)`` tests sets of
    observations of the SAME parameters: 20 clean simulations at one θ pass (the set-MMD
    against held-out sets of 20 different θ flagged them: a false alarm on the model's own
    output), sets with a grossly atypical observation are flagged, and sets of clean sets
    stay within the false-alarm level."""
    post = _posterior()
    prob = get_problem("gaussian_linear")
    gen = torch.Generator().manual_seed(5)
    torch.manual_seed(5)
    theta = prob.prior.sample((60,))
    sets = prob.simulator(theta.repeat_interleave(20, 0)).reshape(60, 20, 10)
    post._check_misspecification(sets[:1], strict=True)  # a clean set of 20 at one θ passes
    flags = [bool(post.detector.test_iid_set(s).flagged()[0]) for s in sets]
    assert sum(flags) <= 6, sum(flags)  # level 0.05: at most 3 expected; measured 0 (test_set: 60)
    # one gross outlier in a set of 4: its p-value is the null's smallest, 1/201 (200
    # held-out rows), and Simes over m rows needs m/201 < alpha/2, i.e. m <= 5 here
    bad = sets[0, :4].clone()
    bad[3] += 3 * NOISE_SD * torch.randn(10, generator=gen).sign()
    with pytest.raises(MisspecificationError, match="set of observations"):
        post._check_misspecification(bad[None], strict=True)
    post._check_misspecification(sets[0, :4][None], strict=True)


def test_detector_flow_is_row_capped_and_deterministic():
    """The density flow trains on a seeded subset of at most ``max_fit_rows`` rows and stops
    by epochs, not wall time, so the same seed gives the same detector (the default wall cap
    is only a safety net); the null still comes from every held-out row."""
    torch.set_num_threads(1)
    x = _sims("two_moons", 6000, 0)
    a = fit_detector(None, x, seed=0, density="flow", max_epochs=4, max_fit_rows=2000)
    b = fit_detector(None, x, seed=0, density="flow", max_epochs=4, max_fit_rows=2000)
    assert a.config["num_flow_fit"] == 2000
    assert a.config["num_fit"] == 6000 - 1200 and a.config["num_holdout"] == 1200
    assert torch.equal(a.tensors["null_logq"], b.tensors["null_logq"])
    c = fit_detector(None, x, seed=1, density="flow", max_epochs=4, max_fit_rows=2000)
    assert not torch.equal(a.tensors["null_logq"], c.tensors["null_logq"])
