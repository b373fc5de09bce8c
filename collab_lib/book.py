"""Build the book: run the steps, execute each notebook with papermill, render with Jupyter Book.

The notebooks are committed without outputs; executed copies go to ``book/executed/`` (not
versioned) and Jupyter Book renders those (``execute_notebooks: "off"``), so the HTML shows
exactly what ran against the cached artifacts.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from collab_lib import pipeline
from collab_lib.config import PROJECT_ROOT, load_config

log = logging.getLogger(__name__)

NOTEBOOKS = ("01_datasets.ipynb", "99_reproducibility.ipynb")
NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"
EXECUTED_DIR = PROJECT_ROOT / "book" / "executed"
BUILD_DIR = PROJECT_ROOT / "_build"


def execute_notebook(name: str, profile: str, overrides: dict[str, Any], out_dir: Path) -> Path:
    """Run one notebook with papermill (explicit kernel and working directory)."""
    import papermill

    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / name
    papermill.execute_notebook(
        str(NOTEBOOK_DIR / name),
        str(output),
        parameters={"profile": profile, "overrides": overrides},
        kernel_name="python3",
        cwd=str(NOTEBOOK_DIR),
        progress_bar=False,
    )
    return output


def build_book(profile: str, overrides: dict[str, Any] | None = None, *, run_steps: bool = True) -> Path:
    """Run every step of the profile, execute the notebooks and build the HTML book."""
    overrides = overrides or {}
    cfg = load_config(profile, overrides)  # fail on a bad profile before anything runs
    if run_steps:
        pipeline.run("all", cfg)
    for name in NOTEBOOKS:
        log.info("executing %s", name)
        execute_notebook(name, profile, overrides, EXECUTED_DIR)
    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jb), "build", str(PROJECT_ROOT), "--path-output", str(BUILD_DIR.parent), "-q"]
    env = os.environ | {"PYDEVD_DISABLE_FILE_VALIDATION": "1"}
    subprocess.run(cmd, check=True, env=env, cwd=PROJECT_ROOT)
    index = BUILD_DIR / "html" / "index.html"
    return index
