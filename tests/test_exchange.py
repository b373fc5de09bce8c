"""Results that travel: export a finished run, import it into an empty cache, build its book."""

import json
import tarfile

import pytest

from collab_lib import artifacts, cli, collaboration, exchange, pipeline, scoring
from collab_lib.book import build_book
from collab_lib.config import load_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(course_run, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("COLLAB_ARTIFACTS", str(course_run.artifacts))
    archive = tmp_path_factory.mktemp("export") / "run.tar.gz"
    try:
        sets = [f"--set=seed={course_run.overrides['seed']}"]
        assert cli.main(["export", "--profile", str(course_run.profile), *sets, str(archive)]) == 0
    finally:
        mp.undo()
    return archive


def test_an_export_carries_tables_and_manifests_but_no_weights_or_code(exported):
    with tarfile.open(exported) as tar:
        names = tar.getnames()
        index = json.loads(tar.extractfile(exchange.INDEX).read())
    assert not [n for n in names if n.endswith((".safetensors", ".jsonl", ".py"))]
    assert not [n for n in names if n.endswith("/memorized.csv")]  # code beside its source
    assert any(n.startswith("rq1/") and n.endswith("/table8.csv") for n in names)
    assert any(n.startswith("findings/") for n in names)
    assert index["seeds"] == [5] and index["machine"]["cpus"] >= 1


def test_an_import_builds_the_book_without_any_model(exported, course_run, tmp_path, monkeypatch):
    root = tmp_path / "elsewhere"
    monkeypatch.setenv("COLLAB_ARTIFACTS", str(root))
    assert cli.main(["import", str(exported)]) == 0
    cfg = load_config(course_run.profile, course_run.overrides)
    assert pipeline.load("findings", cfg).file("findings.csv").is_file()
    # the book renders from the import alone: no step runs, no model is loaded
    index = build_book(cfg, run_steps=False, build_root=tmp_path / "_build")
    text = (index.parent / "book" / "executed" / "07_findings.html").read_text()
    assert "Finding 7" in text and "Verdict:" in text
    rq2 = (index.parent / "book" / "executed" / "04_rq2_memorization.html").read_text()
    assert "its memorized code stayed on the machine that ran it" in rq2
    # a model arrived without its weights: reading them says so, and what to do
    model = pipeline.load("train", cfg)[collaboration.BASE]
    with pytest.raises(artifacts.ImportedWithoutFile, match="imported from an export"):
        scoring.load_model(model)
    assert cli.main(["import", str(exported)]) == 0  # again: nothing replaced


def test_an_archive_that_is_not_an_export_is_refused(tmp_path, capsys):
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(bad, "w:gz") as tar:
        tar.add(__file__, arcname="../escape.py")
    assert cli.main(["import", str(bad)]) == 2
    assert "not made by `python -m collab_lib export`" in capsys.readouterr().err
    assert cli.main(["import", str(tmp_path / "missing.tar.gz")]) == 2
