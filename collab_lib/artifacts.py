"""Content-addressed artifact cache: ``<root>/<step>/<key>/`` with a verified manifest.

The key hashes the step name, the package version, the step's resolved config and the keys
of its inputs, so any change upstream gives a new key and nothing stale is reused. A step
writes into a private temporary directory that is renamed into place only when complete:
an interrupted run (Ctrl-C, ``kill -9``) leaves no half artifact that could be mistaken for
a finished one, and the next run redoes only what is missing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import shutil
import stat
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from collab_lib import __version__
from collab_lib.config import PROJECT_ROOT, UserError, to_dict

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
STAMP = ".verified.json"  # a dot file: not in the manifest, never exported or linked
# a file's timestamp ticks coarsely (milliseconds): one modified within this long of its
# hashing could change again with the same size and time, so it is hashed again next time
RACY_NS = 2_000_000_000
TRACKED_LIBRARIES = ("numpy", "datasketch", "pandas", "torch", "transformers", "flwr", "pip")


def artifacts_root() -> Path:
    """``$COLLAB_ARTIFACTS`` if set, else ``artifacts/`` at the project root."""
    env = os.environ.get("COLLAB_ARTIFACTS")
    return Path(env).expanduser().resolve() if env else PROJECT_ROOT / "artifacts"


def artifact_key(step: str, config: Any, inputs: Iterable[str] = ()) -> str:
    """Hash of step name, package version, config and input refs (16 hex digits).

    ``inputs`` are the ``Artifact.ref`` strings (``step/key``) of the artifacts the step reads.
    """
    payload = json.dumps(
        {"step": step, "version": __version__, "config": to_dict(config), "inputs": list(inputs)},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


EPOCHS = "epochs"  # a training job's weights after each epoch (round): epochs/1, epochs/2, ...


def snapshot_epochs(art: Artifact) -> list[int]:
    """The epochs (rounds) whose weights a job kept (``epochs/<n>/...``), from its manifest."""
    prefix = f"{EPOCHS}/"
    found = {int(n.split("/")[1]) for n in art.manifest.get("files", {}) if n.startswith(prefix)}
    return sorted(found)


def ref(planned: tuple[str, str]) -> str:
    """``step/key`` of a planned artifact (what an artifact's key lists as its inputs)."""
    step, key = planned
    return f"{step}/{key}"


class NotBuiltError(UserError):
    """A step's result was read before the step ran; the message names the command."""


class ImportedWithoutFile(UserError):
    """A file an export did not carry (model weights, an organization's code) was read."""


@dataclass(frozen=True)
class Artifact:
    """A finished, verified artifact directory and its manifest."""

    step: str
    key: str
    path: Path
    manifest: dict

    @property
    def ref(self) -> str:
        return f"{self.step}/{self.key}"

    @property
    def metrics(self) -> dict:
        return self.manifest.get("metrics", {})

    @property
    def omitted(self) -> list[str]:
        """Files an import left behind (weights, code): see ``collab_lib.exchange``."""
        return self.manifest.get("omitted", [])

    def file(self, name: str) -> Path:
        if name in self.omitted:
            raise ImportedWithoutFile(
                f"{self.ref} was imported from an export, which carries results but not "
                f"{name}: rebuild it here with `python -m collab_lib run STEP --force` (the "
                "step that makes it) or read only what the export carries"
            )
        return self.path / name

    def table(self, name: str) -> pd.DataFrame:
        """The table ``<name>.csv`` (a file with no row and no header reads as empty)."""
        import pandas as pd  # here, not at the top: planning and --help never need it

        try:
            return pd.read_csv(self.file(f"{name}.csv"))
        except pd.errors.EmptyDataError:
            return pd.DataFrame()


def artifact_dir(step: str, key: str, root: Path | None = None) -> Path:
    return (root or artifacts_root()) / step / key


def scratch_dir(
    step: str, config: Any, inputs: Iterable[str] = (), root: Path | None = None
) -> Path:
    """A stable working directory for a long step's own checkpoints, so a rerun after an
    interruption finds them (the step's temporary output directory changes every run)."""
    key = artifact_key(step, config, list(inputs))
    return (root or artifacts_root()) / step / f".scratch-{key}"


def load(step: str, key: str, root: Path | None = None) -> Artifact | None:
    """The artifact if it exists and every file matches its manifest's hash, else None.

    A file's content is hashed once; its size, times, inode and device are then kept in a
    stamp (``.verified.json``) and a later load hashes only what changed since, the way git
    trusts its index. At the paper's scale an artifact holds gigabytes of weights (a model
    and its per-epoch snapshots), and every ``status``, plan and read used to hash them all.
    A change that keeps every one of those (bit rot) is caught only by a full check:
    ``COLLAB_VERIFY=all`` hashes every file again, as every load did before.
    """
    path = artifact_dir(step, key, root)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        return None
    try:
        text = manifest_path.read_text()
        manifest = json.loads(text)
    except (OSError, json.JSONDecodeError):
        return None
    digest = hashlib.sha256(text.encode()).hexdigest()
    stamp = _read_stamp(path, digest)
    trusted = {} if os.environ.get("COLLAB_VERIFY") == "all" else stamp
    omitted = set(manifest.get("omitted", []))  # an import without weights or code
    seen: dict[str, list[int]] = {}
    settled = time.time_ns() - RACY_NS  # a file changed since may change again unseen
    for name, meta in manifest.get("files", {}).items():
        if name in omitted:
            continue
        file = path / name
        try:
            st = file.stat()
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode) or st.st_size != meta["bytes"]:
            return None
        fingerprint = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]
        if trusted.get(name) != fingerprint and sha256_file(file) != meta["sha256"]:
            return None
        if max(st.st_mtime_ns, st.st_ctime_ns) < settled:
            seen[name] = fingerprint
    if seen != stamp:
        _write_stamp(path, digest, seen)
    return Artifact(step, key, path, manifest)


