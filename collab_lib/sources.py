"""Where an organization's code comes from: PyPI releases, local directories, git checkouts.

Every source kind is turned into the same thing, a list of :class:`SourceFile` (``.py``
files with their size and a way to read their bytes) plus a :class:`SourceInfo` (version,
license, author) for Table 2. PyPI releases are downloaded once with pip into the artifact
cache (one artifact per pinned release), so a failed or interrupted download of one package
never loses the others.
"""

from __future__ import annotations

import email
import email.policy
import fnmatch
import hashlib
import io
import json
import logging
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from tqdm import tqdm

from collab_lib import artifacts
from collab_lib.config import Source, UserError

log = logging.getLogger(__name__)

DOWNLOAD_STEP = "downloads"


class SourceError(UserError):
    """A source cannot be read or fetched; the message names it and says what to do."""


@dataclass(frozen=True)
class SourceFile:
    """One ``.py`` file of a source. ``path`` is ``<source label>/<path inside it>``."""

    path: str
    size: int
    read: Callable[[], bytes]


@dataclass(frozen=True)
class SourceInfo:
    """What Table 2 shows of a source."""

    label: str
    kind: str
    version: str
    license: str
    author: str


@dataclass
class Listing:
    """The files of one source, and what was left out while walking it (reason -> count)."""

    info: SourceInfo
    files: list[SourceFile]
    skipped: dict[str, int]


# --------------------------------------------------------------------------- PyPI


def download_key(spec: str, index_url: str | None) -> str:
    return artifacts.artifact_key(DOWNLOAD_STEP, {"pypi": spec, "index_url": index_url})


def fetch_pypi(
    specs: list[str], index_url: str | None, timeout_s: float, *, force: bool = False
) -> dict[str, artifacts.Artifact]:
    """Download (or find cached) every pinned release; one error lists every failure."""
    results: dict[str, artifacts.Artifact] = {}
    errors: list[str] = []

    def one(spec: str) -> None:
        try:
            results[spec] = artifacts.build(
                DOWNLOAD_STEP,
                {"pypi": spec, "index_url": index_url},
                lambda out: _download_release(spec, index_url, timeout_s, out),
                force=force,
            )
        except SourceError as exc:
            errors.append(str(exc))

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(tqdm(pool.map(one, specs), total=len(specs), desc="PyPI releases", leave=False))
    if errors:
        done = f" ({len(results)} other release(s) are downloaded and cached)" if results else ""
        raise SourceError("\n".join(sorted(errors)) + done)
    return results


def _download_release(spec: str, index_url: str | None, timeout_s: float, out: Path) -> dict:
    """pip-download one release (no deps, wheel preferred) and keep its ``.py`` files."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--prefer-binary"]
        cmd += ["--disable-pip-version-check", "--no-input", "--retries", "1"]
        cmd += ["--timeout", str(int(timeout_s)), "--dest", tmp, spec]
        if index_url:
            cmd += ["--index-url", index_url]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s * 3)
        except subprocess.TimeoutExpired:
            raise SourceError(f"{spec}: the package index did not answer in time") from None
        if proc.returncode != 0:
            raise SourceError(_explain_pip_failure(spec, index_url, proc.stderr))
        (archive,) = Path(tmp).iterdir()
        info = _extract_release(archive, out / "files")
        info |= {"archive": archive.name, "archive_sha256": artifacts.sha256_file(archive)}
    (out / "release.json").write_text(json.dumps(info, indent=1, sort_keys=True))
    return info


def _explain_pip_failure(spec: str, index_url: str | None, stderr: str) -> str:
    where = index_url or "pip's configured index"
    name = spec.split("==")[0]
    if re.search(r"connection|resolve|unreachable|timed out|Max retries", stderr, re.I):
        return (
            f"{spec}: could not reach {where}. Check the network, proxy settings, or "
            f"`datasets.index_url` in the profile, then run again."
        )
    if "No matching distribution" in stderr or "Could not find a version" in stderr:
        return (
            f"{spec}: no such release on {where}. Check the name and version "
            f"(`pip index versions {name}` lists them) and fix the profile."
        )
    tail = " | ".join(stderr.strip().splitlines()[-3:])
    return f"{spec}: pip download failed: {tail}"


def _extract_release(archive: Path, dest: Path) -> dict:
    """Write the archive's ``.py`` files under ``dest``; return its metadata (license ...)."""
    dest.mkdir(parents=True)
    meta_text = ""
    if archive.suffix == ".whl" or archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                if name.endswith(".dist-info/METADATA") or name.endswith("PKG-INFO"):
                    meta_text = meta_text or zf.read(name).decode("utf-8", "replace")
                elif name.endswith(".py") and _safe_member(name):
                    _write(dest / name, zf.read(name))
    elif archive.name.endswith((".tar.gz", ".tgz", ".tar.bz2")):
        with tarfile.open(archive) as tf:
            for member in tf.getmembers():
                if not member.isfile() or not _safe_member(member.name):
                    continue
                # sdists hold one top-level "name-version/" directory: drop it
                inner = member.name.split("/", 1)[-1]
                if member.name.count("/") == 1 and inner == "PKG-INFO":
                    meta_text = tf.extractfile(member).read().decode("utf-8", "replace")
                elif inner.endswith(".py"):
                    _write(dest / inner, tf.extractfile(member).read())
    else:
        raise SourceError(f"{archive.name}: unknown archive type")
    return _describe_metadata(meta_text)


