"""Every setting as a curve: effectiveness against memorization after each epoch of training.

The paper reports each setting as one point, its last checkpoint; a balance between
effectiveness and memorization is a curve. Every training job keeps its weights after each
epoch (a federated job after each round: :mod:`collab_lib.training`, ``epochs/<n>``); this
step scores each of them, and the base model as every curve's start, on the measures that
show at any scale:

- validation perplexity on a seeded subset of each organization's validation files, about
  ``curves.validation_kb`` kilobytes of it (null: all), their union as in Table 8;
- canary exposure of every planted canary (:mod:`collab_lib.exposure`), ranked among the
  first ``curves.alternatives`` of RQ2's alternatives (null: as many as RQ2);
- k-extractability (:mod:`collab_lib.extractability`) on ``curves.sequences`` of RQ2's
  sequences per organization and split (seeded; null: all of them).

An incremental model's curve runs through its stages' epochs in order (stage 2 starts
where stage 1 ended), so ``Incremental_F2M2G``'s first three points are
``Facebook_Only``'s. A point is scored once and cached on its own (shared prefixes are
shared), so an interrupted run resumes at the next point. A job trained without
``train.epoch_checkpoints`` contributes its final weights as its only point.

The paper's verbatim metric is scored per point only where ``curves.prompts`` asks for it
(the ``gpu`` and ``paper`` profiles): on a seeded subset of RQ2's prompts, with RQ2's
sampling and clone detection. At CPU scale it is zero everywhere, and it costs sampled
completions at every point.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from collab_lib import (
    artifacts,
    canaries,
    collaboration,
    datasets,
    evaluation,
    extractability,
    sampling,
    verbatim,
)
from collab_lib.collaboration import BASE, ModelSpec
from collab_lib.config import Config, to_dict

STEP = "curves"
POINT_STEP = "curve_point"
VERSION = 4  # the table and its units (3: the verbatim metric where scored; 4: rq)
POINT_VERSION = 1  # how a checkpoint is scored: a change re-scores every checkpoint
# the units the findings resample, one row per model, point and unit
PERPLEXITY_UNITS = "units_curve_perplexity.csv"
EXPOSURE_UNITS = "units_curve_exposure.csv"
EXTRACTABLE_UNITS = "units_curve_extractable.csv"
VERBATIM_UNITS = "units_curve_prompts.csv"  # where curves.prompts > 0
COLUMNS = [
    "model",
    "setting",
    "rq",  # what the model is for: the study's (RQ1/RQ2) or a DP twin (DP)
    "point",
    "stage",
    "epoch",
    "epochs",
    "validation perplexity",
    "exposure",
    "exposure - base",
    "matched, train - validation (tokens)",
    "extracted, train (%)",
    "memorized lines (%)",
]


@dataclass(frozen=True)
class Point:
    """A model's weights at one moment: ``job``'s after ``epoch`` (None: its final ones)."""

    job: artifacts.Artifact
    stage: int  # 0: the base model, 1: the first job, ...
    epoch: int | None

    @property
    def id(self) -> str:
        return f"{self.job.ref}@{self.epoch if self.epoch is not None else 'final'}"


def curve_models(cfg: Config) -> list[ModelSpec]:
    """The models of RQ1 and RQ2 (every setting on all organizations, and each organization's
    own model) and the DP twins; the RQ3 pair's models are left out."""
    return [s for s in collaboration.roster(cfg) if s.main or s.rq == collaboration.DP]


def points(base: artifacts.Artifact, model: artifacts.Artifact) -> list[Point]:
    """A model's curve: the base model, then each job's epochs in training order."""
    out = [Point(base, 0, None)]
    for stage, job in enumerate(collaboration.chain(model), 1):
        out += [Point(job, stage, e) for e in artifacts.snapshot_epochs(job)] or [
            Point(job, stage, None)
        ]
    return out


def _point_config(cfg: Config) -> dict:
    """What a checkpoint's scores depend on beyond the checkpoint and its inputs."""
    return {
        "curves": {k: v for k, v in to_dict(cfg.curves).items() if k != "prompts"},
        "alternatives": cfg.memorization.alternatives,
        "extractable": [*cfg.extractable_lengths, cfg.memorization.extractable_sequences],
        "stride": cfg.perplexity_stride,
        "seed": cfg.seed,
        # the scoring code's own versions: a change there re-scores every checkpoint too
        "version": POINT_VERSION,
        "scoring": [
            evaluation.PPL_VERSION,
            verbatim.VERSION,
            extractability.VERSION,
            sampling.VERSION,
        ],
    }