def _read_stamp(path: Path, digest: str) -> dict[str, list[int]]:
    """The files verified against this very manifest, by their stat (empty if none)."""
    try:
        stamp = json.loads((path / STAMP).read_text())
    except (OSError, ValueError):  # unreadable, not UTF-8, not JSON: a hint, never an error
        return {}
    files = stamp.get("files") if isinstance(stamp, dict) else None
    return files if isinstance(files, dict) and stamp.get("manifest") == digest else {}


def _write_stamp(path: Path, digest: str, files: dict[str, list[int]]) -> None:
    """Best effort: a read-only cache is verified in full on every load, as before."""
    tmp = path / f"{STAMP}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    try:
        tmp.write_text(json.dumps({"manifest": digest, "files": files}))
        os.replace(tmp, path / STAMP)
    except OSError:
        tmp.unlink(missing_ok=True)


def require(planned: tuple[str, str], message: str) -> Artifact:
    """The cached artifact a step planned, or :class:`NotBuiltError` with ``message`` (which
    names the command that builds it): what is read is never built on the way."""
    art = load(*planned)
    if art is None:
        raise NotBuiltError(message)
    return art


def require_step(cfg, planned: dict, what: str, step: str) -> Artifact:
    """``planned[what]`` from the cache, or the error that names the command building it
    (``step`` with the user's own profile and settings)."""
    return require(
        planned[what],
        f"{what} is not built for profile {cfg.profile!r} yet: run "
        f"`{cfg.command('run', step)}` first",
    )


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)


def state(step: str, key: str, root: Path | None = None) -> str:
    """``cached`` (verified), ``corrupt`` (exists but fails verification) or ``missing``."""
    if load(step, key, root) is not None:
        return "cached"
    return "corrupt" if artifact_dir(step, key, root).exists() else "missing"


def build(
    step: str,
    config: Any,
    produce: Callable[[Path], dict | None],
    inputs: Iterable[str] = (),
    *,
    seed: int | None = None,
    force: bool = False,
    root: Path | None = None,
) -> Artifact:
    """Return the cached artifact for (step, config, inputs), producing it if needed.

    ``produce(tmp_dir)`` writes the output files into ``tmp_dir`` and returns a small dict
    of metrics for the manifest. A corrupt or partial artifact is recomputed; ``force``
    recomputes a valid one.
    """
    inputs = list(inputs)
    key = artifact_key(step, config, inputs)
    if not force:
        hit = load(step, key, root)
        if hit is not None and not hit.omitted:  # an import without its weights is rebuilt
            log.info("%s %s: cached", step, key)
            return hit
    with building(step, key, root):
        if not force:  # another process built it while this one waited for the lock
            hit = load(step, key, root)
            if hit is not None and not hit.omitted:
                return hit
        return _produce(step, key, config, produce, inputs, seed, root)


