"""Perplexity: exp of the mean next-token loss over packed validation text."""

import math

import pytest
import torch

from collab_lib.config import load_config
from collab_lib.evaluation import perplexity
from collab_lib.model import build_tokenizer, init_model, load_tokenizer

TEXTS = [f"def f_{i}(x):\n    return x * {i} + {i % 7}\n" for i in range(40)]


@pytest.fixture(scope="module")
def tiny():
    cfg = load_config("tiny", ["model.n_layer=1", "model.n_embd=32", "model.n_head=2",
                               "model.context=32", "model.tokenizer_corpus_mb=0.3"])  # fmt: skip
    return cfg, load_tokenizer(build_tokenizer(cfg).path)


def test_a_model_that_predicts_nothing_has_the_vocabulary_size_as_perplexity(tiny):
    cfg, tok = tiny
    model = init_model(cfg.model, len(tok), seed=0)
    with torch.no_grad():
        model.transformer.wte.weight.zero_()  # tied output layer: every logit is 0
    assert perplexity(model, tok, TEXTS, cfg.model.context) == pytest.approx(len(tok), rel=1e-4)


def test_too_little_text_is_a_clear_error(tiny):
    cfg, tok = tiny
    with pytest.raises(ValueError, match="context"):
        perplexity(init_model(cfg.model, len(tok), seed=0), tok, ["x = 1"], cfg.model.context)
    assert math.isfinite(perplexity(init_model(cfg.model, len(tok), 0), tok, TEXTS, 32))
