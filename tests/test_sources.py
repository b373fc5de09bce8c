import io
import json
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from collab_lib.config import Source
from collab_lib.sources import (
    SourceError,
    _extract_release,
    _list_dir,
    fetch_pypi,
    list_source,
    source_fingerprint,
)
from tests.conftest import make_org_dir, py_module

EXCLUDE = ("build/lib/*", "*/build/lib/*")
METADATA = "Metadata-Version: 2.1\nName: demo\nVersion: 1.0\nLicense: MIT\nAuthor: Demo Corp\n"


def test_dir_listing_handles_loops_dangling_links_and_build_leftovers(tmp_path):
    root = make_org_dir(tmp_path / "org", "demo", 3, bad_inputs=True)
    listing = _list_dir(root, "org", EXCLUDE)
    names = {Path(f.path).name for f in listing.files}
    assert "leftover.py" not in names and "README.md" not in names
    assert {"demo_0.py", "binary.py", "bom.py"} <= names
    assert listing.skipped == {"symlink_loop": 1, "excluded_path": 1, "unreadable": 1}
    assert all(f.path.startswith("org/") for f in listing.files)


def test_dir_fingerprint_changes_when_a_file_changes(tmp_path):
    root = make_org_dir(tmp_path / "org", "demo", 2)
    src = Source(dir=str(root))
    before = source_fingerprint(src)
    (root / "demo_0.py").write_text("x = 2\n")
    assert source_fingerprint(src) != before


def _git(repo: Path, *args: str) -> str:
    cmd = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def test_git_source_reads_the_revision_not_the_work_tree(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.py").write_text(py_module(1, "first"))
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "one")
    first = _git(repo, "rev-parse", "HEAD")
    (repo / "b.py").write_text(py_module(2, "second"))
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "two")
    (repo / "c.py").write_text("uncommitted = True\n")
    old = list_source(Source(git=str(repo), rev=first), EXCLUDE, {})
    assert [Path(f.path).name for f in old.files] == ["a.py"]
    assert old.files[0].read() == py_module(1, "first").encode()
    new = list_source(Source(git=str(repo)), EXCLUDE, {})
    assert sorted(Path(f.path).name for f in new.files) == ["a.py", "b.py"]
    assert source_fingerprint(Source(git=str(repo), rev=first))["commit"] == first


def test_git_source_with_a_bad_revision_names_it(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    with pytest.raises(SourceError, match="rev-parse"):
        list_source(Source(git=str(repo), rev="nope"), EXCLUDE, {})


def test_wheel_extraction_keeps_py_files_and_reads_the_license(tmp_path):
    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("demo/__init__.py", "x = 1\n")
        zf.writestr("demo/data.json", "{}")
        zf.writestr("demo-1.0.dist-info/METADATA", METADATA)
        zf.writestr("../evil.py", "boom")
    info = _extract_release(wheel, tmp_path / "out")
    assert info == {"name": "demo", "version": "1.0", "license": "MIT", "author": "Demo Corp"}
    files = sorted(
        p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*")
    )
    assert files == ["demo", "demo/__init__.py"]


def test_sdist_extraction_drops_the_top_directory(tmp_path):
    sdist = tmp_path / "demo-1.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tf:
        for name, text in [("demo-1.0/PKG-INFO", METADATA), ("demo-1.0/demo/core.py", "y = 2\n")]:
            data = text.encode()
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tf.addfile(member, io.BytesIO(data))
    info = _extract_release(sdist, tmp_path / "out")
    assert info["license"] == "MIT"
    assert (tmp_path / "out" / "demo" / "core.py").read_text() == "y = 2\n"


@pytest.fixture
def local_index(tmp_path, monkeypatch) -> str:
    """A PEP 503 index on disk holding one wheel, with the machine's pip config switched off."""
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    pkg = tmp_path / "simple" / "demo"
    pkg.mkdir(parents=True)
    with zipfile.ZipFile(pkg / "demo-1.0-py3-none-any.whl", "w") as zf:
        zf.writestr("demo/__init__.py", py_module(0, "demo"))
        zf.writestr("demo-1.0.dist-info/METADATA", METADATA)
        zf.writestr("demo-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\n")
        zf.writestr("demo-1.0.dist-info/RECORD", "")
    (pkg / "index.html").write_text(
        '<html><body><a href="demo-1.0-py3-none-any.whl">demo-1.0-py3-none-any.whl</a>'
    )
    (tmp_path / "simple" / "index.html").write_text('<html><body><a href="demo/">demo</a>')
    return (tmp_path / "simple").as_uri()


def test_pypi_download_is_cached_and_listed(local_index):
    arts = fetch_pypi(["demo==1.0"], local_index, timeout_s=30)
    meta = json.loads(arts["demo==1.0"].file("release.json").read_text())
    assert meta["license"] == "MIT" and meta["archive"] == "demo-1.0-py3-none-any.whl"
    listing = list_source(Source(pypi="demo==1.0"), EXCLUDE, arts)
    assert [f.path for f in listing.files] == ["demo==1.0/demo/__init__.py"]
    assert listing.info.author == "Demo Corp"


def test_missing_release_is_named_and_finished_downloads_are_kept(local_index):
    with pytest.raises(SourceError) as err:
        fetch_pypi(["demo==1.0", "demo==9.9"], local_index, timeout_s=30)
    assert "demo==9.9: no such release" in str(err.value)
    assert "1 other release(s) are downloaded and cached" in str(err.value)
    assert fetch_pypi(["demo==1.0"], local_index, timeout_s=30)  # a cache hit now


def test_unreachable_index_says_so(monkeypatch):
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    with pytest.raises(SourceError, match="demo==1.0: could not reach http://127.0.0.1:9/simple"):
        fetch_pypi(["demo==1.0"], "http://127.0.0.1:9/simple", timeout_s=5)


def test_installed_distribution_source():
    listing = list_source(Source(installed="absl-py"), EXCLUDE, {})
    assert listing.info.version == "2.5.1" and listing.info.license == "Apache-2.0"
    assert any(f.path.endswith("absl/app.py") for f in listing.files)


def test_missing_installed_distribution_says_what_to_do():
    with pytest.raises(SourceError, match="not in this environment"):
        list_source(Source(installed="no-such-dist-xyz"), EXCLUDE, {})
