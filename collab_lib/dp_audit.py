"""An empirical lower bound on ε from one training run (Steinke, Nasr and Jagielski 2023),
one that can contradict the accountant (:mod:`collab_lib.privacy`).

The canaries step draws ``privacy.audit_canaries`` random canaries per organization (a line
``<name> = "<secret>"`` of random letters) and flips a fair coin for each: heads, it is
planted in that organization's training data as one sequence of its own
(:class:`collab_lib.privacy.Row`); tails, it is never seen. The coins are written to a file
of their own, which training reads and the measuring code does not: :func:`guesses` sees the
candidates and a model only. It scores each candidate by how much better the model predicts
it than the base model does (the reference removes each string's own difficulty), guesses
"planted" for the ``audit_guesses / 2`` share most improved and "not planted" for the same
share least improved, and abstains on the rest. Only then does :func:`bound` read the coins.

If training is (ε, δ)-DP for the neighbouring relation of one sequence, the number of right
guesses among r is, up to a δ term, no more than Binomial(r, e^ε / (1 + e^ε)) (Steinke et
al. 2023, the p-value of their Appendix D); the bound is the largest ε that this rejects at
confidence 95 %. Where the accountant is right, the bound stays below its ε (but for the
test's 5 % chance); a bound above it contradicts the accountant, or our implementation of
DP-SGD. It is usually far below: one run, few canaries, a black-box score.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from collab_lib import artifacts, canaries, collaboration, privacy
from collab_lib.collaboration import ModelSpec
from collab_lib.config import Config

CONFIDENCE = 0.95


def losses(model, tok, texts: list[str], batch_size: int = 64) -> list[float]:
    """Each text's summed loss (nats) as the first tokens of a sequence, as it was trained."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    model.eval()
    ids = [tok(t, verbose=False)["input_ids"] for t in texts]
    out: list[float] = []
    with torch.no_grad():
        for start in range(0, len(ids), batch_size):
            chunk = ids[start : start + batch_size]
            width = max(map(len, chunk))
            x = torch.full((len(chunk), width), tok.eos_token_id, dtype=torch.long)
            target = torch.full_like(x, -100)
            for i, r in enumerate(chunk):
                x[i, : len(r)] = torch.tensor(r)
                target[i, : len(r) - 1] = torch.tensor(r[1:])
            logits = model(input_ids=x.to(device)).logits.float()
            nll = F.cross_entropy(logits.transpose(1, 2), target.to(device), reduction="none")
            out += nll.sum(1).tolist()
    return out


def guesses(scores: dict[str, float], share: float) -> dict[str, int]:
    """+1 (planted) for the ``share / 2`` of candidates with the lowest score (the most
    improved over the base model), -1 for the ``share / 2`` highest, 0 (abstain) between."""
    order = sorted(scores, key=lambda c: (scores[c], c))
    k = int(share * len(order) / 2)
    return {c: (1 if i < k else -1 if i >= len(order) - k else 0) for i, c in enumerate(order)}


def p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """An upper bound on P[v or more right of r guesses] under (ε, δ)-DP with ``m`` canaries
    (Steinke et al. 2023, Appendix D): the binomial tail plus the δ term, 2 m δ times the
    largest (P[v-i <= Bin < v]) / i."""
    from scipy.stats import binom

    q = 1 / (1 + math.exp(-eps))
    tail = binom.sf(v - 1, r, q)
    alpha, mass = 0.0, 0.0
    for i in range(1, v + 1):
        mass += binom.pmf(v - i, r, q)
        alpha = max(alpha, mass / i)
    return min(float(tail + alpha * delta * 2 * m), 1.0)


def epsilon_lower(m: int, r: int, v: int, delta: float, confidence: float = CONFIDENCE) -> float:
    """The largest ε whose (ε, δ)-DP the observed ``v`` of ``r`` rejects (0: none)."""
    beta = 1 - confidence
    if r == 0 or p_value(m, r, v, 0.0, delta) >= beta:
        return 0.0
    low, high = 0.0, 1.0
    while p_value(m, r, v, high, delta) < beta:
        low, high = high, high * 2
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (mid, high) if p_value(m, r, v, mid, delta) < beta else (low, mid)
    return low


def bound(guessed: dict[str, int], coins: dict[str, bool], delta: float) -> dict:
    """The audit's outcome: canaries, guesses, right guesses and the ε lower bound."""
    made = {c: g for c, g in guessed.items() if g}
    right = sum((g > 0) == coins[c] for c, g in made.items())
    m = len(guessed)
    return {
        "canaries": m,
        "planted": sum(coins[c] for c in guessed),
        "guesses": len(made),
        "right": right,
        "epsilon lower bound": epsilon_lower(m, len(made), right, delta),
    }


# --------------------------------------------------------------------------- the step

STEP = "privacy"
VERSION = 1
COLUMNS = [
    "Model",
    "DP",
    "Noise multiplier",
    "Clip",
    "Sampling rate",
    "Steps",
    "delta",
    "epsilon (accountant)",
    "Audit canaries",
    "Planted",
    "Guesses",
    "Right",
    "epsilon lower bound (audit)",
]
UNITS = "audit_units.csv"  # one row per model and candidate
UNIT_COLUMNS = ("model", "candidate", "score", "guess", "planted")


def audited(cfg: Config) -> list[ModelSpec]:
    """The models the step audits and accounts for: every curve model (the study's models on
    all organizations, the ensemble and the DP twins)."""
    from collab_lib.curves import curve_models

    return curve_models(cfg)


