"""k-extractability (Carlini et al. 2023, "Quantifying Memorization Across Neural Language
Models"): how much of an organization's training code a model emits exactly from a prefix.

A sequence of ``k + match`` tokens is drawn from one file of an organization's split; the
model is given its first ``k`` tokens and decodes greedily; the sequence is *extractable*
when the next ``match`` tokens are exactly the file's. Sequences of the training split
measure memorization; sequences of the validation split, which no model saw, are the
control: code any model can complete exactly without having seen it (boilerplate, a licence
header, a repeated idiom) is extractable there too. So the measure is the training share
minus the validation share, and the base model (which saw neither) is the control of the
control. The paper's verbatim metric asks the same question with a function's signature as
the prefix and six lines as the match; this one needs no function, no clone detector and no
sampling, so it shows at any scale.

Sequences: each file's tokens cut into consecutive windows of ``k + match`` tokens (a file's
tail shorter than that is dropped), ``memorization.extractable_sequences`` of them drawn
per organization and split with the seed, the same for every model. Cached apart: the
sequences once, each model's outcomes once.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from collab_lib import artifacts, sampling, verbatim
from collab_lib.collaboration import BASE
from collab_lib.config import Config

SEQUENCES_STEP = "extract_sequences"
STEP = "extractable"
VERSION = 2  # 2: the matched length of every sequence too
UNITS = "units_extractable.csv"  # one row per model and sequence: the findings' units
SPLITS = ("train", "validation")
COLUMNS = [
    "model",
    "organization",
    "train sequences",
    "validation sequences",
    "train (%)",
    "validation (%)",
    "train - validation (points)",
    "base model's train - validation (points)",
    "matched, train (tokens)",
    "matched, validation (tokens)",
    "matched, train - validation (tokens)",
    "base model's matched, train - validation (tokens)",
]


def windows(n_tokens: int, length: int) -> list[int]:
    """Start of every whole window of ``length`` tokens, back to back from the file's start."""
    return list(range(0, n_tokens - length + 1, length))


def draw(sizes: list[int], length: int, n: int | None, seed: str) -> list[tuple[int, int]]:
    """``(file, start)`` of ``n`` windows drawn without replacement (all when ``n`` is None or
    larger), in file order, from files of ``sizes`` tokens: the same draw for the same sizes
    and seed (only the sizes: a caller need not keep every file's tokens)."""
    every = [(f, s) for f, size in enumerate(sizes) for s in windows(size, length)]
    if n is None or n >= len(every):
        return every
    return sorted(random.Random(seed).sample(every, n))


def sequences_artifact(cfg: Config, base_art, ds, force: bool) -> artifacts.Artifact:
    """The drawn sequences of every organization and split (``sequences.jsonl``)."""
    m = cfg.memorization
    k, match = cfg.extractable_lengths
    config = {
        "k": k,
        "match": match,
        "sequences": m.extractable_sequences,
        "seed": cfg.seed,
        "version": VERSION,
    }
    length = k + match

    def produce(out: Path) -> dict:
        tok = verbatim.tokenizer(base_art)
        rows = []
        for org in ds.corpora:
            for split in SPLITS:
                docs = ds.documents(org, split)
                files = [tok(d["content"], verbose=False)["input_ids"] for d in docs]
                key = f"{cfg.seed}/extractable/{org}/{split}"
                for f, start in draw(list(map(len, files)), length, m.extractable_sequences, key):
                    ids = files[f][start : start + length]
                    rows.append(
                        {
                            "organization": org,
                            "split": split,
                            "file": docs[f]["path"],
                            "start": start,
                            "ids": ids,
                        }
                    )
        artifacts.write_jsonl(out / "sequences.jsonl", rows)
        return {"sequences": len(rows)}

    inputs = [ds.artifact.ref, base_art.ref]
    return artifacts.build(SEQUENCES_STEP, config, produce, inputs, seed=cfg.seed, force=force)


def matched(
    model, prefixes: list[list[int]], targets: list[list[int]], eos_id: int, batch_size: int
) -> list[int]:
    """How many of each target's tokens greedy decoding from its prefix emits before the first
    wrong one (the target is extracted when that is all of them)."""
    from collab_lib.decoding import generate

    out: list[int] = []
    for i in range(0, len(prefixes), batch_size):
        chunk = targets[i : i + batch_size]
        sc = sampling.SamplingConfig(temperature=0, max_new_tokens=max(map(len, chunk)))
        new = generate(model, prefixes[i : i + batch_size], sc, eos_id=eos_id)
        out += [
            len(os.path.commonprefix([list(g), list(t)])) for g, t in zip(new, chunk, strict=True)
        ]
    return out


