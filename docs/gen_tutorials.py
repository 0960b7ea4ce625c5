"""MkDocs hook (``hooks:`` in mkdocs.yml): tutorial pages and a self-extending nav.

- Every ``tutorials/*.py`` (jupytext "percent" format: ``# %% [markdown]`` cells of comment
  text, ``# %%`` code cells) becomes the page ``tutorials/<name>.md``: text cells as
  Markdown, code cells as Python blocks, and the figures that
  ``docs/make_tutorial_figures.py`` saved in ``docs/img/tutorials/<name>/`` embedded after
  the cell that names them (figures no cell names follow at the end). Nothing is executed.
- Sphinx roles in docstrings (``:func:`name```) are shown as plain code.
- The nav entry ``Tutorials: tutorials/index.md`` is expanded to every tutorial page, in
  file order, and any ``docs/*.md`` page the nav does not list is appended to the
  ``User guide`` section, so a new page or tutorial never needs an edit of mkdocs.yml (list
  it there only to choose its place).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"
IMG = ROOT / "docs" / "img" / "tutorials"
GUIDE_SECTION = "User guide"
TUTORIAL_SECTION = "Tutorials"
#: Top-level docs pages never added to the nav automatically.
NOT_AUTO_NAV = {"index.md"}

_CELL = re.compile(r"^# %%(.*)$")
_PNG = re.compile(r"""["'/]([\w.\-]+\.png)["']""")


def _tutorials() -> list[Path]:
    return sorted(TUTORIALS.glob("*.py"))


def _title(text: str, fallback: str) -> str:
    """First Markdown heading of a page, or of a tutorial's text cells (``# # Title``)."""
    tutorial = text.lstrip().startswith("# %%")
    for line in text.splitlines():
        line = line.strip()
        if tutorial:
            if not line.startswith("# #"):  # only headings inside the comment text count
                continue
            line = line[2:]
        m = re.match(r"^#+\s+(.+)$", line)
        if m:
            return m.group(1).strip()
    return fallback


def _cells(source: str) -> list[tuple[str, list[str]]]:
    """Split percent-format source into ``[(kind, lines)]`` with kind ``markdown``/``code``."""
    cells: list[tuple[str, list[str]]] = []
    kind, lines = "code", []
    for line in source.splitlines():
        m = _CELL.match(line)
        if m:
            if any(s.strip() for s in lines):
                cells.append((kind, lines))
            kind = "markdown" if "[markdown]" in m.group(1) else "code"
            lines = []
        else:
            lines.append(line)
    if any(s.strip() for s in lines):
        cells.append((kind, lines))
    return cells


def _markdown(lines: list[str]) -> str:
    out = []
    for line in lines:
        if line.startswith("# "):
            out.append(line[2:])
        elif line.strip() == "#":
            out.append("")
        else:
            out.append(line.lstrip("#"))
    return "\n".join(out).strip()


def tutorial_markdown(path: Path) -> str:
    """The Markdown page of tutorial ``path`` with its figures embedded."""
    figures = {p.name: p for p in sorted((IMG / path.stem).glob("*.png"))}
    shown: set[str] = set()
    note = (f'!!! note "Source"\n    This page is `tutorials/{path.name}`. Run it with '
            f"`python tutorials/{path.name}` (or open it with jupytext); "
            "`SBI_CORE_FAST=1` runs a small, quick version.\n")
    parts: list[str] = []
    for kind, lines in _cells(path.read_text()):
        if kind == "markdown":
            parts.append(_markdown(lines))
            if note:  # under the title (the first text cell)
                parts.append(note)
                note = ""
            continue
        code = "\n".join(lines).strip("\n")
        parts.append(f"```python\n{code}\n```")
        for name in _PNG.findall(code):
            if name in figures and name not in shown:
                shown.add(name)
                parts.append(f"![{name}](../img/tutorials/{path.stem}/{name})")
    if note:
        parts.insert(0, note)
    rest = [n for n in figures if n not in shown]
    if rest:
        parts.append("## Figures\n\nWritten by the code above (`docs/make_tutorial_figures.py` "
                     "re-creates them).")
        parts += [f"![{n}](../img/tutorials/{path.stem}/{n})" for n in rest]
    return "\n\n".join(parts) + "\n"


def index_markdown() -> str:
    lines = ["# Tutorials", "",
             "Each tutorial is a plain Python script in `tutorials/` (jupytext percent format). "
             "The pages show their code and text with the figures they draw; run a script to "
             "reproduce them (`SBI_CORE_FAST=1` for small budgets).", ""]
    for path in _tutorials():
        lines.append(f"- [{_title(path.read_text(), path.stem)}]({path.stem}.md)")
    return "\n".join(lines) + "\n"


def _nav_pages(nav: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(nav, str):
        found.add(nav)
    elif isinstance(nav, list):
        for item in nav:
            found |= _nav_pages(item)
    elif isinstance(nav, dict):
        for value in nav.values():
            found |= _nav_pages(value)
    return found


def on_config(config: Any) -> Any:
    """Expand the tutorial section and append unlisted docs pages to the user guide."""
    nav = config.get("nav")
    if not nav:
        return config
    tutorial_items = ["tutorials/index.md"] + [
        {_title(p.read_text(), p.stem): f"tutorials/{p.stem}.md"} for p in _tutorials()]
    listed = _nav_pages(nav)
    docs_dir = Path(config["docs_dir"])
    extra = [{_title(p.read_text(), p.stem): p.name} for p in sorted(docs_dir.glob("*.md"))
             if p.name not in listed and p.name not in NOT_AUTO_NAV]
    for item in nav:
        if not isinstance(item, dict):
            continue
        for key, value in item.items():
            if key == TUTORIAL_SECTION:
                item[key] = tutorial_items
            elif key == GUIDE_SECTION and isinstance(value, list):
                value.extend(extra)
    return config


def on_files(files: Any, config: Any) -> Any:
    """Add the generated tutorial pages (in memory; nothing is written into docs/)."""
    from mkdocs.structure.files import File

    files.append(File.generated(config, "tutorials/index.md", content=index_markdown()))
    for path in _tutorials():
        files.append(File.generated(config, f"tutorials/{path.stem}.md",
                                    content=tutorial_markdown(path)))
    return files


_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|obj|exc|const):(?=<code>)")


def on_page_content(html: str, **kwargs: Any) -> str:
    """Drop Sphinx roles (``:func:`x```) the docstrings use; the code span stays."""
    return _ROLE.sub("", html)