def _safe_member(name: str) -> bool:
    parts = Path(name).parts
    return not Path(name).is_absolute() and ".." not in parts


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _describe_metadata(meta: str | metadata.PackageMetadata) -> dict:
    """Version, license and author from a METADATA / PKG-INFO file (text or parsed)."""
    msg = (
        email.message_from_string(meta, policy=email.policy.compat32)
        if isinstance(meta, str)
        else meta
    )
    classifiers = msg.get_all("Classifier", []) or []
    lic_classes = [c.split("::")[-1].strip() for c in classifiers if c.startswith("License")]
    license_ = (msg.get("License-Expression") or "").strip()
    if not license_:
        first = (msg.get("License") or "").strip().splitlines()
        license_ = first[0][:60] if first and first[0] not in ("UNKNOWN", "") else ""
    license_ = license_ or ", ".join(lic_classes) or "not stated"
    author = msg.get("Author") or msg.get("Author-email") or msg.get("Maintainer") or ""
    author = author or msg.get("Maintainer-email") or "not stated"
    return {
        "name": msg.get("Name", ""),
        "version": msg.get("Version", ""),
        "license": license_,
        "author": re.sub(r"\s*<[^>]*>", "", author).strip()[:80],
    }


# --------------------------------------------------------------------------- listing


def list_source(
    source: Source, exclude: tuple[str, ...], downloads: dict[str, artifacts.Artifact]
) -> Listing:
    """Every ``.py`` file of one source, after the ``exclude`` globs."""
    if source.kind == "pypi":
        art = downloads[source.pypi]
        meta = json.loads(art.file("release.json").read_text())
        listing = _list_dir(art.path / "files", source.label, exclude)
        listing.info = SourceInfo(
            source.label, "pypi", meta["version"], meta["license"], meta["author"]
        )
        return listing
    if source.kind == "dir":
        root = Path(source.dir)
        listing = _list_dir(root, source.label, exclude)
        lic = _license_file(root)
        listing.info = SourceInfo(source.label, "dir", "local", lic, "local")
        return listing
    if source.kind == "git":
        return _list_git(source, exclude)
    return _list_installed(source.installed, exclude)


def source_fingerprint(source: Source) -> dict:
    """What identifies a source's content in a cache key, without reading every file.

    PyPI releases are pinned; a directory is identified by its files' paths, sizes and
    modification times; a git checkout by the commit its revision resolves to.
    """
    if source.kind == "pypi":
        return {"pypi": source.pypi}
    if source.kind == "dir":
        entries = []
        for dirpath, _, names in os.walk(source.dir, followlinks=False):
            for name in sorted(names):
                if name.endswith(".py"):
                    p = Path(dirpath) / name
                    try:
                        st = p.stat()
                        entries.append((str(p), st.st_size, st.st_mtime_ns))
                    except OSError:
                        entries.append((str(p), -1, -1))
        listing = json.dumps(sorted(entries)).encode()
        return {"dir": source.dir, "listing_sha256": hashlib.sha256(listing).hexdigest()}
    if source.kind == "git":
        return {"git": source.git, "commit": _git_commit(source)}
    return {"installed": source.installed, "version": _installed(source.installed).version}


