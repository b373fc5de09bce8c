"""The paper's seven findings (its §5 summaries), each decided by a rule from this run's own units.

Every finding is one statistic with the direction (or threshold) the paper claims, computed
from the units the steps wrote beside their tables: validation files (perplexity, rq1),
prompts (the paper's verbatim metric, rq2 and rq3), canaries (exposure, rq2) and training
and validation files (the duplication signal, rq2). Its interval is a percentile bootstrap:
each organization's units are drawn with replacement, one draw shared by every model (the
comparisons are paired); with several seeds the seeds are drawn too (a two-level bootstrap),
so the interval holds the seed-to-seed spread as well.

The rule is the same for every finding, and stated before any number: **holds** if the whole
interval lies on the claim's side of its threshold, **does not hold** if it lies wholly on
the other side, **inconclusive** if it straddles it (the difference is inside its
uncertainty). Memorization findings use the paper's verbatim metric where it found any
memorized line, and otherwise canary exposure or the duplication signal, and say which.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from collab_lib import (
    artifacts,
    collaboration,
    cross_org,
    curves,
    dp_audit,
    duplication,
    evaluation,
    exposure,
    paper,
    privacy,
    psi,
    verbatim,
)
from collab_lib.collaboration import ModelSpec
from collab_lib.config import Config, UserError

STEP = "findings"
VERSION = 9  # 8: the PSI findings beside the seven; 9: the trade-off's (DP, the ensemble)
BASE = collaboration.BASE
INPUTS = (
    "datasets",
    "clones",
    "rq1",
    "rq2",
    "rq3",
    "curves",
    "privacy",
)  # the artifacts of each seed it reads
COLUMNS = [
    "finding",
    "claim",
    "measure",
    "statistic",
    "rule",
    "paper",
    "paper value",
    "paper unit",
    "estimate",
    "low",
    "high",
    "unit",
    "seed spread",
    "seeds",
    "verdict",
    "why",
]
HOLDS, FAILS, OPEN = "holds", "does not hold", "inconclusive"
# The units of the statistics: a finding measured by another metric than the paper's (canary
# exposure where no line was memorized verbatim) is not on the paper's scale.
NATS, SHARE, POINTS, BITS = "nats/token", "share", "% points", "bits"
TOKENS = "tokens"
NO_CANARIES = (
    "the paper's metric found no memorized line, and no canaries are planted "
    "(canaries.enabled is false, as in the paper profile) to measure exposure "
    "instead"
)


# --------------------------------------------------------------------------- one seed's run


@dataclass
class Run:
    """One seed's tables and units, read from its cached artifacts (never a model)."""

    seed: int
    roster: list[ModelSpec]
    train_mb: dict[str, float]  # each organization's training split (Table 3)
    clone_density: dict[str, float]  # internal clone lines per MB (Figure 2)
    perplexity: pd.DataFrame  # model, organization, file, loss_sum, tokens
    prompts: pd.DataFrame  # model, organization, prompt, generated lines, memorized lines
    canaries: pd.DataFrame  # model, canary, organization, count, extrapolated_exposure
    duplication: pd.DataFrame  # model, organization, split, file, lines, loss_sum, tokens
    rq3_prompts: pd.DataFrame  # model, prompt, generated lines, memorized lines
    rq3_blocks: pd.DataFrame  # model, prompt, loss_sum, tokens: a shared block's second half
    # every setting's curve (model, point, ...): perplexity per validation file, exposure per
    # canary (curves step); empty where the run has none
    curve_perplexity: pd.DataFrame = field(default_factory=pd.DataFrame)
    curve_exposure: pd.DataFrame = field(default_factory=pd.DataFrame)
    curve_extractable: pd.DataFrame = field(default_factory=pd.DataFrame)  # per sequence
    curve_prompts: pd.DataFrame = field(default_factory=pd.DataFrame)  # where curves.prompts
    privacy: pd.DataFrame = field(default_factory=pd.DataFrame)  # ε per model (privacy step)

    def models(self, setting: str, rq: str = collaboration.RQ12) -> list[ModelSpec]:
        return [s for s in self.roster if s.setting == setting and s.rq == rq]


def _refs(cfg: Config, upstream: dict[int, dict]) -> list[str]:
    return [artifacts.ref(upstream[seed][what]) for seed in cfg.run_seeds for what in INPUTS]


def plan(cfg: Config, upstream: dict[int, dict]) -> dict[str, tuple[str, str]]:
    """The findings artifact's key: the config and every seed's inputs' keys (``upstream``:
    each seed's plans; this step combines the seeds)."""
    return {STEP: (STEP, artifacts.artifact_key(STEP, _step_config(cfg), _refs(cfg, upstream)))}


def _step_config(cfg: Config) -> dict:
    return {"findings": cfg.findings, "seeds": list(cfg.run_seeds), "version": VERSION}


def read_run(cfg: Config, planned: dict) -> Run:
    """One seed's run from its artifacts (``planned``: that seed's plans); an error names the
    step to run first."""
    arts = {}
    for what in INPUTS:
        art = artifacts.load(*planned[what])
        if art is None:
            raise UserError(
                f"the findings need the {what} step of seed {cfg.seed}: run "
                f"`{cfg.command('run', 'all')}` first"
            )
        arts[what] = art
    t3 = arts["datasets"].table("table3")
    fig2 = arts["clones"].table("figure2")
    fig2 = fig2[~fig2["vendored"].astype(bool)]
    rq2, rq3 = arts["rq2"], arts["rq3"]
    return Run(
        seed=cfg.seed,
        roster=collaboration.roster(cfg),
        train_mb=dict(t3[t3["split"] == "train"][["organization", "size_mb"]].values),
        clone_density=dict(fig2[["organization", "clone_loc_per_mb"]].values),
        perplexity=arts["rq1"].table(_stem(evaluation.FILES)),
        prompts=rq2.table(_stem(verbatim.PROMPT_UNITS)),
        canaries=rq2.table(_stem(exposure.CANARY_UNITS)),
        duplication=rq2.table(_stem(duplication.FILE_UNITS)),
        rq3_prompts=rq3.table(_stem(verbatim.PROMPT_UNITS)),
        rq3_blocks=rq3.table(_stem(cross_org.BLOCK_UNITS)),
        curve_perplexity=arts["curves"].table(_stem(curves.PERPLEXITY_UNITS)),
        curve_exposure=arts["curves"].table(_stem(curves.EXPOSURE_UNITS)),
        curve_extractable=arts["curves"].table(_stem(curves.EXTRACTABLE_UNITS)),
        curve_prompts=_optional(arts["curves"], curves.VERBATIM_UNITS),
        privacy=arts["privacy"].table("privacy"),
    )


