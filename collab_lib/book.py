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
    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jb), "build", str(stage), "--path-output", str(out), "--quiet"]
    proc = subprocess.run(cmd, cwd=stage, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BookError(f"jupyter-book build failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return out / "_build" / "html" / "index.html"
