"""Memorization (paper §2.5, §4.4, §4.5; Tables 6, 9, 10, 11) and what shows at any scale.

RQ2: each model completes the signature and docstring of functions from every organization's
training split (:mod:`collab_lib.extraction`); a completion line is *memorized* when it lies
in a block of at least ``clones.min_lines`` lines that also occurs in that organization's
training split (our Type-1 detector in Simian's place). Only generated lines count: the
prompt stays in the text the detector reads, so a block that starts in the prompt and runs
into the completion is found whole, but only its completion lines are counted, and a
docstring copied from training inside the prompt is never "memorized" (Eq. 1 of the paper).

At CPU scale that verbatim metric is zero, so three measures sit beside it (SPEC §4b):

- **canary exposure** (Carlini et al. 2019): the rank of each planted secret among random
  secrets of its format, scored on the secret's tokens after the canary's prefix, as
  ``log2 |R| - log2 rank``, and the extrapolated exposure of their §4.3 (a skew-normal fitted
  to the alternatives' losses), each beside the base model's;
- **greedy extraction**: whether greedy decoding from a canary's prefix emits its secret, or
  any planted secret at all;
- **duplication**: the drop in per-token loss from the base model on training lines inside
  an organization's internal clone blocks versus its other lines, with validation lines as
  the control (finding 4: canaries cannot test it, every organization gets the same counts).

RQ3: the RQ3 pair's models complete the first half of each clone block the pair's training
splits share; memorized lines of the continuation are found with a 3-line threshold.

Generations are artifacts of their own (one per model and research question), so a new
detection setting never re-runs sampling; exposure and duplication are cached per model.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import stats
from tqdm import tqdm

from collab_lib import (
    artifacts,
    canaries,
    clone_stats,
    collaboration,
    datasets,
    evaluation,
    extraction,
    paper,
    sampling,
)
from collab_lib.clones import CloneIndex, CloneOptions, build_corpus, self_covered
from collab_lib.config import Config, UserError

log = logging.getLogger(__name__)

# In the key of rq2, rq3 and each of their parts: a change of method rebuilds them all.
VERSION = 2
RQ2, RQ3 = "rq2", "rq3"
PROMPTS_STEP, GENERATIONS_STEP = "prompts", "generations"
EXPOSURE_STEP, DUPLICATION_STEP = "exposure", "duplication"
RQ2_TABLES = ("table6", "table9", "table10", "exposure", "duplication", "memorized")
RQ3_TABLES = ("table11", "table11_prompts")
BASE = evaluation.BASE
# The units the findings resample, written beside the tables (an export carries them):
# lines per model and prompt (rq2, rq3), exposure per model and canary, duplication losses
# per model, file and class of lines.
PROMPT_UNITS, CANARY_UNITS = "units_prompts.csv", "units_canaries.csv"
FILE_UNITS = "units_files.csv"
# rq3: per model and prompt, the loss of the block's second half given its first (finding 7's
# measure where Table 11 finds no verbatim line)
BLOCK_UNITS = "units_blocks.csv"
BLOCK_VERSION = 1
DUPLICATION_COLUMNS = ["organization", "split", "file", "lines", "loss_sum", "tokens"]
# rq2 and rq3 (not their parts, which stay cached) with the unit files
UNITS_VERSION = 1
# rq2 alone: 2, tied ratios share a rank in Table 10
RQ2_TABLES_VERSION = 2


# --------------------------------------------------------------------------- the models


def rq2_models(cfg: Config) -> list[str]:
    """The base model (the control: it never saw any organization) and ``memorization.models``."""
    return evaluation.chosen_models(cfg, cfg.memorization.models, "memorization.models")


def rq3_models(cfg: Config) -> list[str]:
    """The base model and the RQ3 pair's models (paper: Centralized_MG ... Incremental_G2M)."""
    pair = set(datasets.rq3_pair(cfg))
    # by organizations, not by the RQ3 tag: with two organizations the pair's models are the
    # study's own union models, listed once under RQ1/RQ2
    specs = collaboration.roster(cfg)
    return [BASE, *(s.name for s in specs if s.setting != "single" and set(s.orgs) == pair)]


