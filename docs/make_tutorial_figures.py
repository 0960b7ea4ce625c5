"""Run the tutorials that draw figures and copy their PNGs, shrunk, into docs/img/tutorials/.

The documentation site shows these figures under each tutorial's code (the hook
``docs/gen_tutorials.py`` embeds ``docs/img/tutorials/TUTORIAL/NAME.png`` after the code
cell that names ``NAME.png``, and the tutorial's other figures at its end). Building the site never runs a tutorial; rerun this script after
changing a tutorial and commit the PNGs (each is kept under ``MAX_BYTES``)::

    python docs/make_tutorial_figures.py            # full budgets (minutes)
    python docs/make_tutorial_figures.py --fast     # SBI_CORE_FAST=1 budgets (seconds)
    python docs/make_tutorial_figures.py 02b_hodgkin_huxley.py   # only these tutorials
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"
DEST = ROOT / "docs" / "img" / "tutorials"
#: Largest PNG committed to the docs (bytes).
MAX_BYTES = 200_000
#: Widest image in the docs (pixels).
MAX_WIDTH = 1100


def figure_tutorials() -> list[Path]:
    """Tutorials that draw figures: their source names a ``.png`` file or writes report plots."""
    return sorted(p for p in TUTORIALS.glob("*.py")
                  if ".png" in (text := p.read_text()) or ".plots(" in text)


def shrink(src: Path, dest: Path) -> int:
    """Copy ``src`` to ``dest`` as a palette PNG no wider than ``MAX_WIDTH``; returns bytes."""
    from PIL import Image

    img = Image.open(src).convert("RGB")
    width = MAX_WIDTH
    while True:
        out = img
        if out.width > width:
            out = out.resize((width, round(out.height * width / out.width)), Image.LANCZOS)
        out = out.quantize(colors=128, method=Image.Quantize.MEDIANCUT)
        dest.parent.mkdir(parents=True, exist_ok=True)
        out.save(dest, optimize=True)
        size = dest.stat().st_size
        if size <= MAX_BYTES or width < 400:
            return size
        width = int(width * 0.8)


def run(tutorial: Path, fast: bool, timeout: float) -> list[Path]:
    """Run one tutorial in a scratch folder; returns the PNGs it wrote."""
    work = Path(tempfile.mkdtemp(prefix=f"docs_{tutorial.stem}_"))
    env = {**os.environ, "MPLBACKEND": "Agg", "SBI_CORE_TUTORIAL_OUT": str(work / "out"),
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if fast:
        env["SBI_CORE_FAST"] = "1"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(tutorial)], cwd=work, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{tutorial.name} failed:\n{proc.stderr[-3000:]}")
    print(f"{tutorial.name}: ran in {time.perf_counter() - start:.0f} s", flush=True)
    return sorted(work.rglob("*.png"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tutorials", nargs="*", help="file names in tutorials/ (default: all "
                                                     "that draw figures)")
    parser.add_argument("--fast", action="store_true", help="SBI_CORE_FAST=1 budgets")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per tutorial")
    args = parser.parse_args(argv)
    chosen = [TUTORIALS / name for name in args.tutorials] or figure_tutorials()
    for tutorial in chosen:
        for png in run(tutorial, args.fast, args.timeout):
            dest = DEST / tutorial.stem / png.name
            size = shrink(png, dest)
            print(f"  {dest.relative_to(ROOT)}: {size / 1000:.0f} kB", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
