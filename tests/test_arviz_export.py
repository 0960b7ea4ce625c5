"""ArviZ export: Posterior.to_inference_data, write_netcdf and `sbi-core sample --out .nc`."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from sbi_core import Problem, fit, simulate
from sbi_core.export_arviz import import_arviz, to_inference_data, write_netcdf
from sbi_core.priors import box_uniform

az = import_arviz()  # in the test extra


def _shift(theta):
    return theta + 0.1 * torch.randn_like(theta)


@pytest.fixture(scope="module")
def named():
    """2 named parameters ("mass", "rate"), x = theta + noise; tiny NPE and NLE."""
    problem = Problem(box_uniform([-1.0, -1.0], [1.0, 1.0]), _shift, param_names=["mass", "rate"],
                      name="shift")
    sims = simulate(problem, 400, seed=0, progress=False)
    npe = fit(problem, sims, method="npe", seed=0, progress=False, max_epochs=5,
              hidden_features=16, num_transforms=1)
    nle = fit(problem, sims, method="nle", seed=0, progress=False, max_epochs=5)
    return problem, npe, nle


def test_npe_groups_named_dims_and_values(named):
    problem, npe, _ = named
    x_o = torch.tensor([0.2, -0.3])
    idata = npe.to_inference_data(x_o, num=150, problem=problem, seed=3)
    assert set(idata.groups()) == {"posterior", "prior", "observed_data", "posterior_predictive"}
    post = idata.posterior
    assert list(post.data_vars) == ["mass", "rate"]
    assert dict(post.sizes) == {"chain": 1, "draw": 150}
    expected = npe.sample((150,), x=x_o, seed=3).numpy()
    np.testing.assert_array_equal(post["mass"].values[0], expected[:, 0])
    np.testing.assert_array_equal(post["rate"].values[0], expected[:, 1])
    assert post.attrs["sbi_core_method"] == "npe"
    np.testing.assert_allclose(idata.observed_data["x"].values, [0.2, -0.3])
    assert idata.observed_data["x"].dims == ("x_dim_0",)
    prior = idata.prior
    assert dict(prior.sizes) == {"chain": 1, "draw": 150}
    assert np.all(np.abs(prior["mass"].values) <= 1.0) and prior["mass"].std() > 0.4
    pp = idata.posterior_predictive["x"]
    assert pp.dims == ("chain", "draw", "x_dim_0") and pp.shape == (1, 150, 2)
    # simulations at the draws: x = theta + N(0, 0.1^2) noise
    resid = pp.values[0] - expected
    assert abs(resid.mean()) < 0.05 and 0.05 < resid.std() < 0.2
    assert idata.posterior_predictive.attrs["num_invalid"] == 0


def test_predictive_only_with_a_problem_and_default_x(named):
    _, npe, _ = named
    npe.set_default_x(torch.tensor([0.0, 0.1]))
    try:
        idata = npe.to_inference_data(num=20)
    finally:
        npe.set_default_x(None)
    assert "posterior_predictive" not in idata.groups()
    np.testing.assert_allclose(idata.observed_data["x"].values, [0.0, 0.1])
    with pytest.raises(ValueError, match="num must be an integer >= 1"):
        npe.to_inference_data(torch.zeros(2), num=0)


def test_mcmc_keeps_chains_and_round_trips_netcdf(named, tmp_path):
    problem, _, nle = named
    x_o = torch.tensor([0.1, 0.4])
    idata = to_inference_data(nle, x_o, num=200, seed=0, num_chains=4, warmup_steps=30)
    run = nle.last_mcmc
    assert dict(idata.posterior.sizes) == {"chain": 4, "draw": 50}
    np.testing.assert_array_equal(idata.posterior["rate"].values, run.chains[:, :, 0, 1].numpy())
    summary = az.summary(idata, kind="diagnostics")
    assert list(summary.index) == ["mass", "rate"]
    assert np.all(np.isfinite(summary["r_hat"])) and np.all(summary["r_hat"] < 1.2)
    path = write_netcdf(idata, tmp_path / "samples.nc")
    assert not list(tmp_path.glob(".samples.nc.*"))  # atomic: no temporary left behind
    back = az.from_netcdf(path)
    assert set(back.groups()) == {"posterior", "prior", "observed_data"}
    assert back.posterior["mass"].dims == ("chain", "draw")
    np.testing.assert_array_equal(back.posterior["mass"].values, idata.posterior["mass"].values)
    np.testing.assert_array_equal(back.observed_data["x"].values, idata.observed_data["x"].values)
    assert back.posterior.attrs["num_chains"] == 4
    assert az.summary(back, kind="diagnostics")["r_hat"].tolist() == summary["r_hat"].tolist()


def test_iid_observation_gets_a_trial_dim(named):
    _, _, nle = named
    xs = torch.tensor([[0.1, 0.4], [0.2, 0.3], [0.0, 0.5]])
    idata = nle.to_inference_data(xs, num=40, num_chains=4, warmup_steps=10)
    assert idata.observed_data["x"].dims == ("trial", "x_dim_0")
    assert idata.observed_data["x"].shape == (3, 2)


def test_missing_arviz_names_the_extra(named, monkeypatch):
    _, npe, _ = named
    monkeypatch.setitem(sys.modules, "arviz", None)
    with pytest.raises(ImportError, match=r"pip install 'sbi-core\[arviz\]'"):
        npe.to_inference_data(torch.zeros(2), num=5)


def test_cli_sample_writes_netcdf(tmp_path, capsys):
    from sbi_core import save
    from sbi_core.cli.main import main

    sims = simulate(__import__("simulators").get_problem("two_moons"), 300, seed=0,
                    progress=False)
    posterior = fit(__import__("simulators").get_problem("two_moons"), sims, method="npe",
                    seed=0, progress=False, max_epochs=3, hidden_features=16, num_transforms=1)
    save(posterior, tmp_path / "m.pt")
    np.savetxt(tmp_path / "x.csv", np.array([[0.1, -0.2]]), delimiter=",")
    out = tmp_path / "s.nc"
    rc = main(["sample", str(tmp_path / "m.pt"), "--x", str(tmp_path / "x.csv"), "--num", "64",
               "--out", str(out), "--problem", "two_moons"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["posterior_predictive"] is True and report["draws"] == 64
    back = az.from_netcdf(out)
    assert list(back.posterior.data_vars) == posterior.param_names
    assert back.posterior_predictive["x"].shape == (1, 64, 2)
    np.testing.assert_allclose(back.observed_data["x"].values, [0.1, -0.2], rtol=1e-6)
    np.savetxt(tmp_path / "x2.csv", np.array([[0.1, -0.2], [0.0, 0.0]]), delimiter=",")
    rc = main(["sample", str(tmp_path / "m.pt"), "--x", str(tmp_path / "x2.csv"), "--num", "8",
               "--out", str(tmp_path / "s2.nc")])
    err = capsys.readouterr().err
    assert rc == 2 and "holds one observation" in err and "--iid" in err
    assert not (tmp_path / "s2.nc").exists()


def test_cli_missing_arviz_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    from sbi_core.cli.main import main

    monkeypatch.setitem(sys.modules, "arviz", None)
    (tmp_path / "x.csv").write_text("0.1,0.2\n")
    rc = main(["sample", str(tmp_path / "m.pt"), "--x", str(tmp_path / "x.csv"),
               "--out", str(tmp_path / "s.nc")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "sbi-core sample: error:" in err and "pip install 'sbi-core[arviz]'" in err