def _verbatim_config(cfg: Config) -> dict:
    """What a point's verbatim metric depends on (nothing where it is not scored)."""
    if not cfg.curves.prompts:
        return {}
    m = cfg.memorization
    return {
        "verbatim": {
            "prompts": cfg.curves.prompts,
            "sampling": verbatim.sampling_config(cfg).__dict__,
            "n": m.n_samples,
            "batch_size": m.batch_size,
            "clones": cfg.clones,
            "room": verbatim.prompt_room(cfg),
        }
    }


def _step_config(cfg: Config) -> dict:
    return _point_config(cfg) | _verbatim_config(cfg) | {"version": [POINT_VERSION, VERSION]}


def _input_refs(cfg: Config, upstream: dict) -> list[str]:
    """What the curves artifact reads: the datasets, canaries and curve models."""
    names = [BASE, *(s.name for s in curve_models(cfg))]
    return [artifacts.ref(upstream[n]) for n in ("datasets", "canaries", *names)]


def plan(cfg: Config, upstream: dict) -> dict[str, tuple[str, str]]:
    """The curves artifact's key: its settings and :func:`_input_refs`."""
    refs = _input_refs(cfg, upstream)
    return {STEP: (STEP, artifacts.artifact_key(STEP, _step_config(cfg), refs))}


def subsample(items: list, n: int | None, seed: str) -> list:
    """``n`` of ``items`` drawn with ``seed``, in their order (all when ``n`` is None or more)."""
    if n is None or n >= len(items):
        return list(items)
    keep = set(random.Random(seed).sample(range(len(items)), n))
    return [x for i, x in enumerate(items) if i in keep]


def build_curves(cfg: Config, planned: dict, *, force: bool = False) -> artifacts.Artifact:
    """Table ``curves`` (one row per model and point) and the units behind it."""
    models = collaboration.load(cfg, planned)
    ds = datasets.load(cfg, planned)
    can = canaries.require(cfg, planned)
    specs = curve_models(cfg)

    def produce(out: Path) -> dict:
        inputs, seq_art = _inputs(cfg, models[BASE], ds, can)
        curves = {s.name: points(models[BASE], models[s.name]) for s in specs}
        unique = {p.id: p for ps in curves.values() for p in ps}
        scored = {}
        for pid, p in tqdm(unique.items(), desc="curve points"):
            scored[pid] = point_artifact(cfg, p, inputs, force)
        parts = _write(out, specs, curves, scored)
        return {
            "points": len(unique),
            "validation": {
                o: {"files": len(d), "of": len(ds.documents(o, "validation")), "kb": _kb(d)}
                for o, d in inputs.val.items()
            },
            "canaries": len(inputs.planted),
            "alternatives": _alternatives(cfg, inputs.alternatives),
            "sequences": len(inputs.seqs),
            "prompts": len(inputs.prompts),
            "parts": [seq_art.ref, *parts],
        }

    refs = _input_refs(cfg, planned)
    return artifacts.build(STEP, _step_config(cfg), produce, refs, seed=cfg.seed, force=force)


def parts(cfg: Config, planned: dict) -> list[Callable[[], None]]:
    """The curves' independent pieces: each curve model's points (a cluster's tasks,
    :mod:`collab_lib.cluster`; a point two models share is built once, the other waits)."""
    return [partial(model_points, cfg, planned, s.name) for s in curve_models(cfg)]


def model_points(cfg: Config, planned: dict, name: str) -> None:
    """Every point of one model's curve, each cached as :func:`build_curves` builds it."""
    models = collaboration.load(cfg, planned)
    ds = datasets.load(cfg, planned)
    inputs, _ = _inputs(cfg, models[BASE], ds, canaries.require(cfg, planned))
    for p in points(models[BASE], models[name]):
        point_artifact(cfg, p, inputs, False)


