"""Build the book: run the steps, execute each notebook with papermill, render with Jupyter Book.

The notebooks are committed without outputs. The book's sources are staged under
``_build/<profile>/src`` with the executed copies in ``book/executed/`` there, and Jupyter Book
renders those (``execute_notebooks: "off"``), so the HTML shows exactly what ran against the
cached artifacts, and books of different profiles never overwrite each other.

The settings are resolved once, by the caller: ``build_book`` writes them to
``_build/<name>/settings.yml`` and papermill hands every chapter that file's path, so every
chapter reads the same settings, and the Reproducibility page shows them.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from collab_lib import artifacts, pipeline
from collab_lib.config import PROJECT_ROOT, Config, UserError, write_settings

log = logging.getLogger(__name__)


class BookError(UserError):
    """A notebook or the Jupyter Book build failed; the message says where to look."""


NOTEBOOKS = (
    "00_intro.ipynb",  # the home page: placed at book/intro (its address since the start)
    "01_datasets.ipynb",
    "02_models.ipynb",
    "03_rq1_effectiveness.ipynb",
    "04_rq2_memorization.ipynb",
    "05_rq3_cross_org_clones.ipynb",
    "06_membership.ipynb",
    "07_findings.ipynb",
    "08_tradeoff.ipynb",
    "09_beyond_sharing.ipynb",
    "10_beyond_privacy.ipynb",
    "99_reproducibility.ipynb",
)
NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"
PAGES = {"00_intro.ipynb": "book/intro"}  # elsewhere: book/executed/<notebook>


def page(name: str) -> str:
    """Where notebook ``name``'s page lies under the book's root (without a suffix)."""
    return PAGES.get(name, f"book/executed/{name.removesuffix('.ipynb')}")


BOOK_SOURCES = ("_config.yml", "_toc.yml", "book")
BUILD_ROOT = PROJECT_ROOT / "_build"
SETTINGS_FILE = "settings.yml"


def execute_notebook(name: str, settings: Path, out_dir: Path, src_dir: Path | None = None) -> Path:
    """Run one notebook of ``src_dir`` (the project's) with papermill (explicit kernel and
    working directory), handing it the path of the resolved ``settings`` file."""
    import papermill

    src_dir = src_dir or NOTEBOOK_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / name
    try:
        papermill.execute_notebook(
            str(src_dir / name),
            str(output),
            parameters={"settings": str(settings)},
            kernel_name="python3",
            cwd=str(src_dir),
            progress_bar=False,
        )
    except papermill.PapermillExecutionError as exc:
        raise BookError(
            f"notebook {name} failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue}\n"
            f"The executed copy with the full traceback is {output}"
        ) from None
    return output


def execute_notebooks(
    names: tuple[str, ...],
    settings: Path,
    out_dir: Path,
    src_dir: Path | None = None,
    workers: int | None = None,
) -> None:
    """Run the notebooks, as many at once as there are cores (at most ``workers``).

    Each notebook only reads the cache, so their order does not matter; most of a notebook's
    time is its kernel starting and importing, which a second core halves. A failure raises
    the first failing notebook's error, in the book's order, after the others have finished.
    """
    workers = max(1, min(workers or os.cpu_count() or 1, len(names)))
    spawn = multiprocessing.get_context("spawn")  # no forked copy of this process's threads
    with ProcessPoolExecutor(workers, mp_context=spawn) as pool:
        runs = {n: pool.submit(execute_notebook, n, settings, out_dir, src_dir) for n in names}
        for name, run in runs.items():
            run.result()
            log.info("executed %s", name)


def build_name(profile: str, overrides: dict[str, Any]) -> str:
    """``<profile>``, or ``<profile>-<hash of the settings>`` with ``--set`` settings: a book
    built with other settings never replaces the profile's own."""
    return f"{profile}-{artifacts.artifact_key('book', overrides)[:8]}" if overrides else profile


def build_dir(cfg: Config, build_root: Path = BUILD_ROOT) -> Path:
    """Where ``cfg``'s book goes: ``_build/<profile>`` or ``_build/<profile>-<hash>``."""
    return build_root.resolve() / build_name(cfg.profile, cfg.override_values())


