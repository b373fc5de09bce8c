"""``audit``: an organization checks a shared model against its own code, on its own machine.

The paper (§6.1) warns that even a federated model can emit an organization's code verbatim,
but leaves the organization no way to check. ``python -m collab_lib audit MODEL --code DIR``
runs the study's own measures on any causal language model that ``from_pretrained`` loads
and on code the organization owns, locally, and writes a short report (``audit.json`` and
``audit.html``):

- **the paper's verbatim metric** (Eq. 1): the signature and docstring of DIR's functions as
  prompts, completions with the paper's sampling (5 at temperature 0.6, top-p 0.6), lines in
  blocks of at least ``min_lines`` lines also in DIR; with the longest blocks, their file
  and line (what the model reproduces, where it came from);
- **k-extractability** (Carlini et al. 2023): windows of DIR's tokens, greedy decoding from
  the first ``k``, exact when the next ``k`` follow; with ``--held-out`` (code of the same
  kind the model never saw) its windows are the control;
- **membership signals** (loss, PPL/zlib, Min-K%++) on runs of DIR's lines, and with
  ``--held-out`` each signal's ROC AUC of DIR against it (0.5: the model cannot tell them
  apart), its interval resampling files;
- **canary exposure** of secrets the organization planted (``--canaries``: a JSON list of
  ``{prefix, secret, format}``, the canaries step's format), ranked among random secrets of
  the same format.

Nothing leaves the machine: the JSON holds aggregates and, in ``longest``, the reproduced
lines themselves (the organization's own code; leave that key out before sharing it).
"""

from __future__ import annotations

import html
import json
import math
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from collab_lib import canaries, exposure, extractability, extraction, membership, sampling
from collab_lib.clones import CloneIndex, CloneOptions
from collab_lib.config import UserError

# a membership sample: at most this many characters of whole lines (1.5 per context token
# below it), so a long-context model is not left with only the largest files
CHUNK_CHARS = 1536


class AuditError(UserError):
    """A model or a code directory the audit cannot use; the message says what it needs."""


@dataclass(frozen=True)
class AuditSettings:
    """How much of the code each measure reads (defaults: a few minutes on a CPU for a small
    model and a few MB of code)."""

    prompts: int = 100  # functions with a docstring, drawn with the seed
    samples: int = 5  # completions per prompt (the paper's 5)
    temperature: float = 0.6  # the paper's sampling
    top_p: float = 0.6
    max_new_tokens: int = 128
    min_lines: int = 6  # the paper's memorization threshold
    sequences: int = 200  # k-extractability windows per directory
    k: int | None = None  # prefix and match length (null: 50, or a quarter of the context)
    chunks: int = 200  # membership samples per directory
    alternatives: int = 250  # random secrets each planted canary is ranked among
    batch_size: int = 64
    seed: int = 0


SKIP = {"site-packages", "__pycache__", "node_modules", "venv", "env"}  # not your code


