"""Near-duplicate removal with MinHash + LSH, as in CodeParrot's preprocessing (paper §3).

A file's fingerprint is the MinHash of its set of tokens (split on non-alphanumerics).
Files whose estimated Jaccard similarity exceeds the threshold are clustered through an LSH
index; from each cluster only its "extremes" are kept (CodeParrot's ``find_extremes``: a
member is dropped when its exact token-set Jaccard similarity with an already kept member
reaches the threshold).

Speed: the plain recipe splits each file with a regex and a set comprehension, then calls
``MinHash.update`` once per token, hashing each token with SHA-1 again in every file. The fast
path finds the same tokens with one ``str.translate`` and ``split`` (a regex for non-ASCII
text), hashes each distinct token of the corpus once, and applies datasketch's own
permutations to a whole file in one numpy operation. Token sets and signatures are identical
to the plain path, so the kept files are identical (the tests and ``bench/dedup.py`` check it).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from datasketch import LeanMinHash, MinHash, MinHashLSH
from datasketch.hashfunc import sha1_hash32
from tqdm import tqdm

NON_ALNUM = re.compile(r"[^A-Za-z_0-9]")
ALNUM_RUN = re.compile(r"[A-Za-z_0-9]+")
_ASCII_TO_SPACE = str.maketrans(
    {c: " " for c in map(chr, range(128)) if not (c.isalnum() or c == "_")}
)
SCHEME = "affine32"  # datasketch's default MinHash scheme; the fast path must match it
SEED = 1  # datasketch's default permutation seed


@dataclass(frozen=True)
class DedupResult:
    """Indices of kept files, and clusters of near-duplicates (lists of indices)."""

    kept: list[int]
    removed: list[int]
    clusters: list[list[int]]


def tokens(code: str) -> set[str]:
    """CodeParrot's token set (the runs of ``[A-Za-z_0-9]``), without a Python-level loop."""
    if code.isascii():
        return set(code.translate(_ASCII_TO_SPACE).split())
    return set(ALNUM_RUN.findall(code))


def tokens_plain(code: str) -> set[str]:
    """CodeParrot's ``get_tokens`` as written: split on non-alphanumerics, drop empties."""
    return {t for t in NON_ALNUM.split(code) if len(t.strip()) > 0}


def minhash_plain(toks: set[str], num_perm: int) -> MinHash:
    """The reference recipe: one ``update`` (one SHA-1) per token."""
    m = MinHash(num_perm=num_perm, seed=SEED, scheme=SCHEME)
    for tok in toks:
        m.update(tok.encode())
    return m


def _fmix32(hv: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer; datasketch applies it before its affine permutations."""
    hv = hv ^ (hv >> np.uint32(16))
    hv = hv * np.uint32(0x85EBCA6B)
    hv = hv ^ (hv >> np.uint32(13))
    hv = hv * np.uint32(0xC2B2AE35)
    return hv ^ (hv >> np.uint32(16))


def signatures(token_sets: Sequence[set[str]], num_perm: int) -> np.ndarray:
    """MinHash signatures of many token sets at once: ``(len(token_sets), num_perm)`` uint32.

    Row ``i`` equals ``minhash_plain(token_sets[i], num_perm).hashvalues``; each distinct token
    is hashed once for the whole corpus.
    """
    a, b = MinHash(num_perm=num_perm, seed=SEED, scheme=SCHEME).permutations
    token_hash: dict[str, int] = {}
    out = np.full((len(token_sets), num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
    for i, toks in enumerate(token_sets):
        if not toks:
            continue
        for tok in toks.difference(token_hash):
            token_hash[tok] = sha1_hash32(tok.encode())
        hv = np.fromiter(map(token_hash.__getitem__, toks), np.uint32, len(toks))
        # (tokens, 1) * (num_perm,) -> (tokens, num_perm); uint32 wraps, as datasketch's does
        out[i] = (_fmix32(hv)[:, None] * a + b).min(axis=0)
    return out


def deduplicate(
    texts: Sequence[str],
    threshold: float = 0.85,
    num_perm: int = 256,
    min_tokens: int = 10,
    fast: bool = True,
    progress: bool = False,
) -> DedupResult:
    """Cluster near-duplicates and keep each cluster's extremes; order of ``texts`` decides ties.

    Files with fewer than ``min_tokens`` tokens are not indexed and always kept (CodeParrot).
    """
    token_sets = [(tokens if fast else tokens_plain)(t) for t in texts]
    indexed = [i for i, toks in enumerate(token_sets) if len(toks) >= min_tokens]
    if fast:
        sigs = signatures([token_sets[i] for i in indexed], num_perm)
        hashes = (LeanMinHash(seed=SEED, hashvalues=s, scheme=SCHEME) for s in sigs)
    else:
        hashes = (LeanMinHash(minhash_plain(token_sets[i], num_perm)) for i in indexed)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    clusters: dict[int, list[int]] = {}  # base -> [base, members...]
    steps = tqdm(
        zip(indexed, hashes, strict=False),
        total=len(indexed),
        desc="near-duplicates",
        disable=not progress,
        leave=False,
    )
    for i, m in steps:
        close = lsh.query(m)
        lsh.insert(i, m)
        if close:  # CodeParrot: join the first close file that is a cluster base, else close[0]
            base = next((c for c in close if c in clusters), close[0])
            clusters.setdefault(base, [base]).append(i)
    removed: set[int] = set()
    for members in clusters.values():
        removed.update(_non_extremes(members, token_sets, threshold))
    kept = [i for i in range(len(texts)) if i not in removed]
    return DedupResult(kept, sorted(removed), [sorted(c) for c in clusters.values()])


def _non_extremes(members: list[int], token_sets: list[set[str]], threshold: float) -> list[int]:
    """Members whose exact Jaccard similarity with an earlier kept member reaches the threshold."""
    extremes: list[int] = []
    dropped: list[int] = []
    for i in members:
        if any(jaccard(token_sets[i], token_sets[j]) >= threshold for j in extremes):
            dropped.append(i)
        else:
            extremes.append(i)
    return dropped


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / max(1, len(a | b))
