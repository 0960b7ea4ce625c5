"""`sbi-core sample --new-prior FILE.json`: a new prior at query time from the command line.

linear_gaussian (prior N(0, I), x = theta + 0.5 eps): under a new prior N(m, 0.5^2 I) the
posterior is N((m + x) / 2, I / 8) (precision 1/0.25 + 1/0.25 = 8).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from cli_helpers import cli_simulate_and_train

from sbi_core.cli.main import main
from sbi_core.io import read_samples_csv


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("newprior")
    sims, model = cli_simulate_and_train(d, num=3000, max_epochs=40)
    (d / "x.csv").write_text("x1,x2\n0.1,0.2\n")
    (d / "p.json").write_text(json.dumps({"type": "gaussian", "mean": [1.0, 0.0],
                                          "std": [0.5, 0.5]}))
    return d


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_new_prior_reweights_to_the_analytic_posterior(trained, capsys):
    d = trained
    capsys.readouterr()
    assert main(["sample", str(d / "m.pt"), "--x", str(d / "x.csv"), "--num", "2000", "--out",
                 str(d / "s.csv"), "--new-prior", str(d / "p.json"), "--force"]) == 0
    report = _last_json(capsys)["new_prior"]
    assert report["method"] == "reweight" and report["num_proposals"] == 20_000
    assert 2_000 < report["ess"][0] < 20_000  # a nearby prior: many effective draws
    _, s = read_samples_csv(d / "s.csv")
    mean, sd = torch.tensor([0.55, 0.1]), 1 / math.sqrt(8.0)
    assert torch.allclose(s.mean(0), mean, atol=0.08), s.mean(0)
    assert torch.allclose(s.std(0), torch.full((2,), sd), rtol=0.2), s.std(0)
    # without --new-prior the samples stay at the training prior's posterior (mean 0.8 x)
    assert main(["sample", str(d / "m.pt"), "--x", str(d / "x.csv"), "--num", "2000", "--out",
                 str(d / "s0.csv"), "--force"]) == 0
    _, s0 = read_samples_csv(d / "s0.csv")
    assert abs(float(s0[:, 0].mean()) - 0.08) < 0.08


def test_new_prior_collapsed_ess_and_bad_files_are_clear_errors(trained, capsys):
    d = trained
    base = ["sample", str(d / "m.pt"), "--x", str(d / "x.csv"), "--num", "100", "--out",
            str(d / "e.csv"), "--force"]
    capsys.readouterr()
    assert main(base + ["--new-prior", str(d / "p.json"), "--min-ess", "1e6"]) == 2
    assert "effective sample size" in capsys.readouterr().err
    (d / "user.json").write_text(json.dumps({"type": "user", "class": "evil:Prior"}))
    assert main(base + ["--new-prior", str(d / "user.json")]) == 2
    assert "never imported" in capsys.readouterr().err
    (d / "nested.json").write_text(json.dumps(
        {"type": "independent", "components": [{"type": "user", "class": "evil:Prior"},
                                               {"type": "gaussian", "mean": [0.0], "std": [1.0]}]}))
    assert main(base + ["--new-prior", str(d / "nested.json")]) == 2
    assert "never imported" in capsys.readouterr().err
    (d / "bad.json").write_text("not json")
    assert main(base + ["--new-prior", str(d / "bad.json")]) == 2
    assert "not a JSON prior spec" in capsys.readouterr().err
    (d / "p3.json").write_text(json.dumps({"type": "gaussian", "mean": [0.0] * 3,
                                           "std": [1.0] * 3}))
    assert main(base + ["--new-prior", str(d / "p3.json")]) == 2
    assert "D=2" in capsys.readouterr().err
    assert main(base + ["--min-ess", "10"]) == 2
    assert "--new-prior" in capsys.readouterr().err
    assert not (d / "e.csv").exists()


def test_new_prior_on_a_prior_conditioned_model_is_one_forward_pass(trained, capsys):
    d = trained
    model = d / "pc.pt"
    assert main(["train", "--sims", str(d / "sims.pt"), "--method", "prior_npe", "--out",
                 str(model), "--max-epochs", "3", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["sample", str(model), "--x", str(d / "x.csv"), "--num", "50", "--out",
                 str(d / "pc.csv"), "--new-prior", str(d / "p.json"), "--force"]) == 0
    assert _last_json(capsys)["new_prior"] == {"method": "conditioned"}
    _, s = read_samples_csv(d / "pc.csv")
    assert s.shape == (50, 2) and bool(torch.isfinite(s).all())
