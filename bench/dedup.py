"""Benchmark: our MinHash dedup against the plain CodeParrot loop, on the same files.

The plain loop builds each file's MinHash with one ``MinHash.update`` (one SHA-1) per token;
ours hashes each distinct token once per corpus and permutes a whole file in one numpy call.
Both then run the same LSH clustering, so the kept files must be identical (checked here).
Prints files/s of each and the speed ratio (target: >= 8x).

    python bench/dedup.py                       # the .py files of the default profile's sources
    python bench/dedup.py --dir PATH [--repeat 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from collab_lib.config import load_config
from collab_lib.datasets import check_input
from collab_lib.dedup import deduplicate
from collab_lib.sources import fetch_pypi, list_source


def corpus_from_profile(profile: str) -> list[str]:
    cfg = load_config(profile)
    d = cfg.datasets
    specs = sorted({s.pypi for o in d.organizations for s in o.sources if s.kind == "pypi"})
    downloads = fetch_pypi(specs, d.index_url, d.download_timeout_s)
    files = [
        f
        for o in d.organizations
        for s in o.sources
        for f in list_source(s, d.exclude, downloads).files
    ]
    return _texts(f.read() for f in files)


def corpus_from_dir(root: Path) -> list[str]:
    return _texts(p.read_bytes() for p in sorted(root.rglob("*.py")) if p.is_file())


def _texts(raws) -> list[str]:
    texts = []
    for raw in raws:
        text, reason = check_input(raw, 1_000_000)
        if text is not None:
            texts.append(text)
    return texts


def time_it(texts: list[str], fast: bool, repeat: int) -> tuple[float, list[int]]:
    best, kept = float("inf"), []
    for _ in range(repeat):
        start = time.perf_counter()
        kept = deduplicate(texts, threshold=0.85, num_perm=256, fast=fast).kept
        best = min(best, time.perf_counter() - start)
    return best, kept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="default")
    ap.add_argument("--dir", type=Path, help="benchmark the .py files under this directory")
    ap.add_argument("--repeat", type=int, default=3, help="best of N timed runs")
    args = ap.parse_args()
    texts = corpus_from_dir(args.dir) if args.dir else corpus_from_profile(args.profile)
    mb = sum(len(t.encode()) for t in texts) / 1e6
    print(f"corpus: {len(texts)} files, {mb:.1f} MB")
    warm = texts[: max(20, len(texts) // 10)]  # warm up both on the same shapes
    time_it(warm, fast=False, repeat=1)
    time_it(warm, fast=True, repeat=1)
    plain_s, plain_kept = time_it(texts, fast=False, repeat=args.repeat)
    fast_s, fast_kept = time_it(texts, fast=True, repeat=args.repeat)
    print(f"{'contender':<34}{'seconds':>10}{'files/s':>10}{'kept':>7}")
    print(
        f"{'plain (MinHash.update per token)':<34}{plain_s:>10.2f}{len(texts) / plain_s:>10.0f}"
        f"{len(plain_kept):>7}"
    )
    print(
        f"{'ours (token hash once + numpy)':<34}{fast_s:>10.2f}{len(texts) / fast_s:>10.0f}"
        f"{len(fast_kept):>7}"
    )
    same = plain_kept == fast_kept
    print(f"speed ratio: {plain_s / fast_s:.1f}x (target >= 8x); same kept files: {same}")
    if not same:
        raise SystemExit("kept files differ: the fast path is wrong")


if __name__ == "__main__":
    main()
