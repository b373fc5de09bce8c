"""RQ3, cross-organization clone memorization (paper §4.5, Table 11).

The RQ3 pair's models complete the first half of each clone block the pair's training
splits share (Table 7's blocks); memorized lines of the continuation are found with a
3-line threshold (:mod:`collab_lib.verbatim`). Where Table 11 finds no verbatim line, the
loss of each block's second half given its first measures what the models kept of it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from tqdm import tqdm

from collab_lib import artifacts, clone_stats, collaboration, datasets, extraction, paper, verbatim
from collab_lib.clones import CloneOptions
from collab_lib.collaboration import BASE, DP
from collab_lib.config import Config

STEP = verbatim.RQ3
# per model and prompt, the loss of the block's second half given its first (finding 7's
# measure where Table 11 finds no verbatim line)
BLOCK_UNITS = "units_blocks.csv"
BLOCK_VERSION = 1


def rq3_models(cfg: Config) -> list[str]:
    """The base model and the RQ3 pair's models (paper: Centralized_MG ... Incremental_G2M)."""
    pair = set(datasets.rq3_pair(cfg))
    # by organizations, not by the RQ3 tag: with two organizations the pair's models are the
    # study's own union models, listed once under RQ1/RQ2 (the ensemble and the DP twins,
    # beyond the paper, are not the pair's)
    specs = collaboration.roster(cfg)
    trained = [s for s in specs if s.setting != "single" and s.trains and s.rq != DP]
    return [BASE, *(s.name for s in trained if set(s.orgs) == pair)]


def _step_config(cfg: Config) -> dict:
    return verbatim.step_config(
        cfg,
        extractable=False,
        pair=datasets.rq3_pair(cfg),
        units=verbatim.UNITS_VERSION,
        blocks=BLOCK_VERSION,
    )


def plan(cfg: Config, upstream: dict) -> dict[str, tuple[str, str]]:
    """The RQ3 artifact's key, from the config and its inputs' keys (the plans before it)."""
    return verbatim.plan_step(STEP, _step_config(cfg), cfg, upstream)


def build_rq3(cfg: Config, planned: dict, *, force: bool = False) -> artifacts.Artifact:
    """Table 11: the RQ3 pair's models complete the first half of their shared clone blocks."""
    models = collaboration.load(cfg, planned)
    ds = datasets.load(cfg, planned)
    clones_art = artifacts.require_step(cfg, planned, "clones", "clones")
    pair = datasets.rq3_pair(cfg)
    opts = clone_stats.clone_options(cfg)
    opts3 = CloneOptions(cfg.memorization.rq3_min_lines, opts.mode, opts.slash_comments)

    def produce(out: Path) -> dict:
        from collab_lib.scoring import continuation_losses, load_model

        train = {o: ds.documents(o, "train") for o in pair}
        blocks = shared_blocks(clones_art, pair)
        prompts_art = _clone_prompts_artifact(cfg, models[BASE], clones_art, ds, pair, force)
        prompts = artifacts.read_jsonl(prompts_art.file("prompts.jsonl"))
        docs = [(f"{o}/{d['path']}", d["content"]) for o in pair for d in train[o]]
        indices = verbatim.threshold_indices(docs, opts3)
        rows, parts, units, losses, at = [], [prompts_art.ref], [], [], []
        for name in tqdm(rq3_models(cfg), desc="rq3 generations"):
            gen = verbatim.generations_artifact(cfg, models[name], prompts_art, STEP, force)
            parts.append(gen.ref)
            completions = artifacts.read_jsonl(gen.file("generations.jsonl"))
            generated = [(prompts[c["prompt"]], c) for c in completions]
            (row, _, per_prompt), counts = verbatim.detect_thresholds(
                indices, opts3.min_lines, generated, model=name
            )
            rows.append({"model": name, **row})
            at += counts
            units += [{"model": name, **p} for p in per_prompt]
            model, tok = load_model(models[name])
            scored = continuation_losses(model, tok, prompts, cfg.model.context)
            losses.append(scored.assign(model=name))
        verbatim.write_units(units, out / verbatim.PROMPT_UNITS)
        verbatim.threshold_table(at, STEP).to_csv(out / "table11_thresholds.csv", index=False)
        cols = ["model", "prompt", "loss_sum", "tokens"]
        frame = pd.concat(losses, ignore_index=True) if losses else pd.DataFrame(columns=cols)
        frame[cols].to_csv(out / BLOCK_UNITS, index=False)
        table11(rows).to_csv(out / "table11.csv", index=False)
        pd.DataFrame(
            [
                {
                    "shared blocks": len(blocks),
                    "block lines": int(blocks["lines"].sum()),
                    "prompts": len(prompts),
                    "samples per prompt": cfg.memorization.n_samples,
                    "threshold (lines)": opts3.min_lines,
                }
            ]
        ).to_csv(out / "table11_prompts.csv", index=False)
        return {
            "pair": list(pair),
            "parts": parts,
            "blocks": len(blocks),
            "prompts": len(prompts),
            "min_lines": opts3.min_lines,
        }

    inputs = verbatim.input_refs(cfg, planned)
    return artifacts.build(STEP, _step_config(cfg), produce, inputs, seed=cfg.seed, force=force)