def _inputs(cfg: Config, base: artifacts.Artifact, ds, can) -> tuple[_Inputs, artifacts.Artifact]:
    """What every point is scored on, and RQ2's sequences artifact it takes them from."""
    # RQ2's own sequences: --force here re-scores the checkpoints, never RQ2's draw
    seq_art = extractability.sequences_artifact(cfg, base, ds, False)
    prompts, indices, prompt_refs = _prompts(cfg, base, ds)
    inputs = _Inputs(
        val=_validation(cfg, ds),
        planted=canaries.planted(can),
        alternatives=json.loads(can.file("alternatives.json").read_text()),
        seqs=_sequences(cfg, seq_art),
        prompts=prompts,
        indices=indices,
        refs=[ds.artifact.ref, can.ref, seq_art.ref, *prompt_refs],
    )
    return inputs, seq_art


@dataclass(frozen=True)
class _Inputs:
    val: dict[str, list[dict]]
    planted: list[dict]
    alternatives: dict
    seqs: list[dict]
    prompts: list[dict]  # RQ2's prompts the verbatim metric completes (none: not scored)
    indices: dict  # each organization's training split, indexed for the clone detector (lazy)
    refs: list[str]


def _validation(cfg: Config, ds: datasets.Datasets) -> dict[str, list[dict]]:
    kb = cfg.curves.validation_kb
    out = {}
    for org in ds.corpora:
        docs = ds.documents(org, "validation")
        out[org] = docs if kb is None else within(docs, kb * 1000, f"{cfg.seed}/curves/{org}")
    return out


def within(docs: list[dict], budget: float, seed: str) -> list[dict]:
    """Files drawn in a seeded order, each kept while the total stays within ``budget``
    bytes (the first drawn always), in their own order: a subset of about that size whatever
    the files' sizes."""
    order = random.Random(seed).sample(range(len(docs)), len(docs))
    keep, total = set(), 0
    for i in order:
        size = len(docs[i]["content"].encode())
        if not keep or total + size <= budget:
            keep.add(i)
            total += size
    return [d for i, d in enumerate(docs) if i in keep]


def _prompts(cfg: Config, base: artifacts.Artifact, ds) -> tuple[list[dict], dict, list[str]]:
    """``curves.prompts`` of RQ2's prompts per organization (seeded) and each organization's
    training split indexed for detection; nothing where the verbatim metric is not scored."""
    if not cfg.curves.prompts:
        return [], {}, []
    from collab_lib import clone_stats, memorization
    from collab_lib.clones import CloneIndex

    train = {o: ds.documents(o, "train") for o in ds.corpora}
    art = memorization.prompts_artifact(cfg, base, ds.artifact.ref, train, False)
    every = artifacts.read_jsonl(art.file("prompts.jsonl"))
    chosen = [
        p
        for org in train
        for p in subsample(
            [p for p in every if p["organization"] == org],
            cfg.curves.prompts,
            f"{cfg.seed}/curves/prompts/{org}",
        )
    ]
    opts = clone_stats.clone_options(cfg)
    return chosen, _Indices(lambda o: CloneIndex.build(_pairs(train[o]), opts)), [art.ref]


def _pairs(docs: list[dict]) -> list[tuple[str, str]]:
    return [(d["path"], d["content"]) for d in docs]


class _Indices(dict):
    """Each organization's training split indexed for the clone detector, built the first
    time a checkpoint needs it (a rerun whose checkpoints are all cached builds none)."""

    def __init__(self, build) -> None:
        super().__init__()
        self._build = build

    def __missing__(self, org: str):
        self[org] = self._build(org)
        return self[org]


def _kb(docs: list[dict]) -> float:
    return round(sum(len(d["content"].encode()) for d in docs) / 1000, 1)


def _alternatives(cfg: Config, alternatives: dict) -> int:
    drawn = len(next(iter(alternatives.values()), []))
    for n in (cfg.curves.alternatives, cfg.memorization.alternatives):
        if n is not None:
            return min(drawn, n)
    return drawn


def _sequences(cfg: Config, seq_art: artifacts.Artifact) -> list[dict]:
    seqs = artifacts.read_jsonl(seq_art.file("sequences.jsonl"))
    groups: dict[tuple[str, str], list[dict]] = {}
    for s in seqs:
        groups.setdefault((s["organization"], s["split"]), []).append(s)
    n = cfg.curves.sequences
    return [
        s
        for (org, split), group in groups.items()
        for s in subsample(group, n, f"{cfg.seed}/curves/{org}/{split}")
    ]


