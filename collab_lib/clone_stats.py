"""The clone figures of the paper: internal clones per organization (Figure 2) and the
clone blocks organizations have in common (Table 7), with and without vendored code.

Both run the Type-1 detector of :mod:`collab_lib.clones` on the training splits of the
datasets step. Vendored third-party modules (sources marked ``vendored``, at most
``datasets.vendored_max_fraction`` of an organization's training lines) are what makes
first-party code of different organizations share code at all. Figure 2 describes each
organization's own code, with its vendored copies in a row of their own; Table 7 is given
with the vendored code and without it (the "natural" rows), so the book shows both.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from collab_lib import artifacts, datasets
from collab_lib.clones import CloneOptions, Corpus, build_corpus, cross_clones, summarize_self
from collab_lib.config import Config

STEP = "clones"
# keyed by the organizations a row is about, so a user's own organizations get no paper value
PAPER_TABLE7 = {
    frozenset({"Microsoft", "Google"}): (316, 7_536),
    frozenset({"Facebook", "Microsoft", "Google"}): (41, None),
}
# The paper's Table 7 "Total Lns" (lines of code in the training data): Google 12,040,783,
# Microsoft 6,501,197, so its 7,536 common lines are 7,536 / 18,541,980 = 0.041 % of the
# union of the two training splits (0.063 % of Google's alone). Facebook's is not given.
PAPER_TRAIN_LINES = {frozenset({"Microsoft", "Google"}): 12_040_783 + 6_501_197}


def clone_options(cfg: Config) -> CloneOptions:
    c = cfg.clones
    return CloneOptions(c.min_lines, c.mode, c.slash_comments)


def plan(cfg: Config, upstream: dict) -> dict[str, tuple[str, str]]:
    """The clone statistics' key, from the datasets step's plan."""
    ref = artifacts.ref(upstream["datasets"])
    return {STEP: (STEP, artifacts.artifact_key(STEP, _step_config(cfg), [ref]))}


def _step_config(cfg: Config) -> dict:
    return {"clones": cfg.clones, "seed": cfg.seed, "rq3_pair": cfg.collaboration.rq3_pair}


def build_clone_stats(cfg: Config, planned: dict, *, force: bool = False) -> artifacts.Artifact:
    """Figure 2 and Table 7 from the organizations' training splits (cached)."""
    ds = datasets.load(cfg, planned)
    return artifacts.build(
        STEP,
        _step_config(cfg),
        lambda out: _write(cfg, ds, clone_options(cfg), out),
        [ds.artifact.ref],
        seed=cfg.seed,
        force=force,
    )


def _train_docs(ds: datasets.Datasets, org: str) -> dict[str, list[tuple[str, str]]]:
    """An organization's training files: ``own`` code and ``vendored`` copies."""
    vendored = tuple(s["label"] + "/" for s in ds.summary(org)["sources"] if s.get("vendored"))
    docs = {"own": [], "vendored": []}
    for d in ds.documents(org, "train"):
        part = "vendored" if vendored and d["path"].startswith(vendored) else "own"
        docs[part].append((d["path"], d["content"]))
    return docs


def _write(cfg: Config, ds: datasets.Datasets, opts: CloneOptions, out: Path) -> dict:
    orgs = list(ds.corpora)
    docs = {o: _train_docs(ds, o) for o in orgs}
    scenarios = {"with vendored code": ("own", "vendored"), "natural (first-party only)": ("own",)}
    corpora = {
        scenario: {o: build_corpus([d for p in parts for d in docs[o][p]], opts) for o in orgs}
        for scenario, parts in scenarios.items()
    }
    # Figure 2: each organization's own code; then its vendored copies, if any, on their own
    rows = [
        _internal(org, corpora["natural (first-party only)"][org], docs[org]["own"], opts)
        for org in orgs
    ]
    for org in orgs:
        if docs[org]["vendored"]:
            label = datasets.vendored_label(ds.summary(org))
            corpus = build_corpus(docs[org]["vendored"], opts)
            rows.append(_internal(label, corpus, docs[org]["vendored"], opts, vendored=True))
    pd.DataFrame(rows).to_csv(out / "figure2.csv", index=False)

    table, blocks = [], []
    pair = datasets.rq3_pair(cfg, ds)  # the RQ3 pair: Microsoft and Google in the paper
    groups = [(" ∩ ".join(pair), list(pair))]
    if len(orgs) > 2:
        groups.append(("all three" if len(orgs) == 3 else f"all {len(orgs)}", list(orgs)))
    for scenario in scenarios:
        for name, members in groups:
            if not all(m in corpora[scenario] for m in members):
                continue
            report = cross_clones([corpora[scenario][m] for m in members], opts)
            paper_blocks, paper_lines = PAPER_TABLE7.get(frozenset(members), (None, None))
            paper_train_lines = PAPER_TRAIN_LINES.get(frozenset(members))
            lines = sum(b.lines for b in report.blocks)
            # counted lines (Simian's "significant" lines) of the members' training splits
            train_lines = sum(corpora[scenario][m].n_lines for m in members)
            table.append(
                {
                    "scenario": scenario,
                    "organizations": name,
                    "blocks": len(report.blocks),
                    "lines": lines,
                    "paper_blocks": paper_blocks,
                    "paper_lines": paper_lines,
                    "train_lines": train_lines,
                    "paper_train_lines": paper_train_lines,
                    "shared_pct": round(100 * lines / max(train_lines, 1), 3),
                    "paper_shared_pct": (
                        round(100 * paper_lines / paper_train_lines, 3)
                        if paper_train_lines
                        else None
                    ),
                }
            )
            blocks += [
                {"scenario": scenario, "organizations": name, **b.__dict__} for b in report.blocks
            ]
    pd.DataFrame(table).to_csv(out / "table7.csv", index=False)
    pd.DataFrame(blocks).to_csv(out / "table7_blocks.csv", index=False)
    (out / "options.json").write_text(json.dumps(opts.__dict__))
    return {"table7": table}


def _internal(
    label: str,
    corpus: Corpus,
    docs: list[tuple[str, str]],
    opts: CloneOptions,
    *,
    vendored: bool = False,
) -> dict:
    """One row of Figure 2: internal clone blocks and clone LOC, also per MB of ``docs``."""
    mb = sum(len(text.encode("utf-8")) for _, text in docs) / datasets.MB
    s = summarize_self(corpus, opts)
    return {
        "organization": label,
        "vendored": vendored,
        "train_mb": round(mb, 3),
        "counted_lines": s["counted_lines"],
        "clone_blocks": s["blocks"],
        "clone_loc": s["block_lines"],
        "clone_blocks_per_mb": round(s["blocks"] / max(mb, 1e-9), 2),
        "clone_loc_per_mb": round(s["block_lines"] / max(mb, 1e-9), 2),
    }