@contextlib.contextmanager
def building(step: str, key: str, root: Path | None = None) -> Iterator[None]:
    """Held while one process builds an artifact: another that wants the same one (a cluster's
    worker, a second run on a shared cache) waits, then finds it built. A POSIX lock on a file
    under ``<root>/.locks``: the system releases it when its process dies, ``kill -9`` too
    (on shared storage, a filesystem with working locks: local disks, NFSv4, Lustre)."""
    import fcntl

    path = _lock_path(step, key, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX)
        except OSError as exc:  # a filesystem without locks (Lustre mounted without flock)
            log.warning("no lock for %s/%s (%s): builds here are not guarded", step, key, exc)
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _lock_path(step: str, key: str, root: Path | None) -> Path:
    return (root or artifacts_root()) / ".locks" / f"{step}-{key}.lock"


def _being_built(step: str, key: str, root: Path | None) -> bool:
    """Whether a process (on any machine sharing the cache) holds the artifact's lock."""
    import fcntl

    path = _lock_path(step, key, root)
    if not path.exists():
        return False
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


def _produce(step, key, config, produce, inputs: list[str], seed, root) -> Artifact:
    final = artifact_dir(step, key, root)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        start = time.perf_counter()
        metrics = produce(tmp) or {}
        wall_s = time.perf_counter() - start
        files = {
            str(p.relative_to(tmp)): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            for p in sorted(tmp.rglob("*"))
            if p.is_file()
        }
        manifest = {
            "step": step,
            "key": key,
            "config": to_dict(config),
            "seed": seed,
            "inputs": inputs,
            "package_version": __version__,
            "libraries": library_versions(),
            "machine": machine(),
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "wall_s": round(wall_s, 3),
            "metrics": metrics,
            "files": files,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("%s %s: built in %.1f s", step, key, wall_s)
    return Artifact(step, key, final, manifest)


def replace_dir(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; a stale or corrupt ``final`` is moved aside first."""
    if final.exists():
        trash = final.parent / f".trash-{final.name}-{uuid.uuid4().hex[:8]}"
        os.replace(final, trash)
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(tmp, final)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    """Versions of Python and of the libraries that can change a result."""
    out = {"python": platform.python_version(), "platform": sys.platform}
    for name in TRACKED_LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def machine() -> dict:
    """Where an artifact was made: platform, CPU, and the GPU if the run used one.

    On a CPU, torch's thread count (one per core unless ``OMP_NUM_THREADS`` says otherwise)
    changes how sums are split, so the same seed is bit-identical only at the same count.
    """
    out = {
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
    }
    torch = sys.modules.get("torch")  # only if a step loaded it: never imported for this
    if torch is not None:
        out["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            out["gpu"] = torch.cuda.get_device_name(0)
    return out


def lineage(artifact: Artifact, root: Path | None = None) -> list[Artifact]:
    """The artifact and every input it was built from (depth-first, each once)."""
    seen: dict[str, Artifact] = {}
    stack = [artifact]
    while stack:
        art = stack.pop()
        if art.key in seen:
            continue
        seen[art.key] = art
        for ref in art.manifest.get("inputs", []):
            step, _, key = ref.rpartition("/")
            dep = load(step, key, root)
            if dep is not None:
                stack.append(dep)
    return list(seen.values())


def clean_tmp(root: Path | None = None) -> int:
    """Remove temporary directories left by runs that died (their process is gone, and no
    process on any machine holds their artifact's lock)."""
    base = root or artifacts_root()
    removed = 0
    for stamp in base.glob(f"*/*/{STAMP}.*"):  # a stamp's write killed before its rename
        pid = stamp.name.removeprefix(f"{STAMP}.").split(".")[0]
        if not (pid.isdigit() and _alive(int(pid))):
            stamp.unlink(missing_ok=True)
    for path in list(base.glob("*/.tmp-*")) + list(base.glob("*/.trash-*")):
        parts = path.name.split("-")
        if path.name.startswith(".tmp-") and len(parts) >= 4 and _alive(int(parts[2])):
            continue
        if path.name.startswith(".tmp-") and _being_built(path.parent.name, parts[1], root):
            continue  # another machine's build in progress (a shared cache)
        shutil.rmtree(path, ignore_errors=True)
        removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
