"""FedYogi's server learning rate and tau, chosen per profile on data the tables never see.

Flower's FedYogi moves each weight by at most about ``eta`` per round (its moment estimates
carry no bias correction), so with Reddi et al.'s default eta = 0.01 and clients that move
weights by more than that in an epoch, FedYogi stays near the base model whatever the
setting. Reddi et al. tuned the server rate per task; so do we: every (eta, tau) pair of the
profile's grid trains the union's FedYogi model on the training splits less a seeded held-out
slice of each organization's files, and the pair with the lowest perplexity on those held-out
files is used by every FedYogi model of the profile. The validation splits, which Table 8
reports, play no part. The ``paper`` profile keeps Flower's defaults (no sweep).
"""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from collab_lib import artifacts
from collab_lib.config import Config, UserError, weights_config
from collab_lib.privacy import Row

STEP = "yogi_sweep"


def step_config(cfg: Config) -> dict:
    """What the sweep depends on: its grid, the training settings and the organizations."""
    return {
        "sweep": cfg.federated.yogi_sweep,
        "rounds": cfg.federated.rounds or cfg.train.epochs,
        "beta": [cfg.federated.yogi_beta_1, cfg.federated.yogi_beta_2],
        "train": weights_config(cfg.train),
        "model": cfg.model,
        "organizations": [o.name for o in cfg.datasets.organizations],
        "seed": cfg.seed,
    }


def grid(cfg: Config) -> list[tuple[float, float]]:
    s = cfg.federated.yogi_sweep
    return [(eta, tau) for tau in s.taus for eta in s.etas]


def hold_out(
    texts: dict[str, list[str]], fraction: float, seed: int, keep: set[str] = frozenset()
) -> tuple[dict[str, list[str]], list[str]]:
    """Each organization's documents less a seeded ``fraction`` of them, and those held out.

    Documents in ``keep`` (planted canary copies) and audit canaries (:class:`Row`) always
    stay in training: the held-out perplexity measures the organizations' own code.
    """
    train, held = {}, []
    for org, docs in texts.items():
        candidates = [i for i, t in enumerate(docs) if t not in keep and not isinstance(t, Row)]
        # at least one file held out, and at least one left to train on
        n = min(max(1, round(fraction * len(candidates))), len(candidates) - 1)
        if n < 1:
            train[org] = list(docs)
            continue
        out = set(random.Random(f"{seed}/holdout/{org}").sample(candidates, n))
        train[org] = [t for i, t in enumerate(docs) if i not in out]
        held += [docs[i] for i in sorted(out)]
    return train, held


def build_sweep(
    cfg: Config,
    base: artifacts.Artifact,
    texts: dict[str, list[str]],
    data_refs: list[str],
    keep: set[str],
    *,
    force: bool = False,
) -> artifacts.Artifact:
    """Run (or find cached) the sweep; ``sweep.csv`` has one row per pair, ``best.json`` the
    pair the FedYogi models use. Each finished pair is kept in scratch, so an interrupted
    sweep resumes at the pair it reached."""
    from transformers import GPT2LMHeadModel

    from collab_lib.federated import launch
    from collab_lib.model import load_tokenizer

    config = step_config(cfg)
    inputs = [base.ref, *data_refs]
    scratch = artifacts.scratch_dir(STEP, config, inputs)

    def produce(out: Path) -> dict:
        train, held = hold_out(texts, cfg.federated.yogi_sweep.holdout_fraction, cfg.seed, keep)
        if not held:
            raise UserError(
                "the FedYogi sweep needs at least two files per organization to hold one out: "
                "set federated.yogi_eta and yogi_tau in the profile instead"
            )
        tok = load_tokenizer(base.path / "model")
        rows = []
        for eta, tau in tqdm(grid(cfg), desc="FedYogi sweep", disable=None):
            done = scratch / f"eta{eta:g}-tau{tau:g}.json"
            if not done.exists():
                work = scratch / done.stem
                model_dir = work / "output"
                app, rc, _ = launch.prepare(
                    cfg, "FedYogi", train, base.path, work, model_dir, yogi=(eta, tau)
                )
                launch.simulate(app, rc, artifacts.artifacts_root() / ".flwr")
                model = GPT2LMHeadModel.from_pretrained(model_dir / "model")
                curves = json.loads((model_dir / "curves.json").read_text())
                row = {
                    "eta": eta,
                    "tau": tau,
                    "held-out perplexity": _perplexity(model, tok, held, cfg),
                    "final training loss": curves["round_loss"][-1],
                }
                done.write_text(json.dumps(row))
                shutil.rmtree(work, ignore_errors=True)
            rows.append(json.loads(done.read_text()))
        table = pd.DataFrame(rows)
        ok = table[table["held-out perplexity"].map(math.isfinite)]
        if ok.empty:
            raise UserError("every pair of the FedYogi sweep diverged: widen federated.yogi_sweep")
        best = ok.loc[ok["held-out perplexity"].idxmin()]
        table["chosen"] = table.index == best.name
        (out / "best.json").write_text(json.dumps({"eta": best["eta"], "tau": best["tau"]}))
        table.to_csv(out / "sweep.csv", index=False)
        return {"eta": float(best["eta"]), "tau": float(best["tau"]), "held_out_files": len(held)}

    art = artifacts.build(STEP, config, produce, inputs, seed=cfg.seed, force=force)
    shutil.rmtree(scratch, ignore_errors=True)
    return art


def _perplexity(model, tok, texts: list[str], cfg: Config) -> float:
    from collab_lib.scoring import perplexity

    try:
        return perplexity(model, tok, texts, cfg.model.context)
    except ValueError:  # no held-out text at all
        raise UserError(
            "the FedYogi sweep's held-out files are too short to score: raise "
            "federated.yogi_sweep.holdout_fraction, or set yogi_eta and yogi_tau"
        ) from None


def ref(cfg: Config, base_ref: str, data_refs: list[str]) -> str:
    return f"{STEP}/{artifacts.artifact_key(STEP, step_config(cfg), [base_ref, *data_refs])}"


def best(art: artifacts.Artifact) -> tuple[float, float]:
    """The (eta, tau) pair the sweep chose."""
    chosen = json.loads(art.file("best.json").read_text())
    return float(chosen["eta"]), float(chosen["tau"])


def table(art: artifacts.Artifact) -> pd.DataFrame:
    """One row per (eta, tau): held-out perplexity and final training loss; best marked."""
    t = pd.read_csv(art.file("sweep.csv"))
    t["chosen"] = t["chosen"].map({True: "yes", False: ""})
    for col in ("eta", "tau"):  # as written in a profile, not rounded to the table's precision
        t[col] = t[col].map("{:g}".format)
    return t
