"""Results that travel: a run's tables, curves and manifests in one archive, without weights.

A GPU run's models are too large to move, but everything the book shows is small. ``export``
packs every artifact behind a profile's book (every seed, and every input they were built
from) into one ``.tar.gz``: each artifact's manifest and its tables (``.csv``) and records
(``.json``), never model weights and never an organization's code (``.jsonl``, ``.py``, and
the rest). ``import`` unpacks such an archive into the local cache. An artifact that arrived
without some of its files says so in its manifest (``omitted``): reading it works for what it
carries, reading an omitted file is a clear error, and a step that must rebuild it (to train
from a model it never received, say) does so instead of trusting it.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import time
import uuid
from pathlib import Path, PurePosixPath

from collab_lib import __version__, artifacts, pipeline
from collab_lib.config import Config, UserError, to_dict

INDEX = "export.json"
CARRIED = (".csv", ".json")  # tables, curves, records; weights and code stay home
# tables whose cells hold an organization's code: the memorized completions beside their
# training source (RQ2's examples)
CODE_TABLES = ("memorized.csv",)


class ExportError(UserError):
    """An archive that is not an export of this project, or one that cannot be read."""


def carried(name: str) -> bool:
    """Whether an artifact's file travels in an export."""
    return name.endswith(CARRIED) and PurePosixPath(name).name not in CODE_TABLES


def export_run(cfg: Config, path: Path) -> dict:
    """Write the archive; return its index (what it holds, from which machine)."""
    arts = pipeline.planned_artifacts(cfg)
    if not any(a.step == "findings" for a in arts):
        raise ExportError(
            f"nothing complete to export for profile {cfg.profile!r}: run "
            f"`{cfg.command('run', 'all')}` first (an export carries a finished run)"
        )
    index = {
        "format": 1,
        "profile": cfg.profile,
        "overrides": list(cfg.overrides),
        "seeds": list(cfg.run_seeds),
        "package_version": __version__,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": artifacts.machine(),
        "config": to_dict(cfg),
        "artifacts": [a.ref for a in arts],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    omitted_bytes = 0
    try:
        with tarfile.open(tmp, "w:gz") as tar:
            _add_bytes(tar, INDEX, json.dumps(index, indent=1).encode())
            for art in arts:
                files = art.manifest.get("files", {})
                keep = [n for n in files if carried(n)]
                omitted = sorted(set(files) - set(keep) | set(art.manifest.get("omitted", [])))
                omitted_bytes += sum(files[n]["bytes"] for n in files if n not in keep)
                manifest = dict(art.manifest, omitted=omitted)
                base = f"{art.step}/{art.key}"
                _add_bytes(tar, f"{base}/{artifacts.MANIFEST}", json.dumps(manifest).encode())
                for name in keep:
                    tar.add(art.file(name), arcname=f"{base}/{name}")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return index | {"bytes": path.stat().st_size, "left_home_bytes": omitted_bytes}


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    tar.addfile(info, io.BytesIO(data))


def import_run(path: Path, root: Path | None = None) -> dict:
    """Unpack an export into the cache (a complete local artifact is never replaced)."""
    base = root or artifacts.artifacts_root()
    try:
        with tarfile.open(path, "r:gz") as tar:
            index = _index(tar, path)
            added = kept = 0
            for ref, members in _artifacts_in(tar, path).items():
                step, key = ref.split("/")
                if _complete(step, key, base):
                    kept += 1
                    continue
                _place(tar, members, step, key, base)
                if artifacts.load(step, key, base) is None:
                    raise ExportError(f"{path}: artifact {ref} does not match its manifest")
                added += 1
    except (OSError, tarfile.TarError) as exc:
        raise ExportError(f"{path}: not a readable export (.tar.gz): {exc}") from None
    return index | {"added": added, "already_here": kept}


def _artifacts_in(tar: tarfile.TarFile, path: Path) -> dict[str, list[tarfile.TarInfo]]:
    """The archive's entries by artifact (``step/key``); anything else is refused."""
    groups: dict[str, list[tarfile.TarInfo]] = {}
    for member in tar.getmembers():
        if member.name == INDEX:
            continue
        parts = PurePosixPath(member.name).parts
        if not member.isfile() or len(parts) < 3 or ".." in parts or parts[0].startswith("."):
            raise ExportError(f"{path}: unexpected entry {member.name!r}: not an export")
        groups.setdefault(f"{parts[0]}/{parts[1]}", []).append(member)
    return groups


def _place(
    tar: tarfile.TarFile, members: list[tarfile.TarInfo], step: str, key: str, base: Path
) -> None:
    """Write one artifact beside its final place, then rename it in (never half there)."""
    tmp = base / step / f".tmp-import-{key}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        for m in members:
            dest = tmp.joinpath(*PurePosixPath(m.name).parts[2:])
            dest.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(m) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out)
        artifacts.replace_dir(tmp, artifacts.artifact_dir(step, key, base))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _complete(step: str, key: str, root: Path) -> bool:
    """A local artifact with every one of its files: better than any import of it."""
    art = artifacts.load(step, key, root)
    return art is not None and not art.omitted


def _index(tar: tarfile.TarFile, path: Path) -> dict:
    try:
        member = tar.getmember(INDEX)
        index = json.loads(tar.extractfile(member).read())
    except (KeyError, json.JSONDecodeError, AttributeError):
        raise ExportError(
            f"{path}: no {INDEX} inside: not made by `python -m collab_lib export`"
        ) from None
    if index.get("package_version") != __version__:
        raise ExportError(
            f"{path}: exported by collab_lib {index.get('package_version')}, this is "
            f"{__version__}: its artifacts' keys would not match; check out that version"
        )
    return index
