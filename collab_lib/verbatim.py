"""The paper's verbatim memorization metric (§2.5, Eq. 1), shared by RQ2 and RQ3.

A model completes prompts; a completion line is *memorized* when it lies in a block of at
least ``clones.min_lines`` lines (RQ3: ``memorization.rq3_min_lines``) that also occurs in
the training split (our Type-1 detector in Simian's place). Only generated lines count: the
prompt stays in the text the detector reads, so a block that starts in the prompt and runs
into the completion is found whole, but only its completion lines are counted, and a
docstring copied from training inside the prompt is never "memorized".

Generations are artifacts of their own (one per model and research question), so a new
detection setting never re-runs sampling.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from collab_lib import artifacts, collaboration, extraction, sampling
from collab_lib.clones import CloneIndex, build_corpus
from collab_lib.config import Config, to_dict

# In the key of rq2, rq3 and each of their parts: a change of method rebuilds them all.
VERSION = 2
RQ2, RQ3 = "rq2", "rq3"
PROMPTS_STEP, GENERATIONS_STEP = "prompts", "generations"
# lines per model and prompt (rq2, rq3): the units the findings resample
PROMPT_UNITS = "units_prompts.csv"
# rq2 and rq3 (not their parts, which stay cached) with the unit files
UNITS_VERSION = 1
# The paper checked its 6-line threshold at 4 and 8 lines too (its footnote 9); RQ3's 3-line
# rule is scaled the same way (2, 3, 4).
THRESHOLD_SCALES = (2 / 3, 1.0, 4 / 3)


def max_new_tokens(cfg: Config) -> int:
    """``memorization.max_new_tokens``, or half the model's context (the rest: the prompt)."""
    return cfg.memorization.max_new_tokens or max(1, cfg.model.context // 2)


def prompt_room(cfg: Config) -> int:
    """Tokens a prompt may have: the paper's 512, and what the context leaves after generation."""
    return min(cfg.memorization.prompt_max_tokens, cfg.model.context - max_new_tokens(cfg))


def sampling_config(cfg: Config) -> sampling.SamplingConfig:
    m = cfg.memorization
    return sampling.SamplingConfig(m.temperature, m.top_p, m.top_k, max_new_tokens(cfg))


def input_refs(cfg: Config, upstream: dict) -> list[str]:
    """``step/key`` of what rq2 and rq3 read: datasets, clones, canaries and every model."""
    refs = [artifacts.ref(upstream[n]) for n in ("datasets", "clones", "canaries")]
    return sorted([*refs, *collaboration.model_refs(cfg, upstream).values()])


def plan_step(step: str, config: dict, cfg: Config, upstream: dict) -> dict[str, tuple]:
    """The key of rq2 or rq3: ``config`` and the keys of :func:`input_refs`."""
    return {step: (step, artifacts.artifact_key(step, config, input_refs(cfg, upstream)))}


def step_config(cfg: Config, *, extractable: bool = True, **extra) -> dict:
    """What an rq2 or rq3 artifact depends on beyond its inputs' keys (rq3 measures no
    k-extractability: ``extractable=False`` leaves its settings out of rq3's key)."""
    memorization = to_dict(cfg.memorization)
    if not extractable:
        for key in ("extractable_k", "extractable_match", "extractable_sequences"):
            memorization.pop(key)
    return {
        "memorization": memorization,
        "clones": cfg.clones,
        "seed": cfg.seed,
        "version": VERSION,
        "sampler": sampling.VERSION,
        "context": cfg.model.context,
        "thresholds": THRESHOLD_SCALES,
        **extra,
    }


def generations_artifact(cfg: Config, model_art, prompts_art, kind: str, force: bool):
    """``n_samples`` completions of every prompt by one model (``generations.jsonl``)."""
    m = cfg.memorization
    sc = sampling_config(cfg)
    config = {
        "kind": kind,
        "sampling": sc.__dict__,
        "n": m.n_samples,
        "seed": cfg.seed,
        "batch_size": m.batch_size,
        "stop": "function body" if kind == RQ2 else "EOS",
        "sampler": sampling.VERSION,
    }

    def produce(out: Path) -> dict:
        from collab_lib.scoring import load_model

        model, tok = load_model(model_art)
        prompts = artifacts.read_jsonl(prompts_art.file("prompts.jsonl"))
        rows, new_tokens = complete(cfg, model, tok, prompts, kind)
        artifacts.write_jsonl(out / "generations.jsonl", rows)
        return {"sequences": len(rows), "new_tokens": new_tokens}

    return artifacts.build(
        GENERATIONS_STEP,
        config,
        produce,
        [model_art.ref, prompts_art.ref],
        seed=cfg.seed,
        force=force,
    )


def complete(cfg: Config, model, tok, prompts: list[dict], kind: str) -> tuple[list[dict], int]:
    """``memorization.n_samples`` completions of each prompt with the paper's sampling (RQ2:
    until the function's body ends; RQ3: until EOS), as ``{prompt, sample, completion}`` rows
    (``prompt``: its index in ``prompts``), and the new tokens drawn."""
    from collab_lib.decoding import sample_texts

    m = cfg.memorization
    ids = [tok(p["prompt"], verbose=False)["input_ids"][-prompt_room(cfg) :] for p in prompts]
    texts, new_tokens = sample_texts(
        model,
        tok,
        ids,
        m.n_samples,
        sampling_config(cfg),
        cut=extraction.body_end if kind == RQ2 else never,
        batch_size=m.batch_size,
        seed=cfg.seed,
        desc=f"sampling {kind}",
    )
    rows = [
        {"prompt": i // m.n_samples, "sample": i % m.n_samples, "completion": t}
        for i, t in enumerate(texts)
    ]
    return rows, new_tokens


def never(text: str) -> None:
    return None


def detect(
    index: CloneIndex, generated: list[tuple[dict, dict]]
) -> tuple[dict, list[dict], list[dict]]:
    """Generated lines, memorized blocks and lines of ``(prompt, completion)`` pairs; the
    blocks; and the line counts per prompt (its samples summed: what the findings resample).

    Each text the detector reads is the prompt followed by its completion; the prompt's
    lines are masked out of every count (see the module's docstring).
    """
    docs, first_generated = [], []
    for p, c in generated:
        docs.append((f"{c['prompt']}/{c['sample']}", p["prompt"] + c["completion"]))
        # a completion begins on the prompt's last line (or the next, after a line break):
        # generated lines come after the prompt's lines, counted as the detector counts them
        first_generated.append(len(extraction.split_lines(p["prompt"])) + 1)
    if not docs:
        return {"generated lines": 0, "memorized blocks": 0, "memorized lines": 0}, [], []
    query = build_corpus(docs, index.opts)
    file_of = query.file_index(np.arange(query.n_lines))
    counts = query.line_no >= np.asarray(first_generated)[file_of]
    report = index.query(query, counts=counts)
    by_name = dict(docs)
    first = {name: f for (name, _), f in zip(docs, first_generated, strict=True)}
    blocks = []
    for b in report.blocks:
        prompt_id, sample = map(int, b.file.split("/"))
        blocks.append(
            {
                "prompt": prompt_id,
                "sample": sample,
                "start": b.start,
                "end": b.end,
                "lines": b.lines,
                "source_file": b.source_file,
                "source_start": b.source_start,
                "source_end": b.source_end,
                "text": lines(by_name[b.file], b.start, b.end),
                "generated_lines": b.end - max(b.start, first[b.file]) + 1,  # physical
            }
        )
    row = {
        "generated lines": report.counted_lines,
        "memorized blocks": len(report.blocks),
        "memorized lines": report.cloned_lines,
    }
    return row, blocks, per_prompt([c["prompt"] for _, c in generated], file_of, counts, report)


def per_prompt(prompt_ids: list[int], file_of: np.ndarray, counts, report) -> list[dict]:
    """Generated and memorized lines of each prompt, its samples together."""
    ids = np.asarray(prompt_ids)[file_of]  # the prompt of every line of the query
    frame = pd.DataFrame(
        {
            "prompt": ids,
            "generated lines": counts.astype(int),
            "memorized lines": report.covered.astype(int),
        }
    )
    return frame.groupby("prompt").sum().reset_index().to_dict("records")


def ratio(t: pd.DataFrame) -> pd.Series:
    """Paper Eq. 1 in %: memorized lines over generated lines (NaN where none generated)."""
    return 100 * t["memorized lines"] / t["generated lines"].where(t["generated lines"] > 0)


def lines(text: str, start: int, end: int) -> str:
    return "".join(extraction.split_lines(text)[start - 1 : end])


def tokenizer(model_art):
    from collab_lib.model import load_tokenizer

    return load_tokenizer(model_art.path / "model")


def write_units(rows: list[dict], path: Path) -> None:
    cols = ["model", "organization", "prompt", "generated lines", "memorized lines"]
    frame = pd.DataFrame(rows)
    frame.reindex(columns=[c for c in cols if c in frame or not rows]).to_csv(path, index=False)


THRESHOLD_COLUMNS = [
    "rq",
    "threshold (lines)",
    "model",
    "generated lines",
    "memorized lines",
    "ratio (%)",
    "rank",
]


def thresholds(min_lines: int) -> tuple[int, ...]:
    """The detection thresholds checked around ``min_lines`` (4, 6, 8 for 6)."""
    return tuple(sorted({max(1, round(min_lines * s)) for s in THRESHOLD_SCALES}))


def threshold_indices(docs: list[tuple[str, str]], opts) -> dict[int, CloneIndex]:
    """An index of ``docs`` per threshold around ``opts.min_lines`` (the detector's other
    options as in ``opts``)."""
    from dataclasses import replace

    return {
        t: CloneIndex.build(docs, replace(opts, min_lines=t)) for t in thresholds(opts.min_lines)
    }


def detect_thresholds(
    indices: dict[int, CloneIndex], main: int, generated: list, **labels
) -> tuple[tuple, list[dict]]:
    """:func:`detect` at the ``main`` threshold, and one row of line counts per threshold
    (``{"threshold (lines)": t, **labels, **counts}``, the paper's footnote 9)."""
    found = {t: detect(index, generated) for t, index in indices.items()}
    rows = [{"threshold (lines)": t, **labels, **f[0]} for t, f in found.items()]
    return found[main], rows


def threshold_table(rows: list[dict], rq: str) -> pd.DataFrame:
    """Generated and memorized lines per threshold and model (``rows``: one per threshold,
    model and organization, summed here), the ratio (%) and the models' rank at each
    threshold (equal ratios share a rank)."""
    if not rows:
        return pd.DataFrame(columns=THRESHOLD_COLUMNS)
    keys = ["threshold (lines)", "model"]
    cols = ["generated lines", "memorized lines"]
    t = pd.DataFrame(rows).groupby(keys, sort=False)[cols].sum().reset_index()
    t["ratio (%)"] = ratio(t)
    t["rank"] = (
        t.groupby("threshold (lines)")["ratio (%)"]
        .rank(method="min", ascending=False, na_option="bottom")
        .astype(int)
    )
    return t.assign(rq=rq.upper())[THRESHOLD_COLUMNS]


def ranking_note(table: pd.DataFrame, main: dict[str, int]) -> str:
    """Whether the models' ranking at each threshold is the one at the main threshold
    (``main``: research question -> its threshold), in a sentence per research question."""
    sentences = []
    for rq, t in table.groupby("rq", sort=False):
        at = {
            n: dict(zip(g["model"], g["rank"], strict=True))
            for n, g in t.groupby("threshold (lines)")
        }
        base = at.get(main[rq], {})
        if (t["memorized lines"] == 0).all():
            sentences.append(f"{rq}: no line is memorized at any threshold; every model ties.")
            continue
        silent = set(
            t.groupby("threshold (lines)")["memorized lines"].sum().loc[lambda x: x == 0].index
        )
        if main[rq] in silent:
            found = [str(n) for n in at if n not in silent]
            sentences.append(
                f"{rq}: no line is memorized at {main[rq]} lines (every model ties); lines are "
                f"memorized at {', '.join(found)} lines."
            )
            continue
        changed = [str(n) for n, ranks in at.items() if ranks != base]
        sentences.append(
            f"{rq}: the ranking of the models at {main[rq]} lines "
            + (
                f"changes at {', '.join(changed)} lines."
                if changed
                else "holds at every threshold."
            )
        )
    return " ".join(sentences)
