"""Build the book: run the steps, execute each notebook with papermill, render with Jupyter Book.

The notebooks are committed without outputs. The book's sources are staged under
``_build/<profile>/src`` with the executed copies in ``book/executed/`` there, and Jupyter Book
renders those (``execute_notebooks: "off"``), so the HTML shows exactly what ran against the
cached artifacts, and books of different profiles never overwrite each other.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from collab_lib import pipeline
from collab_lib.config import PROJECT_ROOT, UserError, load_config

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
    "99_reproducibility.ipynb",
)
NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"
BOOK_SOURCES = ("_config.yml", "_toc.yml", "book")
BUILD_ROOT = PROJECT_ROOT / "_build"


def execute_notebook(name: str, profile: str, overrides: dict[str, Any], out_dir: Path) -> Path:
    """Run one notebook with papermill (explicit kernel and working directory)."""
    import papermill

    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / name
    try:
        papermill.execute_notebook(
            str(NOTEBOOK_DIR / name),
            str(output),
            parameters={"profile": profile, "overrides": overrides},
            kernel_name="python3",
            cwd=str(NOTEBOOK_DIR),
            progress_bar=False,
        )
    except papermill.PapermillExecutionError as exc:
        raise BookError(
            f"notebook {name} failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue}\n"
            f"The executed copy with the full traceback is {output}"
        ) from None
    return output


def build_book(
    profile: str,
    overrides: dict[str, Any] | None = None,
    *,
    run_steps: bool = True,
    build_root: Path = BUILD_ROOT,
) -> Path:
    """Run every step of the profile, execute the notebooks, build the HTML; return index.html."""
    overrides = overrides or {}
    cfg = load_config(profile, overrides)  # fail on a bad profile before anything runs
    if run_steps:
        pipeline.run("book", cfg)
    out = build_root / cfg.profile
    stage = out / "src"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    for name in BOOK_SOURCES:
        src = PROJECT_ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, stage / name)
    for name in NOTEBOOKS:
        log.info("executing %s", name)
        execute_notebook(name, profile, overrides, stage / "book" / "executed")
    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jb), "build", str(stage), "--path-output", str(out), "--quiet"]
    proc = subprocess.run(cmd, cwd=stage, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BookError(f"jupyter-book build failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return out / "_build" / "html" / "index.html"
