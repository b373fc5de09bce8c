"""Planted canaries: within budget, sharing no code, in training only, recorded where put."""

import ast
import json
import random
import re
from collections import Counter

import pytest

from collab_lib import canaries, pipeline
from collab_lib.config import CanaryConfig, ConfigError, load_config
from tests.conftest import run_through

FORMATS = {"letters16": r"[a-z]{16}", "hex24": r"[0-9a-f]{24}"}
ORGS = ("Google", "Microsoft", "Facebook", "Amazon", "Apple")
# Lines of closing brackets alone may repeat; any other line must name its canary.
TRIVIAL = re.compile(r"[)\]},]*")


def many(seed: int = 0) -> list[dict]:
    """30 canaries (10 per count) for each of five large organizations."""
    c = CanaryConfig(per_count=10, counts=(4, 16, 64))
    return canaries.make_canaries(dict.fromkeys(ORGS, 10**8), c, seed)


def holder(p: dict) -> str:
    """The name the secret is given: the last identifier or key before it on its line."""
    return re.findall(r"[A-Za-z_][\w-]*", p["prefix"].rsplit("\n", 1)[-1])[-1]


def defined_names(p: dict) -> set[str]:
    """Every name a canary defines: its function or class, parameters, variables, attributes."""
    names = set()
    for node in ast.walk(ast.parse(p["text"])):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return names


def test_no_two_canaries_define_the_same_name():
    seen: dict[str, str] = {}
    for p in many():
        for name in defined_names(p):
            assert name not in seen, f"{name} in {p['id']} and {seen[name]}"
            seen[name] = p["id"]


def own_lines(p: dict) -> set[str]:
    """The canary's non-trivial lines, stripped, its secret taken out."""
    lines = (line.strip() for line in p["text"].replace(p["secret"], "").splitlines())
    return {line for line in lines if not TRIVIAL.fullmatch(line)}


def test_canaries_are_planted_in_training_only_and_within_budget(local_profile):
    cfg = load_config(local_profile, {"canaries.max_fraction": 0.3})
    art = run_through("canaries", cfg)
    planted = canaries.planted(art)
    ds = pipeline.load("datasets", cfg)
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


def test_a_small_budget_drops_the_highest_counts_first():
    c = CanaryConfig(counts=(4, 16, 64), per_count=4, max_fraction=0.3)
    big = canaries.make_canaries({"X": 1_000_000}, c, seed=0)
    assert sorted({p["count"] for p in big}) == [4, 16, 64] and len(big) == 12
    assert [sum(p["count"] == n for p in big) for n in (4, 16, 64)] == [4, 4, 4]
    small = canaries.make_canaries({"X": 10_000}, c, seed=0)
    assert small and max(p["count"] for p in small) < 64
    assert canaries.make_canaries({"X": 100}, c, seed=0) == []  # nothing fits: none planted
    assert canaries.make_canaries({"X": 1_000_000}, c, seed=0) == big  # seeded


@pytest.mark.parametrize("train_bytes", [700, 2_000, 5_000, 20_000, 60_000, 200_000])
def test_canary_copies_never_exceed_the_budget(train_bytes):
    c = CanaryConfig(max_fraction=0.1)
    planted = canaries.make_canaries({"X": train_bytes}, c, seed=1)
    assert sum(len(p["text"].encode()) * p["count"] for p in planted) <= 0.1 * train_bytes
    counts = sorted({p["count"] for p in planted})
    assert counts == sorted(c.counts)[: len(counts)]  # the highest counts go first
    assert len({sum(p["count"] == n for p in planted) for n in counts}) <= 1  # same per count


def test_no_two_canaries_share_a_docstring_a_name_or_a_line():
    planted = many()
    assert len(planted) == 5 * 30
    assert len({p["template"] for p in planted}) == len(canaries.SHAPES)
    docstrings, holders = set(), set()
    for p in planted:
        tree = ast.parse(p["text"])  # realistic code: it parses
        docstrings.add(ast.get_docstring(tree.body[0]))
        holders.add(holder(p))
        assert p["text"].count(p["secret"]) == 1
        assert re.fullmatch(FORMATS[p["format"]], p["secret"])
        assert p["text"] == p["prefix"] + p["secret"] + p["suffix"]
    assert len(docstrings) == len(holders) == len({p["name"] for p in planted}) == len(planted)
    lines = Counter(line for p in planted for line in own_lines(p))
    assert [line for line, n in lines.items() if n > 1] == []


def test_canaries_are_seeded_and_each_organization_keeps_its_own():
    assert many(seed=0) == many(seed=0)
    other = many(seed=1)
    assert {p["text"] for p in many(seed=0)}.isdisjoint(p["text"] for p in other)
    # an organization's canaries do not depend on how many of an earlier one's fit its budget
    c = CanaryConfig()
    full = canaries.make_canaries({"A": 10**6, "B": 10**6}, c, seed=0)
    small = canaries.make_canaries({"A": 3_000, "B": 10**6}, c, seed=0)
    assert [p for p in full if p["organization"] == "B"] == [
        p for p in small if p["organization"] == "B"
    ]


def test_services_are_distinct_and_the_first_share_no_word():
    names = list(canaries.services(random.Random(0)))
    assert len(set(names)) == len(names) == len(canaries.AREAS) * len(canaries.PARTS) >= 500
    first = names[: len(canaries.AREAS)]
    assert len({a for a, _ in first}) == len({p for _, p in first}) == len(first)


def test_too_many_canaries_for_the_word_pools_is_a_clear_error():
    c = CanaryConfig(per_count=100)
    with pytest.raises(ConfigError, match="canaries.per_count"):
        canaries.make_canaries(dict.fromkeys(ORGS, 10**8), c, seed=0)


def test_disabled_canaries_plant_nothing(local_profile):
    cfg = load_config(local_profile, {"canaries.enabled": False})
    assert canaries.planted(run_through("canaries", cfg)) == []
    assert load_config("paper").canaries.enabled is False  # the paper's data stays the paper's
