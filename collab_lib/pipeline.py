"""The steps of the study, in order: the one way to plan, run and read them.

Each step is declared here by name, with the module that holds its ``plan`` and its build
function, and the tables it writes. The modules are imported only when a step is planned,
run or read, so ``--help`` and the clone detector load none of them, and planning loads no
torch, transformers or Flower (each step imports those where it trains or scores a model).

- :func:`plans` is the only route to a key: each step's ``plan(cfg, upstream)`` takes the
  plans of the steps before it and reads nothing else, so a key is computed once and handed
  down. One fact depends on data rather than the config: which two organizations form the
  RQ3 pair when the profile gives neither the pair nor every size
  (:func:`collab_lib.datasets.rq3_pair` reads the datasets' summary), so from ``train`` on
  (the roster) a step can be planned only once the datasets are built.
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

__all__ = ["STEPS", "NotBuiltError", "dependencies", "load", "plans", "run", "status", "table"]


@dataclass(frozen=True)
class Step:
    """One step: ``module`` holds ``plan(cfg, upstream)`` and ``build(cfg, planned, force=)``
    (``load(cfg, planned)`` too, where its result is more than one artifact)."""

    name: str
    module: str
    build: str
    tables: tuple[str, ...]
    description: str
    label: str = ""  # what the workflow figure says of it
    beyond: bool = False  # beyond the paper (the figure shades it)
    parts: str = ""  # its module's function of independent pieces (a cluster's tasks)
    in_book: bool = True  # the book's notebooks read its artifacts
    across_seeds: bool = False  # runs once and combines every seed's results

    @property
    def code(self) -> Any:
        return importlib.import_module(f"collab_lib.{self.module}")

    def plan(self, cfg: Config, upstream: dict) -> dict[str, tuple[str, str]]:
        return self.code.plan(cfg, upstream)


STEPS: dict[str, Step] = {
    s.name: s
    for s in (
        Step(
            "datasets",
            "datasets",
            "build_datasets",
            ("table2", "table3", "table4", "funnel", "skipped"),
            "download, preprocess and split each organization's code (Tables 2-4)",
            label="code of each organization,\nsplit (Tables 2-4)",
        ),
        Step(
            "clones",
            "clone_stats",
            "build_clone_stats",
            ("figure2", "table7", "table7_blocks"),
            "Type-1 clones within and across organizations (Figure 2, Table 7)",
            label="Type-1 clones\n(Figure 2, Table 7)",
        ),
        Step(
            "canaries",
            "canaries",
            "build_canaries",
            ("canaries",),
            "secrets planted in each organization's training split (memorization at any scale)",
            label="secrets planted\nin training code",
            beyond=True,
        ),
        Step(
            "psi",
            "psi",
            "build_psi",
            ("psi_accuracy", "psi_cost", "psi_messages"),
            "clone removal without sharing code: private set intersection of clone windows",
            label="shared clones found\nwithout sharing code",
            beyond=True,
        ),
        # from here on, the roster: planned once the datasets are built when it takes the RQ3
        # pair from the data (datasets.rq3_pair)
        Step(
            "train",
            "collaboration",
            "build_models",
            (),
            "base model and the collaborative models (Flower for the federated ones)",
            label="centralized, federated,\nincremental models",
        ),
        Step(
            "rq1",
            "evaluation",
            "build_rq1",
            ("table8", "table8_harness", "table8_temperatures", "perplexity_by_org"),
            "RQ1 effectiveness: perplexity and pass@k in a sandbox (Table 8)",
            label="RQ1: perplexity,\npass@k (Table 8)",
            parts="parts",
        ),
        Step(
            "rq2",
            "memorization",
            "build_rq2",
            (
                "table6",
                "table9",
                "table10",
                "thresholds",
                "exposure",
                "duplication",
                "extractable",
                "memorized",
            ),
            "RQ2 memorization: Tables 6, 9, 10, canary exposure, duplication, k-extractability",
            label="RQ2: memorization\n(Tables 6, 9, 10)",
            parts="parts",
        ),
        Step(
            "rq3",
            "cross_org",
            "build_rq3",
            ("table11", "table11_prompts", "table11_thresholds"),
            "RQ3 cross-organization clones memorized (Table 11)",
            label="RQ3: shared clones\nmemorized (Table 11)",
        ),
        Step(
            "curves",
            "curves",
            "build_curves",
            ("curves",),
            "every setting as a curve: perplexity, canary exposure, k-extractability per epoch",
            label="every setting\nas a curve",
            parts="parts",
            beyond=True,
        ),
        Step(
            "privacy",
            "dp_audit",
            "build_privacy",
            ("privacy",),
            "differential privacy: ε from the accountant and from a one-run audit, per model",
            label="differential privacy:\nε and its audit",
            beyond=True,
        ),
        Step(
            "membership",
            "membership",
            "build_membership",
            ("table5", "membership_auc"),
            "Table 5: membership signals (PPL/zlib, Min-K%++, loss - base) and their ROC AUC",
            label="membership signals\n(Table 5)",
            parts="parts",
        ),
        Step(
            "findings",
            "findings",
            "build_findings",
            ("findings", "psi_findings", "tradeoff_findings"),
            "the paper's seven findings, each with a verdict computed from this run (all seeds)",
            label="seven findings,\neach a verdict",
            across_seeds=True,
        ),
    )
}


def plans(cfg: Config) -> dict[str, dict[str, tuple[str, str]] | UserError]:
    """Every step's plan for ``cfg.seed``, each computed once and handed to the steps after
    it; a step that cannot be planned yet (the RQ3 pair needs the datasets) gets the error,
    and so do the steps after it."""
    return _all_plans(cfg)[cfg.seed]


def _all_plans(cfg: Config) -> dict[int, dict[str, dict | UserError]]:
    """:func:`plans` for ``cfg.seed`` and each of ``cfg.run_seeds``, every seed planned once;
    the steps across seeds are planned from all of them."""
    per_seed = {s: _seed_plans(cfg.with_seed(s)) for s in dict.fromkeys((cfg.seed, *cfg.run_seeds))}
    for step in STEPS.values():
        if not step.across_seeds:
            continue
        failed = [e for s in cfg.run_seeds for e in _errors(per_seed[s])]
        planned = failed[0] if failed else step.plan(cfg, _each_seed(per_seed, cfg.run_seeds))
        for seed_plans in per_seed.values():
            seed_plans[step.name] = planned
    return per_seed


def _seed_plans(cfg: Config, upto: str | None = None) -> dict[str, dict | UserError]:
    """The per-seed steps' plans in order (up to and including ``upto``)."""
    out: dict[str, dict | UserError] = {}
    upstream: dict[str, tuple[str, str]] = {}
    for step in STEPS.values():
        if step.across_seeds:
            continue
        failed = _errors(out)
        if failed:
            out[step.name] = failed[0]
        else:
            try:
                out[step.name] = step.plan(cfg, upstream)
                upstream |= out[step.name]
            except UserError as exc:
                out[step.name] = exc
        if step.name == upto:
            break
    return out


