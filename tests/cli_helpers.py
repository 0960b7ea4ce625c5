"""Shared set-up for CLI tests: a linear_gaussian simulation file and NPE model made through
the ``sbi-core`` commands themselves."""

from __future__ import annotations

from pathlib import Path

from sbi_core.cli.main import main


def cli_simulate_and_train(folder: Path, num: int, max_epochs: int) -> tuple[Path, Path]:
    """``sbi-core simulate linear_gaussian`` then ``sbi-core train`` into ``folder``; returns
    the paths of the simulation file and the model file."""
    sims, model = folder / "sims.pt", folder / "m.pt"
    assert main(["simulate", "linear_gaussian", "--num", str(num), "--seed", "0", "--out",
                 str(sims), "--in-process", "--quiet"]) == 0
    assert main(["train", "--sims", str(sims), "--out", str(model), "--max-epochs",
                 str(max_epochs), "--quiet"]) == 0
    return sims, model
