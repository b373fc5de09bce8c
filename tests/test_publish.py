"""Publishing the book: the GitHub Pages workflow and its lint, the Binder environment, the
launch links, and `book --to` (a static site)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from collab_lib import book
from collab_lib.config import PROJECT_ROOT, UserError

WORKFLOW = PROJECT_ROOT / ".github" / "workflows" / "book.yml"
BIN = Path(sys.executable).parent


def _lint(path: Path) -> list[subprocess.CompletedProcess]:
    """The two linters `make lint` runs on the workflows."""
    schema = [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows"]
    return [
        subprocess.run([*schema, str(path)], capture_output=True, text=True),
        subprocess.run(
            [str(BIN / "zizmor"), "--offline", "--quiet", str(path)], capture_output=True, text=True
        ),
    ]


def test_the_workflow_passes_its_lint_and_a_broken_one_does_not(tmp_path):
    assert [r.returncode for r in _lint(WORKFLOW)] == [0, 0]
    text = WORKFLOW.read_text()
    misspelt = tmp_path / "misspelt.yml"
    misspelt.write_text(text.replace("runs-on:", "runs_on:", 1))
    assert _lint(misspelt)[0].returncode != 0  # the schema: no runner
    unpinned = tmp_path / "unpinned.yml"
    pinned = next(line for line in text.splitlines() if "actions/checkout@" in line)
    unpinned.write_text(text.replace(pinned, "      - uses: actions/checkout@main"))
    assert _lint(unpinned)[1].returncode != 0  # zizmor: an action not pinned to a commit


def test_the_workflow_builds_the_default_book_and_deploys_that_site():
    flow = yaml.safe_load(WORKFLOW.read_text())
    build, deploy = flow["jobs"]["build"], flow["jobs"]["deploy"]
    runs = [s["run"] for s in build["steps"] if "run" in s]
    assert "make publish PROFILE=default TO=site" in runs
    upload = next(s for s in build["steps"] if "upload-pages-artifact" in s.get("uses", ""))
    assert upload["with"]["path"] == "site"
    assert any("deploy-pages" in s.get("uses", "") for s in deploy["steps"])
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert deploy["needs"] == "build" and flow["permissions"] == {}
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    assert "--to $(TO)" in makefile and "zizmor" in makefile and "check-jsonschema" in makefile


def test_binder_builds_the_locked_environment_with_cpu_torch():
    """Binder's file installs this repository under requirements.lock (which the pins are
    tested against), with PyTorch's CPU wheels, on the Python of environment.yml."""
    env = yaml.safe_load((PROJECT_ROOT / "binder" / "environment.yml").read_text())
    root = yaml.safe_load((PROJECT_ROOT / "environment.yml").read_text())
    python = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert python == [d for d in root["dependencies"] if str(d).startswith("python")]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    here = PROJECT_ROOT / "binder"
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in pip
    constraints = next(p for p in pip if p.startswith("-c "))
    assert (here / constraints[3:]).resolve() == PROJECT_ROOT / "requirements.lock"
    assert (here / "..").resolve() == PROJECT_ROOT and "-e .." in pip


def test_launch_links_come_from_the_one_repository_setting(tmp_path, monkeypatch):
    monkeypatch.delenv("GITHUB_REPOSITORY", raising=False)
    config = tmp_path / "_config.yml"
    config.write_text(yaml.safe_dump({"title": "t", "repository": {"url": ""}}))
    assert book.book_repository(config) is None  # empty: no links
    monkeypatch.setenv("GITHUB_REPOSITORY", "someone/study")  # a GitHub Actions build
    monkeypatch.setenv("GITHUB_REF_NAME", "main")
    assert book.book_repository(config) == ("https://github.com/someone/study", "main")
    config.write_text(
        yaml.safe_dump({"repository": {"url": "https://github.com/o/r/", "branch": "b"}})
    )
    url, branch = book.book_repository(config)
    assert (url, branch) == ("https://github.com/o/r", "b")
    text = book.launch_links(url, branch, "01_datasets.ipynb")
    assert "https://mybinder.org/v2/gh/o/r/b?labpath=notebooks%2F01_datasets.ipynb" in text
    assert "https://colab.research.google.com/github/o/r/blob/b/notebooks/01_datasets.ipynb" in text
    for name in book.NOTEBOOKS:  # every link opens a committed notebook
        assert (PROJECT_ROOT / "notebooks" / name).exists()
    config.write_text(yaml.safe_dump({"repository": {"url": "https://gitlab.com/o/r"}}))
    with pytest.raises(UserError, match="GitHub"):
        book.book_repository(config)


def test_launch_links_go_under_each_chapters_title(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# Title"), nbformat.v4.new_code_cell("1")]
    path = tmp_path / "01_datasets.ipynb"
    nbformat.write(nb, path)
    book.add_launch_links(path, "01_datasets.ipynb", "https://github.com/o/r", "main")
    cells = nbformat.read(path, as_version=4).cells
    assert cells[0].source == "# Title" and "mybinder.org" in cells[1].source


@pytest.mark.slow
def test_book_to_writes_a_site_that_reads_offline(built_book, tmp_path):
    from conftest import assert_every_page_reads_offline, browse

    site = tmp_path / "site"
    index = book.publish(built_book.index.parent, site)
    assert index == site / "index.html" and (site / ".nojekyll").exists()
    with browse(index) as page:
        assert_every_page_reads_offline(page)
        page.goto(page.base + "/book/intro.html")
        assert page.locator("main img").count() >= 1  # the workflow figure
        assert "settings.yml" not in page.inner_text("main")  # no build path on the home page
        verdicts = page.inner_text("main table")
        assert "verdict" in verdicts and ("holds" in verdicts or "inconclusive" in verdicts)
    book.publish(built_book.index.parent, site)  # again: replaces its own site
    (site / "CNAME").write_text("book.example.org")  # the user's own file: kept, refused
    with pytest.raises(UserError, match="CNAME"):
        book.publish(built_book.index.parent, site)
    with pytest.raises(UserError, match="is a file"):
        book.publish(built_book.index.parent, site / "CNAME")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(UserError, match="did not write"):
        book.publish(built_book.index.parent, mine)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    shutil.rmtree(site)


def test_the_workflow_figure_is_drawn_from_the_steps_plans():
    """Each step stands after the steps whose artifacts its plan reads; the figure has a box
    for every step and no arrow that another path implies."""
    import matplotlib

    matplotlib.use("Agg")
    from collab_lib import pipeline, report
    from collab_lib.config import load_config

    cfg = load_config("default")
    deps = pipeline.dependencies(cfg)
    assert list(deps) == list(pipeline.STEPS)
    assert deps["datasets"] == [] and set(deps["train"]) == {"datasets", "canaries", "psi"}
    assert {"rq1", "rq2", "rq3"} <= set(deps["findings"])
    for name, before in deps.items():  # a step only reads steps before it
        assert all(list(pipeline.STEPS).index(b) < list(pipeline.STEPS).index(name) for b in before)
    reduced = report._reduced(deps)
    assert "datasets" not in reduced["rq1"] and reduced["rq1"] == ["train"]
    fig = report.workflow_figure(cfg)
    labels = {t.get_text() for t in fig.axes[0].texts}
    assert set(pipeline.STEPS) <= labels
