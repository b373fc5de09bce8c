"""Benchmark: DP-SGD (Opacus, example level) against the plain training loop, same shape.

Both run ``collab_lib.training.train`` on the same packed sequences (the stdlib sample the
base model is pretrained on) from the same weights, with the profile's schedule; the plain
loop at ``train.batch_size``, DP-SGD at the profile's ``privacy.batch_size`` on average
(Poisson sampling), processed ``train.batch_size`` sequences at a time, with per-sequence
gradients (Opacus's hooks), clipping and noise. An epoch passes over about as many sequences
in both. Each contender runs in a
process of its own (``python bench/dp.py --contender plain|dp``), warmed up alike by one
untimed epoch on the same shapes, best of ``--repeat`` (the contenders alternate, so machine
noise hits both alike). Prints tokens/s of each and the ratio DP / plain (goal: >= 0.7x).

    python bench/dp.py                      # the default profile's model shape
    python bench/dp.py --profile tiny --profile default --repeat 3
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def contender(profile: str, which: str, sequences: int) -> float:
    """Tokens/s of one timed epoch after one untimed one (in this process)."""
    from collab_lib.config import load_config
    from collab_lib.model import build_tokenizer, init_model, load_tokenizer, stdlib_texts
    from collab_lib.privacy import DPSGD, dp_batch
    from collab_lib.training import pack, train

    cfg = load_config(profile)
    tok = load_tokenizer(build_tokenizer(cfg).path)
    data = pack(stdlib_texts(cfg.model.pretrain_corpus_mb + 1, cfg.seed), tok, cfg.model.context)
    data = data[:sequences]
    dp = DPSGD(1.0, cfg.privacy.max_grad_norm, dp_batch(cfg)) if which == "dp" else None
    run = replace(cfg.train, epochs=1)
    model = init_model(cfg.model, len(tok), cfg.seed)
    train(model, data[: cfg.train.batch_size * 4], run, cfg.seed, dp=dp)  # warm-up
    start = time.perf_counter()
    train(model, data, run, cfg.seed, dp=dp)
    return data.numel() / (time.perf_counter() - start)


def in_process(profile: str, which: str, sequences: int) -> float:
    """:func:`contender` in a fresh Python process."""
    cmd = [sys.executable, __file__, "--contender", which, "--profile", profile]
    out = subprocess.run(
        [*cmd, "--sequences", str(sequences)], capture_output=True, text=True, cwd=ROOT, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["tokens_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", action="append", help="profiles whose model shape to time")
    ap.add_argument("--sequences", type=int, default=384, help="sequences per timed epoch")
    ap.add_argument("--repeat", type=int, default=2, help="timed runs of each; the best counts")
    ap.add_argument("--contender", choices=["plain", "dp"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    profiles = args.profile or ["default"]
    if args.contender:  # one timed run, in this process, for the parent
        tps = contender(profiles[0], args.contender, args.sequences)
        print(json.dumps({"tokens_per_s": tps}))
        return
    print(f"{'profile':8} {'plain tok/s':>12} {'DP-SGD tok/s':>13} {'ratio':>6}")
    for profile in profiles:
        best = {"plain": 0.0, "dp": 0.0}
        for _ in range(args.repeat):
            for which in best:
                best[which] = max(best[which], in_process(profile, which, args.sequences))
        ratio = best["dp"] / best["plain"]
        print(f"{profile:8} {best['plain']:12,.0f} {best['dp']:13,.0f} {ratio:5.2f}x")


if __name__ == "__main__":
    main()