def _optional(art: artifacts.Artifact, file_name: str) -> pd.DataFrame:
    """A unit file a step writes only where a setting asks for it (empty otherwise)."""
    return art.table(_stem(file_name)) if (art.path / file_name).is_file() else pd.DataFrame()


def _stem(file_name: str) -> str:
    return file_name.removesuffix(".csv")


# --------------------------------------------------------------------------- resampling


def draws(strata: np.ndarray, b: int, rng: np.random.Generator) -> np.ndarray:
    """``(b + 1, units)`` weights: row 0 counts every unit once (the estimate), each other
    row how often a resample of each stratum's units, with replacement, drew it."""
    w = np.zeros((b + 1, len(strata)))
    w[0] = 1
    rows = np.arange(b)[:, None]
    for s in pd.unique(strata):
        idx = np.flatnonzero(strata == s)
        picks = rng.integers(len(idx), size=(b, len(idx)))
        np.add.at(w[1:], (rows, idx[picks]), 1)
    return w


class Units:
    """A unit table pivoted per model: weighted sums of a column over the units, for the
    estimate and every resample of ``draws`` (one draw shared by all models: paired)."""

    def __init__(self, frame: pd.DataFrame, unit: list[str], stratum: list[str], b: int, rng):
        self.frame = frame
        keys = frame[unit].drop_duplicates().reset_index(drop=True)
        self.keys = keys
        self.index = pd.MultiIndex.from_frame(keys)
        if not set(stratum) <= set(unit):
            raise ValueError(f"a unit ({unit}) must name its stratum ({stratum})")
        strata = keys[stratum].astype(str).agg("/".join, axis=1).to_numpy()
        self.w = draws(strata, b, rng)
        self.unit = unit

    def sum(self, column: str, model: str, where: Callable | None = None) -> np.ndarray:
        """Weighted sum of ``column`` over ``model``'s rows (optionally only ``where``)."""
        rows = self.frame[self.frame["model"] == model]
        if where is not None:
            rows = rows[where(rows)]
        values = rows.groupby(self.unit)[column].sum().reindex(self.index, fill_value=0)
        return self.w @ values.to_numpy(dtype=float)

    def count(self, where: Callable) -> np.ndarray:
        """Weighted number of units that satisfy ``where`` (a mask over the unit keys)."""
        return self.w @ where(self.keys).to_numpy(dtype=float)

    def mean(self, column: str, model: str, where: Callable | None = None) -> np.ndarray:
        """Weighted mean of a per-unit ``column`` (one row per unit and model)."""
        mask = (lambda k: pd.Series(True, index=k.index)) if where is None else where
        return self.sum(column, model, where) / self.count(mask)


# --------------------------------------------------------------------------- the findings


@dataclass(frozen=True)
class Finding:
    number: int
    claim: str
    paper: str  # the paper's numbers for it
    statistic: str
    side: str  # "below" or "above": where the claim puts the statistic
    threshold: float
    # (run, b, rng) -> (measure, its unit, replicates (b + 1,) with the estimate first[, the
    # statistic beside it: (what it counts, its replicates)]), or a reason the profile cannot
    # test it
    compute: Callable[[Run, int, np.random.Generator], tuple | str]
    paper_value: float
    paper_unit: str
    label: str = ""  # how the table names it, where not by its number (P1, P2: beyond it)


def _ppl(units: Units, names: list[str]) -> dict[str, np.ndarray]:
    return {n: units.sum("loss_sum", n) / units.sum("tokens", n) for n in names}  # mean nats


def _ppl_units(run: Run, b: int, rng) -> Units:
    return Units(run.perplexity, ["organization", "file"], ["organization"], b, rng)


def f1_size(run: Run, b: int, rng):
    singles = run.models("single")
    if len(singles) < 2:
        return "fewer than two single-organization models"
    largest = max(run.train_mb, key=run.train_mb.get)
    mine = next(s.name for s in singles if s.orgs == (largest,))
    nll = _ppl(_ppl_units(run, b, rng), [s.name for s in singles])
    others = np.min([nll[s.name] for s in singles if s.name != mine], axis=0)
    return f"union validation perplexity (Table 8); largest: {largest}", NATS, nll[mine] - others


def f2_federated(run: Run, b: int, rng):
    singles, feds = run.models("single"), run.models("federated")
    cen = run.models("centralized")
    if not (singles and feds and cen):
        return "no single, centralized or federated model on all organizations"
    names = [s.name for s in singles + feds + cen]
    nll = _ppl(_ppl_units(run, b, rng), names)
    best = np.min([nll[s.name] for s in singles], axis=0)
    gap = best - nll[cen[0].name]
    shares = [(nll[f.name] - nll[cen[0].name]) / np.where(gap > 0, gap, np.nan) for f in feds]
    return "union validation perplexity (Table 8)", SHARE, np.max(shares, axis=0)


def _small_to_large(run: Run) -> tuple[str, ...]:
    return tuple(sorted(run.train_mb, key=run.train_mb.get))


def f3_order(run: Run, b: int, rng):
    incs = run.models("incremental")
    order = _small_to_large(run)
    mine = [s for s in incs if s.orgs == order]
    if len(incs) < 2 or not mine:
        return f"the small-to-large order ({' > '.join(order)}) and another must be trained"
    nll = _ppl(_ppl_units(run, b, rng), [s.name for s in incs])
    others = np.min([nll[s.name] for s in incs if s is not mine[0]], axis=0)
    return (
        f"union validation perplexity (Table 8); small to large: {mine[0].name}",
        NATS,
        (nll[mine[0].name] - others),
    )


def _verbatim_found(frame: pd.DataFrame, names: list[str]) -> bool:
    return len(frame) > 0 and frame[frame["model"].isin(names)]["memorized lines"].sum() > 0


def _collaborative(run: Run) -> list[str]:
    """The collaborative models on all organizations that rq2 measured."""
    settings = ("centralized", "federated", "incremental")
    measured = set(run.prompts.get("model", [])) | set(run.duplication.get("model", []))
    return [s.name for s in run.roster if s.setting in settings and s.main and s.name in measured]