def point_artifact(cfg: Config, p: Point, inputs: _Inputs, force: bool) -> artifacts.Artifact:
    """One point's scores: per validation file, per canary and per sequence."""
    from collab_lib import exposure

    n_alt = _alternatives(cfg, inputs.alternatives)
    k = cfg.extractable_lengths[0]
    config = {"epoch": p.epoch} | _point_config(cfg) | _verbatim_config(cfg)

    def produce(out: Path) -> dict:
        from collab_lib.scoring import load_model

        model, tok = load_model(p.job, p.epoch)
        ppl = evaluation.file_losses(
            model, tok, inputs.val, cfg.model.context, cfg.perplexity_stride
        )
        ppl.to_csv(out / "perplexity.csv", index=False)
        scores = exposure.secret_scores(model, tok, inputs.planted, inputs.alternatives, n_alt)
        pd.DataFrame(scores, columns=exposure.SCORE_COLUMNS).to_csv(
            out / "exposure.csv", index=False
        )
        ext = extractability.outcomes(model, tok, inputs.seqs, k, cfg.memorization.batch_size)
        ext.to_csv(out / "extractable.csv", index=False)
        if inputs.prompts:
            _verbatim_units(cfg, model, tok, inputs).to_csv(out / "verbatim.csv", index=False)
        return {"perplexity": math.exp(ppl["loss_sum"].sum() / ppl["tokens"].sum())}

    return artifacts.build(POINT_STEP, config, produce, [p.job.ref, *inputs.refs], force=force)


def _verbatim_units(cfg: Config, model, tok, inputs: _Inputs) -> pd.DataFrame:
    """Generated and memorized lines per prompt (RQ2's sampling and detection)."""
    rows, _ = verbatim.complete(cfg, model, tok, inputs.prompts, verbatim.RQ2)
    by_org: dict[str, list] = {}
    for r in rows:
        p = inputs.prompts[r["prompt"]]
        by_org.setdefault(p["organization"], []).append((p, r))
    units = []
    for org, mine in by_org.items():
        units += [{"organization": org, **u} for u in verbatim.detect(inputs.indices[org], mine)[2]]
    return pd.DataFrame(
        units, columns=["organization", "prompt", "generated lines", "memorized lines"]
    )


def _write(out: Path, specs: list[ModelSpec], curves: dict, scored: dict) -> list[str]:
    """The table and the three unit files (one row per model, point and unit)."""
    names = ["perplexity", "exposure", "extractable"]
    if any((a.path / "verbatim.csv").is_file() for a in scored.values()):
        names.append("verbatim")
    tables = {pid: {n: art.table(n) for n in names} for pid, art in scored.items()}  # read once
    frames: dict[str, list[pd.DataFrame]] = {name: [] for name in names}
    for spec in specs:
        for i, p in enumerate(curves[spec.name]):
            for name, parts in frames.items():
                parts.append(tables[p.id][name].assign(model=spec.name, point=i))
    units = {name: _concat(parts) for name, parts in frames.items()}
    units["perplexity"].to_csv(out / PERPLEXITY_UNITS, index=False)
    exposure_cols = ["model", "point", "organization", "canary", "count", "extrapolated_exposure"]
    units["exposure"].reindex(columns=exposure_cols).to_csv(out / EXPOSURE_UNITS, index=False)
    units["extractable"].to_csv(out / EXTRACTABLE_UNITS, index=False)
    if "verbatim" in units:
        units["verbatim"].to_csv(out / VERBATIM_UNITS, index=False)
    curves_table(specs, curves, units).to_csv(out / "curves.csv", index=False)
    return sorted({a.ref for a in scored.values()})


def _concat(parts: list[pd.DataFrame]) -> pd.DataFrame:
    frame = pd.concat(parts, ignore_index=True)
    return frame[["model", "point", *(c for c in frame.columns if c not in ("model", "point"))]]


