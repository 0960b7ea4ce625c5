"""benchmarks/sequential_vs_sbi.py ``grid_table``: the consolidated issue-17 grid pairs our
method's runs with sbi's TSNPE runs of the same observation, seed and process (wall ratios are
same-run only), averages C2ST over every run, counts runs and seeds, and refuses two rows for
one run. sbi is never imported."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import sequential_vs_sbi  # noqa: E402


def _row(task, budget, obs, seed, method, c2st, seconds, commit="c1"):
    return {"task": task, "budget": budget, "observation": obs, "seed": seed,
            "method": method, "c2st": c2st, "seconds": seconds, "commit": commit}


def test_grid_means_pairs_seeds_and_commits() -> None:
    rows = [
        _row("sir", 1000, 1, 0, "tsnpe", 0.8, 2.0),
        _row("sir", 1000, 1, 0, "sbi_tsnpe", 0.9, 8.0),
        _row("sir", 1000, 2, 1, "tsnpe", 0.6, 4.0, commit="c2"),
        _row("sir", 1000, 2, 1, "sbi_tsnpe", 0.7, 8.0, commit="c2"),
        _row("sir", 1000, 3, 2, "tsnpe", 0.7, 5.0),          # no sbi run: no pair
        _row("sir", 1000, 3, 0, "tsnpe", 0.7, 1.0, commit="c3"),
        _row("sir", 1000, 3, 0, "sbi_tsnpe", 0.8, 9.0, commit="c1"),  # other process: no pair
        _row("sir", 1000, 1, 0, "snle", 0.1, 1.0),            # not the best method: ignored
        {"task": "sir", "budget": 1000, "observation": 2, "seed": 2, "method": "sbi_tsnpe",
         "error": "failed"},                                   # failed run: skipped
        _row("slcp", 2000, 1, 0, "snle", 0.8, 3.0),
        _row("slcp", 2000, 1, 0, "tsnpe", 0.9, 1.0),
    ]
    cells = sequential_vs_sbi.grid_table(rows, {"sir": "tsnpe", "slcp": "snle"})
    assert [(c["task"], c["budget"]) for c in cells] == [("sir", 1000), ("slcp", 2000)]
    sir, slcp = cells
    assert sir["ours"] == pytest.approx(0.7) and sir["theirs"] == pytest.approx(0.8)
    assert (sir["n_ours"], sir["n_theirs"]) == (4, 3)
    assert sir["seeds_ours"] == [0, 1, 2] and sir["seeds_theirs"] == [0, 1]
    assert sir["n_pairs"] == 2
    assert sir["ratio"] == pytest.approx((4.0 + 2.0) / 2) and sir["min_ratio"] == pytest.approx(2.0)
    assert sir["commits_ours"] == ["c1", "c2", "c3"] and sir["commits_theirs"] == ["c1", "c2"]
    assert slcp["method"] == "snle" and slcp["ours"] == pytest.approx(0.8)
    assert slcp["theirs"] is None and slcp["ratio"] is None and slcp["n_pairs"] == 0


def test_grid_refuses_two_rows_for_one_run() -> None:
    rows = [_row("sir", 1000, 1, 0, "tsnpe", 0.8, 2.0, commit="old"),
            _row("sir", 1000, 1, 0, "tsnpe", 0.7, 2.0, commit="new")]
    with pytest.raises(ValueError, match="keep one per run"):
        sequential_vs_sbi.grid_table(rows, {"sir": "tsnpe"})


def test_grid_cli_prints_one_markdown_table(tmp_path, capsys, monkeypatch) -> None:
    import json

    path = tmp_path / "rows.json"
    path.write_text(json.dumps([_row("two_moons", 10000, 1, 0, "tsnpe", 0.5, 10.0),
                                _row("two_moons", 10000, 1, 0, "sbi_tsnpe", 0.6, 40.0)]))
    monkeypatch.setattr(sys, "argv", ["sequential_vs_sbi.py", "--grid", str(path)])
    sequential_vs_sbi.main()
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| task | budget |")
    assert out[2] == "| two_moons | 10,000 | tsnpe | 0.500 (1; 0) | 0.600 (1; 0) | x4.0 (1; x4.0) | c1 / c1 |"