def _errors(planned: dict) -> list[UserError]:
    return [p for p in planned.values() if isinstance(p, UserError)]


def _each_seed(per_seed: dict[int, dict], seeds: tuple[int, ...]) -> dict[int, dict]:
    return {s: _flat(per_seed[s]) for s in seeds}


def _flat(planned: dict[str, dict | UserError]) -> dict[str, tuple[str, str]]:
    """Every artifact planned, by name (what a step's ``upstream`` and ``planned`` are);
    a step that could not be planned raises its error (it says what to run first)."""
    out: dict[str, tuple[str, str]] = {}
    for p in planned.values():
        if isinstance(p, UserError):
            raise p
        out |= p
    return out


def planned_for(step: str, cfg: Config) -> dict:
    """What ``step`` is handed to build or read: the plans of every step up to it (for a step
    across seeds, each seed's plans)."""
    if STEPS[step].across_seeds:
        per_seed = {s: _seed_plans(cfg.with_seed(s)) for s in cfg.run_seeds}
        return _each_seed(per_seed, cfg.run_seeds)
    return _flat(_seed_plans(cfg, upto=step))


class _Reads(dict):
    """A plan's ``upstream`` that records which artifacts the plan reads."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.read: set[str] = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __contains__(self, key) -> bool:
        self.read.add(key)
        return super().__contains__(key)

    def items(self):
        self.read.update(self.keys())
        return super().items()

    def values(self):
        self.read.update(self.keys())
        return super().values()


def dependencies(cfg: Config) -> dict[str, list[str]]:
    """Each step and the steps whose artifacts its plan reads: the study's workflow, taken
    from the plans themselves (the book's figure of it cannot drift from the code)."""
    owner: dict[str, str] = {}
    upstream: dict[str, tuple[str, str]] = {}
    out: dict[str, list[str]] = {}
    for name, step in STEPS.items():
        if step.across_seeds:
            reads = {s: _Reads(upstream) for s in cfg.run_seeds}
            step.plan(cfg, reads)
            read = set().union(*(r.read for r in reads.values()))
        else:
            reads = _Reads(upstream)
            planned = step.plan(cfg, reads)
            read = reads.read
            owner |= dict.fromkeys(planned, name)
            upstream |= planned
        out[name] = [s for s in STEPS if s in {owner[k] for k in read if k in owner}]
    return out


def step_names(step: str) -> list[str]:
    """The steps ``run`` runs: one, every step in order for ``all``, or those the book reads
    for ``book``."""
    if step == "all":
        return list(STEPS)
    if step == "book":
        return [name for name, s in STEPS.items() if s.in_book]
    return [step]


def run(step: str, cfg: Config, *, force: bool = False) -> list[Any]:
    """Run one step, every step in order for ``all``, or those the book reads for ``book``."""
    out = []
    for name in step_names(step):
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
    planned = planned_for(step, cfg)
    if hasattr(s.code, "load"):
        return s.code.load(cfg, planned)
    if s.across_seeds:
        planned = s.plan(cfg, planned)
    return artifacts.require_step(cfg, planned, step, step)


def status(cfg: Config) -> list[dict[str, str]]:
    """One row per planned artifact: step, what, key and state (cached/missing/corrupt);
    with several seeds, every seed's artifacts (the findings' once)."""
    rows = []
    for seed, seed_plans in _run_seed_plans(cfg):
        for name, planned in seed_plans.items():
            across = STEPS[name].across_seeds
            if across and seed != cfg.run_seeds[0]:
                continue  # planned once, for all seeds
            tag = f" (seed {seed})" if len(cfg.run_seeds) > 1 and not across else ""
            if isinstance(planned, UserError):  # e.g. the roster depends on the datasets
                rows.append(
                    {"step": name, "artifact": str(planned) + tag, "key": "-", "state": "missing"}
                )
                continue
            for what, (art_step, key) in planned.items():
                rows.append(
                    {
                        "step": name,
                        "artifact": what + tag,
                        "key": key,
                        "state": artifacts.state(art_step, key),
                    }
                )
    return rows


def _run_seed_plans(cfg: Config) -> list[tuple[int, dict[str, dict | UserError]]]:
    """Each run seed's plans, every seed planned once."""
    per_seed = _all_plans(cfg)
    return [(seed, per_seed[seed]) for seed in cfg.run_seeds]


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
        raise planned
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
    for _, seed_plans in _run_seed_plans(cfg):
        for name, planned in seed_plans.items():
            if not STEPS[name].in_book or isinstance(planned, UserError):
                continue
            for art_step, key in planned.values():
                art = artifacts.load(art_step, key)
                if art is not None:
                    for a in artifacts.lineage(art):
                        seen.setdefault(a.ref, a)
    return sorted(seen.values(), key=lambda a: (a.step, a.key))