def max_new_tokens(cfg: Config) -> int:
    """``memorization.max_new_tokens``, or half the model's context (the rest: the prompt)."""
    return cfg.memorization.max_new_tokens or max(1, cfg.model.context // 2)


def prompt_room(cfg: Config) -> int:
    """Tokens a prompt may have: the paper's 512, and what the context leaves after generation."""
    return min(cfg.memorization.prompt_max_tokens, cfg.model.context - max_new_tokens(cfg))


def _sampling(cfg: Config) -> sampling.SamplingConfig:
    m = cfg.memorization
    return sampling.SamplingConfig(m.temperature, m.top_p, m.top_k, max_new_tokens(cfg))


# --------------------------------------------------------------------------- plans


def _refs(cfg: Config, upstream: dict | None) -> dict[str, str]:
    """``step/key`` of the datasets, clones, canaries and every model, from the plans."""
    planned = dict(upstream or {})
    steps = (("datasets", datasets.plan), ("clones", clone_stats.plan),
             ("canaries", canaries.plan))  # fmt: skip
    for name, step_plan in steps:
        if name not in planned:
            planned |= step_plan(cfg, planned)
    refs = {n: "{}/{}".format(*planned[n]) for n in ("datasets", "clones", "canaries")}
    return refs | evaluation.model_refs(cfg, planned)


def _step_config(cfg: Config, **extra) -> dict:
    """What an rq2 or rq3 artifact depends on beyond its inputs' keys."""
    return {"memorization": cfg.memorization, "clones": cfg.clones, "seed": cfg.seed,
            "version": VERSION, "sampler": sampling.VERSION, "context": cfg.model.context,
            **extra}  # fmt: skip


def _rq2_config(cfg: Config) -> dict:
    return _step_config(cfg, stride=evaluation.perplexity_stride(cfg), units=UNITS_VERSION,
                        tables=RQ2_TABLES_VERSION)  # fmt: skip


def _rq3_config(cfg: Config) -> dict:
    return _step_config(cfg, pair=datasets.rq3_pair(cfg), units=UNITS_VERSION,
                        blocks=BLOCK_VERSION)  # fmt: skip


def plan_rq2(cfg: Config, upstream: dict | None = None) -> dict[str, tuple[str, str]]:
    """The RQ2 artifact's key, from the config and its inputs' keys alone."""
    refs = _refs(cfg, upstream)
    return {RQ2: (RQ2, artifacts.artifact_key(RQ2, _rq2_config(cfg), sorted(refs.values())))}


def plan_rq3(cfg: Config, upstream: dict | None = None) -> dict[str, tuple[str, str]]:
    """The RQ3 artifact's key, from the config and its inputs' keys alone."""
    refs = _refs(cfg, upstream)
    return {RQ3: (RQ3, artifacts.artifact_key(RQ3, _rq3_config(cfg), sorted(refs.values())))}


# --------------------------------------------------------------------------- RQ2


def build_rq2(cfg: Config, *, force: bool = False) -> artifacts.Artifact:
    """Tables 6, 9 and 10, canary exposure and extraction, the duplication signal."""
    models = collaboration.load_models(cfg)
    ds = datasets.load_datasets(cfg)
    can = artifacts.load(*canaries.plan(cfg)["canaries"])
    if ds is None or can is None:
        raise collaboration.ModelsNotTrained(f"run `{cfg.command('run', 'train')}` first")
    refs = _refs(cfg, None)
    orgs = [o.name for o in cfg.datasets.organizations]
    opts = clone_stats.clone_options(cfg)

    def produce(out: Path) -> dict:
        train = {o: ds.documents(o, "train") for o in orgs}
        prompts_art = _prompts_artifact(cfg, models[BASE], ds.artifact.ref, train, force)
        shutil.copy(prompts_art.file("table6.csv"), out / "table6.csv")
        parts = [prompts_art.ref]
        parts += _verbatim(cfg, models, prompts_art, train, opts, out, force)
        parts += _exposures(cfg, models, can, out, force)
        tok = _tokenizer(models[BASE])
        lines = {(o, s): line_sample(ds, tok, o, s, opts, cfg)
                 for o in orgs for s in ("train", "validation")}  # fmt: skip
        dup = {}
        for name in tqdm(rq2_models(cfg), desc="duplication"):
            art = _duplication_artifact(cfg, models[name], ds.artifact.ref, lines, force)
            parts.append(art.ref)
            dup[name] = pd.read_csv(art.file("losses.csv"))
        duplication_table(dup).to_csv(out / "duplication.csv", index=False)
        files = pd.concat([f.assign(model=n) for n, f in dup.items()], ignore_index=True)
        files.reindex(columns=["model", *DUPLICATION_COLUMNS]).to_csv(out / FILE_UNITS,
                                                                       index=False)  # fmt: skip
        return {"models": rq2_models(cfg), "parts": parts, "prompt_room": prompt_room(cfg),
                "canaries": len(canaries.load(can)), "sampling": _sampling(cfg).__dict__,
                "min_lines": opts.min_lines,
                "duplication_tokens": {f"{o} {s}": v["tokens"] for (o, s), v in lines.items()},
                }  # fmt: skip

    return artifacts.build(
        RQ2, _rq2_config(cfg), produce, sorted(refs.values()), seed=cfg.seed, force=force
    )


def _verbatim(cfg: Config, models, prompts_art, train, opts, out: Path, force: bool) -> list:
    """Tables 9, 10 and the memorized examples: each model's completions of the prompts,
    searched in their organization's training split. Returns the generations' refs."""
    prompts = _read_jsonl(prompts_art.file("prompts.jsonl"))
    index = {org: CloneIndex.build(((d["path"], d["content"]) for d in docs), opts)
             for org, docs in train.items()}  # fmt: skip
    rows, found, parts, units = [], [], [], []
    for name in tqdm(rq2_models(cfg), desc="rq2 generations"):
        gen = _generations_artifact(cfg, models[name], prompts_art, RQ2, force)
        parts.append(gen.ref)
        completions = _read_jsonl(gen.file("generations.jsonl"))
        for org in train:
            mine = [(prompts[c["prompt"]], c) for c in completions
                    if prompts[c["prompt"]]["organization"] == org]  # fmt: skip
            row, blocks, per_prompt = detect(index[org], mine)
            rows.append({"model": name, "organization": org, **row})
            found += [{"model": name, "organization": org, **b} for b in blocks]
            units += [{"model": name, "organization": org, **p} for p in per_prompt]
    _write_units(units, out / PROMPT_UNITS)
    counts = pd.DataFrame(rows)
    table9(counts).to_csv(out / "table9.csv", index=False)
    table10(counts).to_csv(out / "table10.csv", index=False)
    memorized = _examples(found, cfg.memorization.examples, train)
    memorized.to_csv(out / "memorized.csv", index=False)
    return parts


def _exposures(cfg: Config, models, can, out: Path, force: bool) -> list:
    """Table ``exposure`` from every model's canary scores; returns their refs."""
    planted = canaries.load(can)
    alternatives = json.loads(can.file("alternatives.json").read_text())
    exposures, parts = {}, []
    for name in tqdm(list(models), desc="canary exposure"):
        art = _exposure_artifact(cfg, models[name], can, planted, alternatives, force)
        parts.append(art.ref)
        exposures[name] = pd.read_csv(art.file("exposure.csv"))
    exposure_table(exposures).to_csv(out / "exposure.csv", index=False)
    per_canary = pd.concat([e.assign(model=n) for n, e in exposures.items()], ignore_index=True)
    cols = ["model", "canary", "organization", "count", "rank_exposure", "extrapolated_exposure",
            "extracted"]  # fmt: skip
    per_canary.reindex(columns=cols).to_csv(out / CANARY_UNITS, index=False)
    return parts


def _prompts_artifact(cfg: Config, base_art, ds_ref: str, train: dict, force: bool):
    """Table 6: every organization's functions, its prompts, the seeded sample (JSONL)."""
    m = cfg.memorization
    config = {"room": prompt_room(cfg), "fraction": m.sample_fraction, "seed": cfg.seed,
              "ends": "closing quotes"}  # fmt: skip

    def produce(out: Path) -> dict:
        tok = _tokenizer(base_art)
        rows, sampled = [], []
        for org, docs in train.items():
            found, counts = extraction.function_prompts(
                ((d["path"], d["content"]) for d in docs), tok, prompt_room(cfg)
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
        _write_jsonl(out / "prompts.jsonl", sampled)
        pd.DataFrame(rows).to_csv(out / "table6.csv", index=False)
        return {"prompts": len(sampled)}

    return artifacts.build(
        PROMPTS_STEP,
        {"kind": RQ2, **config},
        produce,
        [ds_ref, base_art.ref],
        seed=cfg.seed,
        force=force,
    )


def _generations_artifact(cfg: Config, model_art, prompts_art, kind: str, force: bool):
    """``n_samples`` completions of every prompt by one model (``generations.jsonl``)."""
    m = cfg.memorization
    sc = _sampling(cfg)
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
        model, tok = evaluation.load_model(model_art)
        prompts = _read_jsonl(prompts_art.file("prompts.jsonl"))
        ids = [tok(p["prompt"], verbose=False)["input_ids"][-prompt_room(cfg) :] for p in prompts]
        cut = extraction.body_end if kind == RQ2 else _never
        texts, new_tokens = sampling.sample_texts(
            model,
            tok,
            ids,
            m.n_samples,
            sc,
            cut=cut,
            batch_size=m.batch_size,
            seed=cfg.seed,
            desc=f"sampling {kind}",
        )
        _write_jsonl(
            out / "generations.jsonl",
            [
                {"prompt": i // m.n_samples, "sample": i % m.n_samples, "completion": t}
                for i, t in enumerate(texts)
            ],
        )
        return {"sequences": len(texts), "new_tokens": new_tokens}

    return artifacts.build(
        GENERATIONS_STEP,
        config,
        produce,
        [model_art.ref, prompts_art.ref],
        seed=cfg.seed,
        force=force,
    )


def _never(text: str) -> None:
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
                "text": _lines(by_name[b.file], b.start, b.end),
                "generated_lines": b.end - max(b.start, first[b.file]) + 1,  # physical
            }
        )
    row = {
        "generated lines": report.counted_lines,
        "memorized blocks": len(report.blocks),
        "memorized lines": report.cloned_lines,
    }
    return row, blocks, _per_prompt([c["prompt"] for _, c in generated], file_of, counts, report)


def _per_prompt(prompt_ids: list[int], file_of: np.ndarray, counts, report) -> list[dict]:
    """Generated and memorized lines of each prompt, its samples together."""
    ids = np.asarray(prompt_ids)[file_of]  # the prompt of every line of the query
    frame = pd.DataFrame({"prompt": ids, "generated lines": counts.astype(int),
                          "memorized lines": report.covered.astype(int)})  # fmt: skip
    return frame.groupby("prompt").sum().reset_index().to_dict("records")


def _ratio(t: pd.DataFrame) -> pd.Series:
    """Paper Eq. 1 in %: memorized lines over generated lines (NaN where none generated)."""
    return 100 * t["memorized lines"] / t["generated lines"].where(t["generated lines"] > 0)


def _lines(text: str, start: int, end: int) -> str:
    return "".join(extraction.split_lines(text)[start - 1 : end])


def table9(counts: pd.DataFrame) -> pd.DataFrame:
    """Table 9: per model and organization, generated and memorized lines and the ratio (%),
    with the paper's values beside."""
    t = counts.copy()
    t["ratio (%)"] = _ratio(t)
    ref = [paper.TABLE9.get((r.model, r.organization)) for r in t.itertuples()]
    t["paper ratio (%)"] = [None if r is None else r[3] for r in ref]
    t["paper generated lines"] = [None if r is None else r[0] for r in ref]
    return t


def table10(counts: pd.DataFrame) -> pd.DataFrame:
    """Table 10: Table 9 summed over organizations, ranked by memorization ratio; equal
    ratios share a rank (at small scale every model may tie at 0 %)."""
    cols = ["generated lines", "memorized blocks", "memorized lines"]
    t = counts.groupby("model", sort=False)[cols].sum().reset_index()
    t["ratio (%)"] = _ratio(t)
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
            "source": _lines(
                texts[(b["organization"], b["source_file"])], b["source_start"], b["source_end"]
            ),
        }
        for b in best
    ]
    return pd.DataFrame(rows, columns=cols)


