"""The cost of a run before it starts: each step's work counted from the profile, and its time
on a machine from a short measured calibration of that machine's throughput.

The work is what the steps do, counted the way they do it (README, "The cost of a run"): the
tokens each training job passes over (an incremental chain's shared stages once, DP-SGD at
:data:`DP_SPEED` of plain training's speed, each federated run's start-up), the completions
sampled and their new tokens, the programs run in the sandbox, and the sequences and tokens
scored (overlapping windows counted whole; the ensemble's forwards once per member). Until
the datasets are built, each organization's code is its ``size_mb`` split by
``validation_fraction``; after, the datasets' own sizes.

The time is that work over a machine's throughput (:mod:`collab_lib.calibration`: this
machine's, measured in seconds and cached; a preset's; or a calibration file from another
machine).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from collab_lib import artifacts
from collab_lib.calibration import Throughput, calibrate
from collab_lib.config import Config, UserError

if TYPE_CHECKING:
    import pandas as pd

HOURS_TO_ASK = 3.0  # `run` and `book` ask for --yes above this estimate
# Constants measured on this project's 2-core machine and kept fixed (README, "The cost of a
# run"): cheap steps, or costs a calibration of seconds cannot see.
DP_SPEED = 0.8  # DP-SGD's tokens/s over plain training's (bench/dp.py: 0.80x at default)
FEDERATED_START_S = 14.0  # a federated run: Ray and Flower's simulation start, per-round setup
TOKENIZER_S_PER_MB = 1.1  # byte-level BPE training on the standard library
SOURCE_S = 0.25  # per package a datasets step reads (download, unpack, walk)
DATASETS_S_PER_MB = 2.0  # reading, filtering and MinHash deduplication of sampled code
CLONES_S_PER_MB = 0.5  # the Type-1 clone detector, all pairs of organizations
PSI_S_PER_MB = 5.0  # blinding and matching every clone window of every organization
FINDINGS_S = 0.5  # bootstrap resampling of every finding
HUMANEVAL_PROMPT_BYTES = 450  # a HumanEval prompt's mean length
RQ2_PROMPT_BYTES = 170  # a docstring prompt's mean length (default: 70 tokens)
PROMPTS_PER_MB = 330  # functions with a docstring per MB of code, until the datasets say
CANDIDATE_TOKENS = 18  # a canary's secret with its line's end (letters16: 14, hex24: 22)
PREFIX_TOKENS = 100  # a canary's prefix
RQ3_PROMPTS = 8  # cross-organization clone prompts, until the clones step says


@dataclass(frozen=True)
class Facts:
    """What each organization's data holds, for counting: bytes and files of each split,
    docstring prompts, planted canaries, and shared clone blocks of the RQ3 pair."""

    train_bytes: dict[str, float]
    validation_bytes: dict[str, float]
    bytes_per_file: dict[str, float]
    prompts: dict[str, int]
    canaries: int
    canary_bytes: dict[str, float]
    rq3_prompts: int
    source: str  # "profile" (size_mb) or "datasets" (the built datasets)


@dataclass
class Work:
    """One step's work and its time on a machine."""

    step: str
    train_tokens: float = 0.0
    completions: float = 0.0
    programs: float = 0.0
    sequences: float = 0.0  # scored
    scored_tokens: float = 0.0
    new_tokens: float = 0.0
    loads: float = 0.0
    seconds: float = 0.0

    def add(self, other: Work) -> None:
        for name, value in asdict(other).items():
            if name != "step":
                setattr(self, name, getattr(self, name) + value)


# --- the data --------------------------------------------------------------------------------