def read_code(path: str | Path, what: str) -> list[tuple[str, str]]:
    """``(relative path, source)`` of every ``.py`` file under ``path``, or a clear error.
    Hidden directories (``.venv``, ``.tox``, ``.git``) and installed packages are skipped:
    widely published library code would read as the organization's own."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise AuditError(f"{what} {path}: not a directory")
    docs = []
    for p in sorted(root.rglob("*.py")):
        parts = p.relative_to(root).parts
        if not p.is_file() or any(x.startswith(".") or x in SKIP for x in parts[:-1]):
            continue
        try:
            text = p.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue  # unreadable: not part of the audit
        if text.strip():
            docs.append(("/".join(parts), text))
    if not docs:
        raise AuditError(f"{what} {path}: no Python (.py) file with any code in it")
    return docs


def load_model(path: str | Path):
    """Any causal language model saved with ``save_pretrained`` (and its tokenizer), offline;
    or the study's ensemble, by the members file ``models`` prints for it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from collab_lib.ensemble import MEMBERS

    root = Path(path).expanduser()
    if root.is_file() and root.name == MEMBERS:  # what `models` prints for the ensemble
        return _load_ensemble(root)
    if not root.is_dir():
        raise AuditError(f"model {path}: not a directory (a model saved with save_pretrained)")
    try:
        model = AutoModelForCausalLM.from_pretrained(root, local_files_only=True)
        tok = AutoTokenizer.from_pretrained(root, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever the loader raises, the fix is the same
        first = (str(exc).splitlines() or [""])[0]
        raise AuditError(
            f"model {path}: not a causal language model with its tokenizer that "
            f"transformers can load offline ({type(exc).__name__}: {first})"
        ) from None
    if tok.eos_token_id is None:  # decoding pads and stops with it
        if tok.pad_token is None and tok.unk_token is None:
            raise AuditError(f"model {path}: its tokenizer has no EOS, pad or unknown token")
        tok.eos_token = tok.pad_token or tok.unk_token
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval(), tok


def _load_ensemble(path: Path):
    """The ensemble whose members file is ``path``, its members read from the same cache."""
    from collab_lib import artifacts, ensemble, scoring

    art = artifacts.load(path.parent.parent.name, path.parent.name, path.parent.parent.parent)
    if art is None or not ensemble.is_ensemble(art):
        raise AuditError(f"model {path}: not an ensemble artifact of a complete study cache")
    try:
        return scoring.load_model(art)
    except artifacts.NotBuiltError as exc:
        raise AuditError(f"model {path}: {exc}") from None


CONTEXT_KEYS = ("n_positions", "max_position_embeddings", "n_ctx", "max_seq_len", "seq_length")


def context_of(model) -> int:
    """The model's context in tokens, whatever its config calls it."""
    for key in CONTEXT_KEYS:
        value = getattr(model.config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    raise AuditError(
        f"the model's config names no context length (none of {', '.join(CONTEXT_KEYS)})"
    )


def run_audit(
    model_dir: str | Path,
    code_dir: str | Path,
    held_out_dir: str | Path | None = None,
    canaries_file: str | Path | None = None,
    settings: AuditSettings = AuditSettings(),
) -> dict:
    """Every measure of the report, as one JSON-able dict."""
    code = read_code(code_dir, "--code")
    held = read_code(held_out_dir, "--held-out") if held_out_dir is not None else None
    planted = _read_canaries(canaries_file) if canaries_file is not None else []
    model, tok = load_model(model_dir)
    report = {
        "model": str(model_dir),
        "code": {"dir": str(code_dir), "files": len(code)},
        "held_out": None if held is None else {"dir": str(held_out_dir), "files": len(held)},
        "settings": asdict(settings),
    }
    measures = {
        "verbatim": lambda: verbatim_metric(model, tok, code, settings),
        "extractability": lambda: k_extractability(model, tok, code, held, settings),
        "membership": lambda: membership_signals(model, tok, code, held, settings),
        "canaries": lambda: canary_exposure(model, tok, planted, settings),
    }
    for name, measure in tqdm(measures.items(), desc="audit", unit="measure"):
        report[name] = measure()
    return report


# --------------------------------------------------------------------------- the measures


def verbatim_metric(model, tok, code: list[tuple[str, str]], s: AuditSettings) -> dict:
    """The paper's Eq. 1 on completions of DIR's function prompts, and the longest blocks."""
    from collab_lib import verbatim
    from collab_lib.decoding import sample_texts

    context = context_of(model)
    new_tokens = min(s.max_new_tokens, context // 2)  # the rest holds the prompt
    room = min(512, context - new_tokens)  # the paper's prompts: at most 512 tokens
    found, counts = extraction.function_prompts(code, tok, room)
    chosen = random.Random(f"{s.seed}/audit/prompts").sample(found, min(s.prompts, len(found)))
    out = {
        "functions": counts["functions"],
        "with docstring": counts["with_docstring"],
        "prompts": len(chosen),
    }
    if not chosen:
        return out | {"generated lines": 0, "memorized lines": 0, "ratio (%)": None, "longest": []}
    ids = [tok(p["prompt"], verbose=False)["input_ids"][-room:] for p in chosen]
    sc = sampling.SamplingConfig(s.temperature, s.top_p, 50, new_tokens)
    texts, _ = sample_texts(
        model,
        tok,
        ids,
        s.samples,
        sc,
        cut=extraction.body_end,
        batch_size=s.batch_size,
        seed=s.seed,
        desc="audit: sampling",
    )
    rows = [
        (
            chosen[i // s.samples],
            {"prompt": i // s.samples, "sample": i % s.samples, "completion": t},
        )
        for i, t in enumerate(texts)
    ]
    index = CloneIndex.build(code, CloneOptions(s.min_lines))
    lines, blocks, _ = verbatim.detect(index, rows)
    generated = lines["generated lines"]
    by_source: dict[tuple, dict] = {}
    for b in sorted(blocks, key=lambda b: -b["generated_lines"]):
        by_source.setdefault((b["source_file"], b["source_start"]), b)  # once per block
    longest = list(by_source.values())[:5]
    return out | {
        "generated lines": generated,
        "memorized lines": lines["memorized lines"],
        "ratio (%)": 100 * lines["memorized lines"] / generated if generated else None,
        "longest": [
            {
                "file": b["source_file"],
                "line": b["source_start"],
                "generated lines": b["generated_lines"],  # the block's lines the model wrote
                "text": b["text"],  # with the prompt's lines it starts in
            }
            for b in longest
        ],
    }


def k_extractability(model, tok, code, held, s: AuditSettings) -> dict:
    """Exact extraction (%) and tokens matched, on DIR's windows and the held-out control."""
    k = s.k or min(50, context_of(model) // 4)
    out = {"k": k, "match": k}
    for name, docs in (("code", code), ("held_out", held)):
        if docs is None:
            continue
        # sizes first, tokens kept only for the files drawn from: GBs of code stay on disk
        sizes = [len(tok(src, verbose=False)["input_ids"]) for _, src in docs]
        drawn = extractability.draw(sizes, 2 * k, s.sequences, f"{s.seed}/audit/{name}")
        ids = {f: tok(docs[f][1], verbose=False)["input_ids"] for f in {f for f, _ in drawn}}
        seqs = [
            {
                "organization": name,
                "split": name,
                "file": docs[f][0],
                "start": start,
                "ids": ids[f][start : start + 2 * k],
            }
            for f, start in drawn
        ]
        if not seqs:
            out[name] = {"sequences": 0}
            continue
        frame = extractability.outcomes(model, tok, seqs, k, s.batch_size)
        out[name] = {
            "sequences": len(frame),
            "extracted (%)": 100 * float(frame["extracted"].mean()),
            "matched (tokens)": float(frame["matched"].mean()),
        }
    return out


def membership_signals(model, tok, code, held, s: AuditSettings) -> dict:
    """Mean loss, PPL/zlib and Min-K%++ on runs of DIR's lines; AUC against the held-out."""
    context = context_of(model)
    size = max(40, min(int(1.5 * context), CHUNK_CHARS))
    frames = {}
    for name, docs in (("code", code), ("held_out", held)):
        if docs is None:
            continue
        per_file = [[(path, t) for _, t in membership.chunks(src, size)] for path, src in docs]
        rng = np.random.default_rng([s.seed, len(frames)])
        pieces = membership.balanced(per_file, s.chunks, rng)  # evenly across files
        scores = membership.score_samples(
            model, tok, [t for _, t in pieces], context, max(1, context // 2), 0.2
        )
        scores["file"] = [p for p, _ in pieces]
        scores["zlib_bytes"] = [membership.zlib_bytes(t) for _, t in pieces]
        scores["ppl_zlib"] = scores["loss"] / scores["zlib_bytes"]
        frames[name] = scores
    out = {name: {"samples": len(f), "loss": float(f["loss"].mean())} for name, f in frames.items()}
    if "held_out" not in frames or frames["held_out"].empty or frames["code"].empty:
        return out
    rng = np.random.default_rng(s.seed)
    member, other = frames["code"], frames["held_out"]
    wm = membership.file_weights(member["file"], 1000, rng)
    wo = membership.file_weights(other["file"], 1000, rng)
    aucs = membership.signal_aucs(member, other, wm, wo, 0.95)  # no reference: no loss - base
    out["auc"] = {sig: dict(zip(("auc", "low", "high"), a, strict=True)) for sig, a in aucs.items()}
    return out


def canary_exposure(model, tok, planted: list[dict], s: AuditSettings) -> list[dict]:
    """Each planted secret's exposure (bits) among random secrets of its format."""
    if not planted:
        return []
    rng = random.Random(f"{s.seed}/audit/alternatives")
    formats = sorted({p["format"] for p in planted})
    alternatives = {
        f: [canaries.new_secret(f, rng) for _ in range(s.alternatives)] for f in formats
    }
    planted = [{"id": i, "organization": "", "count": 0, **p} for i, p in enumerate(planted)]
    context = context_of(model)
    rows = exposure.secret_scores(model, tok, planted, alternatives, s.alternatives, context)
    return [  # by position in --canaries: a secret in the report would spoil it
        {
            "canary": p["id"],
            "rank exposure": r["rank_exposure"],
            "exposure (bits)": r["extrapolated_exposure"],
        }
        for p, r in zip(planted, rows, strict=True)
    ]


def _read_canaries(path: str | Path) -> list[dict]:
    try:
        planted = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise AuditError(f"--canaries {path}: not a readable JSON file ({exc})") from None
    if not isinstance(planted, list) or not all(
        isinstance(p, dict) and {"prefix", "secret", "format"} <= set(p) for p in planted
    ):
        raise AuditError(f"--canaries {path}: a JSON list of {{prefix, secret, format}} objects")
    unknown = {p["format"] for p in planted} - set(canaries.FORMATS)
    wrong = [
        i
        for i, p in enumerate(planted)
        if p["format"] in canaries.FORMAT_PATTERNS
        and not re.fullmatch(canaries.FORMAT_PATTERNS[p["format"]], str(p["secret"]))
    ]
    if wrong:
        raise AuditError(
            f"--canaries {path}: canary {wrong[0]}'s secret does not fit its format (letters16: "
            "16 lowercase letters; hex24: 24 hexadecimal digits); a secret of another shape "
            "would rank as exposed whether or not the model saw it"
        )
    if unknown:
        raise AuditError(
            f"--canaries {path}: unknown format {sorted(unknown)} "
            f"(known: {', '.join(canaries.FORMATS)})"
        )
    return planted


# --------------------------------------------------------------------------- the report


def write_report(report: dict, out: str | Path) -> tuple[Path, Path]:
    """``audit.json`` and ``audit.html`` in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "audit.json").write_text(json.dumps(_plain(report), indent=1, allow_nan=False))
    (out / "audit.html").write_text(_html(report))
    return out / "audit.json", out / "audit.html"


def _plain(value):
    """The report with every NaN as null (strict JSON parsers refuse NaN)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def summary(report: dict) -> pd.DataFrame:
    """One row per measure: what it is, on the code, on the held-out code."""
    v, e, m = report["verbatim"], report["extractability"], report["membership"]
    rows = [
        ("memorized lines (%, the paper's Eq. 1)", v.get("ratio (%)"), None),
        (
            "k-extractable sequences (%)",
            e.get("code", {}).get("extracted (%)"),
            e.get("held_out", {}).get("extracted (%)"),
        ),
        (
            "tokens matched before the first wrong one",
            e.get("code", {}).get("matched (tokens)"),
            e.get("held_out", {}).get("matched (tokens)"),
        ),
        (
            "loss (nats per token, mean over samples)",
            m.get("code", {}).get("loss"),
            m.get("held_out", {}).get("loss"),
        ),
    ]
    frame = pd.DataFrame(rows, columns=["measure", "your code", "held-out code"])
    auc = [
        {
            "measure": f"ROC AUC, {sig}: your code against the held-out (0.5: no difference)",
            "your code vs held-out [95 % interval]": (
                f"{a['auc']:.3g} [{a['low']:.3g}, {a['high']:.3g}]"
            ),
        }
        for sig, a in m.get("auc", {}).items()
    ]
    return pd.concat([frame, pd.DataFrame(auc)], ignore_index=True) if auc else frame


def _html(report: dict) -> str:
    parts = [
        "<!doctype html><meta charset='utf-8'><title>Audit</title>",
        f"<h1>Audit of {html.escape(report['model'])}</h1>",
        f"<p>Code: {html.escape(report['code']['dir'])} ({report['code']['files']} files)</p>",
        summary(report).to_html(index=False, na_rep="—", float_format=lambda x: f"{x:.3g}"),
        "<p>A high AUC says the model tells your code from the held-out code: a sign that it "
        "trained on yours only where the held-out code is of the same kind (same projects, "
        "style and age) and the model never saw it.</p>",
    ]
    longest = report["verbatim"].get("longest", [])
    if longest:
        parts.append("<h2>Longest reproduced blocks</h2>")
    for b in longest:
        parts.append(
            f"<p>{html.escape(b['file'])}, line {b['line']} ({b['generated lines']} of its "
            "lines written by the model)</p>"
            f"<pre>{html.escape(b['text'])}</pre>"
        )
    if report["canaries"]:
        parts += [
            "<h2>Planted canaries</h2>",
            pd.DataFrame(report["canaries"]).to_html(index=False),
        ]
    return "\n".join(parts)
