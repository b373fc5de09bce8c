"""Tokenizer and GPT-2 base model (paper §2.3, §4.1; the Methods page, "Models").

The default base is organization-neutral: a byte-level BPE tokenizer trained on the CPython
standard library of the running interpreter, never on any organization's code, so neither
the tokenizer nor the base model can leak one participant's data to the others. Both are
saved with ``save_pretrained``, so anyone loads them with ``from_pretrained``. The paper's
own base, GPT-2 124M, is loaded from a local directory or, only when the profile allows it,
from the hub: no default path touches the network.
"""

from __future__ import annotations

import logging
import random
import sysconfig
from pathlib import Path

from collab_lib import artifacts
from collab_lib.config import Config, ModelConfig, UserError
from collab_lib.datasets import MB, check_input

log = logging.getLogger(__name__)

TOKENIZER_STEP = "tokenizer"
EOS = "<|endoftext|>"
_SKIP_DIRS = {"site-packages", "test", "tests", "idlelib", "__pycache__", "lib2to3"}


class ModelError(UserError):
    """A base model or tokenizer cannot be had; the message says how to provide it."""


def stdlib_files() -> list[Path]:
    """The interpreter's standard-library modules, without tests and installed packages."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py") if not _SKIP_DIRS & set(p.relative_to(root).parts))


def stdlib_texts(max_mb: float, seed: int) -> list[str]:
    """A seeded sample (up to ``max_mb``) of :func:`stdlib_files`."""
    files = stdlib_files()
    random.Random(seed).shuffle(files)
    texts, budget = [], max_mb * MB
    for path in files:
        text, reason = check_input(path.read_bytes(), int(MB))
        if text is None or len(text) > budget:
            continue
        texts.append(text)
        budget -= len(text)
    return texts


def build_tokenizer(cfg: Config, *, force: bool = False) -> artifacts.Artifact:
    """The profile's tokenizer, trained on the standard library (cached; ``save_pretrained``)."""
    m = cfg.model
    if m.base == "checkpoint":
        raise ModelError("base is checkpoint: its tokenizer comes with it (load_checkpoint)")
    config = {"vocab_size": m.vocab_size, "corpus_mb": m.tokenizer_corpus_mb, "seed": cfg.seed}
    return artifacts.build(
        TOKENIZER_STEP,
        config,
        lambda out: _train_tokenizer(m, cfg.seed, out),
        seed=cfg.seed,
        force=force,
    )


def _train_tokenizer(m: ModelConfig, seed: int, out: Path) -> dict:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    texts = stdlib_texts(m.tokenizer_corpus_mb, seed)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        texts, vocab_size=m.vocab_size, min_frequency=2, special_tokens=[EOS], show_progress=False
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token=EOS, eos_token=EOS, unk_token=EOS
    )
    tokenizer.model_max_length = m.context
    tokenizer.save_pretrained(out)
    n_bytes = sum(len(t.encode()) for t in texts)
    n_tokens = sum(len(bpe.encode(t).ids) for t in texts[:200])
    sample_bytes = sum(len(t.encode()) for t in texts[:200])
    return {
        "files": len(texts),
        "corpus_mb": round(n_bytes / MB, 3),
        "vocab_size": bpe.get_vocab_size(),
        "bytes_per_token": round(sample_bytes / max(n_tokens, 1), 3),
    }


def load_tokenizer(path: str | Path):
    """A saved tokenizer, as anyone would load it."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def gpt2_config(m: ModelConfig, vocab_size: int):
    """The GPT-2 architecture at the profile's size (dropout off: runs must be deterministic)."""
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=m.context,
        n_embd=m.n_embd,
        n_layer=m.n_layer,
        n_head=m.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )


def init_model(m: ModelConfig, vocab_size: int, seed: int):
    """A freshly initialised GPT-2; the same seed gives the same weights."""
    import torch
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(gpt2_config(m, vocab_size))


def load_checkpoint(m: ModelConfig, key: str = "model.checkpoint"):
    """``(model, tokenizer)`` of ``m.checkpoint``: a local directory, or a hub id if allowed.

    Any causal language model transformers knows (GPT-2 for training; Table 5 compares
    others); ``key`` is the profile key the error message tells the user to set.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = m.checkpoint or "gpt2"
    local = Path(name).expanduser()
    if local.is_dir():
        source, offline = str(local), True
    elif m.allow_download:
        source, offline = name, False
    else:
        raise ModelError(
            f"checkpoint {name!r} is not a local directory, and downloading is off. On a "
            f"machine with internet run `huggingface-cli download {name} --local-dir DIR` "
            f"(or `AutoModelForCausalLM.from_pretrained('{name}').save_pretrained(DIR)` and "
            f"the same for its tokenizer), copy DIR here and set {key}: DIR; or set "
            f"model.allow_download: true."
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(source, local_files_only=offline)
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=offline)
    except OSError as exc:
        raise ModelError(f"checkpoint {name!r} could not be loaded: {exc}") from None
    return model, tokenizer
