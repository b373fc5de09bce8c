"""Membership signals (paper §4.1, Table 5): was this code in a model's training data?

The paper chose GPT-2 as its base model because its mean Log(PPL)/zlib ratio (Carlini et al.
2021) on a sample of the organizations' code was the highest of eight models: the least
sign of having seen that code. We compute the same ratio for every base model at hand, and
check the method where we know the answer: each organization's training samples are
members of the models trained on it and its validation samples are not, so a signal's ROC
AUC on members vs non-members says how well it detects membership (0.5: not at all).

Beside the paper's signal, two from the maintained literature: Min-K%++ (Zhang et al.
2024), the mean of the lowest ``k`` share of token scores ``(log p(x_t) - mu_t) / sigma_t``
(``mu_t``, ``sigma_t``: mean and spread of ``log p`` under the model's next-token
distribution), and the sample's loss minus the base model's (a reference model calibration,
Carlini et al.'s "comparing to other models"). Every score is oriented so that higher means
"member".

A sample is a run of whole lines of one file (at most ``membership.sample_chars``
characters), so it means the same text to every tokenizer; it is scored after an EOS, as a
document starts in training. Samples of one file are not independent: the AUC's interval
resamples files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import zlib
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from collab_lib import artifacts, collaboration, datasets, paper
from collab_lib.config import Checkpoint, Config, UserError

STEP, SCORES_STEP = "membership", "membership_scores"
SCORES = "membership_scores"  # one row per model and sample: the units (a .csv)
VERSION = 3  # 2: samples drawn evenly across files; 3: BOS, not special tokens
BASE = collaboration.BASE
# signal -> (score column, sign): sign * column is higher for members
SIGNALS = {
    "PPL/zlib": ("ppl_zlib", -1.0),
    "Min-K%++": ("minkpp", 1.0),
    "loss - base": ("ref_diff", -1.0),
}
SAMPLE_COLUMNS = ["organization", "split", "file", "line", "text"]
AUC_COLUMNS = [
    "model",
    "setting",
    "organization",
    "trained on",
    "signal",
    "members",
    "non-members",
    "files",
    "auc",
    "low",
    "high",
]


# --------------------------------------------------------------------------- the samples


def chunks(text: str, max_chars: int) -> list[tuple[int, str]]:
    """``(first line, text)`` of consecutive runs of whole lines, each at most ``max_chars``.

    A line longer than ``max_chars`` is cut to it; runs shorter than a quarter of
    ``max_chars`` (a file's tail, a tiny file) or only whitespace are dropped.
    """
    out: list[tuple[int, str]] = []
    run, start = "", 1
    for i, line in enumerate(text.splitlines(keepends=True), start=1):
        line = line[:max_chars]
        if run and len(run) + len(line) > max_chars:
            out.append((start, run))
            run, start = "", i
        run += line
    out.append((start, run))
    return [(n, t) for n, t in out if len(t.strip()) >= max(1, max_chars // 4)]


def draw_samples(cfg: Config, ds: datasets.Datasets) -> pd.DataFrame:
    """At most ``membership.samples`` chunks per organization and split, drawn with the seed
    evenly across files (round robin over shuffled files, each file's chunks shuffled), so
    that one large file cannot make up a split's samples.

    Columns: organization, split, file, line, text (in file and line order).
    """
    size, frames = sample_chars(cfg), []
    for i, org in enumerate(cfg.datasets.organizations):
        for j, split in enumerate(datasets.SPLITS):
            rng = np.random.default_rng([cfg.seed, i, j])
            per_file = [
                [
                    (org.name, split, d["path"], line, text)
                    for line, text in chunks(d["content"], size)
                ]
                for d in ds.documents(org.name, split)
            ]
            rows = balanced(per_file, cfg.membership.samples, rng)
            frame = pd.DataFrame(rows, columns=SAMPLE_COLUMNS)
            frames.append(frame.sort_values(["file", "line"]))
    return pd.concat(frames, ignore_index=True)


def balanced(per_file: list[list], n: int, rng: np.random.Generator) -> list:
    """At most ``n`` items drawn evenly across files: each file's items shuffled, then round
    robin over the shuffled files, so that one large file cannot make up the sample."""
    per_file = [[f[k] for k in rng.permutation(len(f))] for f in per_file if f]
    order = rng.permutation(len(per_file))
    rows = [
        f[r]
        for r in range(max(map(len, per_file), default=0))
        for f in (per_file[k] for k in order)
        if r < len(f)
    ]
    return rows[:n]


def sample_chars(cfg: Config) -> int:
    """``membership.sample_chars``, or 1.5 characters per token of the context (code runs
    at 2-4 characters per token: most samples then fit one window)."""
    return cfg.membership.sample_chars or max(40, int(1.5 * cfg.model.context))


def zlib_bytes(text: str) -> int:
    """The sample's zlib entropy: its compressed length in bytes (Carlini et al. 2021)."""
    return len(zlib.compress(text.encode("utf-8")))


# --------------------------------------------------------------------------- the scores


def min_k_plus_plus(logp: np.ndarray, mu: np.ndarray, sigma: np.ndarray, k: float) -> float:
    """Mean of the lowest ``k`` share (at least one) of ``(logp - mu) / sigma``."""
    z = (logp - mu) / np.maximum(sigma, 1e-6)
    n = max(1, int(round(k * len(z))))
    return float(np.sort(z)[:n].mean())


def score_samples(
    model, tok, texts: Sequence[str], context: int, stride: int, k: float
) -> pd.DataFrame:
    """Per sample: tokens scored, mean loss (nats: log PPL) and the Min-K%++ score.

    Each sample starts with the tokenizer's BOS (GPT-2's is its EOS, which precedes every
    document in training), and nothing else is added: a tokenizer that adds its own start
    token would otherwise put a transition training never had first.
    """
    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    if start is None:
        raise UserError(
            "membership: the tokenizer has neither a BOS nor an EOS token to start a sample with"
        )
    encoded = [
        [start, *tok(t, add_special_tokens=False, verbose=False)["input_ids"]] for t in texts
    ]
    from collab_lib.scoring import sample_token_stats

    rows: dict[int, dict] = {}
    for i, (logp, mu, sigma) in sample_token_stats(model, encoded, context, stride):
        rows[i] = {
            "tokens": len(logp),
            "loss": float(-logp.mean()),
            "minkpp": min_k_plus_plus(logp, mu, sigma, k),
        }
    return pd.DataFrame([rows[i] for i in range(len(texts))], columns=["tokens", "loss", "minkpp"])


def _scores_config(cfg: Config, extra: dict) -> dict:
    m = cfg.membership
    return {
        "sample_chars": sample_chars(cfg),
        "samples": m.samples,
        "k": m.k,
        "seed": cfg.seed,
        "context": cfg.model.context,
        "stride": cfg.perplexity_stride,
        "version": VERSION,
        **extra,
    }


def _scores_artifact(
    cfg: Config, samples: pd.DataFrame, load, extra: dict, inputs: list[str], force: bool
) -> artifacts.Artifact:
    """One model's scores of every sample, cached apart (an interrupted step resumes)."""

    def produce(out: Path) -> dict:
        model, tok = load()
        c = model.config
        most = getattr(c, "max_position_embeddings", None) or getattr(c, "n_positions", None)
        context = min(cfg.model.context, most or cfg.model.context)
        scores = score_samples(
            model,
            tok,
            list(samples["text"]),
            context,
            min(cfg.perplexity_stride, context - 1),
            cfg.membership.k,
        )
        scores.to_csv(out / "scores.csv", index=False)
        return {"samples": len(scores), "tokens": int(scores["tokens"].sum())}

    return artifacts.build(SCORES_STEP, _scores_config(cfg, extra), produce, inputs, force=force)


def checkpoint_digest(path: str) -> str:
    """SHA-256 over a checkpoint directory's file names and contents (its cache identity).

    Hashing gigabytes on every ``status`` would be slow, so each digest is remembered (in the
    artifact cache) under the files' names, sizes and modification times.
    """
    root = Path(path)
    if not root.is_dir():
        raise UserError(
            f"membership checkpoint not found: {path} (a directory holding a "
            "model and its tokenizer, saved with save_pretrained)"
        )
    files = sorted(p for p in root.rglob("*") if p.is_file())
    stamp = [(str(f.relative_to(root)), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    key = hashlib.sha256(json.dumps([str(root.resolve()), stamp]).encode()).hexdigest()
    memo = artifacts.artifacts_root() / "checkpoint_digests.json"
    known = json.loads(memo.read_text()) if memo.is_file() else {}
    if key not in known:
        h = hashlib.sha256()
        for name, _, _ in stamp:
            h.update(name.encode() + b"\0" + artifacts.sha256_file(root / name).encode())
        known[key] = h.hexdigest()
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1))
        tmp.replace(memo)  # atomic: a concurrent reader sees the old file or the new one
    return known[key]


def _load_point(cfg: Config, i: int, point: Checkpoint):
    m = dataclasses.replace(cfg.model, checkpoint=point.path)

    def load():
        import torch

        from collab_lib.model import load_checkpoint

        model, tok = load_checkpoint(m, key=f"membership.checkpoints[{i}].path")
        return model.to("cuda" if torch.cuda.is_available() else "cpu").eval(), tok

    return load


# --------------------------------------------------------------------------- AUC


def weighted_auc(
    member: np.ndarray, other: np.ndarray, wm: np.ndarray, wo: np.ndarray
) -> np.ndarray:
    """ROC AUC of scores (higher: member) for each row of sample weights (ties count half).

    ``wm`` (B, members), ``wo`` (B, non-members): a row of ones is the plain AUC; a row of
    bootstrap counts is one resample. ``AUC = P(member's score > non-member's)``.
    """
    values, where = np.unique(np.concatenate([member, other]), return_inverse=True)
    im, io = where[: len(member)], where[len(member) :]
    onehot = np.zeros((len(other), len(values)))
    onehot[np.arange(len(other)), io] = 1.0
    at = wo @ onehot  # (B, values): non-member weight at each score value
    credit = np.cumsum(at, axis=1) - 0.5 * at  # weight below, plus half of the ties
    return (wm * credit[:, im]).sum(1) / (wm.sum(1) * wo.sum(1))


def file_weights(files: Sequence[str], draws: int, rng: np.random.Generator) -> np.ndarray:
    """(draws + 1, samples): row 0 ones, then each sample's file drawn-count per resample."""
    names, owner = np.unique(np.asarray(files), return_inverse=True)
    counts = rng.multinomial(len(names), np.full(len(names), 1 / len(names)), size=draws)
    return np.vstack([np.ones(len(owner)), counts[:, owner]])


def auc_table(cfg: Config, scores: pd.DataFrame) -> pd.DataFrame:
    """ROC AUC with its file-bootstrap interval, per model, organization and signal."""
    specs = {s.name: s for s in collaboration.roster(cfg)}
    m, conf = cfg.membership, cfg.findings.confidence
    rows = []
    for (model, org), part in scores.groupby(["model", "organization"], sort=False):
        mem, non = part[part["split"] == "train"], part[part["split"] == "validation"]
        if mem.empty or non.empty:
            continue
        rng = np.random.default_rng([cfg.seed, zlib.crc32(f"{model}/{org}".encode())])
        wm = file_weights(mem["file"], m.bootstrap, rng)
        wo = file_weights(non["file"], m.bootstrap, rng)
        spec = specs.get(model)
        for signal, (auc, low, high) in signal_aucs(mem, non, wm, wo, conf).items():
            setting = spec.setting if spec else "base" if model == BASE else "checkpoint"
            if spec and spec.rq == collaboration.DP:
                setting += DP_MARK
            rows.append(
                {
                    "model": model,
                    "setting": setting,
                    "organization": org,
                    "trained on": bool(spec and org in spec.orgs),
                    "signal": signal,
                    "members": len(mem),
                    "non-members": len(non),
                    "files": f"{mem['file'].nunique()} / {non['file'].nunique()}",
                    "auc": auc,
                    "low": low,
                    "high": high,
                }
            )
    return pd.DataFrame(rows, columns=AUC_COLUMNS)


def signal_aucs(
    mem: pd.DataFrame, non: pd.DataFrame, wm: np.ndarray, wo: np.ndarray, conf: float
) -> dict[str, tuple[float, float, float]]:
    """Each signal's ROC AUC of members against non-members and its interval over the
    resampling rows of ``wm``/``wo`` (:func:`file_weights`); a signal a sample lacks (loss -
    base for a base model, or without a reference model) is left out."""
    out = {}
    for signal, (col, sign) in SIGNALS.items():
        if col not in mem or mem[col].isna().any() or non[col].isna().any():
            continue
        aucs = weighted_auc(sign * mem[col].to_numpy(), sign * non[col].to_numpy(), wm, wo)
        low, high = np.quantile(aucs[1:], [(1 - conf) / 2, (1 + conf) / 2])
        out[signal] = (float(aucs[0]), float(low), float(high))
    return out


def table5(cfg: Config, scores: pd.DataFrame) -> pd.DataFrame:
    """The paper's Table 5 for our base models: mean Log(PPL)/zlib over every sample, the
    paper's value beside (its GPT-2 beside our base model, as Table 8 does)."""
    points = {p.name: p for p in cfg.membership.checkpoints}
    rows = []
    for name in [BASE, *points]:
        part = scores[scores["model"] == name]
        if name == BASE:
            data = (
                "CPython standard library"
                if cfg.model.base == "stdlib"
                else f"checkpoint {Path(cfg.model.checkpoint or 'gpt2').name}"
            )
        else:
            data = points[name].data or "(not given)"
        ref = paper.TABLE5.get("GPT-2" if name == BASE else name, (None, None))
        rows.append(
            {
                "model": name,
                "trained on": data,
                "samples": len(part),
                "mean log(PPL)": part["loss"].mean(),
                "mean zlib bytes": part["zlib_bytes"].mean(),
                "log(PPL)/zlib": part["ppl_zlib"].mean(),
                "paper model": "GPT-2" if name == BASE else (name if ref[1] else None),
                "paper log(PPL)/zlib": ref[1],
            }
        )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- the step


def _point_configs(cfg: Config) -> list[dict]:
    return [
        {"name": p.name, "data": p.data, "digest": checkpoint_digest(p.path)}
        for p in cfg.membership.checkpoints
    ]


def _step_config(cfg: Config) -> dict:
    m = {**dataclasses.asdict(cfg.membership), "checkpoints": _point_configs(cfg)}
    return {
        "membership": m,
        "confidence": cfg.findings.confidence,
        "context": cfg.model.context,
        "stride": cfg.perplexity_stride,
        "seed": cfg.seed,
        "version": VERSION,
    }


def plan(cfg: Config, upstream: dict) -> dict[str, tuple[str, str]]:
    """The membership artifact's key, from the config and the datasets' and models' keys."""
    return collaboration.plan_on_models(STEP, _step_config(cfg), cfg, upstream)


def parts(cfg: Config, planned: dict) -> list[Callable[[], None]]:
    """Table 5's independent pieces: each model's scores (a cluster's tasks,
    :mod:`collab_lib.cluster`; ``membership.checkpoints`` are scored by the step itself)."""
    return [partial(model_scores, cfg, planned, name) for name in collaboration.model_names(cfg)]


def model_scores(cfg: Config, planned: dict, name: str) -> None:
    """One model's scores of the samples, cached as :func:`build_membership` builds them."""
    from collab_lib.scoring import load_model

    models = collaboration.load(cfg, planned)
    ds = datasets.load(cfg, planned)
    inputs = [models[name].ref, ds.artifact.ref]
    _scores_artifact(
        cfg, draw_samples(cfg, ds), lambda: load_model(models[name]), {}, inputs, False
    )


def build_membership(cfg: Config, planned: dict, *, force: bool = False) -> artifacts.Artifact:
    """Table 5 and the membership AUCs: every model (and checkpoint) scores the samples."""
    models = collaboration.load(cfg, planned)
    ds = datasets.load(cfg, planned)
    refs = collaboration.model_refs(cfg, planned)

    def produce(out: Path) -> dict:
        from collab_lib.scoring import load_model

        samples = draw_samples(cfg, ds)
        scorers = {
            name: (lambda a=models[name]: load_model(a), {}, [models[name].ref, ds.artifact.ref])
            for name in refs
        }
        for i, (point, pc) in enumerate(
            zip(cfg.membership.checkpoints, _point_configs(cfg), strict=True)
        ):
            scorers[point.name] = (
                _load_point(cfg, i, point),
                {"checkpoint": pc},
                [ds.artifact.ref],
            )
        frames, parts = [], []
        for name, (load, extra, inputs) in tqdm(scorers.items(), desc="membership"):
            art = _scores_artifact(cfg, samples, load, extra, inputs, force)
            parts.append(art.ref)
            frames.append(samples.drop(columns="text").assign(model=name).join(art.table("scores")))
        scores = pd.concat(frames, ignore_index=True)
        scores["zlib_bytes"] = np.tile([zlib_bytes(t) for t in samples["text"]], len(frames))
        scores["ppl_zlib"] = scores["loss"] / scores["zlib_bytes"]
        base = scores[scores["model"] == BASE].set_index(SAMPLE_COLUMNS[:4])["loss"]
        shares = scores["model"].isin(refs) & (scores["model"] != BASE)  # the base's tokenizer
        keyed = scores.set_index(SAMPLE_COLUMNS[:4]).index
        scores["ref_diff"] = np.where(
            shares, scores["loss"] - base.reindex(keyed).to_numpy(), np.nan
        )
        cols = [
            "model",
            *SAMPLE_COLUMNS[:4],
            "tokens",
            "zlib_bytes",
            "loss",
            "ppl_zlib",
            "minkpp",
            "ref_diff",
        ]
        scores[cols].to_csv(out / f"{SCORES}.csv", index=False)
        table5(cfg, scores).to_csv(out / "table5.csv", index=False)
        auc_table(cfg, scores).to_csv(out / "membership_auc.csv", index=False)
        sizes = samples.groupby(["organization", "split"], sort=False).size()
        return {
            "samples": len(samples),
            "models": list(scorers),
            "parts": parts,
            "per_split": {f"{o}/{s}": int(n) for (o, s), n in sizes.items()},
        }

    inputs = [ds.artifact.ref, *refs.values()]
    return artifacts.build(STEP, _step_config(cfg), produce, inputs, seed=cfg.seed, force=force)


SUMMARY_COLUMNS = [
    "signal",
    "trained pairs",
    "mean AUC, trained on",
    "intervals above 0.5",
    "mean AUC, not trained on",
    "base model's mean AUC",
    "intervals above the base model's AUC",
]


DP_MARK = " (DP)"  # a DP twin's setting in the AUC table: "centralized (DP)"


def summary(auc: pd.DataFrame) -> pd.DataFrame:
    """Per signal: does it detect membership where we know the answer?

    Trained pairs are (model, organization it was trained on): their AUC should be above 0.5
    and above the base model's with the same signal on the same organization (which saw
    neither split); the others should sit near 0.5. A pair counts as above only with its
    whole interval: a point estimate 0.001 higher is not a detection. The DP twins and the
    ensemble are left out: whether they memorize is the trade-off chapter's question, not a
    known answer to validate a signal on.
    """
    rows = []
    known = ~auc["setting"].str.endswith(DP_MARK) & (auc["setting"] != "ensemble")
    for signal, part in auc[known].groupby("signal", sort=False):
        own = part[part["trained on"].astype(bool)]
        other = part[~part["trained on"] & ~part["setting"].isin(["base", "checkpoint"])]
        # the base model's AUC with the same signal (loss - base: itself, so 0.5 exactly)
        base = part[part["model"] == BASE].set_index("organization")["auc"]
        beats = own["low"].to_numpy() > base.reindex(own["organization"]).fillna(0.5).to_numpy()
        rows.append(
            {
                "signal": signal,
                "trained pairs": len(own),
                "mean AUC, trained on": own["auc"].mean(),
                "intervals above 0.5": int((own["low"] > 0.5).sum()),
                "mean AUC, not trained on": other["auc"].mean(),
                "base model's mean AUC": base.mean() if len(base) else 0.5,
                "intervals above the base model's AUC": int(beats.sum()),
            }
        )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def summary_note(table: pd.DataFrame) -> str:
    """One generated sentence per signal: what its AUCs say, in words."""
    if table.empty:
        return (
            "No organization has both training and validation samples here, so no AUC "
            "could be computed (the samples table shows which split is missing)."
        )
    parts = []
    for r in table.to_dict("records"):
        n, base = r["trained pairs"], r["base model's mean AUC"]
        above_base = r["intervals above the base model's AUC"]
        parts.append(
            f"**{r['signal']}**: mean AUC {r['mean AUC, trained on']:.2f} on the {n} (model, "
            f"organization) pairs where the samples are members, "
            f"{r['mean AUC, not trained on']:.2f} where they are not and "
            f"{base:.2f} for the base model, which saw neither split; "
            f"{r['intervals above 0.5']} of {n} intervals lie wholly above 0.5 and "
            f"{above_base} of {n} wholly above the base "
            "model's AUC on the same organization."
        )
    return " ".join(parts)


def samples_table(art: artifacts.Artifact) -> pd.DataFrame:
    """Samples and files per organization and split, and their mean length."""
    scores = art.table(SCORES)
    one = scores[scores["model"] == BASE]
    out = one.groupby(["organization", "split"], sort=False).agg(
        samples=("file", "size"),
        files=("file", "nunique"),
        tokens=("tokens", "mean"),
        zlib_bytes=("zlib_bytes", "mean"),
    )
    out = out.reset_index().rename(
        columns={"tokens": "mean tokens", "zlib_bytes": "mean zlib bytes"}
    )
    out["split"] = out["split"].map(
        {"train": "train (members)", "validation": "validation (non-members)"}
    )
    return out


def table5_view(table: pd.DataFrame) -> pd.DataFrame:
    """Table 5 for reading: the ratios to four significant digits (they are ~0.001-0.03)."""
    out = table.copy()
    for col in ("log(PPL)/zlib", "paper log(PPL)/zlib"):
        out[col] = ["—" if pd.isna(v) else f"{v:.4g}" for v in out[col]]
    return out


def paper_table5() -> pd.DataFrame:
    """The paper's Table 5 as printed (its eight models; we have none of their weights)."""
    return pd.DataFrame(
        [
            {"paper model": k, "trained on": v[0], "log(PPL)/zlib": f"{v[1]:.7f}"}
            for k, v in paper.TABLE5.items()
        ]
    )


def auc_view(auc: pd.DataFrame) -> pd.DataFrame:
    """Model x organization, each signal's AUC with its interval, "yes" where trained on."""
    if auc.empty:
        return pd.DataFrame(columns=["model", "organization", "trained on", *SIGNALS])
    cell = auc.assign(
        value=[
            f"{a:.2f} [{lo:.2f}, {hi:.2f}]"
            for a, lo, hi in zip(auc["auc"], auc["low"], auc["high"], strict=True)
        ]
    )
    wide = cell.pivot_table(
        index=["model", "organization", "trained on"],
        columns="signal",
        values="value",
        aggfunc="first",
        sort=False,
    )
    wide = wide.reindex(columns=[s for s in SIGNALS if s in wide.columns]).reset_index()
    wide["trained on"] = wide["trained on"].map({True: "yes", False: "no"})
    wide.columns.name = None
    return wide.fillna("—")