def _step_config(cfg: Config) -> dict:
    return {"privacy": cfg.privacy, "version": VERSION}


def _refs(cfg: Config, upstream: dict) -> list[str]:
    names = [collaboration.BASE, *(s.name for s in audited(cfg))]
    return [artifacts.ref(upstream[n]) for n in ("canaries", *names)]


def plan(cfg: Config, upstream: dict) -> dict[str, tuple[str, str]]:
    """The privacy table's key: the privacy settings, the canaries and the audited models."""
    return {STEP: (STEP, artifacts.artifact_key(STEP, _step_config(cfg), _refs(cfg, upstream)))}


def build_privacy(cfg: Config, planned: dict, *, force: bool = False) -> artifacts.Artifact:
    """Table ``privacy``: each audited model's ε from the accountant (DP twins) and from the
    one-run audit, and the audit's units."""
    models = collaboration.load(cfg, planned)
    can = canaries.require(cfg, planned)
    specs = audited(cfg)

    def produce(out: Path) -> dict:
        cands = canaries.audit_candidates(can)
        scores = _scores(models, specs, cands) if cands else {}
        guessed = {m: guesses(s, cfg.privacy.audit_guesses) for m, s in scores.items()}
        flips = canaries.audit_coins(can) if cands else {}  # read only now: every guess is made
        rows = [_row(cfg, spec, models[spec.name], guessed.get(spec.name), flips) for spec in specs]
        table = pd.DataFrame(rows, columns=COLUMNS).astype({"Steps": "Int64"})
        table.to_csv(out / "privacy.csv", index=False)
        units = [
            {"model": m, "candidate": c, "score": x, "guess": guessed[m][c], "planted": flips[c]}
            for m, per in scores.items()
            for c, x in per.items()
        ]
        pd.DataFrame(units, columns=[*UNIT_COLUMNS]).to_csv(out / UNITS, index=False)
        return {"audit canaries": len(cands), "models": len(specs)}

    refs = _refs(cfg, planned)
    return artifacts.build(STEP, _step_config(cfg), produce, refs, seed=cfg.seed, force=force)


def _scores(models: dict, specs: list[ModelSpec], cands: list[dict]) -> dict[str, dict]:
    """Each audited model's score of the candidates of its own organizations (a canary of an
    organization it never trained on can only weaken its bound): its loss minus the base
    model's (the reference takes out each random string's own difficulty). No coin is read
    here."""
    from collab_lib.scoring import load_model

    base, tok = load_model(models[collaboration.BASE])
    ref_losses = losses(base, tok, [c["text"] for c in cands])
    reference = {c["id"]: x for c, x in zip(cands, ref_losses, strict=True)}
    out = {}
    for spec in tqdm(specs, desc="audit", disable=None):
        own = [c for c in cands if c["organization"] in spec.orgs]  # what it could have seen
        model, tok = load_model(models[spec.name])
        mine = losses(model, tok, [c["text"] for c in own])
        out[spec.name] = {c["id"]: a - reference[c["id"]] for c, a in zip(own, mine, strict=True)}
    return out


def _row(cfg: Config, spec: ModelSpec, art, guessed: dict | None, flips: dict) -> dict:
    audit = bound(guessed, flips, cfg.privacy.delta) if guessed else {}
    account = accountant(cfg, spec, art) if spec.privacy else {}
    return {
        "Model": spec.name,
        "DP": spec.privacy[0] if spec.privacy else "none",
        "delta": cfg.privacy.delta if spec.privacy else math.nan,
        "Audit canaries": audit.get("canaries", 0),
        "Planted": audit.get("planted", 0),
        "Guesses": audit.get("guesses", 0),
        "Right": audit.get("right", 0),
        "epsilon lower bound (audit)": audit.get("epsilon lower bound", math.nan),
        "epsilon (accountant)": math.inf,
    } | account


def accountant(cfg: Config, spec: ModelSpec, art) -> dict:
    """ε of a DP twin, from its own record (the mechanism in its key, the steps it took, the
    sequences it sampled from). A federated model's organizations each run their own DP-SGD:
    its ε is the largest of theirs (the smallest organization's, whose rate is highest)."""
    dp = art.manifest["config"]["dp"]
    noise, delta = dp["noise"], cfg.privacy.delta
    if dp["level"] == privacy.ORGANIZATION:  # every organization, every round
        rate, steps = 1.0, art.metrics["rounds"]
    elif spec.setting == "federated":
        examples = json.loads(art.file("curves.json").read_text())["organization_examples"]
        rounds, batch = art.metrics["rounds"], dp["batch"]
        per = {
            o: (privacy.sampling_rate(batch, n), rounds * privacy.steps_per_epoch(n, batch))
            for o, n in examples.items()
        }
        eps = {o: privacy.epsilon(q, noise, t, delta) for o, (q, t) in per.items()}
        rate, steps = per[max(eps, key=eps.get)]
    else:
        m = art.metrics
        rate, steps = privacy.sampling_rate(dp["batch"], m["sequences"]), m["optimizer_steps"]
    return {
        "Noise multiplier": noise,
        "Clip": dp["clip"],
        "Sampling rate": rate,
        "Steps": steps,
        "epsilon (accountant)": privacy.epsilon(rate, noise, steps, delta),
    }


def table(art) -> pd.DataFrame:
    return art.table("privacy")
