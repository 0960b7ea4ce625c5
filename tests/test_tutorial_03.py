"""The likelihood/ratio tutorial runs end to end in its fast mode."""

import runpy
from pathlib import Path

TUTORIAL = Path(__file__).resolve().parents[1] / "tutorials" / "03_likelihood_and_ratio.py"


def test_tutorial_runs_in_fast_mode(tmp_path, monkeypatch):
    monkeypatch.setenv("SBI_CORE_FAST", "1")
    monkeypatch.chdir(tmp_path)
    scope = runpy.run_path(str(TUTORIAL), run_name="__main__")
    assert (tmp_path / "tutorial_03_nle_10_trials.png").is_file()
    assert (tmp_path / "nre_linear_gaussian.pt").is_file()
    assert set(scope["results"]) == {("nle", 1), ("nle", 10), ("nre", 1), ("nre", 10)}
    assert all(score < 0.8 for _, score in scope["results"].values())