def facts(cfg: Config, planned: dict | None = None) -> Facts:
    """The organizations' sizes: from the built datasets where ``planned`` finds them, else
    from each organization's ``size_mb`` (an error says what to do when neither is there)."""

    built = _built_facts(cfg, planned) if planned else None
    if built is not None:
        return built
    sizes = {o.name: o.size_mb for o in cfg.datasets.organizations}
    unknown = [o for o, mb in sizes.items() if mb is None]
    if unknown:
        raise UserError(
            f"the size of {', '.join(unknown)}'s code is known once the datasets are built: "
            f"run `{cfg.command('run', 'datasets')}` first (a few minutes), or give every "
            "organization a size_mb"
        )
    v = cfg.datasets.validation_fraction
    train = {o: mb * 1e6 * (1 - v) for o, mb in sizes.items()}
    return Facts(
        train_bytes=train,
        validation_bytes={o: mb * 1e6 * v for o, mb in sizes.items()},
        bytes_per_file=dict.fromkeys(sizes, 8000.0),
        prompts={o: round(b / 1e6 * PROMPTS_PER_MB) for o, b in train.items()},
        **_canaries(cfg, train),
        rq3_prompts=RQ3_PROMPTS,
        source="profile",
    )


def _built_facts(cfg: Config, planned: dict) -> Facts | None:
    from collab_lib import datasets

    try:
        ds = datasets.load(cfg, planned)
    except artifacts.NotBuiltError:
        return None
    orgs = [o.name for o in cfg.datasets.organizations]
    splits = {o: ds.summary(o)["splits"] for o in orgs}
    train = {o: float(splits[o]["train"]["bytes"]) for o in orgs}
    files = {o: sum(s["files"] for s in splits[o].values()) for o in orgs}
    total = {o: sum(s["bytes"] for s in splits[o].values()) for o in orgs}
    return Facts(
        train_bytes=train,
        validation_bytes={o: float(splits[o]["validation"]["bytes"]) for o in orgs},
        bytes_per_file={o: total[o] / max(files[o], 1) for o in orgs},
        prompts={o: round(0.75 * splits[o]["train"]["functions"]) for o in orgs},
        **_canaries(cfg, train),
        rq3_prompts=_rq3_prompts(cfg, planned),
        source="datasets",
    )


def _canaries(cfg: Config, train_bytes: dict[str, float]) -> dict:
    """The canaries the profile plants in data of these sizes (the canaries step's own
    count), and each organization's bytes of their copies."""
    from collab_lib import canaries

    if not cfg.canaries.enabled:
        return {"canaries": 0, "canary_bytes": dict.fromkeys(train_bytes, 0.0)}
    planted = canaries.make_canaries({o: int(b) for o, b in train_bytes.items()}, cfg.canaries, 0)
    copies = dict.fromkeys(train_bytes, 0.0)
    for c in planted:
        copies[c["organization"]] += len(c["text"].encode()) * c["count"]
    return {"canaries": len(planted), "canary_bytes": copies}


def _rq3_prompts(cfg: Config, planned: dict) -> int:
    """Two prompts per clone block the RQ3 pair shares, once the clones step has run."""
    ref = planned.get("clones")
    art = artifacts.load(*ref) if ref else None
    if art is None:
        return RQ3_PROMPTS
    blocks = art.table("table7_blocks")
    return max(1, 2 * len(blocks))


# --- the work of each step -------------------------------------------------------------------


def _tokens(cfg: Config, f: Facts, tp: Throughput) -> dict[str, float]:
    """Each organization's training tokens per epoch: its code, its canaries' copies, and its
    audit canaries (one sequence of the context each, half of them included)."""
    audit = cfg.privacy.audit_canaries / 2 * cfg.model.context
    return {
        o: (b + f.canary_bytes[o]) / tp.bytes_per_token + audit for o, b in f.train_bytes.items()
    }


def _windows(tokens: float, cfg: Config) -> float:
    """Tokens a forward pass sees scoring a stream of ``tokens`` in overlapping windows."""
    ctx, stride = cfg.model.context, cfg.perplexity_stride
    if tokens <= ctx:
        return tokens
    return ctx * (1 + math.ceil((tokens - ctx) / stride))


def job_tokens(
    cfg: Config, f: Facts, tp: Throughput, refs: tuple[str, list[str], str] | None = None
) -> dict[str, tuple[object, float]]:
    """Each unique training job (by ref) and the tokens it passes over: its organizations'
    tokens per epoch, times its epochs (rounds). ``refs``: the base model's, data's and psi's
    refs the jobs' keys derive from (placeholders by default: the same jobs, other keys)."""
    from collab_lib import collaboration

    tokens = _tokens(cfg, f, tp)
    epochs = cfg.train.epochs
    rounds = cfg.federated.rounds or epochs
    base_ref, data_refs, psi_ref = refs or ("base_model/b", ["datasets/d", "canaries/c"], "psi/p")
    out = {}
    for chain in collaboration.jobs(cfg, base_ref, data_refs, psi_ref).values():
        for job in chain:
            if job.step == collaboration.ENSEMBLE_STEP:
                continue
            passes = rounds if job.step == collaboration.FEDERATED_STEP else epochs
            out[job.ref] = (job, sum(tokens[o] for o in job.data) * passes)
    return out


