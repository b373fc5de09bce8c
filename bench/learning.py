"""Check: do a profile's trained models learn, and do they memorize the planted canaries?

Prints (1) each model's perplexity on the union of the organizations' validation splits beside
the base model's (the baseline: a model that learned from the organizations' code is well
below it), and (2) the mean rank exposure of each organization's canaries, by repetition
count, under a few models (Carlini et al. 2019; chance is about 1.4 bits, the ceiling
log2(1001) = 9.97 bits). Run after `python -m collab_lib run train --profile P`.

    python bench/learning.py --profile default [--alternatives 1000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from transformers import GPT2LMHeadModel

from collab_lib import canaries, collaboration, pipeline
from collab_lib.config import load_config
from collab_lib.exposure import rank_exposure
from collab_lib.model import load_tokenizer
from collab_lib.scoring import perplexity, suffix_losses


def exposure_models(cfg) -> list[str]:
    """The base model, each single-organization model, the union models and two orders."""
    specs = [s for s in collaboration.roster(cfg) if s.rq == "RQ1/RQ2"]
    incremental = [s.name for s in specs if s.setting == "incremental"]
    return [
        "base model",
        *(s.name for s in specs if s.setting != "incremental"),
        incremental[0],
        incremental[-1],
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="default")
    ap.add_argument("--alternatives", type=int, default=1000)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    cfg = load_config(args.profile, args.overrides)
    models = pipeline.load("train", cfg)
    ds = pipeline.load("datasets", cfg)
    valid = [d["content"] for o in ds.corpora for d in ds.documents(o, "validation")]
    tok = load_tokenizer(models["base model"].path / "model")
    names = collaboration.model_names(cfg)
    loaded = {n: GPT2LMHeadModel.from_pretrained(models[n].path / "model") for n in names}

    start = time.perf_counter()
    base_ppl = perplexity(loaded["base model"], tok, valid, cfg.model.context)
    print(f"validation perplexity (union of {len(valid)} files); base model: {base_ppl:.2f}")
    for name, model in loaded.items():
        ppl = perplexity(model, tok, valid, cfg.model.context)
        print(f"  {name:22} {ppl:8.2f}  ({ppl / base_ppl:.2f}x the base model's)")

    can = pipeline.load("canaries", cfg)
    planted = canaries.planted(can)
    alternatives = json.loads(can.file("alternatives.json").read_text())
    counts = sorted({p["count"] for p in planted})
    print(
        f"\nmean exposure (bits) of each organization's canaries, by count; "
        f"{args.alternatives} alternatives"
    )
    header = "".join(f"{cfg.org(o).short} x{c:<5}" for o in ds.corpora for c in counts)
    print(f"  {'model':22} {header}")
    for name in exposure_models(cfg):
        cells = []
        for org in ds.corpora:
            for c in counts:
                mine = [p for p in planted if p["organization"] == org and p["count"] == c]
                if not mine:
                    cells.append(f"{'-':8}")
                    continue
                e = [
                    exposure(loaded[name], tok, p, alternatives[p["format"]][: args.alternatives])
                    for p in mine
                ]
                cells.append(f"{statistics.mean(e):<8.2f}")
        print(f"  {name:22} {''.join(cells)}")
    print(f"\n({time.perf_counter() - start:.0f} s)")


def exposure(model, tok, planted: dict, alternatives: list[str]) -> float:
    """Rank exposure of one canary's secret (scored as the rq2 step scores it)."""
    losses = suffix_losses(model, tok, planted["prefix"], [planted["secret"], *alternatives])
    return rank_exposure(losses[0], losses[1:])


if __name__ == "__main__":
    main()