def _list_dir(root: Path, label: str, exclude: tuple[str, ...]) -> Listing:
    """Walk ``root`` following symlinks but never into a directory twice (loops are counted)."""
    files: list[SourceFile] = []
    skipped: dict[str, int] = {}
    seen_dirs: set[str] = set()
    for dirpath, dirnames, names in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:
            skipped["symlink_loop"] = skipped.get("symlink_loop", 0) + 1
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames.sort()
        for name in sorted(names):
            if not name.endswith(".py"):
                continue
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if _excluded(rel, exclude):
                skipped["excluded_path"] = skipped.get("excluded_path", 0) + 1
                continue
            try:
                size = path.stat().st_size
            except OSError:  # a broken symlink
                skipped["unreadable"] = skipped.get("unreadable", 0) + 1
                continue
            files.append(SourceFile(f"{label}/{rel}", size, path.read_bytes))
    return Listing(SourceInfo(label, "dir", "", "", ""), files, skipped)


def _excluded(rel: str, exclude: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(rel, pat) or fnmatch.fnmatch("/" + rel, pat) for pat in exclude)


def _license_file(root: Path) -> str:
    """A best guess at a local tree's license from its LICENSE/COPYING file."""
    for path in sorted(root.glob("LICEN[CS]E*")) + sorted(root.glob("COPYING*")):
        head = path.read_text(errors="replace")[:400]
        for name in ("Apache", "MIT", "BSD", "GPL", "MPL"):
            if name in head:
                return f"{name} (from {path.name})"
        return f"see {path.name}"
    return "not stated"


def _git(repo: str, *args: str) -> bytes:
    proc = subprocess.run(["git", "-C", repo, *args], capture_output=True)
    if proc.returncode != 0:
        msg = proc.stderr.decode(errors="replace").strip()
        raise SourceError(f"git checkout {repo}: `git {' '.join(args)}` failed: {msg}")
    return proc.stdout


def _git_commit(source: Source) -> str:
    return _git(source.git, "rev-parse", "--verify", f"{source.rev}^{{commit}}").decode().strip()


def _list_git(source: Source, exclude: tuple[str, ...]) -> Listing:
    """The ``.py`` files of the checkout at ``rev`` (not the work tree), via ``git archive``."""
    commit = _git_commit(source)
    archive = io.BytesIO(_git(source.git, "archive", "--format=tar", commit))
    files, skipped = [], {}
    with tarfile.open(fileobj=archive) as tar:
        for member in tar.getmembers():
            if not member.isfile() or not member.name.endswith(".py"):
                continue
            if _excluded(member.name, exclude):
                skipped["excluded_path"] = skipped.get("excluded_path", 0) + 1
                continue
            data = tar.extractfile(member).read()
            path = f"{source.label}/{member.name}"
            files.append(SourceFile(path, member.size, lambda d=data: d))
    info = SourceInfo(source.label, "git", commit[:12], _license_file(Path(source.git)), "local")
    return Listing(info, files, skipped)


def _installed(name: str) -> metadata.Distribution:
    try:
        return metadata.distribution(name)
    except metadata.PackageNotFoundError:
        raise SourceError(
            f"installed distribution {name!r} is not in this environment "
            f"({sys.executable}); install it or use another source kind"
        ) from None


def _list_installed(name: str, exclude: tuple[str, ...]) -> Listing:
    dist = _installed(name)
    files, skipped = [], {}
    for rel in sorted(dist.files or [], key=str):
        if not str(rel).endswith(".py"):
            continue
        if _excluded(str(rel), exclude):
            skipped["excluded_path"] = skipped.get("excluded_path", 0) + 1
            continue
        path = Path(dist.locate_file(rel))
        if path.is_file():
            files.append(SourceFile(f"{name}/{rel}", path.stat().st_size, path.read_bytes))
    meta = _describe_metadata(dist.metadata)
    info = SourceInfo(name, "installed", dist.version, meta["license"], meta["author"])
    return Listing(info, files, skipped)
