"""The Reproducibility page: every artifact the book was built from, and how to rebuild it."""

from __future__ import annotations

import hashlib
import html
import json

import pandas as pd

from collab_lib import artifacts, pipeline
from collab_lib.config import Config, settings_digest, settings_text


def content_digest(art: artifacts.Artifact) -> str:
    """One hash over the hashes of an artifact's files (what ``status`` verifies)."""
    files = art.manifest.get("files", {})
    joined = "".join(f"{name}:{meta['sha256']}" for name, meta in sorted(files.items()))
    return hashlib.sha256(joined.encode()).hexdigest()[:16]


def provenance_table(cfg: Config) -> pd.DataFrame:
    """One row per artifact behind the book."""
    names = {
        f"{art_step}/{key}": what
        for planned in pipeline.plans(cfg).values()
        if isinstance(planned, dict)
        for what, (art_step, key) in planned.items()
    }
    rows = []
    for art in pipeline.planned_artifacts(cfg):
        m = art.manifest
        rows.append(
            {
                "artifact": names.get(art.ref) or _unnamed(art, names),
                "step": art.step,
                "key": art.key,
                "created_utc": m.get("created_utc"),
                "wall_s": m.get("wall_s"),
                "seed": "—" if m.get("seed") is None else str(m["seed"]),
                "files": len(m.get("files", {})),
                "content_sha256": content_digest(art),
                "collab_lib": m.get("package_version"),
                "made on": made_on(m.get("machine")),
            }
        )
    return pd.DataFrame(rows)


def _unnamed(art: artifacts.Artifact, names: dict[str, str]) -> str:
    """An artifact no plan names: an incremental model's earlier stage says what it trained on
    and from which model (several stages would read alike as "stage")."""
    data, inputs = art.metrics.get("data"), art.manifest.get("inputs", [])
    if art.step != "stage" or not data or not inputs:
        return art.step
    start = names.get(inputs[0], "an earlier stage")
    return f"stage: {', '.join(data)}, from {start}"


def made_on(machine: dict | None) -> str:
    """``GPU`` or ``CPU (n cores, t torch threads)`` from a manifest's machine record ("—"
    before it existed; no threads for a step that never loaded torch, or recorded before)."""
    if not machine:
        return "—"
    if machine.get("gpu"):
        return machine["gpu"]
    threads = machine.get("torch_threads")
    where = f"{machine.get('cpus')} cores" + (f", {threads} torch threads" if threads else "")
    return f"{machine.get('cpu') or 'CPU'} ({where})"


def library_table(cfg: Config) -> pd.DataFrame:
    """The library versions the artifacts were built with (several if they differ)."""
    versions: dict[str, set[str]] = {}
    for art in pipeline.planned_artifacts(cfg):
        for lib, version in art.manifest.get("libraries", {}).items():
            versions.setdefault(lib, set()).add(version)
    rows = [{"library": k, "versions": ", ".join(sorted(v))} for k, v in sorted(versions.items())]
    return pd.DataFrame(rows, columns=["library", "versions"])


def provenance_details_html(cfg: Config) -> str:
    """Each artifact's full config, inputs and file hashes, folded under its key."""
    parts = []
    for art in pipeline.planned_artifacts(cfg):
        m = art.manifest
        keys = ("config", "inputs", "seed", "libraries", "machine", "metrics", "files", "omitted")
        body = {k: m.get(k) for k in keys}
        summary = f"<code>{art.step}/{art.key}</code>"
        parts.append(_folded(summary, json.dumps(body, indent=1, sort_keys=True)))
    return "\n".join(parts)


def settings_html(cfg: Config) -> str:
    """The resolved settings (:func:`collab_lib.config.settings_text`), folded under their hash."""
    summary = f"settings <code>{settings_digest(cfg)}</code> (profile {html.escape(cfg.profile)})"
    return _folded(summary, settings_text(cfg))


def _folded(summary: str, text: str) -> str:
    """``text`` in a scrolling block, folded under ``summary`` (HTML)."""
    return (
        f"<details><summary>{summary}</summary>"
        f"<pre style='max-height:30em;overflow:auto'>{html.escape(text)}</pre></details>"
    )
