"""Perplexity: strided windows that score every token once, token-weighted."""

import math

import pandas as pd
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from collab_lib import evaluation
from collab_lib.config import load_config
from collab_lib.model import build_tokenizer, init_model, load_tokenizer
from collab_lib.scoring import perplexity, token_losses_sum, token_stream, windows

TEXTS = [f"def f_{i}(x):\n    return x * {i} + {i % 7}\n" for i in range(40)]


@pytest.fixture(scope="module")
def tiny():
    cfg = load_config(
        "tiny",
        [
            "model.n_layer=1",
            "model.n_embd=32",
            "model.n_head=2",
            "model.context=32",
            "model.tokenizer_corpus_mb=0.3",
        ],
    )
    return cfg, load_tokenizer(build_tokenizer(cfg).path)


@given(st.integers(2, 300), st.integers(2, 64), st.data())
def test_windows_score_every_token_once_with_enough_left_context(n, context, data):
    stride = data.draw(st.integers(1, context - 1))
    scored = []
    for begin, end, first in windows(n, context, stride):
        assert end - begin <= context and begin <= first - 1 < end
        if begin > 0:  # only the first windows start at the stream's beginning
            assert first - begin >= context - stride
        scored += range(first, end)
    assert scored == list(range(1, n))


def test_a_model_that_predicts_nothing_has_the_vocabulary_size_as_perplexity(tiny):
    cfg, tok = tiny
    model = init_model(cfg.model, len(tok), seed=0)
    with torch.no_grad():
        model.transformer.wte.weight.zero_()  # tied output layer: every logit is 0
    for stride in (1, 7, 31):
        got = perplexity(model, tok, TEXTS, cfg.model.context, stride)
        assert got == pytest.approx(len(tok), rel=1e-4)


def test_strided_losses_equal_token_by_token_scoring(tiny):
    """Stride 1 is the slow, exact definition: each token given up to context-1 before it."""
    cfg, tok = tiny
    model = init_model(cfg.model, len(tok), seed=0).eval()
    ids = token_stream(TEXTS[:3], tok)
    context = 16
    expected = 0.0
    with torch.no_grad():
        for t in range(1, len(ids)):
            x = torch.tensor([ids[max(0, t - context + 1) : t]])
            logp = model(input_ids=x).logits[0, -1].log_softmax(-1)
            expected -= logp[ids[t]].item()
    total, n = token_losses_sum(model, ids, context, stride=1, batch_size=5)
    assert n == len(ids) - 1
    assert total == pytest.approx(expected, rel=1e-4)
    half, _ = token_losses_sum(model, ids, context, stride=8)
    assert half != pytest.approx(expected, rel=1e-6)  # less left context: another number


def test_too_little_text_is_a_clear_error(tiny):
    cfg, tok = tiny
    with pytest.raises(ValueError, match="two tokens"):
        perplexity(init_model(cfg.model, len(tok), seed=0), tok, [], cfg.model.context)
    assert math.isfinite(perplexity(init_model(cfg.model, len(tok), 0), tok, ["x = 1"], 32))


def test_pass_at_k_per_temperature_reads_in_percent_as_table8():
    by_temp = pd.DataFrame({"model": ["m"], "temperature": [0.2], "pass@1": [0.05]})
    view = evaluation.temperatures_view(by_temp)
    assert list(view.columns) == ["model", "temperature", "pass@1 (%)"]
    assert view["pass@1 (%)"].tolist() == [5.0] and by_temp["pass@1"].tolist() == [0.05]
