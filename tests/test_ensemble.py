"""The inference-time ensemble: a mixture of next-token distributions, checked by hand."""

import math

import pytest
import torch

from collab_lib import decoding, evaluation, scoring
from collab_lib.config import load_config
from collab_lib.ensemble import Ensemble
from collab_lib.model import build_tokenizer, init_model, load_tokenizer
from collab_lib.sampling import SamplingConfig

TINY = ["model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.context=64"]
TOK = ["model.tokenizer_corpus_mb=0.3", "model.vocab_size=512"]
WEIGHTS = [0.25, 0.75]


@pytest.fixture(scope="module")
def setup():
    cfg = load_config("tiny", [*TINY, *TOK])
    tok = load_tokenizer(build_tokenizer(cfg).path)
    members = [init_model(cfg.model, len(tok), seed=s).eval() for s in (1, 2)]
    return cfg, tok, members, Ensemble(members, WEIGHTS).eval()


def hand_nll(members, ids: list[int]) -> list[float]:
    """-log(0.25 p1 + 0.75 p2) of each token after the first, from the members' softmaxes."""
    x = torch.tensor([ids])
    with torch.no_grad():
        probs = [m(input_ids=x).logits[0].softmax(-1) for m in members]
    out = []
    for t in range(1, len(ids)):
        p = sum(w * pr[t - 1, ids[t]].item() for w, pr in zip(WEIGHTS, probs, strict=True))
        out.append(-math.log(p))
    return out


def test_perplexity_is_the_mixtures_by_hand(setup):
    cfg, tok, members, ens = setup
    doc = "def add(a, b):\n    return a + b\n"
    frame = evaluation.file_losses(ens, tok, {"O": [{"path": "a.py", "content": doc}]}, 64, 32)
    ids = scoring.token_stream([doc], tok)
    expected = hand_nll(members, ids)
    assert frame["tokens"].sum() == len(expected)
    assert frame["loss_sum"].sum() == pytest.approx(sum(expected), rel=1e-5)
    # and it is neither member's
    alone = evaluation.file_losses(
        members[0], tok, {"O": [{"path": "a.py", "content": doc}]}, 64, 32
    )
    assert abs(alone["loss_sum"].sum() - sum(expected)) > 1e-3


def test_a_secrets_loss_after_its_prefix_goes_through_the_combined_cache(setup):
    cfg, tok, members, ens = setup
    prefix, secrets = 'api_key = "', ["abcdefgh", "zyxwvuts"]
    got = scoring.suffix_losses(ens, tok, prefix, secrets)
    for secret, loss in zip(secrets, got, strict=True):
        p_ids = tok(prefix, verbose=False)["input_ids"]
        s_ids = tok(secret, add_special_tokens=False, verbose=False)["input_ids"]
        assert loss == pytest.approx(
            sum(hand_nll(members, p_ids + s_ids)[len(p_ids) - 1 :]), rel=1e-4
        )


def test_sampling_with_the_cache_matches_the_full_forward(setup):
    """Greedy decoding through the ensemble's combined KV cache picks, at every step, the
    token the mixture of full forwards ranks first."""
    cfg, tok, members, ens = setup
    prompt = tok("import os\n", verbose=False)["input_ids"]
    greedy = SamplingConfig(temperature=0, max_new_tokens=8)
    out = decoding.generate(ens, [prompt, prompt[1:]], greedy, eos_id=tok.eos_token_id)
    for start, new in zip([prompt, prompt[1:]], out, strict=True):
        ids = list(start)
        for t in new:
            with torch.no_grad():
                full = ens(input_ids=torch.tensor([ids])).logits[0, -1]
            assert t == int(full.argmax())
            ids.append(t)
