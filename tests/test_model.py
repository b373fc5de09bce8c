"""Tokenizer and base model: offline by default, saved and loaded the standard way."""

import pytest
import torch
from transformers import GPT2LMHeadModel

from collab_lib.collaboration import build_base_model
from collab_lib.config import load_config
from collab_lib.model import (
    ModelError,
    build_tokenizer,
    init_model,
    load_checkpoint,
    load_tokenizer,
    stdlib_files,
    stdlib_texts,
)

SMALL = ["model.tokenizer_corpus_mb=0.3", "model.vocab_size=512"]


def test_tokenizer_is_trained_on_the_stdlib_and_loads_with_from_pretrained():
    art = build_tokenizer(load_config("tiny", SMALL))
    tok = load_tokenizer(art.path)
    code = "def merge(left, right):\n    return sorted(left + right)\n"
    ids = tok(code)["input_ids"]
    assert tok.decode(ids) == code  # byte-level BPE: lossless
    assert len(tok) == 512 and art.metrics["bytes_per_token"] > 1.5


def test_same_seed_same_tokenizer():
    a = build_tokenizer(load_config("tiny", SMALL))
    b = build_tokenizer(load_config("tiny", SMALL), force=True)
    assert a.manifest["files"] == b.manifest["files"]


def test_stdlib_corpus_never_holds_site_packages_or_tests():
    files = stdlib_files()
    assert any(p.name == "json" or p.parent.name == "json" for p in files)
    assert not [p for p in files if {"site-packages", "test", "tests"} & set(p.parts)]


def test_stdlib_sample_is_seeded_and_within_budget():
    texts = stdlib_texts(0.2, seed=0)
    assert texts and sum(len(t) for t in texts) <= 0.2e6
    assert stdlib_texts(0.2, seed=0) == texts != stdlib_texts(0.2, seed=1)


def test_same_seed_same_initial_weights():
    cfg = load_config("tiny", ["model.n_layer=1", "model.n_embd=32", "model.n_head=2"])
    a, b = init_model(cfg.model, 128, seed=3), init_model(cfg.model, 128, seed=3)
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert (pa == pb).all(), name


def test_a_local_checkpoint_loads_offline(tmp_path):
    """The paper's path (real GPT-2), exercised on a small GPT-2 saved here."""
    cfg = load_config("tiny", [*SMALL, "model.n_layer=1", "model.n_embd=32", "model.n_head=2"])
    tok = load_tokenizer(build_tokenizer(cfg).path)
    init_model(cfg.model, len(tok), seed=0).save_pretrained(tmp_path / "ckpt")
    tok.save_pretrained(tmp_path / "ckpt")
    ckpt = load_config("tiny", ["model.base=checkpoint", f"model.checkpoint={tmp_path / 'ckpt'}"])
    model, tokenizer = load_checkpoint(ckpt.model)
    assert model.config.n_layer == 1 and len(tokenizer) == len(tok)
    # as the base model of the study, the checkpoint is used as it is (no pretraining)
    base = build_base_model(ckpt)
    again = GPT2LMHeadModel.from_pretrained(base.path / "model")
    for (name, a), (_, b) in zip(
        again.state_dict().items(), model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_a_missing_checkpoint_says_how_to_provide_it_without_touching_the_network():
    cfg = load_config("tiny", ["model.base=checkpoint", "model.checkpoint=gpt2"])
    with pytest.raises(ModelError, match="huggingface-cli download gpt2 --local-dir DIR"):
        load_checkpoint(cfg.model)
