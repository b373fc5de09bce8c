"""Table 5's membership signals: the samples, the scores, the AUC and the step's tables."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import mannwhitneyu
from transformers import GPT2Config, GPT2LMHeadModel

from collab_lib import membership, pipeline, scoring
from collab_lib.config import ConfigError, UserError, load_config


def test_chunks_are_whole_lines_within_the_limit_and_drop_short_tails():
    text = "".join(f"line {i:03d} = {i:04d}\n" for i in range(30))  # 16 characters a line
    out = membership.chunks(text, 100)
    assert [n for n, _ in out] == [1, 7, 13, 19, 25]  # 6 lines (96 characters) each
    assert all(len(t) <= 100 and t.endswith("\n") for _, t in out)
    assert "".join(t for _, t in out) == text
    tail = membership.chunks(text[: 25 * 16], 100)  # the 25th line alone: 16 < 100 / 4
    assert [n for n, _ in tail] == [1, 7, 13, 19]
    assert membership.chunks("a" * 500 + "\n", 100) == [(1, "a" * 100)]  # a long line is cut
    assert membership.chunks("  \n\n", 100) == []


def test_weighted_auc_is_the_mann_whitney_auc_and_counts_ties_half():
    rng = np.random.default_rng(0)
    member = rng.integers(0, 5, 40).astype(float)  # many ties
    other = rng.integers(0, 4, 30).astype(float)
    got = membership.weighted_auc(member, other, np.ones((1, 40)), np.ones((1, 30)))[0]
    u = mannwhitneyu(member, other).statistic
    assert got == pytest.approx(u / (40 * 30))
    ones = np.ones((1, 3))
    assert membership.weighted_auc(np.array([3.0, 4, 5]), np.array([0.0, 1, 2]), ones, ones)[0] == 1
    assert membership.weighted_auc(np.array([0.0, 1, 2]), np.array([3.0, 4, 5]), ones, ones)[0] == 0
    # a weight of 2 counts a sample twice: the same as repeating it
    twice = membership.weighted_auc(member, other, np.array([[2.0] + [1] * 39]), np.ones((1, 30)))
    again = mannwhitneyu(np.append(member, member[0]), other).statistic / (41 * 30)
    assert twice[0] == pytest.approx(again)


def test_file_weights_resample_files_and_keep_the_estimate_first():
    files = ["a", "a", "a", "b", "c"]
    w = membership.file_weights(files, 300, np.random.default_rng(0))
    assert w.shape == (301, 5) and (w[0] == 1).all()
    assert (w[1:, 0] == w[1:, 1]).all() and (w[1:, 1] == w[1:, 2]).all()  # one file, one draw
    assert (w[1:, [0, 3, 4]].sum(axis=1) == 3).all()  # three files drawn per resample


def test_min_k_plus_plus_standardizes_and_averages_the_lowest_share():
    logp = np.log(np.array([0.5, 0.1, 0.4, 0.01]))
    mu, sigma = np.full(4, -1.0), np.full(4, 2.0)
    z = (logp + 1.0) / 2.0
    assert membership.min_k_plus_plus(logp, mu, sigma, 0.5) == pytest.approx(np.sort(z)[:2].mean())
    assert membership.min_k_plus_plus(logp, mu, sigma, 0.01) == pytest.approx(z.min())  # >= 1


def test_token_stats_are_the_mean_and_spread_of_log_p_under_the_model():
    probs = torch.tensor([[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3]])
    logp, mu, sigma = scoring.token_stats(probs.log(), torch.tensor([1, 0]))
    lp = probs.log()
    want_mu = (probs * lp).sum(-1)
    assert torch.allclose(logp, lp[[0, 1], [1, 0]])
    assert torch.allclose(mu, want_mu)
    assert torch.allclose(sigma, ((probs * (lp - want_mu[:, None]) ** 2).sum(-1)).sqrt())
    assert sigma[1] == pytest.approx(0, abs=1e-3)  # uniform: every token alike


def test_masked_tokens_leave_the_statistics_finite():
    logits = torch.tensor([[0.0, 1.0, -math.inf]])  # a vocabulary entry masked out
    logp, mu, sigma = scoring.token_stats(logits, torch.tensor([1]))
    p = torch.softmax(logits[:, :2], -1)
    assert torch.isfinite(mu).all() and torch.isfinite(sigma).all()
    assert mu[0] == pytest.approx(float((p * p.log()).sum()), rel=1e-5)


def test_no_organization_with_both_splits_reads_as_a_sentence_not_a_crash():
    from collab_lib import report

    empty = membership.auc_table(load_config("tiny"), _scores_without_validation())
    assert empty.empty and list(empty.columns) == membership.AUC_COLUMNS
    assert membership.summary(empty).empty
    assert "no AUC" in membership.summary_note(membership.summary(empty))
    assert membership.auc_view(empty).empty
    report.membership_figure(empty)


def _scores_without_validation():
    import pandas as pd

    return pd.DataFrame(
        {
            "model": ["base model"] * 3,
            "organization": ["Facebook"] * 3,
            "split": ["train"] * 3,
            "file": ["a", "a", "b"],
            "ppl_zlib": [0.1, 0.2, 0.3],
            "minkpp": [0.0, 1.0, 2.0],
            "ref_diff": [math.nan] * 3,
        }
    )


def _model(vocab: int, seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab, n_positions=128, n_embd=32, n_layer=1, n_head=2)
    return GPT2LMHeadModel(cfg).eval()


def test_short_and_long_samples_score_as_perplexity_does(tok):
    """Padded batches and sliding windows give every token the loss perplexity gives it."""
    model = _model(len(tok))
    texts = ["def f(x):\n    return x\n", "class A:\n    pass\n" * 6, "import os\n"]
    got = membership.score_samples(model, tok, texts, context=32, stride=16, k=0.2)
    assert len(tok(texts[1])["input_ids"]) + 1 > 32  # one sample needs windows
    for text, row in zip(texts, got.itertuples(), strict=True):
        ids = [tok.eos_token_id, *tok(text)["input_ids"]]
        losses = scoring.token_losses(model, ids, 32, 16)[1:]
        assert row.tokens == len(ids) - 1
        assert row.loss == pytest.approx(losses.mean(), rel=1e-5)
        assert math.isfinite(row.minkpp)


def test_the_signals_separate_what_a_model_memorized(tok):
    """A model trained hard on some texts: every signal ranks those above unseen ones."""
    texts = [
        f"def handler_{i}(event, ctx_{i}):\n    return event['k{i * 7}'] + {i}\n" for i in range(16)
    ]
    members, others = texts[::2], texts[1::2]
    base, model = _model(len(tok)), _model(len(tok))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = [[tok.eos_token_id, *tok(t)["input_ids"]] for t in members]
    width = max(map(len, batch))
    x = torch.tensor([b + [tok.eos_token_id] * (width - len(b)) for b in batch])
    model.train()
    for _ in range(150):
        opt.zero_grad()
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
    model.eval()
    got = membership.score_samples(model, tok, members + others, 32, 16, 0.2)
    ref = membership.score_samples(base, tok, members + others, 32, 16, 0.2)
    zlib = np.array([membership.zlib_bytes(t) for t in members + others])
    ones = np.ones((1, 8))
    for score in (-got["loss"] / zlib, got["minkpp"], -(got["loss"] - ref["loss"])):
        s = score.to_numpy()
        assert membership.weighted_auc(s[:8], s[8:], ones, ones)[0] > 0.9


def _checkpoint(tmp_path, tok, name="ckpt"):
    path = tmp_path / name
    _model(len(tok), seed=3).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_the_step_scores_every_model_and_a_listed_checkpoint(course_cfg, tok, tmp_path):
    ckpt = _checkpoint(tmp_path, tok)
    point = {"name": "GPT-2", "path": str(ckpt), "data": "a test checkpoint"}
    cfg = load_config(course_cfg.source, {"seed": 5, "membership.checkpoints": [point]})
    art = pipeline.run("membership", cfg)[0]
    t5 = art.table("table5")
    assert list(t5["model"]) == [membership.BASE, "GPT-2"]
    assert (t5["paper log(PPL)/zlib"] == 0.0020256).all()  # the paper's GPT-2 beside both
    assert (t5["log(PPL)/zlib"] > 0).all() and (t5["samples"] > 0).all()
    auc = art.table("membership_auc")
    orgs = [o.name for o in cfg.datasets.organizations]
    trained = auc[auc["trained on"]]
    assert set(trained["signal"]) == set(membership.SIGNALS)
    assert set(auc["organization"]) == set(orgs)
    # loss - base: only for models that share the base model's tokenizer, never the base itself
    ref = auc[auc["signal"] == "loss - base"]
    assert not ref["model"].isin([membership.BASE, "GPT-2"]).any()
    assert auc["auc"].between(0, 1).all() and (auc["low"] <= auc["high"]).all()
    assert not auc[auc["model"].isin([membership.BASE, "GPT-2"])]["trained on"].any()
    summary = membership.summary(auc)
    assert list(summary["signal"]) == list(membership.SIGNALS)
    assert "of" in membership.summary_note(summary)
    view = membership.auc_view(auc)
    assert not view.isna().any().any() and set(view["trained on"]) == {"yes", "no"}
    # the table reader and the CLI's name for it
    assert pipeline.table("table5", course_cfg).shape[0] == 1


def test_a_changed_checkpoint_is_scored_again_and_a_missing_one_says_what_to_do(tok, tmp_path):
    ckpt = _checkpoint(tmp_path, tok)
    before = membership.checkpoint_digest(str(ckpt))
    _model(len(tok), seed=4).save_pretrained(ckpt)  # other weights, same path
    assert membership.checkpoint_digest(str(ckpt)) != before
    with pytest.raises(UserError, match="save_pretrained"):
        membership.checkpoint_digest(str(tmp_path / "nowhere"))


def test_membership_settings_are_checked():
    with pytest.raises(ConfigError, match="k in"):
        load_config("tiny", {"membership.k": 0})
    point = {"name": "x", "path": "/tmp"}
    with pytest.raises(ConfigError, match="unique"):
        load_config("tiny", {"membership.checkpoints": [point, point]})
