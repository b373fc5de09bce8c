import numpy as np
import pytest

from collab_lib.dedup import (
    deduplicate,
    minhash_plain,
    signatures,
    tokens,
    tokens_plain,
)
from tests.conftest import py_module

CORPUS = [py_module(i, f) for f in ("alpha", "beta") for i in range(8)]


def test_exact_copies_are_removed_and_output_is_a_subset():
    texts = CORPUS + [CORPUS[0], CORPUS[3]]
    result = deduplicate(texts)
    assert set(result.kept) <= set(range(len(texts)))
    assert {texts[i] for i in result.kept} == set(CORPUS)
    assert len(result.kept) == len(CORPUS)


def test_dedup_is_idempotent():
    texts = CORPUS + CORPUS[:3]
    once = [texts[i] for i in deduplicate(texts).kept]
    twice = [once[i] for i in deduplicate(once).kept]
    assert once == twice


def test_near_duplicate_with_one_changed_line_is_removed():
    near = CORPUS[2].replace('"""Read one record."""', '"""Read one record from disk."""')
    assert len(deduplicate([CORPUS[2], near]).kept) == 1


def test_threshold_moves_results_the_expected_way():
    base = CORPUS[1]
    variants = [base + "\n".join(f"extra_{k}_{j} = {j}" for j in range(k)) for k in range(1, 15)]
    kept = [len(deduplicate([base, *variants], threshold=t).kept) for t in (0.5, 0.7, 0.85, 0.95)]
    assert kept == sorted(kept) and kept[0] < kept[-1]


def test_small_files_are_never_indexed_and_always_kept():
    assert deduplicate(["x = 1", "x = 1"], min_tokens=10).kept == [0, 1]


@pytest.mark.parametrize("num_perm", [16, 256])
def test_fast_signatures_equal_the_plain_loop(num_perm):
    token_sets = [tokens(t) for t in CORPUS] + [set(), {"x"}, {"caf\u00e9", "\u00b2"}]
    sigs = signatures(token_sets, num_perm)
    assert sigs.shape == (len(token_sets), num_perm)
    for toks, sig in zip(token_sets, sigs, strict=True):
        np.testing.assert_array_equal(sig, minhash_plain(toks, num_perm).hashvalues)


def test_fast_path_keeps_exactly_the_files_the_plain_path_keeps():
    texts = CORPUS + [CORPUS[0].replace("record", "entry"), CORPUS[5] + "\n# tail\n", CORPUS[9]]
    fast, plain = deduplicate(texts, fast=True), deduplicate(texts, fast=False)
    assert fast.kept == plain.kept and fast.clusters == plain.clusters


def test_tokens_split_on_non_alphanumerics():
    assert tokens("def f(a_b, c2):  return a_b+c2") == {"def", "f", "a_b", "c2", "return"}


@pytest.mark.parametrize(
    "text", ["", "x", "a\tb\r\nc", "caf\u00e9 na\u00efve \u00b2", "x=1;;y = 'z'\x0b\x0cw", *CORPUS]
)
def test_fast_tokenizer_equals_codeparrots(text):
    assert tokens(text) == tokens_plain(text)
