"""Shared plumbing of the plot functions: a headless pyplot, one style, atomic export.

:func:`save_figure` writes a figure as PNG and PDF (any matplotlib format) next to each
other, each through :func:`sbi_core.atomic.atomic_write`, so an interrupted export never
leaves half a file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["save_figure", "FIGURE_FORMATS", "DPI"]

#: Formats written by :func:`save_figure` (and ``sbi-core diagnose --out``).
FIGURE_FORMATS = ("png", "pdf")
#: Resolution of raster output.
DPI = 150
_SUFFIXES = {".png", ".pdf", ".svg", ".jpg", ".jpeg", ".eps", ".ps", ".tif", ".tiff", ".webp"}


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path_stem: str | Path, formats: Sequence[str] = FIGURE_FORMATS,
                dpi: int = DPI) -> list[Path]:
    """Write ``fig`` to ``path_stem.<format>`` for every format, atomically; returns the paths.

    ``path_stem`` is the path without its suffix (``out/pairplot`` gives ``out/pairplot.png``
    and ``out/pairplot.pdf``); a known image suffix on it is replaced.
    """
    from sbi_core.atomic import atomic_write

    stem = Path(path_stem)
    if stem.suffix.lower() in _SUFFIXES:
        stem = stem.with_suffix("")
    bad = [f for f in formats if "." + f.lower().lstrip(".") not in _SUFFIXES]
    if bad:
        raise ValueError(f"Unknown figure format(s) {bad}; use some of "
                         f"{sorted(s[1:] for s in _SUFFIXES)}.")
    paths = []
    for fmt in formats:
        fmt = fmt.lower().lstrip(".")
        target = stem.with_name(f"{stem.name}.{fmt}")
        with atomic_write(target) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight")
        paths.append(target)
    return paths


def finish(fig, path: str | Path | None):
    """Lay out ``fig``; given ``path``, save it and close it (pyplot forgets it).

    A path with an image suffix (``a.png``) writes that one file; a path without one writes
    every format of :data:`FIGURE_FORMATS`. The figure is returned either way.
    """
    try:
        fig.tight_layout()
    except Exception:  # tight_layout can fail on odd layouts; the figure is still fine
        pass
    if path is not None:
        path = Path(path)
        if path.suffix.lower() in _SUFFIXES:
            save_figure(fig, path, formats=[path.suffix[1:]])
        else:
            save_figure(fig, path)
        pyplot().close(fig)
    return fig
