"""Near-duplicate removal with MinHash + LSH, as in CodeParrot's preprocessing (paper §3).

A file's fingerprint is the MinHash of its set of tokens (split on non-alphanumerics).
Files whose estimated Jaccard similarity exceeds the threshold are clustered through an LSH
index; from each cluster only its "extremes" are kept (CodeParrot's ``find_extremes``: a
member is dropped when its exact token-set Jaccard similarity with an already kept member
reaches the threshold).

Speed: the plain recipe splits each file with a regex and a set comprehension, then calls
``MinHash.update`` once per token, hashing each token with SHA-1 again in every file. The fast
path finds the same tokens in one ``re.findall`` pass, hashes each distinct token once per
corpus (memoised) and applies the 256 permutations to a whole file in one numpy operation
through ``MinHash.update_batch``. Token sets and hash values are identical, so the kept files
are identical (``bench/dedup.py`` and the tests check it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from datasketch import LeanMinHash, MinHash, MinHashLSH
from datasketch.hashfunc import sha1_hash32
from tqdm.auto import tqdm

NON_ALNUM = re.compile(r"[^A-Za-z_0-9]")
ALNUM_RUN = re.compile(r"[A-Za-z_0-9]+")


@dataclass(frozen=True)
class DedupResult:
    """Indices of kept files, and clusters of near-duplicates (lists of indices)."""

    kept: list[int]
    removed: list[int]
    clusters: list[list[int]]


def tokens(code: str) -> set[str]:
    """CodeParrot's token set (the runs between non-alphanumerics), found in one C-level pass."""
    return set(ALNUM_RUN.findall(code))


def tokens_plain(code: str) -> set[str]:
    """CodeParrot's ``get_tokens`` as written: split on non-alphanumerics, drop empties."""
    return {t for t in NON_ALNUM.split(code) if len(t.strip()) > 0}


def minhash_plain(toks: set[str], num_perm: int) -> MinHash:
    """The reference recipe: one ``update`` (one SHA-1) per token."""
    m = MinHash(num_perm=num_perm)
    for tok in toks:
        m.update(tok.encode())
    return m


def make_minhash_fast(num_perm: int) -> Callable[[set[str]], MinHash]:
    """A MinHash builder whose per-token hashes are shared across all files of a corpus."""

    @lru_cache(maxsize=1 << 20)
    def hash_token(tok: str) -> int:
        return sha1_hash32(tok.encode())

    template = MinHash(num_perm=num_perm, hashfunc=hash_token)

    def build(toks: set[str]) -> MinHash:
        m = template.copy()
        m.update_batch(toks)
        return m

    return build


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
    build = make_minhash_fast(num_perm) if fast else (lambda s: minhash_plain(s, num_perm))
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    clusters: dict[int, list[int]] = {}  # base -> [base, members...]
    for i, toks in enumerate(
        tqdm(token_sets, desc="near-duplicates", disable=not progress, leave=False)
    ):
        if len(toks) < min_tokens:
            continue
        m = LeanMinHash(build(toks))
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