# --------------------------------------------------------------------------- canaries


@torch.no_grad()
def secret_losses(model, tok, prefix: str, secrets: list[str], batch_size: int = 256) -> np.ndarray:
    """Summed loss (nats) of each secret's tokens right after ``prefix``.

    The prefix runs through the model once; every batch of secrets continues from a copy of
    its KV cache, right-padded (causal attention: padding after a token never reaches it).
    A context too small for prefix and secret keeps the prefix's end.
    """
    from transformers import DynamicCache

    device = next(model.parameters()).device
    model.eval()
    rows = [tok(s, verbose=False)["input_ids"] for s in secrets]
    keep = model.config.n_positions - max(map(len, rows))
    p_ids = tok(prefix, verbose=False)["input_ids"][-keep:]
    first = model(input_ids=torch.tensor([p_ids], device=device), use_cache=True)
    first_logp = first.logits[0, -1].float().log_softmax(-1)  # (V,)
    layers = [(layer.keys, layer.values) for layer in first.past_key_values.layers]
    out = np.zeros(len(rows))
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(map(len, chunk)) - 1
        if width == 0:  # one-token secrets: the prefix's logits say everything
            out[start : start + len(chunk)] = [-first_logp[r[0]].item() for r in chunk]
            continue
        x = torch.full((len(chunk), width), tok.eos_token_id, dtype=torch.long)
        target = torch.full_like(x, -100)
        for i, r in enumerate(chunk):
            x[i, : len(r) - 1] = torch.tensor(r[:-1])
            target[i, : len(r) - 1] = torch.tensor(r[1:])
        cache = DynamicCache(
            [
                (k.expand(len(chunk), -1, -1, -1), v.expand(len(chunk), -1, -1, -1))
                for k, v in layers
            ]
        )
        pos = torch.arange(len(p_ids), len(p_ids) + width, device=device).expand(len(chunk), -1)
        logits = model(input_ids=x.to(device), position_ids=pos, past_key_values=cache).logits
        nll = F.cross_entropy(
            logits.float().transpose(1, 2), target.to(device), reduction="none", ignore_index=-100
        ).sum(1)
        heads = torch.tensor([r[0] for r in chunk], device=device)
        out[start : start + len(chunk)] = (nll - first_logp[heads]).cpu().numpy()
    return out