def shared_blocks(clones_art, pair: tuple[str, str]) -> pd.DataFrame:
    """Table 7's blocks the pair's training splits share (with vendored code: what trained)."""
    blocks = clones_art.table("table7_blocks")
    if blocks.empty:  # no block at all: the file has no header either
        return pd.DataFrame(columns=["file", "start", "end", "lines"])
    keep = (blocks["scenario"] == "with vendored code") & (
        blocks["organizations"] == " ∩ ".join(pair)
    )
    return blocks[keep].reset_index(drop=True)


def _clone_prompts_artifact(cfg: Config, base_art, clones_art, ds, pair, force: bool):
    config = {
        "kind": STEP,
        "room": verbatim.prompt_room(cfg),
        "min_lines": cfg.clones.min_lines,
        "ends": "before the last line break",
    }

    def produce(out: Path) -> dict:
        tok = verbatim.tokenizer(base_art)
        texts = {d["path"]: d["content"] for d in ds.documents(pair[0], "train")}
        blocks = shared_blocks(clones_art, pair).to_dict("records")
        prompts = extraction.clone_prompts(
            blocks, texts, tok, verbatim.prompt_room(cfg), cfg.clones.min_lines
        )
        artifacts.write_jsonl(
            out / "prompts.jsonl", [{"organization": pair[0], **p} for p in prompts]
        )
        return {"prompts": len(prompts), "blocks": len(blocks)}

    return artifacts.build(
        verbatim.PROMPTS_STEP, config, produce, [clones_art.ref, base_art.ref], force=force
    )


def table11(rows: list[dict]) -> pd.DataFrame:
    """Table 11: per model of the RQ3 pair, generated and memorized lines, ratio (%), paper's."""
    t = pd.DataFrame(rows)
    t["ratio (%)"] = verbatim.ratio(t)
    t["paper ratio (%)"] = [paper.TABLE11.get(m, (None,) * 4)[3] for m in t["model"]]
    return t


STABLE_PROMPTS = 30  # fewer RQ3 prompts than this make Table 11 a small sample


def rq3_sample_note(art: artifacts.Artifact) -> str:
    """How many shared blocks and prompts Table 11 rests on, and whether that is few."""
    m = art.metrics
    text = (
        f"This run's RQ3 pair ({' and '.join(m['pair'])}) shares {m['blocks']} clone "
        f"blocks, which gave {m['prompts']} prompts (the paper: 316 blocks)."
    )
    if m["prompts"] < STABLE_PROMPTS:
        text += (
            f" Fewer than {STABLE_PROMPTS} prompts: Table 11's ratios rest on a small "
            "sample and differences between its models are not a stable finding."
        )
    return text


def threshold_tables(rq2: artifacts.Artifact, rq3: artifacts.Artifact) -> pd.DataFrame:
    """RQ2's and RQ3's detection at each threshold, one table (the RQ3 chapter shows it)."""
    return pd.concat([rq2.table("thresholds"), rq3.table("table11_thresholds")], ignore_index=True)


def threshold_note(cfg: Config, table: pd.DataFrame) -> str:
    """Whether each research question's ranking of the models holds at the other thresholds."""
    main = {"RQ2": cfg.clones.min_lines, "RQ3": cfg.memorization.rq3_min_lines}
    return verbatim.ranking_note(table, main)
