"""RQ2, memorization (paper §2.5, §4.4; Tables 6, 9, 10) and what shows at any scale.

Each model completes the signature and docstring of functions from every organization's
training split (:mod:`collab_lib.extraction`), and the paper's verbatim metric
(:mod:`collab_lib.verbatim`) counts the completion lines also found in that organization's
training split. At CPU scale that metric is zero, so the step also measures canary exposure
and extraction (:mod:`collab_lib.exposure`), the duplication signal
(:mod:`collab_lib.duplication`) and k-extractability (:mod:`collab_lib.extractability`); the
Methods page says what each can and cannot show.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from collab_lib import (
    artifacts,
    canaries,
    clone_stats,
    collaboration,
    datasets,
    duplication,
    exposure,
    extractability,
    extraction,
    paper,
    verbatim,
)
from collab_lib.collaboration import BASE
from collab_lib.config import Config

STEP = verbatim.RQ2
# rq2 alone: 2, tied ratios share a rank in Table 10; 3, the single-organization models in
# the duplication table (finding 4's references)
RQ2_TABLES_VERSION = 3


def rq2_models(cfg: Config) -> list[str]:
    """The base model (the control: it never saw any organization) and ``memorization.models``."""
    return collaboration.chosen_models(cfg, cfg.memorization.models, "memorization.models")


def references(cfg: Config) -> list[str]:
    """The single-organization models: each never saw the other organizations' code, so its
    loss on their training lines tells how predictable those lines are without memorizing."""
    return [s.name for s in collaboration.roster(cfg) if s.setting == "single"]


def _step_config(cfg: Config) -> dict:
    return verbatim.step_config(
        cfg,
        stride=cfg.perplexity_stride,
        units=verbatim.UNITS_VERSION,
        tables=RQ2_TABLES_VERSION,
        extractable_version=extractability.VERSION,
    )


def plan(cfg: Config, upstream: dict) -> dict[str, tuple[str, str]]:
    """The RQ2 artifact's key, from the config and its inputs' keys (the plans before it)."""
    return verbatim.plan_step(STEP, _step_config(cfg), cfg, upstream)


def build_rq2(cfg: Config, planned: dict, *, force: bool = False) -> artifacts.Artifact:
    """Tables 6, 9 and 10, canary exposure and extraction, the duplication signal and
    k-extractability."""
    models = collaboration.load(cfg, planned)
    ds = datasets.load(cfg, planned)
    can = canaries.require(cfg, planned)
    orgs = [o.name for o in cfg.datasets.organizations]
    opts = clone_stats.clone_options(cfg)
    scored = {n: models[n] for n in collaboration.model_names(cfg)}  # every model
    chosen = {n: models[n] for n in rq2_models(cfg)}

    def produce(out: Path) -> dict:
        train = {o: ds.documents(o, "train") for o in orgs}
        prompts_art = prompts_artifact(cfg, models[BASE], ds.artifact.ref, train, force)
        shutil.copy(prompts_art.file("table6.csv"), out / "table6.csv")
        parts = [prompts_art.ref]
        parts += _verbatim(cfg, chosen, prompts_art, train, opts, out, force)
        parts += exposure.measure_exposures(cfg, scored, can, out, force)
        # with the single-organization models: finding 4's references (Methods)
        dup_models = {**chosen, **{n: models[n] for n in references(cfg)}}
        dup_parts, tokens = duplication.measure_duplication(cfg, dup_models, ds, opts, out, force)
        parts += extractability.measure(cfg, chosen, ds, out, force)
        k, match = cfg.extractable_lengths
        return {
            "models": list(chosen),
            "parts": parts + dup_parts,
            "extractable": {
                "k": k,
                "match": match,
                "sequences": cfg.memorization.extractable_sequences,
            },
            "prompt_room": verbatim.prompt_room(cfg),
            "canaries": len(canaries.planted(can)),
            "sampling": verbatim.sampling_config(cfg).__dict__,
            "min_lines": opts.min_lines,
            "duplication_tokens": tokens,
        }

    inputs = verbatim.input_refs(cfg, planned)
    return artifacts.build(STEP, _step_config(cfg), produce, inputs, seed=cfg.seed, force=force)


def parts(cfg: Config, planned: dict) -> list[Callable[[], None]]:
    """RQ2's independent pieces, one per model (a cluster's tasks, :mod:`collab_lib.cluster`)."""
    return [partial(model_part, cfg, planned, name) for name in collaboration.model_names(cfg)]


def model_part(cfg: Config, planned: dict, name: str) -> None:
    """One model's pieces of RQ2, each cached as :func:`build_rq2` builds it: its canary
    exposure; its completions of the prompts and its k-extractability (``memorization.models``
    and the base model); its duplication signal (those and the single-organization models)."""
    models = collaboration.load(cfg, planned)
    ds = datasets.load(cfg, planned)
    can = canaries.require(cfg, planned)
    base, model = models[BASE], models[name]
    alternatives = json.loads(can.file("alternatives.json").read_text())
    exposure.exposure_artifact(cfg, model, can, canaries.planted(can), alternatives, False)
    chosen = rq2_models(cfg)
    orgs = [o.name for o in cfg.datasets.organizations]
    if name in chosen:
        train = {o: ds.documents(o, "train") for o in orgs}
        prompts_art = prompts_artifact(cfg, base, ds.artifact.ref, train, False)
        verbatim.generations_artifact(cfg, model, prompts_art, STEP, False)
        seqs = extractability.sequences_artifact(cfg, base, ds, False)
        extractability.model_artifact(cfg, model, seqs, False)
    if name in chosen or name in references(cfg):
        tok, opts = verbatim.tokenizer(base), clone_stats.clone_options(cfg)
        splits = [(o, s) for o in orgs for s in ("train", "validation")]
        lines = {(o, s): duplication.line_sample(ds, tok, o, s, opts, cfg) for o, s in splits}
        duplication.duplication_artifact(cfg, model, ds.artifact.ref, lines, False)


def _verbatim(cfg: Config, models, prompts_art, train, opts, out: Path, force: bool) -> list:
    """Tables 9, 10 and the memorized examples: each model's completions of the prompts,
    searched in their organization's training split. Returns the generations' refs."""
    prompts = artifacts.read_jsonl(prompts_art.file("prompts.jsonl"))
    indices = {
        org: verbatim.threshold_indices([(d["path"], d["content"]) for d in docs], opts)
        for org, docs in train.items()
    }
    rows, found, parts, units, at = [], [], [], [], []
    for name in tqdm(list(models), desc="rq2 generations"):
        gen = verbatim.generations_artifact(cfg, models[name], prompts_art, STEP, force)
        parts.append(gen.ref)
        completions = artifacts.read_jsonl(gen.file("generations.jsonl"))
        for org in train:
            mine = [
                (prompts[c["prompt"]], c)
                for c in completions
                if prompts[c["prompt"]]["organization"] == org
            ]
            (row, blocks, per_prompt), counts = verbatim.detect_thresholds(
                indices[org], opts.min_lines, mine, model=name
            )
            rows.append({"model": name, "organization": org, **row})
            at += counts
            found += [{"model": name, "organization": org, **b} for b in blocks]
            units += [{"model": name, "organization": org, **p} for p in per_prompt]
    verbatim.write_units(units, out / verbatim.PROMPT_UNITS)
    verbatim.threshold_table(at, STEP).to_csv(out / "thresholds.csv", index=False)
    counts = pd.DataFrame(rows)
    table9(counts).to_csv(out / "table9.csv", index=False)
    table10(counts).to_csv(out / "table10.csv", index=False)
    memorized = _examples(found, cfg.memorization.examples, train)
    memorized.to_csv(out / "memorized.csv", index=False)
    return parts


def prompts_artifact(cfg: Config, base_art, ds_ref: str, train: dict, force: bool):
    """Table 6: every organization's functions, its prompts, the seeded sample (JSONL)."""
    m = cfg.memorization
    config = {
        "room": verbatim.prompt_room(cfg),
        "fraction": m.sample_fraction,
        "seed": cfg.seed,
        "ends": "closing quotes",
    }

    def produce(out: Path) -> dict:
        tok = verbatim.tokenizer(base_art)
        rows, sampled = [], []
        for org, docs in train.items():
            found, counts = extraction.function_prompts(
                ((d["path"], d["content"]) for d in docs), tok, verbatim.prompt_room(cfg)
            )
            chosen = extraction.sample_prompts(found, m.sample_fraction, f"{cfg.seed}/rq2/{org}")
            sampled += [{"organization": org, **p} for p in chosen]
            ref = paper.TABLE6.get(org, (None, None, None))
            rows.append(
                {
                    "organization": org,
                    **counts,
                    "sampled": len(chosen),
                    "paper functions": ref[0],
                    "paper prompts": ref[1],
                    "paper sampled": ref[2],
                }
            )
        artifacts.write_jsonl(out / "prompts.jsonl", sampled)
        pd.DataFrame(rows).to_csv(out / "table6.csv", index=False)
        return {"prompts": len(sampled)}

    return artifacts.build(
        verbatim.PROMPTS_STEP,
        {"kind": STEP, **config},
        produce,
        [ds_ref, base_art.ref],
        seed=cfg.seed,
        force=force,
    )