def f4_duplicates(run: Run, b: int, rng):
    models = _collaborative(run)
    if not models:
        return "no collaborative model in memorization.models"
    heavy = max(run.clone_density, key=run.clone_density.get)
    if _verbatim_found(run.prompts, models):
        u = Units(run.prompts, ["organization", "prompt"], ["organization"], b, rng)
        ratio = {}
        for org in run.clone_density:
            mask = lambda r, o=org: r["organization"] == o  # noqa: E731
            ratio[org] = sum(u.sum("memorized lines", m, mask) for m in models) / sum(
                u.sum("generated lines", m, mask) for m in models
            )
        others = np.max([ratio[o] for o in ratio if o != heavy], axis=0)
        return (
            (
                f"the paper's memorization ratio (Table 9), all collaborative models; most "
                f"duplicated: {heavy}"
            ),
            POINTS,
            100 * (ratio[heavy] - others),
        )
    return _duplication_signal(run, models, heavy, b, rng)


def _duplication_signal(run: Run, models: list[str], heavy: str, b: int, rng):
    """The most duplicated organization's duplication signal minus the mean of the other
    organizations', nats per token, averaged over ``models``: the paper's metric found
    nothing to compare.

    An organization's signal is a model's training (clone - other) excess of loss drop below
    the base model, minus the same excess under reference models that never saw that
    organization's code (the other organizations' single-organization models): how much
    more predictable its clone lines are anyway. Unlike the validation control of the
    duplication table, it exists for every organization, even one whose validation sample
    holds no clone line.
    """
    d = run.duplication
    if d.empty:
        return "no duplication losses (memorization.duplication_tokens scores none)"
    base = d[d["model"] == BASE]
    has = base.groupby(["organization", "split", "lines"])["tokens"].sum()
    orgs = [
        o
        for o in dict.fromkeys(base["organization"])
        if all(has.get((o, "train", lines), 0) > 0 for lines in ("clone", "other"))
    ]
    if heavy not in orgs or len(orgs) < 2:
        return (
            f"the most duplicated organization ({heavy}) and at least one other need clone "
            "and other lines in their training samples"
        )
    scored = set(d["model"])
    singles = [s for s in run.models("single") if s.name in scored]
    refs = {o: [s.name for s in singles if o not in s.orgs] for o in orgs}
    if not all(refs.values()):
        return "no reference model (a single-organization model of another organization) scored"
    u = Units(d, ["organization", "split", "file"], ["organization", "split"], b, rng)

    def excess(model: str, org: str) -> np.ndarray:
        def drop(lines: str) -> np.ndarray:
            def mask(r: pd.DataFrame) -> pd.Series:
                return (r["organization"] == org) & (r["split"] == "train") & (r["lines"] == lines)

            with np.errstate(invalid="ignore", divide="ignore"):
                return u.sum("loss_sum", BASE, mask) / u.sum("tokens", BASE, mask) - u.sum(
                    "loss_sum", model, mask
                ) / u.sum("tokens", model, mask)

        return drop("clone") - drop("other")

    control = {o: np.mean([excess(r, o) for r in refs[o]], axis=0) for o in orgs}
    others = [o for o in orgs if o != heavy]

    def signal(model: str, org: str) -> np.ndarray:
        return excess(model, org) - control[org]

    stats = [signal(m, heavy) - np.mean([signal(m, o) for o in others], axis=0) for m in models]
    measure = (
        f"duplication signal (nats per token), the paper's metric being 0: {heavy}, the most "
        f"duplicated, minus the mean of {', '.join(others)}, over {len(models)} collaborative "
        "models; each organization's control: the single-organization models of the others, "
        "which never saw its code"
    )
    return measure, NATS, np.mean(stats, axis=0)


def f5_centralized(run: Run, b: int, rng):
    """At matched effectiveness (from the curves), beside it the final checkpoints' comparison;
    the final checkpoints' alone where the curves cannot match them."""
    cen, feds = run.models("centralized"), run.models("federated")
    names = set(_collaborative(run))
    if not cen or cen[0].name not in names or not all(f.name in names for f in feds) or not feds:
        return "memorization.models must hold the centralized and federated models"
    models = [cen[0].name, *(f.name for f in feds)]
    point = _f5_points(run, models, b, rng)
    matched = _matched(run, models, b, rng)
    if isinstance(matched, str):
        if matched == NO_MIDDLE:
            matched += ", so the final checkpoints decide"
        return point if isinstance(point, str) else (f"{point[0]}; {matched}", *point[1:])
    measure, unit, reps = matched
    if isinstance(point, str):
        return measure, unit, reps
    return measure, unit, reps, (f"at the final checkpoints, {point[0]} ({point[1]})", point[2])


def _f5_points(run: Run, models: list[str], b: int, rng):
    """Centralized minus the more memorizing federated model at their final checkpoints."""
    if _verbatim_found(run.prompts, models):
        u = Units(run.prompts, ["organization", "prompt"], ["organization"], b, rng)
        ratio = {m: u.sum("memorized lines", m) / u.sum("generated lines", m) for m in models}
        return (
            "the paper's memorization ratio (Table 10)",
            POINTS,
            100 * np.min([ratio[models[0]] - ratio[f] for f in models[1:]], axis=0),
        )
    if run.canaries.empty:
        return NO_CANARIES
    u = Units(run.canaries, ["organization", "canary"], ["organization"], b, rng)
    e = {m: u.mean("extrapolated_exposure", m) for m in models}
    return (
        "canary exposure (bits), the paper's metric being 0",
        BITS,
        np.min([e[models[0]] - e[f] for f in models[1:]], axis=0),
    )


NO_MIDDLE = (
    "the curves have no checkpoint between the base model and the last (one epoch, or "
    "train.epoch_checkpoints off)"
)


def matched_text(weaker: str = "the federated model") -> str:
    """How a matched comparison reads its curves, ``weaker`` naming the model whose best
    perplexity sets the level."""
    return (
        "read off the curves at the same validation perplexity: the lowest both settings "
        f"reach ({weaker}'s best), interpolated linearly in log perplexity between the "
        "checkpoints around it"
    )


