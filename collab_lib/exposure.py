"""Canary exposure and greedy extraction (Carlini et al. 2019): memorization at any scale.

At CPU scale the paper's verbatim metric is zero, so every model also scores the secrets
planted in the organizations' training data (:mod:`collab_lib.canaries`): the rank of each
secret among random secrets of its format, scored on the secret's tokens after the canary's
prefix, as ``log2 |R| - log2 rank``, and the extrapolated exposure of their §4.3 (a
skew-normal fitted to the alternatives' losses), each beside the base model's; and whether
greedy decoding from a canary's prefix emits its secret, or any planted secret at all.
Cached per model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats
from tqdm import tqdm

from collab_lib import artifacts, canaries, sampling, verbatim
from collab_lib.collaboration import BASE
from collab_lib.config import Config

EXPOSURE_STEP = "exposure"
CANARY_UNITS = "units_canaries.csv"  # exposure per model and canary: the findings' units


def measure_exposures(cfg: Config, models, can, out: Path, force: bool) -> list:
    """Table ``exposure`` from every model's canary scores; returns their refs."""
    planted = canaries.planted(can)
    alternatives = json.loads(can.file("alternatives.json").read_text())
    exposures, parts = {}, []
    for name in tqdm(list(models), desc="canary exposure"):
        art = exposure_artifact(cfg, models[name], can, planted, alternatives, force)
        parts.append(art.ref)
        exposures[name] = pd.read_csv(art.file("exposure.csv"))
    exposure_table(exposures).to_csv(out / "exposure.csv", index=False)
    per_canary = pd.concat([e.assign(model=n) for n, e in exposures.items()], ignore_index=True)
    cols = [
        "model",
        "canary",
        "organization",
        "count",
        "rank_exposure",
        "extrapolated_exposure",
        "extracted",
    ]
    per_canary.reindex(columns=cols).to_csv(out / CANARY_UNITS, index=False)
    return parts


def rank_exposure(secret_loss: float, alternative_losses: np.ndarray) -> float:
    """Carlini et al. 2019: log2 |R| - log2 rank, R the secret and its alternatives."""
    rank = 1 + int((alternative_losses < secret_loss).sum())
    return math.log2(len(alternative_losses) + 1) - math.log2(rank)


def extrapolated_exposure(secret_loss: float, alternative_losses: np.ndarray) -> float:
    """Carlini et al. 2019 §4.3: -log2 P(loss <= the secret's) under a skew-normal fitted to
    the alternatives' losses; unlike the rank, it does not saturate at log2 |R|.

    The skew-normal is fitted by the method of moments (Azzalini's closed form): thousands of
    fits in milliseconds, where maximum likelihood takes a tenth of a second each. Where the
    sample is more skewed than a skew-normal can be (|skewness| >= 0.99) the fit would start
    abruptly and put no mass in the lower tail, so the normal of the same mean and spread is
    used; it is also the tail's fallback wherever the fitted one underflows.
    """
    x = np.asarray(alternative_losses, dtype=float)
    mean, sd = x.mean(), x.std()
    if sd == 0:
        return 0.0 if secret_loss >= mean else math.inf
    gamma = float(stats.skew(x))
    log_p = -math.inf
    if abs(gamma) < 0.99:
        g = abs(gamma) ** (2 / 3)
        delta = math.copysign(
            math.sqrt(math.pi / 2 * g / (g + ((4 - math.pi) / 2) ** (2 / 3))), gamma
        )
        omega = sd / math.sqrt(1 - 2 * delta**2 / math.pi)
        xi = mean - omega * delta * math.sqrt(2 / math.pi)
        alpha = delta / math.sqrt(1 - delta**2)
        log_p = stats.skewnorm.logcdf(secret_loss, alpha, xi, omega)
    if not np.isfinite(log_p):
        log_p = stats.norm.logcdf(secret_loss, mean, sd)
    return float(-log_p / math.log(2))


SCORE_COLUMNS = [  # secret_scores' rows
    "canary",
    "organization",
    "count",
    "format",
    "secret_loss",
    "candidates",
    "rank_exposure",
    "extrapolated_exposure",
]
EXPOSURE_COLUMNS = [*SCORE_COLUMNS, "greedy", "extracted", "leaked"]


