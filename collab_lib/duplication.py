"""The duplication signal (finding 4): are an organization's duplicated lines memorized more?

The drop in per-token loss from the base model on training lines inside an organization's
internal clone blocks versus its other lines, with validation lines as the control (canaries
cannot test it: their repetition counts come from the profile, not from the organization's own
duplication). Cached per model.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from collab_lib import artifacts, extraction, verbatim
from collab_lib.clones import CloneOptions, build_corpus, self_covered
from collab_lib.collaboration import BASE
from collab_lib.config import Config

DUPLICATION_STEP = "duplication"
# duplication losses per model, file and class of lines: the findings' units
FILE_UNITS = "units_files.csv"
DUPLICATION_COLUMNS = ["organization", "split", "file", "lines", "loss_sum", "tokens"]


def measure_duplication(
    cfg: Config, models: dict, ds, opts: CloneOptions, out: Path, force: bool
) -> tuple[list[str], dict[str, int]]:
    """Table ``duplication`` and its units from every model's losses on clone and other lines
    (the base model and ``memorization.models``); returns the losses' refs and the tokens
    scored per organization and split."""
    tok = verbatim.tokenizer(models[BASE])
    orgs = [o.name for o in cfg.datasets.organizations]
    lines = {
        (o, s): line_sample(ds, tok, o, s, opts, cfg) for o in orgs for s in ("train", "validation")
    }
    losses, parts = {}, []
    for name in tqdm(list(models), desc="duplication"):
        art = duplication_artifact(cfg, models[name], ds.artifact.ref, lines, force)
        parts.append(art.ref)
        losses[name] = pd.read_csv(art.file("losses.csv"))
    duplication_table(losses).to_csv(out / "duplication.csv", index=False)
    files = pd.concat([f.assign(model=n) for n, f in losses.items()], ignore_index=True)
    files.reindex(columns=["model", *DUPLICATION_COLUMNS]).to_csv(out / FILE_UNITS, index=False)
    return parts, {f"{o} {s}": v["tokens"] for (o, s), v in lines.items()}


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
    return {
        "ids": ids,
        "file": np.array(file_of, np.int64),
        "kind": np.array(kind, np.int8),
        "files": files,
        "tokens": len(ids),
    }


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


def duplication_artifact(cfg: Config, model_art, ds_ref: str, samples: dict, force: bool):
    """One model's summed loss and tokens on clone and other lines of each file sampled."""
    config = {
        "tokens": cfg.memorization.duplication_tokens,
        "context": cfg.model.context,
        "stride": cfg.perplexity_stride,
        "clones": cfg.clones,
        "seed": cfg.seed,
        "version": verbatim.VERSION,
    }

    def produce(out: Path) -> dict:
        from collab_lib.scoring import load_model, token_losses

        model, _ = load_model(model_art)
        frames = []
        for (org, split), sample in samples.items():
            if len(sample["ids"]) < 2:  # an empty split (an organization of one file)
                continue
            losses = token_losses(model, sample["ids"], cfg.model.context, cfg.perplexity_stride)
            keep = (sample["kind"] > 0) & ~np.isnan(losses)
            frame = pd.DataFrame(
                {
                    "file": np.array(sample["files"])[sample["file"][keep]],
                    "lines": np.array(CLASSES)[sample["kind"][keep]],
                    "loss": losses[keep],
                }
            )
            g = frame.groupby(["file", "lines"])["loss"].agg(loss_sum="sum", tokens="size")
            frames.append(g.reset_index().assign(organization=org, split=split))
        cols = DUPLICATION_COLUMNS
        table = pd.concat(frames)[cols] if frames else pd.DataFrame(columns=cols)
        table.to_csv(out / "losses.csv", index=False)
        return {"rows": sum(len(f) for f in frames)}

    return artifacts.build(DUPLICATION_STEP, config, produce, [model_art.ref, ds_ref], force=force)


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