def _matched(run: Run, models: list[str], b: int, rng, weaker: str = "the federated model"):
    """The first model's memorization minus each other's (finding 5: centralized minus each
    federated model) at the weaker one's best validation perplexity, the lowest over the
    others; validation files and the memorization units resampled, one draw for
    every checkpoint (paired). The paper's verbatim metric where the curves found memorized
    lines, else canary exposure, else k-extractability's excess."""
    if run.curve_perplexity.empty:
        return "this run has no curves"
    points = run.curve_perplexity.groupby("model")["point"].nunique()
    if any(points.get(m, 0) < 3 for m in models):
        return NO_MIDDLE

    def labelled(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame[frame["model"].isin(models)]
        return frame.assign(model=frame["model"] + "@" + frame["point"].astype(str))

    ppl = Units(labelled(run.curve_perplexity), ["organization", "file"], ["organization"], b, rng)
    if _verbatim_found(run.curve_prompts, models):
        lines = Units(
            labelled(run.curve_prompts), ["organization", "prompt"], ["organization"], b, rng
        )

        def memorized(x: str) -> np.ndarray:
            return 100 * lines.sum("memorized lines", x) / lines.sum("generated lines", x)

        measure, unit = "the paper's memorization ratio (curves.prompts of RQ2's prompts)", POINTS
    elif not run.curve_exposure.empty:
        exp = Units(
            labelled(run.curve_exposure), ["organization", "canary"], ["organization"], b, rng
        )
        memorized = lambda x: exp.mean("extrapolated_exposure", x)  # noqa: E731
        measure, unit = "canary exposure (bits, the curves' alternatives)", BITS
    elif not run.curve_extractable.empty:
        ext = Units(
            labelled(run.curve_extractable),
            ["organization", "split", "file", "start"],
            ["organization", "split"],
            b,
            rng,
        )

        def memorized(x: str) -> np.ndarray:
            def split(name: str) -> Callable:
                return lambda k: k["split"] == name

            return ext.mean("matched", x, split("train")) - ext.mean(
                "matched", x, split("validation")
            )

        measure, unit = "k-extractability: tokens matched, train minus validation", TOKENS
    else:
        return "the curves hold no memorization measure (no canaries, no sequences)"
    curve = {}
    for m in models:
        labels = [f"{m}@{i}" for i in range(int(points[m]))]
        nll = np.stack([ppl.sum("loss_sum", x) / ppl.sum("tokens", x) for x in labels], axis=1)
        curve[m] = (nll, np.stack([memorized(x) for x in labels], axis=1))
    gaps = [matched_gap(*curve[models[0]], *curve[f]) for f in models[1:]]
    return f"{measure}, {matched_text(weaker)}", unit, np.min(gaps, axis=0)


def matched_gap(x_a: np.ndarray, y_a: np.ndarray, x_b: np.ndarray, y_b: np.ndarray) -> np.ndarray:
    """Curve a's memorization minus curve b's at the same effectiveness, per replicate row.

    ``x`` is mean validation loss (log perplexity) and ``y`` memorization, one column per
    checkpoint in training order, the base model first. The level is the lowest loss both
    curves reach (the weaker one's best); each curve is read where it first reaches it
    (:func:`at_level`).
    """
    x_a, y_a, x_b, y_b = map(np.atleast_2d, (x_a, y_a, x_b, y_b))
    level = np.maximum(np.nanmin(x_a, axis=1), np.nanmin(x_b, axis=1))
    return np.array(
        [
            at_level(x_a[r], y_a[r], level[r]) - at_level(x_b[r], y_b[r], level[r])
            for r in range(len(level))
        ]
    )


def at_level(x: np.ndarray, y: np.ndarray, level: float) -> float:
    """``y`` where the curve first reaches loss ``level``: along its records (each checkpoint
    with a loss below every earlier one), linear in the loss between the two records around
    the level; a checkpoint that got worse than an earlier one is passed over."""
    keep = x < np.minimum.accumulate(np.concatenate([[np.inf], x[:-1]]))
    xs, ys = x[keep], y[keep]
    if not len(xs) or level < xs[-1] or level > xs[0]:
        return math.nan
    return float(np.interp(level, xs[::-1], ys[::-1]))


def f6_last(run: Run, b: int, rng):
    """The last organization's memorization minus the mean of the earlier ones, averaged over
    the orders; beside it, the paper's form: in how many orders the last is memorized most."""
    names = set(_collaborative(run))
    incs = [s for s in run.models("incremental") if s.name in names]
    if not incs:
        return "memorization.models holds no incremental model"
    if _verbatim_found(run.prompts, [s.name for s in incs]):
        u = Units(run.prompts, ["organization", "prompt"], ["organization"], b, rng)

        def per_org(s: ModelSpec) -> dict[str, np.ndarray]:
            def share(o: str) -> np.ndarray:
                mine = lambda r: r["organization"] == o  # noqa: E731
                return u.sum("memorized lines", s.name, mine) / u.sum(
                    "generated lines", s.name, mine
                )

            return {o: share(o) for o in s.orgs}

        measure, unit, scale = "the paper's memorization ratio (Table 9), in points", POINTS, 100
    elif run.canaries.empty:
        return NO_CANARIES
    else:
        u = Units(run.canaries, ["organization", "canary"], ["organization"], b, rng)
        planted = run.canaries[run.canaries["model"] == BASE]
        counts = {o: set(c) for o, c in planted.groupby("organization")["count"]}

        # exposure grows steeply with the repetition count and a small organization may lack
        # the largest: compare at the counts every organization of the order has
        shared = {s.name: set.intersection(*(counts.get(o, set()) for o in s.orgs)) for s in incs}

        def per_org(s: ModelSpec) -> dict[str, np.ndarray]:
            ids = set(planted.loc[planted["count"].isin(shared[s.name]), "canary"])

            def gain(o: str) -> np.ndarray:
                mine = lambda k: (k["organization"] == o) & k["canary"].isin(ids)  # noqa: E731
                return u.mean("extrapolated_exposure", s.name, mine) - u.mean(
                    "extrapolated_exposure", BASE, mine
                )

            return {o: gain(o) for o in s.orgs}

        if not all(shared.values()):
            return "an incremental order's organizations share no canary repetition count"
        measure, unit, scale = (
            "canary exposure over the base model (bits), at the repetition counts every "
            "organization of an order has, the paper's metric being 0",
            BITS,
            1,
        )
    values = [per_org(s) for s in incs]
    last = [v[s.orgs[-1]] for s, v in zip(incs, values, strict=True)]
    earlier = [[v[o] for o in s.orgs[:-1]] for s, v in zip(incs, values, strict=True)]
    with np.errstate(invalid="ignore"):
        gaps = [x - np.nanmean(e, axis=0) for x, e in zip(last, earlier, strict=True)]
        wins = [x > np.nanmax(e, axis=0) for x, e in zip(last, earlier, strict=True)]
    average = np.mean(gaps, axis=0)
    # a replicate in which some order's comparison is undefined counts as undefined, not lost
    undefined = np.any([~np.isfinite(g) for g in gaps], axis=0)
    most = np.where(undefined, np.nan, np.sum(wins, axis=0))
    form = (
        f"in the paper's form, the orders (of {len(incs)}) in which the last organization is "
        "memorized most",
        most,
    )
    return f"{measure}; mean over {len(incs)} orders", unit, scale * average, form


def _pair_kept(run: Run, pair: tuple[str, ...], models: list[str], b: int, rng):
    """What each of ``models`` kept of the clone blocks ``pair`` shares (RQ3's measures):
    ``("verbatim", prompts, {model: ratio})`` where Table 11 found memorized lines, else
    ``("loss", prompts, {model: loss drop from the base model on the blocks' second halves
    beyond the drop on the pair's validation code})``; None where the pair shares no block."""
    if _verbatim_found(run.rq3_prompts, models):
        frame = run.rq3_prompts
        u = Units(
            frame.assign(organization="pair"), ["organization", "prompt"], ["organization"], b, rng
        )
        ratio = {m: u.sum("memorized lines", m) / u.sum("generated lines", m) for m in models}
        return "verbatim", frame["prompt"].nunique(), ratio
    blocks = run.rq3_blocks
    if blocks.empty or blocks["tokens"].sum() == 0:
        return None
    u = Units(
        blocks.assign(organization="pair"), ["organization", "prompt"], ["organization"], b, rng
    )
    # the same drop on the pair's validation files, which no model saw: what a model gains
    # on any code of the pair, memorized or not (federated models fit less)
    val = run.perplexity[run.perplexity["organization"].isin(pair)]
    v = Units(val, ["organization", "file"], ["organization"], b, rng)

    def drop(units: Units, m: str) -> np.ndarray:
        base = units.sum("loss_sum", BASE) / units.sum("tokens", BASE)
        return base - units.sum("loss_sum", m) / units.sum("tokens", m)

    return "loss", blocks["prompt"].nunique(), {m: drop(u, m) - drop(v, m) for m in models}


def f7_cross(run: Run, b: int, rng):
    pair = [s for s in run.roster if s.rq == collaboration.RQ3]
    sync = [s.name for s in pair if s.setting in ("centralized", "federated")]
    inc = [s.name for s in pair if s.setting == "incremental"]
    if not (sync and inc):
        return "the RQ3 pair's synchronous and incremental models are not all trained"
    kept = _pair_kept(run, pair[0].orgs, sync + inc, b, rng)
    if kept is None:
        return (
            "the RQ3 pair shares no clone block to prompt with, so neither the paper's "
            "metric nor the continuation loss can be measured"
        )
    how, n, per = kept
    gap = np.mean([per[m] for m in sync], axis=0) - np.mean([per[m] for m in inc], axis=0)
    if how == "verbatim":
        return (
            "the paper's memorization ratio on shared clones (Table 11), in points",
            POINTS,
            100 * gap,
        )
    return (
        "the paper's metric (Table 11) found no memorized line, so: each model's loss "
        "drop from the base model on the second half of the shared clone blocks given "
        "the first, beyond its drop on the pair's validation code (nats per token), "
        f"synchronous minus incremental; {n} prompts",
        NATS,
        gap,
    )


def _paper_values() -> dict[int, float]:
    """Each statistic on the paper's own numbers (its organizations' roles)."""
    t8 = {k: math.log(v[0]) for k, v in paper.TABLE8.items()}
    singles = ["Facebook_Only", "Microsoft_Only", "Google_Only"]
    best = min(t8[s] for s in singles)
    incs = [k for k in t8 if k.startswith("Incremental_")]
    t9 = paper.TABLE9

    def pooled(org: str) -> float:
        rows = [v for (m, o), v in t9.items() if o == org]
        return 100 * sum(r[2] for r in rows) / sum(r[0] for r in rows)

    def last_gain(model: str) -> float:
        orgs = {"F": "Facebook", "M": "Microsoft", "G": "Google"}
        order = [orgs[c] for c in model.removeprefix("Incremental_").split("2")]
        r = {o: t9[model, o][3] for o in order}
        return r[order[-1]] - float(np.mean([r[o] for o in order[:-1]]))

    t10, t11 = paper.TABLE10, paper.TABLE11
    return {
        1: t8["Google_Only"] - min(t8["Facebook_Only"], t8["Microsoft_Only"]),
        2: max(
            (t8[f] - t8["Centralized_FMG"]) / (best - t8["Centralized_FMG"])
            for f in ("Federated_Avg_FMG", "Federated_Yogi_FMG")
        ),
        3: t8["Incremental_F2M2G"] - min(t8[k] for k in incs if k != "Incremental_F2M2G"),
        4: pooled("Microsoft") - max(pooled("Google"), pooled("Facebook")),
        5: t10["Centralized_FMG"] - max(t10["Federated_Avg_FMG"], t10["Federated_Yogi_FMG"]),
        6: float(np.mean([last_gain(m) for m in incs])),
        7: float(
            np.mean(
                [t11[m][3] for m in ("Centralized_MG", "Federated_Avg_MG", "Federated_Yogi_MG")]
            )
            - np.mean([t11[m][3] for m in ("Incremental_M2G", "Incremental_G2M")])
        ),
    }


def findings(cfg: Config) -> list[Finding]:
    """The seven findings: claim, the paper's numbers, statistic and threshold."""
    p = _paper_values()
    share = cfg.findings.close_share
    return [
        Finding(
            1,
            "Size and diversity of data drive effectiveness: the largest organization's "
            "own model is the best single-organization model",
            "Google_Only 5.36 vs Microsoft_Only 39.52, Facebook_Only 181.54 (perplexity)",
            "log perplexity of the largest organization's model minus the lowest of the "
            "other single-organization models",
            "below",
            0.0,
            f1_size,
            p[1],
            NATS,
        ),
        Finding(
            2,
            "Federated models reach perplexity close to centralized",
            "FedAvg 3.71, FedYogi 4.02 vs centralized 3.32; best single 5.36",
            "largest share, over the federated models, of the log-perplexity gap from the "
            "best single-organization model to centralized that federated leaves open",
            "below",
            share,
            f2_federated,
            p[2],
            SHARE,
        ),
        Finding(
            3,
            "Incremental effectiveness depends on order; small to large is best",
            "F2M2G 5.30 vs M2F2G 5.36, G2F2M 25.42, ..., G2M2F 53.38 (perplexity)",
            "log perplexity of the small-to-large order minus the lowest of the other orders",
            "below",
            0.0,
            f3_order,
            p[3],
            NATS,
        ),
        Finding(
            4,
            "Duplicate-heavy data is memorized more",
            "Microsoft, the most duplicated: "
            "6.35 % in Centralized_FMG vs 0.25 % Google, 0.02 % Facebook (Table 9); the "
            "statistic pools Table 9's nine models",
            "the most duplicated organization's memorization minus the next highest "
            "(verbatim), or its duplication signal minus the other organizations' mean "
            "(duplication signal)",
            "above",
            0.0,
            f4_duplicates,
            p[4],
            POINTS,
        ),
        Finding(
            5,
            "Centralized training memorizes more than federated",
            "1.711 % vs FedAvg 0.330 %, FedYogi 0.264 % (Table 10)",
            "centralized minus the higher of the federated models, at the same validation "
            "perplexity (read off the curves; beside it, at the final checkpoints)",
            "above",
            0.0,
            f5_centralized,
            p[5],
            POINTS,
        ),
        Finding(
            6,
            "In incremental learning, the last dataset is memorized most",
            "e.g. G2F2M: Microsoft 8.13 % vs Google 0.02 %, Facebook 0.02 % (Table 9)",
            "the last organization's memorization minus the mean of the earlier ones, "
            "averaged over the orders (beside it, the paper's form: in how many orders the "
            "last is memorized most)",
            "above",
            0.0,
            f6_last,
            p[6],
            POINTS,
        ),
        Finding(
            7,
            "Cross-organization clones are memorized more by synchronous than by "
            "incremental training",
            "0.565 / 0.552 / 0.480 % vs 0.192 / 0.246 % (Table 11)",
            "mean ratio of the pair's centralized and federated models minus that of its "
            "incremental models (verbatim), or the same difference of their loss drops "
            "below the base model on the blocks' second halves beyond their drops on the "
            "pair's validation code",
            "above",
            0.0,
            f7_cross,
            p[7],
            POINTS,
        ),
    ]


# --------------------------------------------------------------------------- beyond the paper


PSI_TOLERANCE = 0.05  # nats/token: a 5 % perplexity increase, the most "little" may cost


def _psi_twins(run: Run) -> list[tuple[str, str]]:
    """``(plain, _PSI)`` model pairs of the run: each deduplicated model and its twin."""
    dedup = [s.name for s in run.roster if s.rq == collaboration.PSI]
    return [(n.removesuffix(psi.SUFFIX), n) for n in dedup]


def p1_removal(run: Run, b: int, rng):
    twins = _psi_twins(run)
    if not twins:
        return "no model is trained on PSI-deduplicated data (psi.models is empty)"
    pair = next(s.orgs for s in run.roster if s.name == twins[0][0])
    kept = _pair_kept(run, pair, [m for twin in twins for m in twin], b, rng)
    if kept is None:
        return "the RQ3 pair shares no clone block, so PSI has nothing to remove"
    how, n, per = kept
    gap = np.mean([per[plain] - per[dedup] for plain, dedup in twins], axis=0)
    if how == "verbatim":
        return "the paper's ratio on shared clones (Table 11), plain minus PSI", POINTS, 100 * gap
    return (
        "the paper's metric (Table 11) found no memorized line, so: the loss of the shared "
        "blocks' second halves given their first, PSI model minus its plain twin, beyond the "
        "same difference on the pair's validation code (nats per token), mean over "
        f"{len(twins)} twins; {n} prompts",
        NATS,
        gap,
    )


def p2_cost(run: Run, b: int, rng):
    twins = _psi_twins(run)
    if not twins:
        return "no model is trained on PSI-deduplicated data (psi.models is empty)"
    nll = _ppl(_ppl_units(run, b, rng), [m for pair in twins for m in pair])
    gaps = [nll[d] - nll[p] for p, d in twins]
    return (
        f"union validation log perplexity (Table 8), PSI model minus its plain twin, mean "
        f"over {len(twins)} twins",
        NATS,
        np.mean(gaps, axis=0),
    )


def psi_findings(cfg: Config) -> list[Finding]:
    """Beyond the paper: what clone removal by private set intersection does (the paper's
    RQ3 asks for it and could not do it)."""
    beyond = "none: the paper could not remove cross-organization clones (§4.5)"
    return [
        Finding(
            101,
            "Removing the shared clones by private set intersection lowers what the pair's "
            "models keep of them",
            beyond,
            "the plain model's memorization of the shared blocks minus its PSI twin's "
            "(verbatim), or the PSI twin's loss on the blocks minus the plain model's, beyond "
            "that difference on validation code",
            "above",
            0.0,
            p1_removal,
            math.nan,
            "",
            "P1",
        ),
        Finding(
            102,
            f"Removal costs little effectiveness: less than {PSI_TOLERANCE:g} nats per token",
            beyond,
            "validation log perplexity of the PSI model minus its plain twin",
            "below",
            PSI_TOLERANCE,
            p2_cost,
            math.nan,
            "",
            "P2",
        ),
    ]


# --------------------------------------------------------------------------- the trade-off

DP_TOLERANCE = 0.1  # nats/token: DP may cost up to a 10.5 % perplexity increase
ENSEMBLE_TOLERANCE = 0.05  # nats/token, as PSI's: the ensemble as effective as centralized
EPSILON_CAP = 8.0  # the largest ε commonly called meaningful for DP-SGD
EXPOSURE_MARGIN = 1.0  # bits over the base model: "within the base model's" exposure


def _centralized(run: Run) -> str | None:
    cen = run.models("centralized")
    return cen[0].name if cen else None


def _dp_twins(run: Run, level: str = privacy.EXAMPLE, setting: str = "centralized"):
    """The run's DP twins of ``setting`` at ``level``, least noise (most effective) first."""
    twins = [
        s
        for s in run.roster
        if s.rq == collaboration.DP and s.setting == setting and s.privacy[0] == level
    ]
    return sorted(twins, key=lambda s: s.privacy[1])


def _constant(value: float, b: int) -> np.ndarray:
    """A statistic with no resampling of its own (the audit's bound carries its confidence)."""
    return np.full(b + 1, value)


NO_DP = "no centralized DP-SGD twin (privacy.noise_multipliers is empty)"
NO_ENSEMBLE = "no ensemble (ensemble.enabled is false)"


def _least_noise(run: Run) -> str | None:
    twins = _dp_twins(run)
    return twins[0].name if twins else None


def _matched_with(run: Run, other: str | None, missing: str, b: int, rng):
    """The centralized model's memorization minus ``other``'s at the same effectiveness."""
    cen = _centralized(run)
    if cen is None or other is None:
        return missing
    found = _matched(run, [cen, other], b, rng, weaker="the weaker model")
    if found == NO_MIDDLE:  # no fallback here: the claim is about matched effectiveness
        return f"{found}: the comparison needs two epochs or more with their checkpoints"
    if isinstance(found, str):
        return found
    measure, unit, gap = found
    return f"{cen} minus {other}: {measure}", unit, gap


def _cost_of(run: Run, other: str | None, missing: str, b: int, rng):
    """``other``'s validation log perplexity minus the centralized model's."""
    cen = _centralized(run)
    if cen is None or other is None:
        return missing
    nll = _ppl(_ppl_units(run, b, rng), [cen, other])
    measure = f"union validation log perplexity (Table 8), {other} minus {cen}"
    return measure, NATS, nll[other] - nll[cen]


def d1_dp_matched(run: Run, b: int, rng):
    return _matched_with(run, _least_noise(run), NO_DP, b, rng)


def d2_dp_cost(run: Run, b: int, rng):
    return _cost_of(run, _least_noise(run), NO_DP, b, rng)


def _epsilons(run: Run) -> dict[str, float]:
    t = run.privacy
    return dict(zip(t["Model"], t["epsilon (accountant)"], strict=True)) if len(t) else {}


def d3_canaries(run: Run, b: int, rng):
    eps = _epsilons(run)
    within = [s for s in _dp_twins(run) if eps.get(s.name, math.inf) <= EPSILON_CAP]
    if not within:
        return f"no centralized DP-SGD twin with ε <= {EPSILON_CAP:g}"
    if run.curve_exposure.empty:
        return "no canaries are planted (canaries.enabled is false)"
    dp = max(within, key=lambda s: eps[s.name]).name  # the most effective one within the cap
    frame = run.curve_exposure[run.curve_exposure["model"] == dp]
    top = frame["count"].max()
    frame = frame[frame["count"] == top]
    last = frame["point"].max()
    u = Units(
        frame.assign(model=frame["point"].map({0: "base", last: "last"})).dropna(subset="model"),
        ["organization", "canary"],
        ["organization"],
        b,
        rng,
    )
    return (
        f"canary exposure (bits, the curves' alternatives) of the canaries repeated most "
        f"({top}x), {dp} (ε = {eps[dp]:.2g}) minus the base model",
        BITS,
        u.mean("extrapolated_exposure", "last") - u.mean("extrapolated_exposure", "base"),
    )


def d4_audit_below(run: Run, b: int, rng):
    t = run.privacy
    dp = t[t["DP"] != "none"] if len(t) else t
    if not len(dp) or not dp["Guesses"].gt(0).any():
        return "no DP twin, or the audit made no guesses (privacy.audit_canaries too few)"
    # one bound per twin, each at 1 - 5 % / twins: none exceeds a right ε by chance with more
    # than 5 % probability in all (Bonferroni)
    level = 1 - (1 - dp_audit.CONFIDENCE) / len(dp)
    excess = max(
        dp_audit.epsilon_lower(r["Audit canaries"], r["Guesses"], r["Right"], r["delta"], level)
        - r["epsilon (accountant)"]
        for _, r in dp.iterrows()
    )
    return (
        f"the audit's ε lower bound minus the accountant's ε, the largest over {len(dp)} DP "
        f"twins (each bound one-sided at {100 * level:.3g} %: 95 % for them all; one run)",
        "ε",
        _constant(float(excess), b),
    )


def d5_audit_plain(run: Run, b: int, rng):
    cen, t = _centralized(run), run.privacy
    rows = t[t["Model"] == cen] if len(t) else t
    if cen is None or not len(rows) or not rows["Guesses"].iloc[0]:
        return "the audit made no guesses (privacy.audit_canaries is 0, or too few)"
    r = rows.iloc[0]
    return (
        f"the audit's ε lower bound for {cen} ({r['Right']} right of {r['Guesses']} guesses on "
        f"{r['Audit canaries']} canaries)",
        "ε",
        _constant(float(r["epsilon lower bound (audit)"]), b),
    )


def _ensemble(run: Run) -> str | None:
    ens = run.models("ensemble")
    return ens[0].name if ens else None


def e1_ensemble_matched(run: Run, b: int, rng):
    return _matched_with(run, _ensemble(run), NO_ENSEMBLE, b, rng)


def e2_ensemble_cost(run: Run, b: int, rng):
    return _cost_of(run, _ensemble(run), NO_ENSEMBLE, b, rng)


def tradeoff_findings(cfg: Config) -> list[Finding]:
    """Beyond the paper: what differential privacy and inference-time collaboration do to
    the balance of effectiveness and memorization (the paper's §6.1-6.2 ask for both)."""
    beyond = "none: the paper recommends DP and ensembles (§6.1-6.2) and measures neither"

    def finding(n, label, claim, statistic, side, threshold, compute) -> Finding:
        return Finding(n, claim, beyond, statistic, side, threshold, compute, math.nan, "", label)

    return [
        finding(
            201,
            "D1",
            "At the same effectiveness, example-level DP-SGD memorizes less than plain "
            "centralized training",
            "centralized minus its least-noise DP twin's memorization at the same validation "
            "perplexity (the curves)",
            "above",
            0.0,
            d1_dp_matched,
        ),
        finding(
            202,
            "D2",
            f"DP-SGD costs little effectiveness: less than {DP_TOLERANCE:g} nats per token",
            "validation log perplexity of the least-noise DP twin minus the centralized model",
            "below",
            DP_TOLERANCE,
            d2_dp_cost,
        ),
        finding(
            203,
            "D3",
            f"Example-level DP at ε <= {EPSILON_CAP:g} keeps the most-repeated canaries within "
            f"{EXPOSURE_MARGIN:g} bit of the base model's exposure",
            "the exposure of the canaries repeated most, the DP twin with the largest ε within "
            "the cap minus the base model, at its final checkpoint",
            "below",
            EXPOSURE_MARGIN,
            d3_canaries,
        ),
        finding(
            204,
            "D4",
            "The audit does not contradict the accountant: no DP twin's ε lower bound exceeds "
            "its ε",
            "the largest excess of the audit's bound over the accountant's ε",
            "below",
            0.0,
            d4_audit_below,
        ),
        finding(
            205,
            "D5",
            "Without DP, the audit detects the planted audit canaries (ε lower bound above 0)",
            "the audit's ε lower bound for the plain centralized model",
            "above",
            0.0,
            d5_audit_plain,
        ),
        finding(
            206,
            "E1",
            "At the same effectiveness, the ensemble of single-organization models memorizes "
            "less than the centralized model",
            "centralized minus the ensemble's memorization at the same validation perplexity",
            "above",
            0.0,
            e1_ensemble_matched,
        ),
        finding(
            207,
            "E2",
            f"The ensemble is about as effective as centralized training: less than "
            f"{ENSEMBLE_TOLERANCE:g} nats per token worse",
            "validation log perplexity of the ensemble minus the centralized model",
            "below",
            ENSEMBLE_TOLERANCE,
            e2_ensemble_cost,
        ),
    ]


def decide(low: float, high: float, side: str, threshold: float) -> str:
    """The rule: the interval wholly on the claim's side holds, wholly across it fails."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return OPEN
    claim_side = high < threshold if side == "below" else low > threshold
    other_side = low > threshold if side == "below" else high < threshold
    return HOLDS if claim_side else FAILS if other_side else OPEN


def combine(per_seed: list[np.ndarray], b: int, rng) -> tuple[float, np.ndarray]:
    """Estimate (mean of the seeds' estimates) and ``b`` replicates of the seed mean: seeds
    drawn with replacement, each drawn seed's own resample (two-level bootstrap)."""
    est = float(np.mean([r[0] for r in per_seed]))
    reps = np.stack([r[1:] for r in per_seed])  # (seeds, b)
    if len(per_seed) == 1:
        return est, reps[0]
    pick = rng.integers(len(per_seed), size=(b, len(per_seed)))
    return est, reps[pick, np.arange(b)[:, None]].mean(axis=1)


def evaluate(cfg: Config, runs: list[Run], which: list[Finding] | None = None) -> pd.DataFrame:
    """The findings table: one row per finding (the seven, or ``which``), verdict and why."""
    f = cfg.findings
    alpha = (1 - f.confidence) / 2
    rows = []
    for finding in findings(cfg) if which is None else which:
        rng = np.random.default_rng([cfg.run_seeds[0], finding.number])
        results = [finding.compute(run, f.bootstrap, rng) for run in runs]
        untestable = [r for r in results if isinstance(r, str)]
        row = {
            "finding": finding.label or finding.number,
            "claim": finding.claim,
            "statistic": finding.statistic,
            "rule": _rule(finding, f.confidence),
            "paper": finding.paper,
            "paper value": finding.paper_value,
            "paper unit": finding.paper_unit,
            "seeds": len(runs),
        }
        if untestable:
            why = f"Cannot be tested in this profile: {untestable[0]}."
            rows.append(row | {"measure": "none", "verdict": OPEN, "why": why})
            continue
        measure, unit = results[0][:2]
        est, reps = combine([r[2] for r in results], f.bootstrap, rng)
        low, high = _interval(reps, alpha)
        spread = float(np.std([r[2][0] for r in results], ddof=1)) if len(runs) > 1 else math.nan
        verdict = decide(low, high, finding.side, finding.threshold)
        why = _why(finding, est, low, high, verdict, f.confidence)
        if len(results[0]) > 3:  # another form of the statistic, beside it
            what = results[0][3][0]
            form, form_reps = combine([r[3][1] for r in results], f.bootstrap, rng)
            lo, hi = _interval(form_reps, alpha)
            interval = (
                f"[{lo:.3g}, {hi:.3g}]"
                if np.isfinite(lo)
                else "not given: most resamples leave it undefined"
            )
            why += f" Beside it, {what}: {form:.3g} ({100 * f.confidence:g} % interval {interval})."
        rows.append(
            row
            | {
                "measure": measure,
                "estimate": est,
                "low": low,
                "high": high,
                "unit": unit,
                "seed spread": spread,
                "verdict": verdict,
                "why": why,
            }
        )
    return pd.DataFrame(rows).reindex(columns=COLUMNS)


def _interval(reps: np.ndarray, alpha: float) -> tuple[float, float]:
    """The percentile interval of the finite replicates; undefined (NaN) where more than a
    tenth of the resamples leave the statistic undefined."""
    finite = reps[np.isfinite(reps)]
    if len(finite) <= 0.9 * len(reps):
        return math.nan, math.nan
    low, high = np.quantile(finite, [alpha, 1 - alpha])
    return float(low), float(high)


def _rule(finding: Finding, confidence: float) -> str:
    side = "below" if finding.side == "below" else "above"
    other = "above" if side == "below" else "below"
    level = f"{100 * confidence:g} %"
    t = f"{finding.threshold:g}"
    return (
        f"holds if the {level} interval lies wholly {side} {t}; does not hold if wholly "
        f"{other}; inconclusive if it contains {t}"
    )


def _why(finding: Finding, est: float, low: float, high: float, verdict: str, conf: float):
    level = f"{100 * conf:g} %"
    if not np.isfinite(low):
        return (
            f"The estimate is {est:.3g}, but most resamples leave the statistic undefined "
            "(a denominator of zero), so no interval can be given."
        )
    claimed = "as claimed" if finding.label else "as the paper claims"
    where = {
        HOLDS: f"lies wholly {finding.side} {finding.threshold:g}, {claimed}",
        FAILS: f"lies wholly on the other side of {finding.threshold:g}, against the claim",
        OPEN: f"contains {finding.threshold:g}: the difference is inside its uncertainty",
    }
    interval = f"[{low:.3g}, {high:.3g}]"
    return f"The estimate is {est:.3g} and its {level} interval {interval} {where[verdict]}."


# --------------------------------------------------------------------------- the step


def build_findings(
    cfg: Config, planned: dict[int, dict], *, force: bool = False
) -> artifacts.Artifact:
    """The findings table from every seed's cached tables and units (never a model);
    ``planned``: each seed's plans."""
    runs = [read_run(cfg.with_seed(s), planned[s]) for s in cfg.run_seeds]

    def produce(out: Path) -> dict:
        table = evaluate(cfg, runs)
        table.to_csv(out / "findings.csv", index=False)
        evaluate(cfg, runs, psi_findings(cfg)).to_csv(out / "psi_findings.csv", index=False)
        tradeoff = evaluate(cfg, runs, tradeoff_findings(cfg))
        tradeoff.to_csv(out / "tradeoff_findings.csv", index=False)
        verdicts = dict(zip(table["finding"].astype(str), table["verdict"], strict=True))
        return {"seeds": list(cfg.run_seeds), "verdicts": verdicts}

    inputs = _refs(cfg, planned)
    return artifacts.build(STEP, _step_config(cfg), produce, inputs, seed=cfg.seed, force=force)


def table(art: artifacts.Artifact) -> pd.DataFrame:
    return art.table("findings")


def seeds_note(art: artifacts.Artifact) -> str:
    """The sentence every page with a verdict carries: how many seeds the verdicts rest on."""
    seeds = art.metrics["seeds"]
    c = art.manifest["config"]["findings"]
    more = (
        ""
        if len(seeds) > 1
        else (
            " One seed: the intervals hold the uncertainty of the units (files, prompts, "
            "canaries), not the seed-to-seed spread of training; the README says how to build "
            "the book with three seeds."
        )
    )
    return (
        f"Built with {len(seeds)} seed{'s' if len(seeds) > 1 else ''} "
        f"({', '.join(map(str, seeds))}); {c['bootstrap']} bootstrap resamples, "
        f"{100 * c['confidence']:g} % intervals.{more}"
    )
