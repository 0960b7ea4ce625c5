"""The documentation site: ``mkdocs build --strict`` passes, the API reference comes from the
docstrings, the tutorials are rendered with their figures, and the site needs no network."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gen_tutorials", ROOT / "docs" / "gen_tutorials.py")
gen_tutorials = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen_tutorials)

#: Largest image committed under docs/img (bytes).
MAX_IMAGE_BYTES = 200_000


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
                           "-d", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return out


def test_strict_build_has_guide_api_and_tutorials(site):
    assert (site / "index.html").exists()
    for page in ("npe", "diagnostics", "priors", "architecture"):
        assert (site / f"{page}.html").exists(), page
    api = (site / "api" / "diagnostics.html").read_text()
    # rendered from the docstrings: function headings and their argument docs
    for name in ("plots_posterior.pairplot", "plots_calibration.sbc_rank_plot",
                 "plots_calibration.coverage_plot", "plots_posterior.predictive_plot",
                 "plots_export.save_figure"):
        assert f'id="diagnostics.{name}"' in api, name
    assert "highest-density regions" in api
    assert "Problem" in (site / "api" / "sbi_core.html").read_text()
    tutorials = sorted(p.stem for p in (ROOT / "tutorials").glob("*.py"))
    assert sorted(p.stem for p in (site / "tutorials").glob("*.html")) == sorted(
        [*tutorials, "index"])
    index = (site / "tutorials" / "index.html").read_text()
    assert all(f"{t}.html" in index for t in tutorials)


def test_tutorial_pages_show_code_text_and_figures(site):
    page = (site / "tutorials" / "02_benchmark_problems.html").read_text()
    assert "get_problem" in page and "highlight" in page  # code blocks
    imgs = re.findall(r'<img[^>]+src="([^"]+)"', page)
    assert "../img/tutorials/02_benchmark_problems/two_moons_reference.png" in imgs
    for src in imgs:
        assert (site / "tutorials" / src).resolve().is_file(), src


def test_site_needs_no_network(site):
    """No stylesheet, script or font is fetched from another host (Material's fonts are off)."""
    external = re.compile(r'<(?:link|script)[^>]+(?:href|src)="(?:https?:)?//', re.I)
    for html in site.rglob("*.html"):
        text = html.read_text()
        assert not external.search(text), html
        assert "fonts.googleapis" not in text and "fonts.gstatic" not in text, html


def test_committed_doc_images_are_small():
    images = list((ROOT / "docs" / "img").rglob("*.png"))
    assert images, "docs/img holds the tutorial figures (docs/make_tutorial_figures.py)"
    big = [f"{p.relative_to(ROOT)}: {p.stat().st_size} B" for p in images
           if p.stat().st_size > MAX_IMAGE_BYTES]
    assert not big, big


def test_percent_cells_become_markdown_and_code(tmp_path, monkeypatch):
    src = tmp_path / "99_demo.py"
    src.write_text('# %% [markdown]\n# # Demo title\n#\n# Some *text*.\n\n# %%\nimport os\n'
                   'plt.savefig("fig_a.png")\n\n# %% [markdown]\n# ## Next\n\n# %%\nx = 1\n')
    img = tmp_path / "img"
    (img / "99_demo").mkdir(parents=True)
    for name in ("fig_a.png", "other.png"):
        (img / "99_demo" / name).write_bytes(b"\x89PNG")
    monkeypatch.setattr(gen_tutorials, "IMG", img)
    md = gen_tutorials.tutorial_markdown(src)
    assert "# Demo title\n\nSome *text*." in md
    assert '```python\nimport os\nplt.savefig("fig_a.png")\n```' in md
    # the figure named in a cell follows that cell; the unnamed one goes to the end
    assert md.index("fig_a.png)") < md.index("## Next") < md.index("other.png)")
    assert "```python\nx = 1\n```" in md
    assert gen_tutorials._title(src.read_text(), "x") == "Demo title"


def test_nav_lists_new_pages_and_tutorials_by_itself(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, title in (("index.md", "Home"), ("npe.md", "NPE"), ("new_page.md", "Brand new")):
        (docs / name).write_text(f"# {title}\n")
    nav = [{"Home": "index.md"}, {"User guide": ["npe.md"]},
           {"Tutorials": "tutorials/index.md"}]
    config = gen_tutorials.on_config({"nav": nav, "docs_dir": str(docs)})
    guide = config["nav"][1]["User guide"]
    assert guide == ["npe.md", {"Brand new": "new_page.md"}]
    tutorials = config["nav"][2]["Tutorials"]
    assert tutorials[0] == "tutorials/index.md"
    assert len(tutorials) == 1 + len(list((ROOT / "tutorials").glob("*.py")))
    assert tutorials[1] == {"Quickstart: from a simulator to a trained, saved posterior":
                            "tutorials/01_quickstart.md"}