def table9(counts: pd.DataFrame) -> pd.DataFrame:
    """Table 9: per model and organization, generated and memorized lines and the ratio (%),
    with the paper's values beside."""
    t = counts.copy()
    t["ratio (%)"] = verbatim.ratio(t)
    ref = [paper.TABLE9.get((r.model, r.organization)) for r in t.itertuples()]
    t["paper ratio (%)"] = [None if r is None else r[3] for r in ref]
    t["paper generated lines"] = [None if r is None else r[0] for r in ref]
    return t


def table10(counts: pd.DataFrame) -> pd.DataFrame:
    """Table 10: Table 9 summed over organizations, ranked by memorization ratio; equal
    ratios share a rank (at small scale every model may tie at 0 %)."""
    cols = ["generated lines", "memorized blocks", "memorized lines"]
    t = counts.groupby("model", sort=False)[cols].sum().reset_index()
    t["ratio (%)"] = verbatim.ratio(t)
    t = t.sort_values(["ratio (%)", "model"], ascending=[False, True], kind="stable")
    rank = t["ratio (%)"].rank(method="min", ascending=False, na_option="bottom")
    t.insert(0, "rank", rank.astype(int))
    t["paper ratio (%)"] = [paper.TABLE10.get(m) for m in t["model"]]
    return t