def curves_table(specs: list[ModelSpec], curves: dict, units: dict) -> pd.DataFrame:
    """One row per model and point: where it is in training and its scores."""
    ppl = units["perplexity"].groupby(["model", "point"])[["loss_sum", "tokens"]].sum()
    exp = units["exposure"].groupby(["model", "point"])["extrapolated_exposure"].mean()
    ext = units["extractable"]
    means = ext.groupby(["model", "point", "split"])[["matched", "extracted"]].mean()
    matched, extracted = means["matched"], means["extracted"]
    lines = ["generated lines", "memorized lines"]
    verb = (
        units["verbatim"].groupby(["model", "point"])[lines].sum() if "verbatim" in units else None
    )
    rows = []
    for spec in specs:
        base_exposure = exp.get((spec.name, 0), math.nan)
        curve = curves[spec.name]
        for i, (p, epochs) in enumerate(zip(curve, trained(curve), strict=True)):
            key = (spec.name, i)
            train_minus_val = matched.get((*key, "train"), math.nan) - matched.get(
                (*key, "validation"), math.nan
            )
            rows.append(
                {
                    "model": spec.name,
                    "setting": spec.setting,
                    "rq": spec.rq,
                    "point": i,
                    "stage": p.stage,
                    "epoch": p.epoch,
                    "epochs": epochs,
                    "validation perplexity": math.exp(
                        ppl.loc[key, "loss_sum"] / ppl.loc[key, "tokens"]
                    ),
                    "exposure": exp.get(key, math.nan),
                    "exposure - base": exp.get(key, math.nan) - base_exposure,
                    "matched, train - validation (tokens)": train_minus_val,
                    "extracted, train (%)": 100 * extracted.get((*key, "train"), math.nan),
                    "memorized lines (%)": _ratio(verb, key),
                }
            )
    return pd.DataFrame(rows, columns=COLUMNS).astype({"epoch": "Int64", "epochs": "Int64"})


def trained(curve: list[Point]) -> list[float]:
    """Epochs (rounds) trained up to each point, over the stages so far (NaN from a job that
    kept no snapshots on: how far into training its final weights are is not recorded)."""
    out, offset, stage, last = [], 0.0, 0, 0
    for p in curve:
        if p.stage != stage:  # a new stage starts where the previous one ended
            offset, stage, last = offset + last, p.stage, 0
        if p.epoch is None and p.stage > 0:
            offset = math.nan
        last = p.epoch or 0
        out.append(offset + last)
    return out


def finding_5_models(cfg: Config) -> list[str]:
    """The centralized and federated models on all organizations (finding 5's comparison)."""
    return [s.name for s in curve_models(cfg) if s.setting in ("centralized", "federated")]


def subset_note(art: artifacts.Artifact, cfg: Config) -> str:
    """What every checkpoint was scored on, from the artifact's own record."""
    m = art.metrics
    val = "; ".join(
        f"{o} {v['files']} of {v['of']} files ({v['kb']:g} kB)" for o, v in m["validation"].items()
    )
    canaries = (
        f"{m['canaries']} canaries, each ranked among {m['alternatives']} alternatives"
        if m["canaries"]
        else "no canaries (none planted in this profile)"
    )
    kb, per = _setting(cfg.curves.validation_kb), _setting(cfg.curves.sequences)
    prompts = (
        f" The paper's verbatim metric on {m['prompts']} of RQ2's prompts "
        f"(`curves.prompts`: {cfg.curves.prompts} per organization), RQ2's sampling."
        if m.get("prompts")
        else " The paper's verbatim metric is not scored per checkpoint (`curves.prompts`: 0)."
    )
    return (
        f"{m['points']} checkpoints scored (a checkpoint that several curves share, such as an "
        f"incremental model's first stage, once). Validation perplexity on {val} "
        f"(`curves.validation_kb`: {kb}); {canaries}; k-extractability on {m['sequences']} "
        f"sequences in all (`curves.sequences`: {per} per organization and split).{prompts}"
    )


def _setting(value) -> str:
    return "null" if value is None else f"{value:g}"


def _ratio(verb: pd.DataFrame | None, key: tuple) -> float:
    """The paper's memorization ratio (%) at a point, where it was scored."""
    if verb is None or key not in verb.index or not verb.loc[key, "generated lines"]:
        return math.nan
    return 100 * verb.loc[key, "memorized lines"] / verb.loc[key, "generated lines"]
