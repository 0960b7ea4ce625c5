"""L-C2ST (diagnostics/lc2st.py): local calibration at one observation.

Posteriors: the exact Gaussian posterior of the linear Gaussian toy and deliberately wrong
versions of it (tests/_analytic_gaussian.py): mean shifted by 0.5 (posterior sd 0.45), sd
inflated 1.6x, or wrong only where x_1 > 0. Calibration: 600 held-out simulations, 39 null
classifiers (p-value resolution 1/40). Thresholds: wrong posterior p <= 0.05, exact p > 0.1.
"""

from __future__ import annotations

import pytest
import torch
from _analytic_gaussian import gaussian_posterior

from diagnostics import local_c2st
from diagnostics.lc2st import LC2ST, nf_available
from sbi_core import simulate
from simulators.linear_gaussian import linear_gaussian

X_O = torch.tensor([0.5, -0.3])
OPTS = {"num_null": 39, "num_eval": 1000, "epochs": 25}


@pytest.fixture(scope="module")
def sims():
    return simulate(linear_gaussian(2), 600, seed=11, progress=False)


@pytest.mark.parametrize("variant", ["nf", "general"])
def test_flags_miscalibrated_passes_calibrated(sims, variant):
    if variant == "general":
        exact = local_c2st(gaussian_posterior(), sims, X_O, variant=variant, **OPTS)
        null = None
    else:  # the NF null is estimator-independent: train it once, reuse it for the others
        null = LC2ST(gaussian_posterior(), sims.theta, sims.x, variant=variant, **OPTS).fit()
        exact = null.test(X_O)

    def run(post):
        return LC2ST(post, sims.theta, sims.x, variant=variant, **OPTS).fit(null_from=null).test(X_O)

    shifted, wide = run(gaussian_posterior(shift=0.5)), run(gaussian_posterior(scale=1.6))
    assert exact.variant == variant
    assert exact.p_value > 0.1, exact.p_value
    assert shifted.p_value <= 0.05, shifted.p_value
    assert wide.p_value <= 0.05, wide.p_value
    assert shifted.statistic > 5 * exact.statistic


def test_local_trained_once():
    """Wrong only where x_1 > 0: one set of classifiers (trained once, 1,500 pairs) gives a
    small p-value at x_o there and a statistic at least 2.5x smaller on the other side.
    (The p-value on the good side is not asserted: the null is the *global* one, and a
    classifier smooths across x, so a posterior wrong elsewhere can be flagged near it;
    docs/local_calibration.md.)"""
    sims = simulate(linear_gaussian(2), 1500, seed=12, progress=False)
    lc = LC2ST(gaussian_posterior(scale=1.8, local=True), sims.theta, sims.x, variant="nf",
               **OPTS).fit()
    params = [p.clone() for p in lc._params]
    bad = lc.test(torch.tensor([1.5, 0.0]))
    good = lc.test(torch.tensor([-1.5, 0.0]))
    assert all(torch.equal(a, b) for a, b in zip(params, lc._params))  # no retraining
    assert bad.p_value <= 0.05, bad.p_value
    assert bad.statistic > 2.5 * good.statistic, (bad.statistic, good.statistic)


def test_pp_plot_data_and_null_reuse(sims):
    exact = LC2ST(gaussian_posterior(), sims.theta, sims.x, **OPTS).fit()
    assert exact.variant == "nf"  # auto: flow-like estimator, unbounded prior
    res = exact.test(X_O)
    assert len(res.alpha) == len(res.pp) == len(res.null_low) == len(res.null_high) == 101
    pp = torch.tensor(res.pp)
    assert bool((pp[1:] >= pp[:-1]).all()) and res.pp[0] == 0.0 and res.pp[-1] == 1.0
    assert all(lo <= hi for lo, hi in zip(res.null_low, res.null_high))
    assert res.probs.shape == (OPTS["num_eval"],)
    assert len(res.null_statistics) == OPTS["num_null"]
    d = res.to_dict()
    assert set(d) >= {"statistic", "p_value", "pp", "alpha", "null_low", "null_high"}
    # NF null does not depend on the estimator: reused, only the observed classifier trains
    other = LC2ST(gaussian_posterior(shift=0.5), sims.theta, sims.x, **OPTS).fit(null_from=exact)
    res2 = other.test(X_O)
    assert res2.null_statistics == res.null_statistics
    assert res2.p_value <= 0.05
    gen = LC2ST(gaussian_posterior(), sims.theta, sims.x, variant="general", **OPTS)
    with pytest.raises(ValueError, match="null_from"):
        gen.fit(null_from=exact)


def test_errors(sims):
    post = gaussian_posterior()
    with pytest.raises(ValueError, match="at least 50"):
        LC2ST(post, sims.theta[:10], sims.x[:10])
    with pytest.raises(ValueError, match="same N"):
        LC2ST(post, sims.theta[:100], sims.x[:90])
    with pytest.raises(ValueError, match="Unknown variant"):
        LC2ST(post, sims.theta, sims.x, variant="flow")
    lc = LC2ST(post, sims.theta, sims.x, num_null=2, epochs=1).fit()
    with pytest.raises(ValueError, match="shape"):
        lc.test(torch.zeros(3))