def rank_exposure(secret_loss: float, alternative_losses: np.ndarray) -> float:
    """Carlini et al. 2019: log2 |R| - log2 rank, R the secret and its alternatives."""
    rank = 1 + int((alternative_losses < secret_loss).sum())
    return math.log2(len(alternative_losses) + 1) - math.log2(rank)


def extrapolated_exposure(secret_loss: float, alternative_losses: np.ndarray) -> float:
    """Carlini et al. 2019 §4.3: -log2 P(loss <= the secret's) under a skew-normal fitted to
    the alternatives' losses; unlike the rank, it does not saturate at log2 |R|.

    The skew-normal is fitted by the method of moments (Azzalini's closed form): thousands of
    fits in milliseconds, where maximum likelihood takes a tenth of a second each. Where the
    sample is more skewed than a skew-normal can be (|skewness| >= 0.99) the fit would start
    abruptly and put no mass in the lower tail, so the normal of the same mean and spread is
    used; it is also the tail's fallback wherever the fitted one underflows.
    """
    x = np.asarray(alternative_losses, dtype=float)
    mean, sd = x.mean(), x.std()
    if sd == 0:
        return 0.0 if secret_loss >= mean else math.inf
    gamma = float(stats.skew(x))
    log_p = -math.inf
    if abs(gamma) < 0.99:
        g = abs(gamma) ** (2 / 3)
        delta = math.copysign(math.sqrt(math.pi / 2 * g / (g + ((4 - math.pi) / 2) ** (2 / 3))),
                              gamma)  # fmt: skip
        omega = sd / math.sqrt(1 - 2 * delta**2 / math.pi)
        xi = mean - omega * delta * math.sqrt(2 / math.pi)
        alpha = delta / math.sqrt(1 - delta**2)
        log_p = stats.skewnorm.logcdf(secret_loss, alpha, xi, omega)
    if not np.isfinite(log_p):
        log_p = stats.norm.logcdf(secret_loss, mean, sd)
    return float(-log_p / math.log(2))