def build_book(cfg: Config, *, run_steps: bool = True, build_root: Path = BUILD_ROOT) -> Path:
    """Run every step of ``cfg``, execute the notebooks on its settings file, build the HTML;
    return index.html (``settings.yml`` lies two folders above it)."""
    if run_steps:
        pipeline.run("book", cfg)
    out = build_dir(cfg, build_root)
    stage = out / "src"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    for name in BOOK_SOURCES:
        src = PROJECT_ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, stage / name)
    settings = write_settings(cfg, out / SETTINGS_FILE)
    execute_notebooks(NOTEBOOKS, settings, stage / "book" / "executed")
    for name, where in PAGES.items():
        (stage / "book" / "executed" / name).replace(stage / f"{where}.ipynb")
        hide_injected_parameters(stage / f"{where}.ipynb")  # a home page shows no path
    repository = book_repository(stage / "_config.yml")
    if repository is not None:
        for name in NOTEBOOKS:
            add_launch_links(stage / f"{page(name)}.ipynb", name, *repository)
    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jb), "build", str(stage), "--path-output", str(out), "--quiet"]
    proc = subprocess.run(cmd, cwd=stage, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BookError(f"jupyter-book build failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return out / "_build" / "html" / "index.html"


def hide_injected_parameters(notebook: Path) -> None:
    """Tag papermill's injected parameters cell ``remove-cell`` (the chapters show theirs: the
    settings file each read)."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            cell.metadata["tags"] = [*tags, "remove-cell"]
    nbformat.write(nb, notebook)


def book_repository(config: Path) -> tuple[str, str] | None:
    """``(url, branch)`` of the book's GitHub repository: ``repository.url`` of its
    ``_config.yml``, or, where that is empty, the repository a GitHub Actions run builds in
    (``GITHUB_SERVER_URL``/``GITHUB_REPOSITORY``); None: no launch links."""
    import yaml

    repo = (yaml.safe_load(config.read_text()) or {}).get("repository") or {}
    url, branch = repo.get("url") or "", repo.get("branch") or "main"
    if not url and os.environ.get("GITHUB_REPOSITORY"):
        server = os.environ.get("GITHUB_SERVER_URL", "https://github.com")
        if server != "https://github.com":
            return None  # GitHub Enterprise: Binder and Colab open github.com repositories
        url = f"{server}/{os.environ['GITHUB_REPOSITORY']}"
        branch = os.environ.get("GITHUB_REF_NAME") or branch
    if not url:
        return None
    if not url.startswith("https://github.com/") or url.rstrip("/").count("/") != 4:
        raise UserError(
            f"_config.yml: repository.url {url!r}: Binder and Colab open notebooks of a GitHub "
            "repository, https://github.com/OWNER/NAME (or leave it empty: no launch links)"
        )
    return url.rstrip("/").removesuffix(".git"), branch


def launch_links(url: str, branch: str, name: str) -> str:
    """Markdown: open the committed notebook ``name`` on Binder (the environment of
    ``binder/environment.yml``) or Colab."""
    owner_repo = url.removeprefix("https://github.com/")
    binder = f"https://mybinder.org/v2/gh/{owner_repo}/{branch}?labpath=notebooks%2F{name}"
    colab = f"https://colab.research.google.com/github/{owner_repo}/blob/{branch}/notebooks/{name}"
    return (
        f"Re-execute this chapter: [open it on Binder]({binder}) or [on Colab]({colab}) "
        f"(`notebooks/{name}`). It reads the study's cache: run its steps first, in a "
        "terminal (`python -m collab_lib run all --profile tiny` takes minutes; then set "
        '`profile = "tiny"` in its parameters cell), or `python -m collab_lib import` a run\'s '
        f"export. On Colab, install the project first: `!pip install 'git+{url}@{branch}'`."
    )


def add_launch_links(notebook: Path, name: str, url: str, branch: str) -> None:
    """Put the launch links under the executed notebook's title."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    cell = nbformat.v4.new_markdown_cell(launch_links(url, branch, name))
    nb.cells.insert(1, cell)
    nbformat.write(nb, notebook)


SITE_MARK = ".collab-site"  # in a folder `book --to` wrote: it may write there again


def publish(html: Path, dest: Path) -> Path:
    """Copy the built book (``html``: its folder) to ``dest``, a static site that needs
    nothing but a web server (no CDN: the tests read every page offline). ``dest`` must be
    empty, new, or a site this wrote before (replaced)."""
    dest = dest.resolve()
    if dest.exists() and not dest.is_dir():
        raise UserError(f"{dest} is a file: `book --to` writes a folder (nothing was copied)")
    present = {p.name for p in dest.iterdir()} if dest.exists() else set()
    ours = set((dest / SITE_MARK).read_text().split()[1:]) if (dest / SITE_MARK).exists() else set()
    if present - ours - {SITE_MARK}:
        raise UserError(
            f"{dest} holds files `book --to` did not write ({', '.join(sorted(present - ours))}):"
            " choose another folder or empty it (nothing was copied)"
        )
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(html, tmp)
    (tmp / ".nojekyll").touch()  # GitHub Pages: serve _static and _images as they are
    names = sorted(p.name for p in tmp.iterdir())  # what a later --to may replace
    (tmp / SITE_MARK).write_text("collab_lib-site " + " ".join(names) + "\n")
    if dest.exists():
        shutil.rmtree(dest)
    tmp.replace(dest)
    return dest / "index.html"
