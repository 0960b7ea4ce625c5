"""``sbi-core robustness``, ``sbi-core train --regularizer`` and the report-card section."""

import json

import pytest
import torch

from sbi_core import fit, save, simulate
from sbi_core.cli.main import main
from simulators import get_problem

pytestmark = pytest.mark.filterwarnings("ignore:Reached max_epochs")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    problem = get_problem("linear_gaussian")  # 2-D; built without options so it records its source
    sims = simulate(problem, 500, seed=0, progress=False)
    post = fit(problem, sims, hidden_features=16, num_transforms=1, max_epochs=5,
               progress=False)
    path = tmp_path_factory.mktemp("rob") / "model.pt"
    save(post, path)
    sims.save(path.with_name("train_sims.pt"))
    sims_path = path.with_name("test_sims.pt")
    simulate(problem, 40, seed=1, progress=False).save(sims_path)
    return path, sims_path


def test_cli_reports_each_budget(model_file, tmp_path, capsys):
    model, _ = model_file
    out = tmp_path / "rob.json"
    rc = main(["robustness", str(model), "--eps", "0.5", "2", "--num", "20", "--steps", "5",
               "--num-samples", "32", "--out", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert [r["eps"] for r in report["results"]] == [0.5, 2.0]
    assert report["status"] in {"pass", "warn", "fail"} and report["reason"]
    assert "predictive" in report["results"][0] and "coverage" in report["results"][0]
    big, small = report["results"][1]["attack"]["mean"], report["results"][0]["attack"]["mean"]
    assert big > small
    assert "status:" in capsys.readouterr().out


def test_cli_uses_given_simulations_and_norm(model_file, tmp_path, capsys):
    model, sims = model_file
    out = tmp_path / "rob.json"
    rc = main(["robustness", str(model), "--sims", str(sims), "--num", "10", "--eps", "1",
               "--norm", "linf", "--attack-loss", "fkl", "--metric", "fkl", "--steps", "3",
               "--num-samples", "16", "--no-predictive", "--out", str(out), "--quiet"])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["num_observations"] == 10 and report["norm"] == "linf"
    assert "predictive" not in report["results"][0]
    printed = capsys.readouterr().out.strip().splitlines()  # --quiet: the status line only
    assert len(printed) == 1 and printed[0].startswith("status: "), printed


def test_cli_trains_with_the_fim_regularizer(model_file, tmp_path, capsys):
    from sbi_core import load

    train_sims = model_file[0].with_name("train_sims.pt")
    out = tmp_path / "fim.pt"
    rc = main(["train", "--sims", str(train_sims), "--out", str(out), "--regularizer", "fim",
               "--beta", "0.1", "--fim-samples", "2", "--max-epochs", "2", "--quiet"])
    assert rc == 0
    cfg = load(out).estimator.config
    assert cfg["regularizer"] == "fim" and cfg["beta"] == 0.1 and cfg["fim_samples"] == 2
    rc = main(["train", "--sims", str(train_sims), "--out", str(out), "--beta", "0.1",
               "--max-epochs", "1", "--quiet"])
    assert rc == 2 and "only apply with regularizer='fim'" in capsys.readouterr().err


def test_cli_errors_are_clear(model_file, capsys):
    model, _ = model_file
    assert main(["robustness", str(model), "--problem", "no_such_problem", "--num", "5"]) == 2
    assert "Unknown problem" in capsys.readouterr().err
    assert main(["robustness", str(model), "--eps", "-1", "--num", "5"]) == 2
    assert "eps" in capsys.readouterr().err


def test_report_card_has_an_opt_in_robustness_section(model_file):
    from diagnostics.report import diagnose
    from sbi_core import load

    posterior = load(model_file[0])
    card = diagnose(posterior, num=20, num_samples=100, checks=["coverage", "robustness"],
                    progress=False, robustness_eps=[0.5], robustness_steps=5,
                    robustness_num_observations=10)
    sec = card.sections["robustness"]
    assert sec["status"] in {"pass", "warn", "fail"} and "eps=0.5" in sec["why"]
    assert sec["metrics"]["kl_mean_eps_0.5"] >= 0 and sec["data"]["num_observations"] == 10
    default = diagnose(posterior, num=20, num_samples=100, progress=False)
    assert "robustness" not in default.sections  # opt-in: attacks are expensive