def train_work(
    cfg: Config,
    f: Facts,
    tp: Throughput,
    refs: tuple[str, list[str], str] | None = None,
    missing: set[str] | None = None,
) -> Work:
    """The tokenizer, the base model and every unique training job (``missing``: only the
    jobs whose artifacts are not cached, by ref, keyed from ``refs``:
    :func:`collaboration.chain_refs`)."""
    from collab_lib import collaboration

    w = Work("train")
    if missing is None or refs[0] in missing:
        w.add(_base_work(cfg, tp))
    for ref, (job, n) in job_tokens(cfg, f, tp, refs).items():
        if missing is not None and ref not in missing:
            continue
        speed = DP_SPEED if (job.dp or {}).get("level") == "example" else 1.0
        federated = job.step == collaboration.FEDERATED_STEP
        w.train_tokens += n
        w.seconds += n / (tp.train * speed) + (FEDERATED_START_S if federated else 0.0)
        epochs = (cfg.federated.rounds or cfg.train.epochs) if federated else cfg.train.epochs
        _load(w, tp, 1 + (epochs if cfg.train.epoch_checkpoints else 0))  # and its snapshots
    if cfg.federated.tuned and (
        missing is None or any(r.startswith("yogi_sweep/") for r in missing)
    ):
        w.add(_sweep_work(cfg, _tokens(cfg, f, tp), tp))
    return w


def _base_work(cfg: Config, tp: Throughput) -> Work:
    w = Work("train")
    m = cfg.model
    if m.base == "checkpoint":
        w.loads += 1
        return w
    w.seconds += TOKENIZER_S_PER_MB * m.tokenizer_corpus_mb
    n = m.pretrain_corpus_mb * 1e6 / tp.bytes_per_token * m.pretrain_epochs
    w.train_tokens += n
    w.seconds += n / tp.train
    return w


def _sweep_work(cfg: Config, tokens: dict[str, float], tp: Throughput) -> Work:
    """FedYogi's sweep: one federated run on all organizations per pair, then the held-out
    perplexity of each."""
    from collab_lib import tuning

    w = Work("train")
    s = cfg.federated.yogi_sweep
    total = sum(tokens.values())
    rounds = cfg.federated.rounds or cfg.train.epochs
    for _ in tuning.grid(cfg):
        w.train_tokens += total * (1 - s.holdout_fraction) * rounds
        w.seconds += total * (1 - s.holdout_fraction) * rounds / tp.train + FEDERATED_START_S
        held = _windows(total * s.holdout_fraction, cfg)
        w.scored_tokens += held
        w.seconds += held / tp.score
    return w


def _forwards(cfg: Config) -> dict[str, int]:
    """Forward passes per token of each model that takes more than one: an ensemble's
    members (``.get(name, 1)`` for any model)."""
    from collab_lib import collaboration

    return {s.name: len(s.orgs) for s in collaboration.roster(cfg) if not s.trains}


def _score(w: Work, tp: Throughput, sequences: float, tokens: float, members: int = 1) -> None:
    w.sequences += sequences
    w.scored_tokens += tokens * members
    w.seconds += tokens * members / tp.score


def _sample(
    w: Work, tp: Throughput, rows: float, new: float, prompt: float, members: int = 1
) -> None:
    """``rows`` completions of ``new`` new tokens at most, each prompt ``prompt`` tokens
    (run once per distinct prompt: counted once per row here, an upper bound)."""
    w.completions += rows
    w.new_tokens += rows * new * members
    w.seconds += rows * new * members / tp.decode + rows * prompt * members / tp.score / 4


def _load(w: Work, tp: Throughput, n: float = 1) -> None:
    w.loads += n
    w.seconds += n * tp.load


def rq1_work(cfg: Config, f: Facts, tp: Throughput) -> Work:
    from collab_lib import collaboration, evaluation

    forwards = _forwards(cfg)
    w = Work("rq1")
    e = cfg.evaluation
    every = collaboration.chosen_models(cfg, None, "evaluation.models")
    validation = sum(_windows(b / tp.bytes_per_token, cfg) for b in f.validation_bytes.values())
    files = sum(f.validation_bytes[o] / f.bytes_per_file[o] for o in f.validation_bytes)
    for name in every:
        _load(w, tp)
        _score(w, tp, files, validation, forwards.get(name, 1))
    problems = e.problems or 164
    new = evaluation.max_new_tokens(cfg)
    prompt = min(HUMANEVAL_PROMPT_BYTES / tp.bytes_per_token, cfg.model.context - new)
    for name in evaluation.pass_models(cfg):
        for _ in e.temperatures:
            _load(w, tp)
            rows = problems * e.n_samples
            _sample(w, tp, rows, new, prompt, forwards.get(name, 1))
            w.programs += rows
            w.seconds += rows / tp.programs
    # the harness's check rows: three programs per problem, and the timeouts side by side
    w.programs += 3 * problems + e.harness_timeouts
    w.seconds += 3 * problems / tp.programs + e.harness_timeouts * e.timeout_s / _workers()
    return w


def _workers() -> int:
    return max(1, len(os.sched_getaffinity(0)))


def rq2_work(cfg: Config, f: Facts, tp: Throughput) -> Work:
    from collab_lib import collaboration

    forwards = _forwards(cfg)
    w = Work("rq2")
    m = cfg.memorization
    every = collaboration.chosen_models(cfg, None, "memorization.models")
    chosen = collaboration.chosen_models(cfg, m.models, "memorization.models")
    singles = [s.name for s in collaboration.roster(cfg) if s.setting == "single"]
    new = m.max_new_tokens or cfg.model.context // 2
    room = min(m.prompt_max_tokens, cfg.model.context - new)
    prompt = min(RQ2_PROMPT_BYTES / tp.bytes_per_token, room)
    rows = sum(max(1, round(m.sample_fraction * p)) for p in f.prompts.values()) * m.n_samples
    k, match = cfg.extractable_lengths
    sequences = _extractable_sequences(cfg, f, tp, m.extractable_sequences)
    for name in chosen:
        members = forwards.get(name, 1)
        _load(w, tp, 2)
        _sample(w, tp, rows, new, prompt, members)  # RQ2's completions
        _sample(w, tp, sequences, match, k, members)  # k-extractability, greedy
    alternatives = min(m.alternatives or cfg.canaries.alternatives, cfg.canaries.alternatives)
    for name in every:  # canary exposure: every model, even where none is planted
        _load(w, tp)
        _exposure(w, cfg, f, tp, alternatives, forwards.get(name, 1))
    for name in dict.fromkeys([*chosen, *singles]):  # the duplication signal
        _load(w, tp)
        _score(
            w, tp, 2 * len(f.train_bytes), _duplication_tokens(cfg, f, tp), forwards.get(name, 1)
        )
    return w


def _exposure(w: Work, cfg: Config, f: Facts, tp: Throughput, alternatives: int, members: int):
    """Each canary's prefix once and its secret among ``alternatives`` others."""
    if f.canaries:
        _sample(w, tp, f.canaries, CANDIDATE_TOKENS, PREFIX_TOKENS, members)
        w.completions -= f.canaries  # greedy: not a completion the tables count
    _score(
        w,
        tp,
        f.canaries * (1 + alternatives),
        f.canaries * (1 + alternatives) * CANDIDATE_TOKENS,
        members,
    )


def _extractable_sequences(cfg: Config, f: Facts, tp: Throughput, cap: int | None) -> float:
    """k-extractability's sequences over every organization and split, ``cap`` per each."""
    k, match = cfg.extractable_lengths
    out = 0.0
    for split in (f.train_bytes, f.validation_bytes):
        for b in split.values():
            n = b / tp.bytes_per_token / (k + match)
            out += min(cap, n) if cap else n
    return out


def _duplication_tokens(cfg: Config, f: Facts, tp: Throughput) -> float:
    """Tokens the duplication signal scores: ``duplication_tokens`` per organization and split,
    whole files (one more file, on average half past the cap), in overlapping windows."""
    cap = cfg.memorization.duplication_tokens
    out = 0.0
    for split in (f.train_bytes, f.validation_bytes):
        for o, b in split.items():
            n = b / tp.bytes_per_token
            if cap:
                n = min(n, cap + f.bytes_per_file[o] / tp.bytes_per_token / 2)
            out += _windows(n, cfg)
    return out


def rq3_work(cfg: Config, f: Facts, tp: Throughput) -> Work:
    from collab_lib import collaboration, datasets

    w = Work("rq3")
    m = cfg.memorization
    pair = set(datasets.rq3_pair(cfg))
    models = [
        s.name
        for s in collaboration.roster(cfg)
        if s.trains and s.setting != "single" and s.privacy is None and set(s.orgs) == pair
    ]
    new = m.max_new_tokens or cfg.model.context // 2
    prompt = min(m.prompt_max_tokens, cfg.model.context - new) * 0.8
    for _ in [collaboration.BASE, *models]:
        _load(w, tp, 2)
        _sample(w, tp, f.rq3_prompts * m.n_samples, new, prompt)
        _score(w, tp, f.rq3_prompts, f.rq3_prompts * cfg.model.context / 2)
    return w


def curve_points(cfg: Config) -> list[tuple[str, int]]:
    """Every checkpoint the curves score: each job of a curve model at each epoch it saves,
    and the base model; with its forward passes per token (an ensemble's members)."""
    from collab_lib import collaboration
    from collab_lib.curves import curve_models

    chains = collaboration.jobs(cfg, "base_model/base", ["datasets/d", "canaries/c"], "psi/p")
    epochs = cfg.train.epochs if cfg.train.epoch_checkpoints else 1
    rounds = (cfg.federated.rounds or cfg.train.epochs) if cfg.train.epoch_checkpoints else 1
    seen: dict[tuple[str, int], int] = {("base", 0): 1}
    for spec in curve_models(cfg):
        members = 1 if spec.trains else len(spec.orgs)
        for job in chains[spec.name]:
            n = rounds if job.step == collaboration.FEDERATED_STEP else epochs
            for e in range(1, n + 1):
                seen[job.ref, e] = members
    return list(seen.items())


def curves_work(cfg: Config, f: Facts, tp: Throughput) -> Work:
    w = Work("curves")
    c, m = cfg.curves, cfg.memorization
    cap = c.validation_kb * 1000 if c.validation_kb else math.inf
    validation = sum(
        _windows(min(cap, b) / tp.bytes_per_token, cfg) for b in f.validation_bytes.values()
    )
    alternatives = c.alternatives or m.alternatives or cfg.canaries.alternatives
    alternatives = min(alternatives, cfg.canaries.alternatives)
    per_split = _extractable_sequences(cfg, f, tp, m.extractable_sequences)
    sequences = min(per_split, (c.sequences or math.inf) * 2 * len(f.train_bytes))
    k, match = cfg.extractable_lengths
    new = m.max_new_tokens or cfg.model.context // 2
    prompts = sum(min(c.prompts, max(1, round(m.sample_fraction * p))) for p in f.prompts.values())
    for _, members in curve_points(cfg):
        _load(w, tp)
        _score(w, tp, len(f.validation_bytes), validation, members)
        _score(
            w,
            tp,
            f.canaries * (1 + alternatives),
            f.canaries * (1 + alternatives) * CANDIDATE_TOKENS,
            members,
        )
        _sample(w, tp, sequences, match, k, members)
        if prompts:
            _sample(
                w, tp, prompts * m.n_samples, new, RQ2_PROMPT_BYTES / tp.bytes_per_token, members
            )
    return w


def privacy_work(cfg: Config, f: Facts, tp: Throughput) -> Work:
    from collab_lib.curves import curve_models

    w = Work("privacy")
    n = cfg.privacy.audit_canaries
    if not n:
        return w
    orgs = len(f.train_bytes)
    _load(w, tp)
    _score(w, tp, n * orgs, n * orgs * 26)
    for spec in curve_models(cfg):
        members = 1 if spec.trains else len(spec.orgs)
        _load(w, tp, members)
        _score(w, tp, n * len(spec.orgs), n * len(spec.orgs) * 26, members)
    return w


def membership_work(cfg: Config, f: Facts, tp: Throughput) -> Work:
    """Every model (and ``membership.checkpoints``) scores each split's samples: runs of
    whole lines of at most ``sample_chars`` characters."""
    from collab_lib import collaboration

    forwards = _forwards(cfg)
    w = Work("membership")
    ms = cfg.membership
    chars = ms.sample_chars or max(40, int(1.5 * cfg.model.context))
    per_sample = min(chars / tp.bytes_per_token, cfg.model.context)
    samples = sum(
        min(ms.samples, b / chars)
        for split in (f.train_bytes, f.validation_bytes)
        for b in split.values()
    )
    every = collaboration.chosen_models(cfg, None, "membership")
    for name in [*every, *(c.name for c in ms.checkpoints)]:
        _load(w, tp)
        _score(w, tp, samples, samples * per_sample * 1.2, forwards.get(name, 1))  # padding
    return w


def _datasets_work(cfg: Config, f: Facts, tp: Throughput) -> Work:
    w = Work("datasets")
    sources = {s for o in cfg.datasets.organizations for s in o.sources}
    mb = sum(f.train_bytes.values()) + sum(f.validation_bytes.values())
    w.seconds = SOURCE_S * len(sources) + DATASETS_S_PER_MB * mb / 1e6
    return w


def _per_mb(step: str, seconds_per_mb: float):
    def work(cfg: Config, f: Facts, tp: Throughput) -> Work:
        mb = (sum(f.train_bytes.values()) + sum(f.validation_bytes.values())) / 1e6
        return Work(step, seconds=seconds_per_mb * mb)

    return work


def _findings_work(cfg: Config, f: Facts, tp: Throughput) -> Work:
    return Work("findings", seconds=FINDINGS_S * len(cfg.run_seeds))


WORK = {
    "datasets": _datasets_work,
    "clones": _per_mb("clones", CLONES_S_PER_MB),
    "canaries": lambda cfg, f, tp: Work("canaries"),
    "psi": _per_mb("psi", PSI_S_PER_MB),
    "train": train_work,
    "rq1": rq1_work,
    "rq2": rq2_work,
    "rq3": rq3_work,
    "curves": curves_work,
    "privacy": privacy_work,
    "membership": membership_work,
    "findings": _findings_work,
}


def estimate(cfg: Config, tp: Throughput, f: Facts) -> list[Work]:
    """Each step's work and seconds for ``cfg``'s seeds (the findings once)."""
    out = []
    for step, count in WORK.items():
        w = count(cfg, f, tp)
        if step != "findings":
            for name, value in asdict(w).items():
                if name != "step":
                    setattr(w, name, value * len(cfg.run_seeds))
        out.append(w)
    return out


def table(works: list[Work]) -> pd.DataFrame:
    """One row per step and a total: the work in counts, the time in minutes."""
    import pandas as pd

    rows = [asdict(w) for w in works]
    total = Work("total")
    for w in works:
        total.add(w)
    rows.append(asdict(total))
    frame = pd.DataFrame(rows)
    frame["minutes"] = frame.pop("seconds") / 60
    return frame


# --- what a run still has to do ----------------------------------------------------------------


def pending(
    cfg: Config, tp: Throughput, f: Facts, steps: list[str] | None = None, todo=None
) -> list[Work]:
    """The work of ``steps`` (every step by default) still to do: nothing for a step whose
    artifacts are all cached (``todo``: the steps that are not, from :func:`unfinished`),
    the missing jobs only for training (other steps count whole, an upper bound when one is
    half done)."""
    todo = unfinished(cfg) if todo is None else todo
    out = []
    for w in estimate(cfg, tp, f):
        if steps is not None and w.step not in steps:
            continue
        if w.step not in todo:
            w = Work(w.step)
        elif w.step == "train":
            w = _pending_training(cfg, tp, f)
        out.append(w)
    return out


def unfinished(cfg: Config) -> set[str]:
    """The steps with an artifact not cached (``status``'s "would run")."""
    from collab_lib import pipeline

    return {r["step"] for r in pipeline.status(cfg) if r["state"] != "cached"}


def _pending_training(cfg: Config, tp: Throughput, f: Facts) -> Work:
    """The training jobs (and base model, sweep) of every seed whose artifacts are missing."""
    from collab_lib import collaboration, pipeline, tuning

    total = Work("train")
    for seed in cfg.run_seeds:
        seed_cfg = cfg.with_seed(seed)
        refs = collaboration.chain_refs(pipeline.planned_for("train", seed_cfg))
        chains = collaboration.jobs(seed_cfg, *refs)
        every = [refs[0], *(j.ref for chain in chains.values() for j in chain)]
        if seed_cfg.federated.tuned:
            every.append(tuning.ref(seed_cfg, refs[0], refs[1]))
        missing = {r for r in every if artifacts.state(*r.split("/")) != "cached"}
        total.add(train_work(seed_cfg, f, tp, refs, missing))
    return total


def data_plans(cfg: Config) -> dict:
    """The datasets' and clones' plans (what :func:`facts` reads once they are built)."""
    from collab_lib import pipeline

    plans = pipeline.plans(cfg)
    out: dict = {}
    for step in ("datasets", "clones"):
        if not isinstance(plans[step], UserError):
            out |= plans[step]
    return out


def confirm(cfg: Config, steps: list[str], yes: bool, ask=None, *, force: bool = False) -> None:
    """Go on if what ``steps`` still have to do (all of it with ``force``) takes less than
    :data:`HOURS_TO_ASK` on this machine, or ``yes``, or the user says so at a terminal;
    otherwise a :class:`UserError` with the estimate and what to do. Nothing to do: nothing
    measured."""
    if yes:
        return
    from collab_lib import pipeline

    todo = unfinished(cfg)
    if not force and not todo & set(steps):
        return
    try:
        f = facts(cfg, data_plans(cfg))
    except UserError:  # no size_mb: the sizes are known once the datasets are built
        if "datasets" not in steps:
            return  # the step itself stops, and says to build the datasets first
        pipeline.run("datasets", cfg)  # minutes, and the run's first step anyway
        todo, f = unfinished(cfg), facts(cfg, data_plans(cfg))
    tp = calibrate(cfg)
    if force:
        works = [w for w in estimate(cfg, tp, f) if w.step in steps]
    else:
        works = pending(cfg, tp, f, steps, todo)
    seconds = sum(w.seconds for w in works)
    if seconds < HOURS_TO_ASK * 3600:
        return
    figure = (
        f"by its estimate, this takes about {seconds / 3600:.1f} hours on this machine "
        f"({tp.machine}); `{cfg.command('plan')}` shows where the time goes"
    )
    if ask is not None and ask(f"{figure}. Start it? [y/N] ").strip().lower() in ("y", "yes"):
        return
    raise UserError(f"{figure}. To start it anyway, run the same command with --yes")


def duration(seconds: float) -> str:
    """``3 h 20 min``, ``12 min``, ``40 s``."""
    if seconds >= 3600:
        return f"{int(seconds // 3600)} h {round(seconds % 3600 / 60):d} min"
    if seconds >= 60:
        return f"{round(seconds / 60):d} min"
    return f"{round(seconds):d} s"


def render(frame: pd.DataFrame) -> str:
    """The table as the command line shows it: counts rounded to 3 significant digits."""
    cols = {
        "step": "step",
        "train_tokens": "tokens trained",
        "completions": "completions",
        "programs": "programs",
        "sequences": "sequences scored",
        "scored_tokens": "tokens scored",
        "minutes": "minutes",
    }
    view = frame[list(cols)].rename(columns=cols)
    for col in list(cols.values())[1:-1]:
        view[col] = view[col].map(_count)
    view["minutes"] = view["minutes"].map(lambda m: f"{m:.1f}")
    return view.to_string(index=False)


def _count(x: float) -> str:
    if x < 1:
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= size:
            return f"{x / size:.3g}{unit}"
    return f"{x:.0f}"
