"""The clone figures of the paper: internal clones per organization (Figure 2) and the
clone blocks organizations have in common (Table 7), with and without vendored code.

Both run the Type-1 detector of :mod:`collab_lib.clones` on the training splits of the
datasets step. Vendored third-party modules (sources marked ``vendored``) are what makes
first-party code of different organizations share code at all; the "natural" rows leave them
out, so the book shows both.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from collab_lib import artifacts, datasets
from collab_lib.clones import CloneOptions, build_corpus, cross_clones, summarize_self
from collab_lib.config import Config

STEP = "clones"
TABLES = ("figure2", "table7", "table7_blocks")
PAPER_TABLE7 = {"Microsoft ∩ Google": (316, 7_536), "all three": (41, None)}


def clone_options(cfg: Config) -> CloneOptions:
    c = cfg.clones
    return CloneOptions(c.min_lines, c.mode, c.slash_comments)


def plan(cfg: Config) -> dict[str, tuple[str, str]]:
    keys = datasets.plan(cfg)
    ref = "{}/{}".format(*keys["datasets"])
    return {"clones": (STEP, artifacts.artifact_key(STEP, _step_config(cfg), [ref]))}


def _step_config(cfg: Config) -> dict:
    return {"clones": cfg.clones, "seed": cfg.seed}


def build_clone_stats(cfg: Config, *, force: bool = False) -> artifacts.Artifact:
    """Figure 2 and Table 7 from the organizations' training splits (cached)."""
    ds = datasets.datasets_for(cfg)
    return artifacts.build(
        STEP,
        _step_config(cfg),
        lambda out: _write(ds, clone_options(cfg), out),
        [ds.artifact.ref],
        seed=cfg.seed,
        force=force,
    )


def _train_docs(ds: datasets.Datasets, org: str, natural: bool) -> list[tuple[str, str]]:
    """An organization's training files; ``natural`` leaves out its vendored sources."""
    vendored = tuple(s["label"] + "/" for s in ds.summary(org)["sources"] if s.get("vendored"))
    docs = [(d["path"], d["content"]) for d in ds.documents(org, "train")]
    return [d for d in docs if not d[0].startswith(vendored)] if natural else docs


def _write(ds: datasets.Datasets, opts: CloneOptions, out: Path) -> dict:
    orgs = list(ds.corpora)
    scenarios = {"with vendored code": False, "natural (first-party only)": True}
    # each organization's training split is read and scanned once per scenario
    corpora = {
        scenario: {o: build_corpus(_train_docs(ds, o, natural), opts) for o in orgs}
        for scenario, natural in scenarios.items()
    }
    rows = []
    for org in orgs:
        mb = ds.summary(org)["splits"]["train"]["bytes"] / datasets.MB
        s = summarize_self(corpora["with vendored code"][org], opts)
        rows.append(
            {
                "organization": org,
                "train_mb": round(mb, 3),
                "counted_lines": s["counted_lines"],
                "clone_blocks": s["blocks"],
                "clone_loc": s["block_lines"],
                "clone_blocks_per_mb": round(s["blocks"] / max(mb, 1e-9), 2),
                "clone_loc_per_mb": round(s["block_lines"] / max(mb, 1e-9), 2),
            }
        )
    pd.DataFrame(rows).to_csv(out / "figure2.csv", index=False)

    table, blocks = [], []
    for scenario in scenarios:
        pairs = [("Microsoft ∩ Google", ["Microsoft", "Google"]), ("all three", orgs)]
        for name, members in pairs:
            if not all(m in corpora[scenario] for m in members):
                continue
            report = cross_clones([corpora[scenario][m] for m in members], opts)
            paper_blocks, paper_lines = PAPER_TABLE7.get(name, (None, None))
            table.append(
                {
                    "scenario": scenario,
                    "organizations": name,
                    "blocks": len(report.blocks),
                    "lines": sum(b.lines for b in report.blocks),
                    "paper_blocks": paper_blocks,
                    "paper_lines": paper_lines,
                }
            )
            blocks += [
                {"scenario": scenario, "organizations": name, **b.__dict__} for b in report.blocks
            ]
    pd.DataFrame(table).to_csv(out / "table7.csv", index=False)
    pd.DataFrame(blocks).to_csv(out / "table7_blocks.csv", index=False)
    (out / "options.json").write_text(json.dumps(opts.__dict__))
    return {"table7": table}


def clone_stats_for(cfg: Config) -> artifacts.Artifact:
    """The profile's clone statistics: from the cache when present, else computed now."""
    return artifacts.load(*plan(cfg)["clones"]) or build_clone_stats(cfg)


def table(art: artifacts.Artifact, name: str) -> pd.DataFrame:
    return pd.read_csv(art.file(f"{name}.csv"))