EXPOSURE_COLUMNS = [
    "canary",
    "organization",
    "count",
    "format",
    "secret_loss",
    "candidates",
    "rank_exposure",
    "extrapolated_exposure",
    "greedy",
    "extracted",
    "leaked",
]


def _exposure_artifact(cfg: Config, model_art, can_art, planted, alternatives, force: bool):
    """One model's exposure and greedy extraction of every canary (``exposure.csv``)."""
    n_alt = cfg.memorization.alternatives
    config = {"alternatives": n_alt, "method": "secret tokens after the prefix",
              "fit": "moments, else normal", "sampler": sampling.VERSION,
              "version": VERSION}  # fmt: skip

    def produce(out: Path) -> dict:
        model, tok = evaluation.load_model(model_art)
        secrets = {p["secret"]: p["id"] for p in planted}
        greedy = greedy_secrets(model, tok, planted)
        rows = []
        for p, text in zip(planted, greedy, strict=True):
            alts = alternatives[p["format"]][:n_alt]
            losses = secret_losses(model, tok, p["prefix"], [p["secret"], *alts])
            leaked = [i for s, i in secrets.items() if s in text]
            rows.append(
                {
                    "canary": p["id"],
                    "organization": p["organization"],
                    "count": p["count"],
                    "format": p["format"],
                    "secret_loss": losses[0],
                    "candidates": len(losses),
                    "rank_exposure": rank_exposure(losses[0], losses[1:]),
                    "extrapolated_exposure": extrapolated_exposure(losses[0], losses[1:]),
                    "greedy": text,
                    "extracted": text.startswith(p["secret"]),
                    "leaked": " ".join(leaked),
                }
            )
        pd.DataFrame(rows, columns=EXPOSURE_COLUMNS).to_csv(out / "exposure.csv", index=False)
        return {"canaries": len(rows)}

    return artifacts.build(
        EXPOSURE_STEP, config, produce, [model_art.ref, can_art.ref], force=force
    )


def greedy_secrets(model, tok, planted: list[dict]) -> list[str]:
    """Greedy decoding from each canary's prefix, as long as its secret and two tokens more."""
    if not planted:
        return []
    n = max(len(tok(p["secret"], verbose=False)["input_ids"]) for p in planted) + 2
    room = model.config.n_positions - n
    prompts = [tok(p["prefix"], verbose=False)["input_ids"][-room:] for p in planted]
    sc = sampling.SamplingConfig(temperature=0, max_new_tokens=n)
    ids = sampling.generate(model, prompts, sc, eos_id=tok.eos_token_id)
    return [tok.decode(g, skip_special_tokens=True) for g in ids]