def _examples(found: list[dict], k: int, train: dict[str, list[dict]]) -> pd.DataFrame:
    """The ``k`` longest memorized blocks, the generated text beside the training source."""
    cols = [
        "model",
        "organization",
        "lines",
        "source_file",
        "source_start",
        "source_end",
        "generated",
        "source",
    ]
    if not found:
        return pd.DataFrame(columns=cols)
    texts = {(o, d["path"]): d["content"] for o, docs in train.items() for d in docs}
    # the longest in generated lines: a block may start with lines the prompt copied
    best = sorted(found, key=lambda b: (-b["generated_lines"], b["model"], b["prompt"]))[:k]
    rows = [
        {
            **{c: b[c] for c in cols[:6]},
            "generated": b["text"],
            "source": verbatim.lines(
                texts[(b["organization"], b["source_file"])], b["source_start"], b["source_end"]
            ),
        }
        for b in best
    ]
    return pd.DataFrame(rows, columns=cols)


def settings_table(art: artifacts.Artifact) -> pd.DataFrame:
    """How RQ2 was measured, from the artifact's own record."""
    m, c = art.metrics, art.manifest["config"]["memorization"]
    s = m["sampling"]
    rows = [
        (
            "prompts",
            f"signature and docstring, at most {m['prompt_room']} tokens; "
            f"{100 * c['sample_fraction']:g} % of each organization's prompts sampled",
        ),
        ("completions per prompt", c["n_samples"]),
        ("temperature, top-p, top-k", f"{s['temperature']:g}, {s['top_p']:g}, {s['top_k']}"),
        ("max new tokens", f"{s['max_new_tokens']} (stops at the end of the function body)"),
        (
            "memorized",
            f"a block of >= {m['min_lines']} counted lines also in the "
            "organization's training split; completion lines only",
        ),
        ("models", ", ".join(m["models"])),
        (
            "canaries",
            f"{m['canaries']}, each ranked among "
            f"{c['alternatives'] or 'all'} alternatives of its format",
        ),
        (
            "duplication signal",
            "tokens scored per organization and split: "
            + ", ".join(f"{k} {v:,}" for k, v in m["duplication_tokens"].items()),
        ),
    ]
    return pd.DataFrame(rows, columns=["setting", "value"])


def extractable_note(art: artifacts.Artifact) -> str:
    """The k-extractability settings of this run and what it found, in words."""
    e = art.metrics.get("extractable")
    if e is None:
        return "This run predates k-extractability: run the rq2 step again to measure it."
    t = art.table("extractable")
    per = "all" if e["sequences"] is None else f"up to {e['sequences']:,}"
    text = (
        f"This run: *k* = {e['k']} tokens of prefix, *m* = {e['match']} tokens to match, "
        f"{per} sequences per organization and split."
    )
    t = t[t["model"] != BASE]
    excess = "train - validation (points)"
    if t.empty or not (t[excess].fillna(0) > 0).any():
        text += " No model extracts a larger share of training than of validation sequences."
    else:
        top = t.loc[t[excess].idxmax()]
        text += (
            f" Largest training excess: {top['model']} on {top['organization']}, "
            f"{top['train (%)']:.1f} % of training and {top['validation (%)']:.1f} % of "
            f"validation sequences extracted."
        )
    matched = "matched, train - validation (tokens)"
    if not t.empty and t[matched].notna().any():
        top = t.loc[t[matched].idxmax()]
        base = top["base model's matched, train - validation (tokens)"]
        text += (
            f" Tokens matched before the first wrong one: the largest training excess is "
            f"{top['model']}'s on {top['organization']}, {top[matched]:+.2f} tokens per "
            f"sequence (the base model: {base:+.2f})."
        )
    return text