def outcomes(model, tok, seqs: list[dict], k: int, batch_size: int) -> pd.DataFrame:
    """Each sequence's matched tokens and whether it is extracted (organization, split, file,
    start, matched, extracted)."""
    targets = [s["ids"][k:] for s in seqs]
    tokens = matched(model, [s["ids"][:k] for s in seqs], targets, tok.eos_token_id, batch_size)
    hits = [n == len(t) for n, t in zip(tokens, targets, strict=True)]
    cols = ["organization", "split", "file", "start"]
    frame = pd.DataFrame([{c: s[c] for c in cols} for s in seqs], columns=cols)
    return frame.assign(matched=tokens, extracted=hits)


def model_artifact(cfg: Config, model_art, seq_art, force: bool) -> artifacts.Artifact:
    """One model's outcome on every drawn sequence (``extractable.csv``)."""
    k = cfg.extractable_lengths[0]

    def produce(out: Path) -> dict:
        from collab_lib.scoring import load_model

        model, tok = load_model(model_art)
        seqs = artifacts.read_jsonl(seq_art.file("sequences.jsonl"))
        frame = outcomes(model, tok, seqs, k, cfg.memorization.batch_size)
        frame.to_csv(out / "extractable.csv", index=False)
        return {"sequences": len(seqs), "extracted": int(frame["extracted"].sum())}

    config = {"k": k, "decoding": "greedy", "sampler": sampling.VERSION, "version": VERSION}
    return artifacts.build(STEP, config, produce, [model_art.ref, seq_art.ref], force=force)


def measure(cfg: Config, models: dict, ds, out: Path, force: bool) -> list[str]:
    """Table ``extractable`` and its units for ``models`` (the base model among them);
    returns the refs of the cached parts."""
    seq_art = sequences_artifact(cfg, models[BASE], ds, force)
    per_model, parts = {}, [seq_art.ref]
    for name in tqdm(list(models), desc="k-extractability"):
        art = model_artifact(cfg, models[name], seq_art, force)
        parts.append(art.ref)
        per_model[name] = pd.read_csv(art.file("extractable.csv"))
    units = pd.concat([f.assign(model=n) for n, f in per_model.items()], ignore_index=True)
    units[["model", "organization", "split", "file", "start", "matched", "extracted"]].to_csv(
        out / UNITS, index=False
    )
    extractable_table(units).to_csv(out / "extractable.csv", index=False)
    return parts


def extractable_table(units: pd.DataFrame) -> pd.DataFrame:
    """Per model and organization: the share of training and of validation sequences
    extracted (%) and the mean number of their tokens matched before the first wrong one,
    each with the training excess over validation and the base model's excess beside it."""
    if units.empty:
        return pd.DataFrame(columns=COLUMNS)
    groups = units.assign(extracted=units["extracted"].astype(float) * 100).groupby(
        ["model", "organization", "split"], sort=False
    )
    mean, count = groups[["extracted", "matched"]].mean(), groups.size()
    nan = float("nan")

    def at(model: str, org: str, split: str, column: str) -> float:
        key = (model, org, split)
        return float(mean.loc[key, column]) if key in mean.index else nan

    def excess(model: str, org: str, column: str) -> float:
        return at(model, org, "train", column) - at(model, org, "validation", column)

    rows = []
    for model, org in dict.fromkeys(zip(units["model"], units["organization"], strict=True)):
        rows.append(
            {
                "model": model,
                "organization": org,
                "train sequences": int(count.get((model, org, "train"), 0)),
                "validation sequences": int(count.get((model, org, "validation"), 0)),
                "train (%)": at(model, org, "train", "extracted"),
                "validation (%)": at(model, org, "validation", "extracted"),
                "train - validation (points)": excess(model, org, "extracted"),
                "base model's train - validation (points)": excess(BASE, org, "extracted"),
                "matched, train (tokens)": at(model, org, "train", "matched"),
                "matched, validation (tokens)": at(model, org, "validation", "matched"),
                "matched, train - validation (tokens)": excess(model, org, "matched"),
                "base model's matched, train - validation (tokens)": excess(BASE, org, "matched"),
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)