def exposure_table(exposures: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per model, organization and repetition count: mean exposures, the same minus the base
    model's on the same canaries, and the share of canaries whose secret greedy decoding
    emits (``extracted``) and that emit any planted secret (``leaked``)."""
    base = exposures[BASE].set_index("canary")
    rows = []
    columns = ["model", "organization", "count", "canaries", "candidates", "rank exposure",
               "rank exposure - base", "extrapolated exposure", "extrapolated exposure - base",
               "extracted (%)", "leaked (%)"]  # fmt: skip
    for name, frame in exposures.items():
        f = frame.set_index("canary")
        for (org, count), g in f.groupby(["organization", "count"], sort=True):
            b = base.loc[g.index]
            rank, extra = g["rank_exposure"], g["extrapolated_exposure"]
            rows.append(
                {
                    "model": name,
                    "organization": org,
                    "count": int(count),
                    "canaries": len(g),
                    "candidates": int(g["candidates"].iloc[0]),
                    "rank exposure": rank.mean(),
                    "rank exposure - base": (rank - b["rank_exposure"]).mean(),
                    "extrapolated exposure": extra.mean(),
                    "extrapolated exposure - base": (extra - b["extrapolated_exposure"]).mean(),
                    "extracted (%)": 100 * g["extracted"].mean(),
                    "leaked (%)": 100 * _nonempty(g["leaked"]).mean(),
                }
            )
    return pd.DataFrame(rows, columns=columns)


def _nonempty(texts: pd.Series) -> pd.Series:
    """True where a text column (read back from CSV: empty cells are NaN) has text."""
    return texts.astype("string").fillna("").str.len() > 0


# --------------------------------------------------------------------------- duplication


CLASSES = ("none", "clone", "other")  # a token's line: not counted, in a clone block, other


def line_sample(ds, tok, org: str, split: str, opts: CloneOptions, cfg: Config) -> dict:
    """The token stream of one split's sampled files, and the class of each token's line.

    ``clone`` lines lie inside an internal clone block of the split (the detector's own
    definition, Figure 2's), ``other`` lines are the split's remaining counted lines; blank
    and comment lines, and tokens of whitespace only, are in neither. Files that hold clone
    lines come first (seeded order within each group), then the rest, until
    ``memorization.duplication_tokens`` tokens. Tokenized once for every model.
    """
    docs = [(d["path"], d["content"]) for d in ds.documents(org, split)]
    corpus = build_corpus(docs, opts)
    covered = self_covered(corpus, opts)
    upto = np.concatenate([[0], np.cumsum(covered)])  # clone lines before each counted line
    has_clone = upto[corpus.starts[1:]] > upto[corpus.starts[:-1]]  # per file
    rng = random.Random(f"{cfg.seed}/duplication/{org}/{split}")
    order = sorted(range(len(docs)), key=lambda f: (not has_clone[f], rng.random()))
    cap = cfg.memorization.duplication_tokens
    ids, file_of, kind, files = [], [], [], []
    for f in order:
        if cap is not None and len(ids) >= cap:
            break
        path, text = docs[f]
        lo, hi = corpus.starts[f], corpus.starts[f + 1]
        line_kind = np.zeros(len(extraction.split_lines(text)) + 2, np.int8)  # by line number
        line_kind[corpus.line_no[lo:hi]] = np.where(covered[lo:hi], 1, 2)
        enc = tok(text, return_offsets_mapping=True, verbose=False)
        lines = line_of_tokens(text, enc["offset_mapping"])
        kinds = np.where(lines > 0, line_kind[np.minimum(lines, len(line_kind) - 1)], 0)
        ids += enc["input_ids"] + [tok.eos_token_id]
        kind += kinds.tolist() + [0]
        file_of += [len(files)] * (len(kinds) + 1)
        files.append(path)
    return {"ids": ids, "file": np.array(file_of, np.int64), "kind": np.array(kind, np.int8),
            "files": files, "tokens": len(ids)}  # fmt: skip


def line_of_tokens(text: str, offsets: list[tuple[int, int]]) -> np.ndarray:
    """1-based line of each token's first non-space character (0: a whitespace-only token).

    Lines break where the clone detector breaks them (``\\n``, ``\\r\\n``, a lone ``\\r``).
    """
    line_ends = np.array([m.end() for m in extraction.LINE_BREAK.finditer(text)], np.int64)
    out = np.zeros(len(offsets), np.int64)
    for i, (a, b) in enumerate(offsets):
        piece = text[a:b]
        stripped = len(piece) - len(piece.lstrip())
        if stripped < len(piece):
            out[i] = 1 + np.searchsorted(line_ends, a + stripped, side="right")
    return out


def _duplication_artifact(cfg: Config, model_art, ds_ref: str, samples: dict, force: bool):
    """One model's summed loss and tokens on clone and other lines of each file sampled."""
    config = {"tokens": cfg.memorization.duplication_tokens, "context": cfg.model.context,
              "stride": evaluation.perplexity_stride(cfg), "clones": cfg.clones,
              "seed": cfg.seed, "version": VERSION}  # fmt: skip

    def produce(out: Path) -> dict:
        model, _ = evaluation.load_model(model_art)
        frames = []
        for (org, split), sample in samples.items():
            if len(sample["ids"]) < 2:  # an empty split (an organization of one file)
                continue
            losses = evaluation.token_losses(model, sample["ids"], cfg.model.context,
                                             evaluation.perplexity_stride(cfg))  # fmt: skip
            keep = (sample["kind"] > 0) & ~np.isnan(losses)
            frame = pd.DataFrame({"file": np.array(sample["files"])[sample["file"][keep]],
                                  "lines": np.array(CLASSES)[sample["kind"][keep]],
                                  "loss": losses[keep]})  # fmt: skip
            g = frame.groupby(["file", "lines"])["loss"].agg(loss_sum="sum", tokens="size")
            frames.append(g.reset_index().assign(organization=org, split=split))
        cols = DUPLICATION_COLUMNS
        table = pd.concat(frames)[cols] if frames else pd.DataFrame(columns=cols)
        table.to_csv(out / "losses.csv", index=False)
        return {"rows": sum(len(f) for f in frames)}

    return artifacts.build(DUPLICATION_STEP, config, produce, [model_art.ref, ds_ref],
                           force=force)  # fmt: skip


def duplication_table(losses: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per model and organization: the drop in mean per-token loss (nats) from the base model
    on clone and other lines, in training and validation, and the excess of clone over other
    lines in training minus the same in validation (memorized duplicates, net of their being
    easier to predict)."""

    def sums(frame: pd.DataFrame) -> pd.DataFrame:
        return frame.groupby(["organization", "split", "lines"])[["loss_sum", "tokens"]].sum()

    base = sums(losses[BASE])
    base_mean = base["loss_sum"] / base["tokens"]
    rows = []
    for name, frame in losses.items():
        mine = sums(frame)
        drop, tokens = base_mean - mine["loss_sum"] / mine["tokens"], mine["tokens"]
        for org in dict.fromkeys(frame["organization"]):
            d = {
                key: drop.get((org, *key), float("nan"))
                for key in [
                    ("train", "clone"),
                    ("train", "other"),
                    ("validation", "clone"),
                    ("validation", "other"),
                ]
            }
            rows.append(
                {
                    "model": name,
                    "organization": org,
                    "train clone drop": d["train", "clone"],
                    "train other drop": d["train", "other"],
                    "validation clone drop": d["validation", "clone"],
                    "validation other drop": d["validation", "other"],
                    "duplication signal": (d["train", "clone"] - d["train", "other"])
                    - (d["validation", "clone"] - d["validation", "other"]),
                    "train clone tokens": int(tokens.get((org, "train", "clone"), 0)),
                    "train other tokens": int(tokens.get((org, "train", "other"), 0)),
                }
            )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- RQ3


def build_rq3(cfg: Config, *, force: bool = False) -> artifacts.Artifact:
    """Table 11: the RQ3 pair's models complete the first half of their shared clone blocks."""
    models = collaboration.load_models(cfg)
    ds = datasets.load_datasets(cfg)
    clones_art = artifacts.load(*clone_stats.plan(cfg)["clones"])
    if ds is None or clones_art is None:
        raise collaboration.ModelsNotTrained(f"run `{cfg.command('run', 'train')}` first")
    refs = _refs(cfg, None)
    pair = datasets.rq3_pair(cfg)
    opts = clone_stats.clone_options(cfg)
    opts3 = CloneOptions(cfg.memorization.rq3_min_lines, opts.mode, opts.slash_comments)

    def produce(out: Path) -> dict:
        train = {o: ds.documents(o, "train") for o in pair}
        blocks = shared_blocks(clones_art, pair)
        prompts_art = _clone_prompts_artifact(cfg, models[BASE], clones_art, ds, pair, force)
        prompts = _read_jsonl(prompts_art.file("prompts.jsonl"))
        index = CloneIndex.build(
            ((f"{o}/{d['path']}", d["content"]) for o in pair for d in train[o]), opts3
        )
        rows, parts, units, losses = [], [prompts_art.ref], [], []
        for name in tqdm(rq3_models(cfg), desc="rq3 generations"):
            gen = _generations_artifact(cfg, models[name], prompts_art, RQ3, force)
            parts.append(gen.ref)
            completions = _read_jsonl(gen.file("generations.jsonl"))
            row, _, per_prompt = detect(index, [(prompts[c["prompt"]], c) for c in completions])
            rows.append({"model": name, **row})
            units += [{"model": name, **p} for p in per_prompt]
            model, tok = evaluation.load_model(models[name])
            scored = continuation_losses(model, tok, prompts, cfg.model.context)
            losses.append(scored.assign(model=name))
        _write_units(units, out / PROMPT_UNITS)
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

    return artifacts.build(
        RQ3, _rq3_config(cfg), produce, sorted(refs.values()), seed=cfg.seed, force=force
    )


@torch.no_grad()
def continuation_losses(model, tok, prompts: list[dict], context: int,
                        batch_size: int = 32) -> pd.DataFrame:  # fmt: skip
    """Per prompt: summed loss (nats) and number of the ``target`` tokens given the prompt.

    What a model has memorized of a clone block it predicts with a low loss even when it
    does not generate it verbatim. Each sequence is EOS, prompt, target, cut to the context
    (the target's end goes first); padding on the right changes nothing before it.
    """
    device = next(model.parameters()).device
    model.eval()
    seqs = []
    for p in prompts:
        head = [tok.eos_token_id, *tok(p["prompt"], verbose=False)["input_ids"]][-context + 1 :]
        tail = tok(p["target"], verbose=False)["input_ids"][: context - len(head)]
        seqs.append((head, tail))
    rows = []
    for at in range(0, len(seqs), batch_size):
        part = seqs[at : at + batch_size]
        width = max(len(h) + len(t) for h, t in part)
        x = torch.tensor([h + t + [0] * (width - len(h) - len(t)) for h, t in part],
                         device=device)  # fmt: skip
        nll = F.cross_entropy(model(input_ids=x).logits[:, :-1].float().transpose(1, 2),
                              x[:, 1:], reduction="none").cpu().double().numpy()  # fmt: skip
        for row, (h, t) in enumerate(part):
            scored = nll[row, len(h) - 1 : len(h) - 1 + len(t)]  # predicts t[0] .. t[-1]
            rows.append({"prompt": at + row, "loss_sum": float(scored.sum()),
                         "tokens": len(t)})  # fmt: skip
    return pd.DataFrame(rows, columns=["prompt", "loss_sum", "tokens"])


def shared_blocks(clones_art, pair: tuple[str, str]) -> pd.DataFrame:
    """Table 7's blocks the pair's training splits share (with vendored code: what trained)."""
    blocks = clone_stats.table(clones_art, "table7_blocks")
    if blocks.empty:  # no block at all: the file has no header either
        return pd.DataFrame(columns=["file", "start", "end", "lines"])
    keep = (blocks["scenario"] == "with vendored code") & (
        blocks["organizations"] == " ∩ ".join(pair)
    )
    return blocks[keep].reset_index(drop=True)


def _clone_prompts_artifact(cfg: Config, base_art, clones_art, ds, pair, force: bool):
    config = {"kind": RQ3, "room": prompt_room(cfg), "min_lines": cfg.clones.min_lines,
              "ends": "before the last line break"}  # fmt: skip

    def produce(out: Path) -> dict:
        tok = _tokenizer(base_art)
        texts = {d["path"]: d["content"] for d in ds.documents(pair[0], "train")}
        blocks = shared_blocks(clones_art, pair).to_dict("records")
        prompts = extraction.clone_prompts(
            blocks, texts, tok, prompt_room(cfg), cfg.clones.min_lines
        )
        _write_jsonl(out / "prompts.jsonl", [{"organization": pair[0], **p} for p in prompts])
        return {"prompts": len(prompts), "blocks": len(blocks)}

    return artifacts.build(
        PROMPTS_STEP, config, produce, [clones_art.ref, base_art.ref], force=force
    )


def table11(rows: list[dict]) -> pd.DataFrame:
    """Table 11: per model of the RQ3 pair, generated and memorized lines, ratio (%), paper's."""
    t = pd.DataFrame(rows)
    t["ratio (%)"] = _ratio(t)
    t["paper ratio (%)"] = [paper.TABLE11.get(m, (None,) * 4)[3] for m in t["model"]]
    return t


# --------------------------------------------------------------------------- reading back


class NotMeasured(UserError):
    """The book asked for a memorization table before its step ran."""


def load_step(cfg: Config, step: str) -> artifacts.Artifact:
    """The profile's RQ2 or RQ3 artifact from the cache; never builds it."""
    planner: Callable = plan_rq2 if step == RQ2 else plan_rq3
    art = artifacts.load(*planner(cfg)[step])
    if art is None:
        raise NotMeasured(
            f"{step.upper()} is not measured for profile {cfg.profile!r}: run "
            f"`{cfg.command('run', step)}`"
        )
    return art


def table(art: artifacts.Artifact, name: str) -> pd.DataFrame:
    """One of the step's tables (an empty one has its columns)."""
    return art.table(name)


def settings_table(art: artifacts.Artifact) -> pd.DataFrame:
    """How RQ2 was measured, from the artifact's own record."""
    m, c = art.metrics, art.manifest["config"]["memorization"]
    s = m["sampling"]
    rows = [
        ("prompts", f"signature and docstring, at most {m['prompt_room']} tokens; "
                    f"{100 * c['sample_fraction']:g} % of each organization's prompts sampled"),
        ("completions per prompt", c["n_samples"]),
        ("temperature, top-p, top-k", f"{s['temperature']:g}, {s['top_p']:g}, {s['top_k']}"),
        ("max new tokens", f"{s['max_new_tokens']} (stops at the end of the function body)"),
        ("memorized", f"a block of >= {m['min_lines']} counted lines also in the "
                      "organization's training split; completion lines only"),
        ("models", ", ".join(m["models"])),
        ("canaries", f"{m['canaries']}, each ranked among "
                     f"{c['alternatives'] or 'all'} alternatives of its format"),
        ("duplication signal", "tokens scored per organization and split: "
         + ", ".join(f"{k} {v:,}" for k, v in m["duplication_tokens"].items())),
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=["setting", "value"])


STABLE_PROMPTS = 30  # fewer RQ3 prompts than this make Table 11 a small sample


def rq3_sample_note(art: artifacts.Artifact) -> str:
    """How many shared blocks and prompts Table 11 rests on, and whether that is few."""
    m = art.metrics
    text = (f"This run's RQ3 pair ({' and '.join(m['pair'])}) shares {m['blocks']} clone "
            f"blocks, which gave {m['prompts']} prompts (the paper: 316 blocks).")  # fmt: skip
    if m["prompts"] < STABLE_PROMPTS:
        text += (f" Fewer than {STABLE_PROMPTS} prompts: Table 11's ratios rest on a small "
                 "sample and differences between its models are not a stable finding.")  # fmt: skip
    return text


def _tokenizer(model_art):
    from collab_lib.model import load_tokenizer

    return load_tokenizer(model_art.path / "model")


def _write_units(rows: list[dict], path: Path) -> None:
    cols = ["model", "organization", "prompt", "generated lines", "memorized lines"]
    frame = pd.DataFrame(rows)
    frame.reindex(columns=[c for c in cols if c in frame or not rows]).to_csv(path, index=False)


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
