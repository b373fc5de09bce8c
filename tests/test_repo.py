"""The repository's promises: pins in sync, notebooks clean and parameterized."""

import json
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_environment_yml_pins_what_pyproject_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert set(pip) - {"-e ."} == wanted
    assert "python=3.11" in env["dependencies"]
    assert all("==" in spec for spec in wanted)


def test_lock_agrees_with_the_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lock = {
        line.split("==")[0].lower(): line.split("==")[1]
        for line in (ROOT / "requirements.lock").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    for spec in project["dependencies"] + project["optional-dependencies"]["dev"]:
        name, version = spec.split("==")
        name = name.split("[")[0]  # flwr[simulation] is locked as flwr
        if name != "torch":
            assert lock[name.lower()] == version, name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_are_committed_clean_with_a_parameters_cell(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code)
    params = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1 and "profile" in "".join(params[0]["source"])


def test_toc_lists_every_notebook():
    from collab_lib.book import page

    toc = (ROOT / "_toc.yml").read_text()
    for path in NOTEBOOKS:
        assert page(path.name) in toc


HEAVY = ("torch", "transformers", "flwr")


@pytest.mark.parametrize(
    "code",
    [
        pytest.param("from collab_lib import cli; cli._parser()", id="help"),
        pytest.param(
            "from collab_lib import cli, pipeline; from collab_lib.config import load_config\n"
            "cfg = load_config('tiny'); pipeline.status(cfg)\n"
            "try:\n    pipeline.table('table8', cfg)\nexcept pipeline.NotBuiltError:\n    pass",
            id="status-and-table",
        ),
        pytest.param(
            "from collab_lib import benchmarks, evaluation, clones; evaluation.make_sandbox",
            id="evaluate-and-clones",
        ),
    ],
)
def test_commands_that_use_no_model_import_no_torch(code, tmp_path):
    """--help, status, table, evaluate and clones load no torch, transformers or Flower:
    planning every step reads the config and the cache, never a model."""
    import subprocess
    import sys

    check = f"{code}\nimport sys\nprint([m for m in {HEAVY!r} if m in sys.modules])"
    env = {"COLLAB_ARTIFACTS": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, cwd=ROOT, env=env, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr
