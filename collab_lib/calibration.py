"""A machine's throughput at a profile's model shape: what :mod:`collab_lib.cost` divides a
run's work by (README, "The cost of a run").

:func:`calibrate` measures a few seconds of the real components at the profile's shape on
this machine (tens for GPT-2 124M's shape on a CPU): steps of the training loop, the scorer's
windows, the decoder at the profile's batch, the sandbox on HumanEval programs, a model's and
a tokenizer's load, and the profile's tokenizer's bytes per token; cached per machine and
shape in ``<artifacts>/calibration/``. :data:`PRESETS` stand in for a machine one does not have
(an H100, from this project's measurements), as does a calibration file copied from another
machine, each :func:`scaled` to the profile's shape by the work per token; :func:`throughput`
picks among the three.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from collab_lib import artifacts
from collab_lib.config import Config, UserError

log = logging.getLogger(__name__)

VERSION = 1  # of the calibration: a new one measures again
CHECKPOINT_BYTES_PER_TOKEN = 3.0  # GPT-2's byte-level BPE on Python code


@dataclass(frozen=True)
class Throughput:
    """What a machine does per second at one model shape."""

    machine: str
    train: float  # tokens/s through training's loop (forward, backward, AdamW)
    score: float  # tokens/s through a forward pass (windows of the context, batch 16)
    decode: float  # new tokens/s through decoding.generate at the profile's batch
    load: float  # seconds to load one model from the cache
    programs: float  # sandboxed programs/s (a HumanEval program that fails its check)
    bytes_per_token: float  # of the profile's tokenizer on the standard library
    measured: str = ""  # when, or "preset"
    shape: dict = field(default_factory=dict)


# An H100 (GPT-2 124M's shape, vocabulary 8,192, context 512, bf16): training at batch 32 and
# generate's sampling at batch 256 as measured for this project; scoring as three times
# training (a forward pass is a third of a training step's work); 16 cores of sandbox.
PRESETS = {
    "h100": Throughput(
        machine="NVIDIA H100 (preset)",
        train=200_000,
        score=600_000,
        decode=17_000,
        load=1.0,
        programs=600,
        bytes_per_token=3.7,  # the gpu profile's tokenizer (vocabulary 8,192) on the stdlib
        measured="preset",
        shape={"n_layer": 12, "n_embd": 768, "n_head": 12, "context": 512, "vocab_size": 8192},
    )
}


# checkpoints a profile names by hub id: their shape, known without downloading them
KNOWN_CHECKPOINTS = {"gpt2": {"n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 50257}}
DIMS = ("n_layer", "n_embd", "n_head", "vocab_size")


def model_shape(cfg: Config) -> dict:
    """The model's layers, width, heads and vocabulary, and the context: the profile's, or
    its checkpoint's (a local directory's config.json, or :data:`KNOWN_CHECKPOINTS`)."""
    m = cfg.model
    dims = {k: getattr(m, k) for k in DIMS}
    if m.base == "checkpoint" and m.checkpoint:
        local = Path(m.checkpoint).expanduser() / "config.json"
        if local.is_file():
            saved = json.loads(local.read_text())
            dims = {k: saved.get(k, dims[k]) for k in DIMS}
        else:
            dims = KNOWN_CHECKPOINTS.get(m.checkpoint, dims)
    return {**dims, "context": m.context}


def shape(cfg: Config) -> dict:
    """What a calibration depends on: the model's shape, the batches, the device."""
    m = cfg.model
    return {
        **model_shape(cfg),
        "base": m.base,
        "tokenizer_corpus_mb": m.tokenizer_corpus_mb,
        "train_batch": cfg.train.batch_size,
        "decode_batch": max(cfg.evaluation.batch_size, cfg.memorization.batch_size),
    }


