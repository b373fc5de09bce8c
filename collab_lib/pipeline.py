"""The steps of the study, in order: the one way to plan, run and read them.

Each step is declared here by name, with the module that holds its ``plan`` and its build
function, and the tables it writes. The modules are imported only when a step is planned,
run or read, so ``--help`` and the clone detector load none of them, and planning loads no
torch, transformers or Flower (each step imports those where it trains or scores a model).

- :func:`plans` is the only route to a key: each step's ``plan(cfg, upstream)`` takes the
  plans of the steps before it and reads nothing else, so a key is computed once and handed
  down. One fact depends on data rather than the config: which two organizations form the
  RQ3 pair when the profile gives neither the pair nor every size
  (:func:`collab_lib.datasets.rq3_pair` reads the datasets' summary); the steps whose
  declaration says ``reads_data`` need the datasets built before they can be planned.
- :func:`run` builds a step, handing it the plans it needs.
- :func:`load` is the one door for reading: a step's result from the cache, or
  :class:`NotBuiltError` with the exact command that builds it. Notebooks read through it
  and can build nothing.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from collab_lib import artifacts
from collab_lib.artifacts import NotBuiltError
from collab_lib.config import Config, UserError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["STEPS", "NotBuiltError", "load", "plans", "run", "status", "table"]


@dataclass(frozen=True)
class Step:
    """One step: ``module`` holds ``plan(cfg, upstream)`` and ``build(cfg, planned, force=)``
    (``load(cfg, planned)`` too, where its result is more than one artifact)."""

    name: str
    module: str
    build: str
    tables: tuple[str, ...]
    description: str
    in_book: bool = True  # the book's notebooks read its artifacts
    across_seeds: bool = False  # runs once and combines every seed's results
    reads_data: bool = False  # its plan needs the datasets built (the RQ3 pair; see above)

    @property
    def code(self) -> Any:
        return importlib.import_module(f"collab_lib.{self.module}")

    def plan(self, cfg: Config, upstream: dict) -> dict[str, tuple[str, str]]:
        return self.code.plan(cfg, upstream)


STEPS: dict[str, Step] = {
    s.name: s
    for s in (
        Step("datasets", "datasets", "build_datasets",
             ("table2", "table3", "table4", "funnel", "skipped"),
             "download, preprocess and split each organization's code (Tables 2-4)"),
        Step("clones", "clone_stats", "build_clone_stats", ("figure2", "table7", "table7_blocks"),
             "Type-1 clones within and across organizations (Figure 2, Table 7)"),
        Step("canaries", "canaries", "build_canaries", ("canaries",),
             "secrets planted in each organization's training split (memorization at any scale)"),
        Step("train", "collaboration", "build_models", (),
             "base model and the collaborative models (Flower for the federated ones)",
             reads_data=True),
        Step("rq1", "evaluation", "build_rq1",
             ("table8", "table8_harness", "table8_temperatures", "perplexity_by_org"),
             "RQ1 effectiveness: perplexity and pass@k in a sandbox (Table 8)", reads_data=True),
        Step("rq2", "memorization", "build_rq2",
             ("table6", "table9", "table10", "exposure", "duplication", "memorized"),
             "RQ2 memorization: Tables 6, 9, 10, canary exposure and extraction, duplication",
             reads_data=True),
        Step("rq3", "cross_org", "build_rq3", ("table11", "table11_prompts"),
             "RQ3 cross-organization clones memorized (Table 11)", reads_data=True),
        Step("membership", "membership", "build_membership", ("table5", "membership_auc"),
             "Table 5: membership signals (PPL/zlib, Min-K%++, loss - base) and their ROC AUC",
             reads_data=True),
        Step("findings", "findings", "build_findings", ("findings",),
             "the paper's seven findings, each with a verdict computed from this run (all seeds)",
             across_seeds=True, reads_data=True),
    )
}  # fmt: skip


def plans(cfg: Config) -> dict[str, dict[str, tuple[str, str]] | UserError]:
    """Every step's plan for ``cfg.seed``, each computed once and handed to the steps after
    it; a step that cannot be planned yet (the RQ3 pair needs the datasets) gets the error,
    and so do the steps after it."""
    per_seed = {s: _seed_plans(cfg.with_seed(s)) for s in dict.fromkeys((cfg.seed, *cfg.run_seeds))}
    out = dict(per_seed[cfg.seed])
    for step in STEPS.values():
        if step.across_seeds:
            failed = [e for s in cfg.run_seeds for e in _errors(per_seed[s])]
            seeds = {s: _flat(per_seed[s]) for s in cfg.run_seeds} if not failed else {}
            out[step.name] = failed[0] if failed else step.plan(cfg, seeds)
    return out


def _seed_plans(cfg: Config) -> dict[str, dict | UserError]:
    out: dict[str, dict | UserError] = {}
    upstream: dict[str, tuple[str, str]] = {}
    for step in STEPS.values():
        if step.across_seeds:
            continue
        if isinstance(failed := next(iter(_errors(out)), None), UserError):
            out[step.name] = failed
            continue
        try:
            out[step.name] = step.plan(cfg, upstream)
            upstream |= out[step.name]
        except UserError as exc:
            out[step.name] = exc
    return out


def _errors(planned: dict) -> list[UserError]:
    return [p for p in planned.values() if isinstance(p, UserError)]


def _flat(planned: dict[str, dict | UserError]) -> dict[str, tuple[str, str]]:
    """Every artifact planned, by name (what a step's ``upstream`` and ``planned`` are)."""
    out: dict[str, tuple[str, str]] = {}
    for p in planned.values():
        if isinstance(p, UserError):
            raise p
        out |= p
    return out


def planned_for(step: str, cfg: Config) -> dict:
    """What ``step`` is handed to build or read: the plans of every step up to it (for a step
    across seeds, each seed's plans)."""
    s = STEPS[step]
    if s.across_seeds:
        return {seed: _flat(_seed_plans(cfg.with_seed(seed))) for seed in cfg.run_seeds}
    planned = _seed_plans(cfg)
    names = list(STEPS)
    return _flat({n: planned[n] for n in names[: names.index(step) + 1]})


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
        s = STEPS[name]
        build = getattr(s.code, s.build)
        for seed in cfg.run_seeds[:1] if s.across_seeds else cfg.run_seeds:
            seed_cfg = cfg.with_seed(seed)
            # planned now, not before the loop: a step's plan may need the steps before it
            out.append(build(seed_cfg, planned_for(name, seed_cfg), force=force))
    return out


def load(step: str, cfg: Config) -> Any:
    """A step's result from the cache (the datasets, the models, or the step's artifact);
    :class:`NotBuiltError` names the command that builds it. Never builds anything."""
    s = STEPS[step]
    try:
        planned = planned_for(step, cfg)
    except NotBuiltError:
        raise
    except UserError as exc:  # the RQ3 pair needs the datasets: say what to run
        raise NotBuiltError(str(exc)) from None
    if hasattr(s.code, "load"):
        return s.code.load(cfg, planned)
    if s.across_seeds:
        planned = s.plan(cfg, planned)
    return artifacts.require_step(cfg, planned, step, step)


def status(cfg: Config) -> list[dict[str, str]]:
    """One row per planned artifact: step, what, key and state (cached/missing/corrupt);
    with several seeds, every seed's artifacts (the findings' once)."""
    rows = []
    for seed in cfg.run_seeds:
        for row in _status(cfg.with_seed(seed)):
            across = STEPS[row["step"]].across_seeds
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
    planned = plans(cfg)[step.name]
    if isinstance(planned, UserError):
        raise NotBuiltError(str(planned))
    art = artifacts.load(*planned[step.name])
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
