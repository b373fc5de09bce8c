"""The batched sampler draws from transformers' next-token distribution and batches soundly."""

import pytest
import torch
from scipy.stats import chisquare
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from collab_lib.decoding import filter_logits, generate, next_tokens
from collab_lib.sampling import SamplingConfig, stop_at

SETTINGS = [
    pytest.param(SamplingConfig(0.6, top_p=0.6, top_k=50), id="rq2-T0.6-p0.6-k50"),
    pytest.param(SamplingConfig(0.8, top_p=0.95, top_k=50), id="rq1-T0.8-p0.95-k50"),
    pytest.param(SamplingConfig(1.3, top_p=1.0, top_k=5), id="top-k-only"),
    pytest.param(SamplingConfig(0.7, top_p=0.9, top_k=0), id="top-p-only"),
]


def transformers_probs(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    warpers = LogitsProcessorList([TemperatureLogitsWarper(cfg.temperature)])
    if cfg.top_k:
        warpers.append(TopKLogitsWarper(cfg.top_k))
    if cfg.top_p < 1:
        warpers.append(TopPLogitsWarper(cfg.top_p))
    return warpers(None, logits.clone()).softmax(-1)[0]


@pytest.mark.parametrize("cfg", SETTINGS)
def test_draws_follow_transformers_distribution(cfg):
    """Chi-square goodness of fit of 40,000 draws to transformers' filtered distribution:
    reject at p < 0.001; no token outside its support ever drawn."""
    torch.manual_seed(0)
    logits = torch.randn(1, 64) * 0.5
    expected = transformers_probs(logits, cfg)
    assert torch.allclose(filter_logits(logits, cfg).softmax(-1)[0], expected, atol=1e-6)
    n = 40_000
    draws = next_tokens(logits.expand(n, -1), cfg, torch.Generator().manual_seed(1))
    counts = torch.bincount(draws, minlength=64).double()
    assert counts[expected == 0].sum() == 0
    assert chi_square_p(counts, expected.double() * n) > 1e-3


def chi_square_p(observed: torch.Tensor, expected: torch.Tensor) -> float:
    """p-value of the fit, bins expecting fewer than 5 draws pooled (the test's validity)."""
    big = expected >= 5
    obs = torch.cat([observed[big], observed[~big & (expected > 0)].sum().view(1)])
    exp = torch.cat([expected[big], expected[~big & (expected > 0)].sum().view(1)])
    if exp[-1] < 5:  # nothing (or too little) to pool
        obs, exp = obs[:-1], exp[:-1]
    exp = exp * obs.sum() / exp.sum()
    assert len(exp) >= 3, "too few tokens kept for a test: use flatter logits"
    return float(chisquare(obs.numpy(), exp.numpy()).pvalue)


def test_a_wrong_distribution_is_rejected():
    """The same test can fail: draws at temperature 1.0 do not fit temperature 0.8's."""
    torch.manual_seed(0)
    logits = torch.randn(1, 64) * 0.5
    expected = transformers_probs(logits, SamplingConfig(0.8))
    n = 40_000
    draws = next_tokens(logits.expand(n, -1), SamplingConfig(1.0), torch.Generator().manual_seed(1))
    counts = torch.bincount(draws, minlength=64).double()
    assert chi_square_p(counts, expected.double() * n) < 1e-3


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=50, n_positions=64, n_embd=32, n_layer=2, n_head=2)
    return GPT2LMHeadModel(cfg).eval()


def test_left_padded_batch_equals_each_prompt_alone(model):
    """Greedy: a prompt padded into a batch of longer ones (or repeated in it) gives the
    tokens it gives alone."""
    prompts = [[5, 6, 7, 8, 9, 10, 11], [3, 4], [12, 13, 14, 15], [3, 4]]
    greedy = SamplingConfig(temperature=0, max_new_tokens=10)
    batched = generate(model, prompts, greedy, eos_id=49)
    for p, got in zip(prompts, batched, strict=True):
        assert generate(model, [p], greedy, eos_id=49) == [got]
    alone = model.generate(
        torch.tensor([prompts[1]]),
        max_new_tokens=10,
        do_sample=False,
        pad_token_id=49,
        eos_token_id=49,
    )
    assert batched[1] == alone[0, 2:].tolist()[: len(batched[1])]


def test_per_sequence_stop_and_seeded_draws(model):
    prompts = [[1, 2, 3]] * 6
    cfg = SamplingConfig(temperature=1.0, max_new_tokens=12)
    stops = generate(model, prompts, cfg, eos_id=49, stop_check=lambda i, ids: len(ids) >= i + 1)
    assert [len(s) <= i + 1 for i, s in enumerate(stops)] == [True] * 6
    a = generate(model, prompts, cfg, eos_id=49, seed=3)
    assert a == generate(model, prompts, cfg, eos_id=49, seed=3)
    assert a != generate(model, prompts, cfg, eos_id=49, seed=4)