@pytest.mark.parametrize("flow", ["fmaf", "maf", "mdn"])
def test_npe_to_base_inverts_sampling(flow):
    """to_base maps the estimator's own samples back to the base draws (fused MAF, nflows
    MAF); an MDN has no such map and L-C2ST falls back to the general variant."""
    from estimators.npe import build_npe
    from sbi_core.posterior import DirectPosterior
    from sbi_core.priors import gaussian

    torch.manual_seed(0)
    theta, x = torch.randn(200, 2), torch.randn(200, 3)
    prior = gaussian(torch.zeros(2), std=torch.ones(2))
    est = build_npe(theta, x, prior, flow=flow, hidden_features=16, num_transforms=2)
    post = DirectPosterior(est, prior, {"x_shape": [3], "param_names": ["a", "b"]})
    if flow == "mdn":
        assert not nf_available(post)
        return
    assert nf_available(post)
    xs = torch.randn(5, 3)
    with torch.no_grad():
        z = torch.randn(5, 2)
        ctx = est.context(xs)
        if flow == "fmaf":
            zt = est.density.inverse_transform(z, ctx)
        else:
            zt = est.density._transform.inverse(z, context=ctx)[0]
        th = est.from_z(zt)
        back = est.to_base(th, xs)
    assert torch.allclose(back, z, atol=1e-4)


def test_report_card_runs_lc2st_when_x_given(tmp_path):
    from diagnostics.report import diagnose

    problem = linear_gaussian(2)
    opts = {"lc2st_num_null": 39, "lc2st_epochs": 20, "lc2st_num_eval": 500}
    bad = diagnose(gaussian_posterior(shift=0.6), problem=problem, num=400, num_samples=50,
                   checks=None, x=torch.stack([X_O, -X_O]), progress=False, **opts)
    sec = bad.sections["lc2st"]
    assert sec["status"] == "fail", sec["why"]
    assert len(sec["metrics"]["p_values"]) == 2 and sec["metrics"]["variant"] == "nf"
    assert len(sec["data"]["pp"]) == 2 and len(sec["data"]["alpha"]) == 101
    paths = bad.plots(tmp_path)
    assert (tmp_path / "lc2st.png") in paths and (tmp_path / "lc2st.png").stat().st_size > 0
    good = diagnose(gaussian_posterior(), problem=problem, num=400, num_samples=50,
                    checks=["lc2st"], x=X_O, progress=False, **opts)
    assert good.sections["lc2st"]["status"] == "pass", good.sections["lc2st"]["why"]
    no_x = diagnose(gaussian_posterior(), problem=problem, num=100, num_samples=20,
                    checks=["lc2st"], progress=False)
    assert no_x.sections["lc2st"]["status"] == "skip"
    # too few test pairs (e.g. after invalid simulations were dropped): a skip that names the
    # fix, not a crashed check that fails the whole card
    few = diagnose(gaussian_posterior(), problem=problem, num=40, num_samples=20,
                   checks=["lc2st"], x=X_O, progress=False)
    assert few.sections["lc2st"]["status"] == "skip", few.sections["lc2st"]["why"]
    assert "this run has 40" in few.sections["lc2st"]["why"]
    assert "--num" in few.sections["lc2st"]["why"]


def test_cli_diagnose_with_x(tmp_path, capsys):
    import json

    from sbi_core import fit, save
    from sbi_core.cli.main import main

    problem = linear_gaussian(2)
    sims = simulate(problem, 600, seed=0, progress=False)
    post = fit(problem, sims, seed=0, max_epochs=5, progress=False, hidden_features=16,
               num_transforms=2)
    model = tmp_path / "m.pt"
    save(post, model)
    obs = tmp_path / "obs.csv"
    obs.write_text("0.5,-0.3\n")
    out = tmp_path / "diag"
    rc = main(["diagnose", str(model), "--problem", "linear_gaussian", "--num", "200",
               "--samples", "50", "--checks", "lc2st", "--x", str(obs), "--out", str(out),
               "--quiet"])
    assert rc == 0
    card = json.loads((out / "report.json").read_text())
    sec = card["sections"]["lc2st"]
    assert sec["status"] in ("pass", "warn", "fail") and len(sec["metrics"]["p_values"]) == 1
    assert (out / "lc2st.png").exists()
    capsys.readouterr()
    bad = tmp_path / "bad.csv"
    bad.write_text("0.5,-0.3,1.0\n")
    assert main(["diagnose", str(model), "--problem", "linear_gaussian", "--checks", "lc2st",
                 "--x", str(bad), "--out", str(tmp_path / "d2"), "--quiet"]) != 0