def machine() -> dict:
    """This machine, as far as its throughput goes: CPU, cores, torch's threads, the GPU."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    out = {"cpu": cpu, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def calibration_path(cfg: Config, where: dict) -> Path:
    digest = json.dumps({"v": VERSION, "machine": where, "shape": shape(cfg)}, sort_keys=True)
    key = hashlib.sha256(digest.encode()).hexdigest()[:16]
    return artifacts.artifacts_root() / "calibration" / f"{key}.json"


def calibrate(cfg: Config, *, again: bool = False) -> Throughput:
    """This machine's throughput at the profile's shape: the cached measurement, or a new one
    of a few seconds (tens for a GPT-2 124M shape on a CPU)."""
    where = machine()
    path = calibration_path(cfg, where)
    if path.exists() and not again:
        return Throughput(**json.loads(path.read_text()))
    tp = _measure(cfg, where)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(asdict(tp), indent=1))
        tmp.replace(path)
    except OSError as exc:  # a read-only cache: measured again next time
        log.warning("calibration not cached (%s)", exc)
    return tp


def throughput(cfg: Config, machine_name: str | None) -> Throughput:
    """``machine_name``: None for this machine (calibrated), a preset's name, or a file that
    :func:`calibrate` wrote on another machine (scaled to the profile's shape)."""
    if machine_name is None or machine_name == "here":
        return calibrate(cfg)
    if machine_name in PRESETS:
        return scaled(PRESETS[machine_name], cfg)
    path = Path(machine_name)
    if not path.is_file():
        raise UserError(
            f"--machine {machine_name!r}: not a preset ({', '.join(PRESETS)}) nor a "
            "calibration file (one of <artifacts>/calibration/*.json from that machine)"
        )
    return scaled(Throughput(**json.loads(path.read_text())), cfg)


def _work_per_token(s: dict) -> float:
    """A GPT-2's multiply-adds per token: its weights, and attention over the context."""
    d, layers = s["n_embd"], s["n_layer"]
    return 12 * layers * d * d + s["vocab_size"] * d + layers * s["context"] * d


def scaled(tp: Throughput, cfg: Config) -> Throughput:
    """``tp`` at another model shape: every rate scaled by the work per token."""
    target = model_shape(cfg)
    if not tp.shape or all(tp.shape.get(k) == v for k, v in target.items()):
        return tp
    ratio = _work_per_token(tp.shape) / _work_per_token(target)
    return Throughput(
        machine=f"{tp.machine}, scaled to this profile's model",
        train=tp.train * ratio,
        score=tp.score * ratio,
        decode=tp.decode * ratio,
        load=tp.load / ratio,
        programs=tp.programs,
        bytes_per_token=CHECKPOINT_BYTES_PER_TOKEN
        if cfg.model.base == "checkpoint"
        else tp.bytes_per_token,
        measured=tp.measured,
        shape=target,
    )


def _measure(cfg: Config, where: dict) -> Throughput:
    """A few steps of each real component on random ids at the profile's shape, each timed
    after a warm-up."""
    import tempfile

    import torch
    from transformers import GPT2LMHeadModel

    from collab_lib.model import gpt2_config, load_tokenizer

    m = cfg.model
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    torch.manual_seed(0)
    dims = model_shape(cfg)
    shaped = dataclasses.replace(m, **{k: dims[k] for k in DIMS if k != "vocab_size"})
    config = gpt2_config(shaped, dims["vocab_size"])
    model = GPT2LMHeadModel(config).to(device)
    big = sum(p.numel() for p in model.parameters()) > 20e6 and not cuda
    with tempfile.TemporaryDirectory() as tmp:  # a model and its tokenizer, as a step loads
        model.save_pretrained(tmp)
        tokenizer = _tokenizer_dir(cfg)
        start = time.perf_counter()
        GPT2LMHeadModel.from_pretrained(tmp).to(device)
        if tokenizer is not None:
            load_tokenizer(tokenizer)
        load = time.perf_counter() - start
    tp = Throughput(
        machine=", ".join(f"{k} {v}" for k, v in where.items()),
        train=_train_rate(cfg, model, big),
        score=_score_rate(cfg, model),
        decode=_decode_rate(cfg, model, big),
        load=load,
        programs=_program_rate(cfg),
        bytes_per_token=_bytes_per_token(cfg),
        measured=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        shape=shape(cfg),
    )
    return tp


def _timed(run, at_least: float = 1.0, at_most: int = 20) -> float:
    """Seconds per call of ``run`` after one warm-up call, over at least ``at_least`` s."""
    run()
    calls, start = 0, time.perf_counter()
    while calls < at_most and (calls == 0 or time.perf_counter() - start < at_least):
        run()
        calls += 1
    return (time.perf_counter() - start) / calls


def _train_rate(cfg: Config, model, big: bool) -> float:
    """Tokens/s of :func:`collab_lib.training.train` over a few batches."""
    import torch

    from collab_lib.training import train

    m = cfg.model
    rows = min(cfg.train.batch_size, 2) if big else cfg.train.batch_size
    run = dataclasses.replace(cfg.train, epochs=1, batch_size=rows, grad_accum=1)
    data = torch.randint(0, model.config.vocab_size, (rows * 8, m.context))  # 8 steps a call
    per_call = _timed(lambda: train(model, data, run, seed=0), at_least=1.0, at_most=3)
    return data.numel() / per_call


def _score_rate(cfg: Config, model) -> float:
    """Tokens/s of the scorer's windows (batch 16)."""
    import torch

    from collab_lib.scoring import token_losses

    ctx = cfg.model.context
    ids = torch.randint(0, model.config.vocab_size, (ctx * 8,)).tolist()
    per_call = _timed(lambda: token_losses(model, ids, ctx, ctx - 1), at_least=1.0, at_most=10)
    return 8 * ctx / per_call


def _decode_rate(cfg: Config, model, big: bool) -> float:
    """New tokens/s of :func:`collab_lib.decoding.generate` at the profile's batch (short
    prompts: the prompts' cost is counted as scoring)."""
    import torch

    from collab_lib.decoding import generate
    from collab_lib.sampling import SamplingConfig

    rows = shape(cfg)["decode_batch"]
    rows = min(rows, 32) if big else rows
    steps = min(16, cfg.model.context // 2)
    prompts = torch.randint(0, model.config.vocab_size, (rows, 8)).tolist()
    sc = SamplingConfig(1.0, 0.95, 50, steps)
    per_call = _timed(
        lambda: generate(model, prompts, sc, eos_id=-1, seed=0), at_least=1.0, at_most=5
    )
    return rows * steps / per_call


def _program_rate(cfg: Config) -> float:
    """Programs/s of the profile's sandbox: HumanEval programs that fail their check."""
    from collab_lib import benchmarks, evaluation

    e = cfg.evaluation
    bench = benchmarks.load_benchmark(e.benchmark, e.humaneval_plus_path)
    problems = list(bench.problems)[:40]
    samples = [{"task_id": p, "completion": "    return None\n"} for p in problems]
    with evaluation.make_sandbox(cfg) as box:
        benchmarks.score(bench, samples, box)  # the warm-up derives each problem's inputs
        start = time.perf_counter()
        benchmarks.score(bench, samples, box)
        return len(samples) / (time.perf_counter() - start)


def _tokenizer_dir(cfg: Config) -> Path | None:
    """The profile's tokenizer, built and kept (the run needs it); None for a checkpoint's."""
    if cfg.model.base == "checkpoint":
        return None
    from collab_lib.model import build_tokenizer

    return build_tokenizer(cfg).path


def _bytes_per_token(cfg: Config) -> float:
    """Of the profile's tokenizer (built and kept: the run needs it), on the standard library."""
    if cfg.model.base == "checkpoint":
        return CHECKPOINT_BYTES_PER_TOKEN
    from collab_lib.model import build_tokenizer

    return float(build_tokenizer(cfg).metrics["bytes_per_token"])


def rates(tp: Throughput) -> str:
    """The throughput in one line, as ``plan`` prints it."""
    return (
        f"training {tp.train:,.0f} tokens/s, scoring {tp.score:,.0f} tokens/s, sampling "
        f"{tp.decode:,.0f} new tokens/s, {tp.programs:,.0f} programs/s, "
        f"{tp.load:.2f} s per model load"
    )
