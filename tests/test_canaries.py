"""Planted canaries: within budget, unique, in training only, recorded where they were put."""

import ast
import json
import re

import pytest

from collab_lib import canaries, datasets
from collab_lib.config import load_config

FORMATS = {"letters16": r"[a-z]{16}", "hex24": r"[0-9a-f]{24}"}


def test_canaries_are_planted_in_training_only_and_within_budget(local_profile):
    cfg = load_config(local_profile, {"canaries.max_fraction": 0.3})
    art = canaries.build_canaries(cfg)
    planted = canaries.load(art)
    ds = datasets.datasets_for(cfg)
    assert planted, "the profile's organizations are large enough for some canaries"
    assert len({p["name"] for p in planted}) == len(planted)  # every function name unique
    alternatives = json.loads(art.file("alternatives.json").read_text())
    for p in planted:
        ast.parse(p["text"])  # realistic code: it parses
        assert re.fullmatch(FORMATS[p["format"]], p["secret"])
        assert p["text"] == p["prefix"] + p["secret"] + p["suffix"]
        assert p["count"] in cfg.canaries.counts and len(p["positions"]) == p["count"]
        assert p["secret"] not in alternatives[p["format"]]
    assert {f: len(v) for f, v in alternatives.items()} == {f: 1000 for f in FORMATS}

    table = canaries.table(art).set_index("Organization")
    for org in cfg.datasets.organizations:
        mine = [p for p in planted if p["organization"] == org.name]
        train = [d["content"] for d in ds.documents(org.name, "train")]
        stream = canaries.training_texts(ds, planted, org.name)
        assert len(stream) == len(train) + sum(p["count"] for p in mine)
        assert [t for t in stream if t not in {p["text"] for p in mine}] == train  # order kept
        for p in mine:
            assert [i for i, t in enumerate(stream) if t == p["text"]] == p["positions"]
            for d in ds.documents(org.name, "validation"):
                assert p["secret"] not in d["content"]
        canary_bytes = sum(len(p["text"].encode()) * p["count"] for p in mine)
        assert canary_bytes <= 0.3 * sum(len(t.encode()) for t in train)
        assert table.loc[org.name, "Canary copies"] == sum(p["count"] for p in mine)


def test_a_small_budget_drops_the_highest_counts_first(local_profile):
    cfg = load_config(local_profile, {"canaries.max_fraction": 0.3})
    big = canaries.make_canaries("X", 1_000_000, cfg, seed=0)
    assert sorted({p["count"] for p in big}) == [4, 16, 64] and len(big) == 12
    small = canaries.make_canaries("X", 3_000, cfg, seed=0)
    assert small and max(p["count"] for p in small) < 64
    assert canaries.make_canaries("X", 100, cfg, seed=0) == []  # nothing fits: none planted
    assert canaries.make_canaries("X", 1_000_000, cfg, seed=0) == big  # seeded


def test_disabled_canaries_plant_nothing(local_profile):
    cfg = load_config(local_profile, {"canaries.enabled": False})
    assert canaries.load(canaries.build_canaries(cfg)) == []
    assert load_config("paper").canaries.enabled is False  # the paper's data stays the paper's


def test_exposure_is_high_for_a_memorized_canary_and_low_for_an_untrained_model():
    import random

    from collab_lib.config import TrainConfig
    from collab_lib.model import build_tokenizer, init_model, load_tokenizer
    from collab_lib.training import pack, train

    cfg = load_config("tiny", ["model.n_layer=1", "model.n_embd=64", "model.n_head=2",
                               "model.context=64", "model.tokenizer_corpus_mb=0.3"])  # fmt: skip
    tok = load_tokenizer(build_tokenizer(cfg).path)
    (canary,) = [c for c in canaries.make_canaries("X", 10**6, cfg, seed=3) if c["template"] == 0][
        :1
    ]
    rng = random.Random(0)
    alternatives = [canaries.new_secret(canary["format"], rng) for _ in range(100)]

    untrained = init_model(cfg.model, len(tok), seed=0)
    assert canaries.exposure(untrained, tok, canary, alternatives) < 4  # log2(101) = 6.66

    model = init_model(cfg.model, len(tok), seed=0)
    run = TrainConfig(epochs=40, batch_size=8, lr=3e-3, warmup_steps=2, schedule="constant")
    train(model, pack([canary["text"]] * 16, tok, cfg.model.context), run, seed=0)
    assert canaries.exposure(model, tok, canary, alternatives) == pytest.approx(6.658, abs=1e-3)