def test_stop_at_cuts_at_the_first_stop_string():
    text = "    return x\n\ndef other():\n    pass\n"
    assert stop_at(text, ("\ndef", "\nclass")) == "    return x\n"
    assert stop_at("    return 1", ("\ndef",)) == "    return 1"


def test_the_written_out_gpt2_step_gives_the_models_logits(model):
    """Left-padded prompts, then five tokens: GPT2Decoder's logits equal the model's own
    forward over the whole padded sequence (and the generic cache decoder's)."""
    from collab_lib.decoding import CacheDecoder, GPT2Decoder

    assert GPT2Decoder.fits(model)
    torch.manual_seed(1)
    ids = torch.randint(0, 49, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, :4], mask[1, :1] = 0, 0  # left padding
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    new = torch.randint(0, 49, (3, 5))
    got = {}
    for cls in (GPT2Decoder, CacheDecoder):
        dec = cls(model, 5)
        with torch.no_grad():
            rows = [dec.start(ids, mask, positions)]
            for j in range(4):
                rows.append(dec.step(new[:, j], positions[:, -1] + j + 1))
        got[cls] = torch.stack(rows, 1)  # (B, 5, V)
    full_ids = torch.cat([ids, new[:, :4]], 1)
    full_mask = torch.cat([mask, torch.ones(3, 4, dtype=mask.dtype)], 1)
    pos = (full_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = model(input_ids=full_ids, attention_mask=full_mask, position_ids=pos).logits[:, 8:]
    assert torch.allclose(got[GPT2Decoder], ref, atol=1e-5)
    assert torch.allclose(got[CacheDecoder], ref, atol=1e-5)


def test_rows_sharing_a_prompt_get_the_models_logits_as_rows_leave(model):
    """Two left-padded prompts expanded to five rows, each row its own tokens; rows then
    leave the batch (the last row of the second prompt too): every row's logits at every
    step equal the model's forward over that row's whole sequence."""
    from collab_lib.decoding import GPT2Decoder

    torch.manual_seed(2)
    ids = torch.randint(0, 49, (2, 6))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    expand = torch.tensor([0, 1, 0, 0, 1])
    new = torch.randint(0, 49, (5, 4))
    dec = GPT2Decoder(model, 4)
    got: dict[int, list] = {r: [] for r in range(5)}
    with torch.no_grad():
        first = dec.start(ids, mask, positions)[expand]
        dec.keep(expand)
        for r in range(5):
            got[r].append(first[r])
        alive = list(range(5))
        for j, keep in enumerate([None, [0, 2, 4], [0, 1]]):
            if keep is not None:
                dec.keep(torch.tensor(keep))
                alive = [alive[k] for k in keep]
            rows = torch.tensor(alive)
            out = dec.step(new[rows, j], positions[expand[rows], -1] + j + 1)
            for k, r in enumerate(alive):
                got[r].append(out[k])
    for r in range(5):
        seq = torch.cat([ids[expand[r]], new[r, : len(got[r]) - 1]])[None]
        m = torch.cat([mask[expand[r]], torch.ones(len(got[r]) - 1, dtype=mask.dtype)])[None]
        pos = (m.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            ref = model(input_ids=seq, attention_mask=m, position_ids=pos).logits[0, 5:]
        assert torch.allclose(torch.stack(got[r]), ref, atol=1e-5), r


def test_rows_that_finish_early_leave_the_others_untouched(model):
    """Greedy: half the rows stop after two tokens (so the batch is compacted); the others
    give exactly what they give alone."""
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [14], [15, 16], [17, 18, 19]]
    greedy = SamplingConfig(temperature=0, max_new_tokens=8)
    got = generate(
        model, prompts, greedy, eos_id=49, stop_check=lambda i, ids: i % 2 == 0 and len(ids) >= 2
    )
    for i, p in enumerate(prompts):
        alone = generate(model, [p], greedy, eos_id=49)[0]
        assert got[i] == (alone[:2] if i % 2 == 0 else alone), i


def test_sample_texts_stops_each_completion_where_its_rule_says(tok):
    """Completions end at the rule's cut (the body's end for RQ2), prompt-major, seeded."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from collab_lib.decoding import sample_texts
    from collab_lib.extraction import body_end

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=1, n_head=2)
    lm = GPT2LMHeadModel(config).eval()
    prompts = [tok('def f(x):\n    """Doc."""')["input_ids"], tok("x = 1")["input_ids"]]
    cfg = SamplingConfig(temperature=1.0, max_new_tokens=30)
    texts, new = sample_texts(lm, tok, prompts, 3, cfg, cut=body_end, batch_size=4, seed=1)
    assert len(texts) == 6 and new > 0
    assert all(body_end(t) is None for t in texts)  # each cut before its body ended
    again, _ = sample_texts(lm, tok, prompts, 3, cfg, cut=body_end, batch_size=4, seed=1)
    assert again == texts
    cut_at_x = lambda t: t.find("x") if "x" in t else None  # noqa: E731
    short, _ = sample_texts(lm, tok, prompts, 3, cfg, cut=cut_at_x, batch_size=4, seed=1)
    assert all("x" not in t for t in short)
