"""The steps of the study, in order, and what each produces.

Each step has a ``run`` (build or fetch from cache), a ``plan`` (the keys of every artifact
it needs, computed from the config alone, so ``status`` never runs anything) and the names
of the tables it writes. Later research questions add their steps here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from collab_lib import (
    artifacts,
    canaries,
    clone_stats,
    collaboration,
    datasets,
    evaluation,
    findings,
    membership,
    memorization,
)
from collab_lib.config import Config, UserError


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[..., Any]
    # (config, the plans of the steps before it) -> {what: (step, key)}, computed from the
    # config alone: ``status`` never runs anything
    plan: Callable[[Config, dict], dict[str, tuple[str, str]]]
    tables: tuple[str, ...]
    description: str
    in_book: bool = True  # the book's notebooks read its artifacts


STEPS: dict[str, Step] = {
    "datasets": Step(
        "datasets",
        datasets.build_datasets,
        datasets.plan,
        datasets.TABLES,
        "download, preprocess and split each organization's code (Tables 2-4)",
    ),
    "clones": Step(
        "clones",
        clone_stats.build_clone_stats,
        clone_stats.plan,
        clone_stats.TABLES,
        "Type-1 clones within and across organizations (Figure 2, Table 7)",
    ),
    "canaries": Step(
        "canaries",
        canaries.build_canaries,
        canaries.plan,
        canaries.TABLES,
        "secrets planted in each organization's training split (memorization at any scale)",
    ),
    "train": Step(
        "train",
        collaboration.build_models,
        collaboration.plan,
        (),
        "base model and the collaborative models (Flower for the federated ones)",
    ),
    "rq1": Step(
        "rq1",
        evaluation.build_rq1,
        evaluation.plan,
        evaluation.TABLES,
        "RQ1 effectiveness: perplexity and pass@k in a sandbox (Table 8)",
    ),
    "rq2": Step(
        "rq2",
        memorization.build_rq2,
        memorization.plan_rq2,
        memorization.RQ2_TABLES,
        "RQ2 memorization: Tables 6, 9, 10, canary exposure and extraction, duplication",
    ),
    "rq3": Step(
        "rq3",
        memorization.build_rq3,
        memorization.plan_rq3,
        memorization.RQ3_TABLES,
        "RQ3 cross-organization clones memorized (Table 11)",
    ),
    "membership": Step(
        "membership",
        membership.build_membership,
        membership.plan,
        membership.TABLES,
        "Table 5: membership signals (PPL/zlib, Min-K%++, loss - base) and their ROC AUC",
    ),
    "findings": Step(
        "findings",
        findings.build_findings,
        findings.plan,
        findings.TABLES,
        "the paper's seven findings, each with a verdict computed from this run (all seeds)",
    ),
}
# steps that combine every seed's results, and so run once, after the others ran per seed
ACROSS_SEEDS = ("findings",)


class NotBuiltError(UserError):
    """A table was asked for before the step that makes it ran."""


def run(step: str, cfg: Config, *, force: bool = False) -> list[Any]:
    """Run one step, every step in order for ``all``, or those the book reads for ``book``."""
    if step == "all":
        names = list(STEPS)
    elif step == "book":
        names = [name for name, s in STEPS.items() if s.in_book]
    else:
        names = [step]
    out = []
    for name in names:
        seeds = cfg.run_seeds[:1] if name in ACROSS_SEEDS else cfg.run_seeds
        out += [STEPS[name].run(cfg.with_seed(s), force=force) for s in seeds]
    return out


def plans(cfg: Config) -> dict[str, dict[str, tuple[str, str]] | UserError]:
    """Every step's plan, each computed once and handed to the steps after it; a step whose
    plan needs an earlier step's output (the RQ3 pair needs the datasets) gets the error."""
    out: dict[str, dict | UserError] = {}
    upstream: dict[str, tuple[str, str]] = {}
    for step in STEPS.values():
        try:
            out[step.name] = step.plan(cfg, upstream)
            upstream |= out[step.name]
        except UserError as exc:
            out[step.name] = exc
    return out


def status(cfg: Config) -> list[dict[str, str]]:
    """One row per planned artifact: step, what, key and state (cached/missing/corrupt);
    with several seeds, every seed's artifacts (the findings' once)."""
    rows = []
    for seed in cfg.run_seeds:
        for row in _status(cfg.with_seed(seed)):
            across = row["step"] in ACROSS_SEEDS
            if across and seed != cfg.run_seeds[0]:
                continue  # planned once, for all seeds
            if len(cfg.run_seeds) > 1 and not across:
                row["artifact"] += f" (seed {seed})"
            rows.append(row)
    return rows


def _status(cfg: Config) -> list[dict[str, str]]:
    rows = []
    for name, planned in plans(cfg).items():
        if isinstance(planned, UserError):  # e.g. which models to train depends on the datasets
            rows.append({"step": name, "artifact": str(planned), "key": "-", "state": "missing"})
            continue
        for what, (art_step, key) in planned.items():
            rows.append(
                {
                    "step": name,
                    "artifact": what,
                    "key": key,
                    "state": artifacts.state(art_step, key),
                }
            )
    return rows


def step_of_table(name: str) -> Step:
    for step in STEPS.values():
        if name in step.tables:
            return step
    known = ", ".join(t for s in STEPS.values() for t in s.tables)
    raise UserError(f"unknown table {name!r} (known tables: {known})")


def table(name: str, cfg: Config) -> pd.DataFrame:
    """A produced table; raises NotBuiltError naming the command that makes it."""
    step = step_of_table(name)
    art = artifacts.load(*step.plan(cfg)[step.name])
    if art is None:
        raise NotBuiltError(
            f"table {name} is not built for profile {cfg.profile!r} yet: run "
            f"`{cfg.command('run', step.name)}` first"
        )
    return art.table(name)


def planned_artifacts(cfg: Config) -> list[artifacts.Artifact]:
    """Every cached artifact the profile's steps use, with the inputs they were built from."""
    seen: dict[str, artifacts.Artifact] = {}
    for seed in cfg.run_seeds:
        for name, planned in plans(cfg.with_seed(seed)).items():
            if not STEPS[name].in_book or isinstance(planned, UserError):
                continue
            for art_step, key in planned.values():
                art = artifacts.load(art_step, key)
                if art is not None:
                    for a in artifacts.lineage(art):
                        seen.setdefault(a.ref, a)
    return sorted(seen.values(), key=lambda a: (a.step, a.key))