def exposure_artifact(cfg: Config, model_art, can_art, planted, alternatives, force: bool):
    """One model's exposure and greedy extraction of every canary (``exposure.csv``)."""
    n_alt = cfg.memorization.alternatives
    config = {
        "alternatives": n_alt,
        "method": "secret tokens after the prefix",
        "fit": "moments, else normal",
        "sampler": sampling.VERSION,
        "version": verbatim.VERSION,
    }

    def produce(out: Path) -> dict:
        from collab_lib.scoring import load_model

        model, tok = load_model(model_art)
        secrets = {p["secret"]: p["id"] for p in planted}
        greedy = greedy_secrets(model, tok, planted)
        rows = []
        for p, text, scores in zip(
            planted, greedy, secret_scores(model, tok, planted, alternatives, n_alt), strict=True
        ):
            leaked = [i for s, i in secrets.items() if s in text]
            rows.append(
                scores
                | {
                    "greedy": text,
                    "extracted": text.startswith(p["secret"]),
                    "leaked": " ".join(leaked),
                }
            )
        pd.DataFrame(rows, columns=EXPOSURE_COLUMNS).to_csv(out / "exposure.csv", index=False)
        return {"canaries": len(rows)}

    return artifacts.build(
        EXPOSURE_STEP, config, produce, [model_art.ref, can_art.ref], force=force
    )


def secret_scores(
    model, tok, planted: list[dict], alternatives: dict, n_alt: int, context: int | None = None
) -> list[dict]:
    """Each canary's secret loss after its prefix, ranked among the first ``n_alt``
    alternatives of its format: its rank exposure and extrapolated exposure."""
    from collab_lib.scoring import suffix_losses

    rows = []
    for p in planted:
        alts = alternatives[p["format"]][:n_alt]
        losses = suffix_losses(model, tok, p["prefix"], [p["secret"], *alts], context=context)
        rows.append(
            {
                "canary": p["id"],
                "organization": p["organization"],
                "count": p["count"],
                "format": p["format"],
                "secret_loss": losses[0],
                "candidates": len(losses),
                "rank_exposure": rank_exposure(losses[0], losses[1:]),
                "extrapolated_exposure": extrapolated_exposure(losses[0], losses[1:]),
            }
        )
    return rows


def greedy_secrets(model, tok, planted: list[dict]) -> list[str]:
    """Greedy decoding from each canary's prefix, as long as its secret and two tokens more."""
    if not planted:
        return []
    n = max(len(tok(p["secret"], verbose=False)["input_ids"]) for p in planted) + 2
    room = model.config.n_positions - n
    prompts = [tok(p["prefix"], verbose=False)["input_ids"][-room:] for p in planted]
    from collab_lib.decoding import generate

    sc = sampling.SamplingConfig(temperature=0, max_new_tokens=n)
    ids = generate(model, prompts, sc, eos_id=tok.eos_token_id)
    return [tok.decode(g, skip_special_tokens=True) for g in ids]


def exposure_table(exposures: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per model, organization and repetition count: mean exposures, the same minus the base
    model's on the same canaries, and the share of canaries whose secret greedy decoding
    emits (``extracted``) and that emit any planted secret (``leaked``)."""
    base = exposures[BASE].set_index("canary")
    rows = []
    columns = [
        "model",
        "organization",
        "count",
        "canaries",
        "candidates",
        "rank exposure",
        "rank exposure - base",
        "extrapolated exposure",
        "extrapolated exposure - base",
        "extracted (%)",
        "leaked (%)",
    ]
    for name, frame in exposures.items():
        f = frame.set_index("canary")
        for (org, count), g in f.groupby(["organization", "count"], sort=True):
            b = base.loc[g.index]
            rank, extra = g["rank_exposure"], g["extrapolated_exposure"]
            rows.append(
                {
                    "model": name,
                    "organization": org,
                    "count": int(count),
                    "canaries": len(g),
                    "candidates": int(g["candidates"].iloc[0]),
                    "rank exposure": rank.mean(),
                    "rank exposure - base": (rank - b["rank_exposure"]).mean(),
                    "extrapolated exposure": extra.mean(),
                    "extrapolated exposure - base": (extra - b["extrapolated_exposure"]).mean(),
                    "extracted (%)": 100 * g["extracted"].mean(),
                    "leaked (%)": 100 * _nonempty(g["leaked"]).mean(),
                }
            )
    return pd.DataFrame(rows, columns=columns)


def _nonempty(texts: pd.Series) -> pd.Series:
    """True where a text column (read back from CSV: empty cells are NaN) has text."""
    return texts.astype("string").fillna("").str.len() > 0
