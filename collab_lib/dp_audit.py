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
confidence 95 %. It holds for any ε the accountant gives (a violation is a bug), and it is
usually far below it: one run, few canaries, a black-box score.
"""

from __future__ import annotations

import json
import math
import random
import string
from pathlib import Path

from collab_lib.privacy import Row

CANDIDATES = "audit_candidates.json"  # what the measuring code reads
COINS = "audit_coins.json"  # which were planted: training and :func:`bound` only
CONFIDENCE = 0.95


def draw(orgs: list[str], per_org: int, seed: int) -> tuple[list[dict], dict[str, bool]]:
    """``per_org`` random canaries per organization and a fair coin for each (seeded)."""
    rng = random.Random(f"{seed}/audit")
    candidates, coins = [], {}
    for org in orgs:
        for i in range(per_org):
            name = "".join(rng.choices(string.ascii_lowercase, k=10))
            secret = "".join(rng.choices(string.ascii_lowercase, k=16))
            cid = f"{org}/{i}"
            candidates.append({"id": cid, "organization": org, "text": f'{name} = "{secret}"\n'})
            coins[cid] = rng.random() < 0.5
    return candidates, coins


def write(out: Path, orgs: list[str], per_org: int, seed: int) -> None:
    candidates, coins = draw(orgs, per_org, seed)
    (out / CANDIDATES).write_text(json.dumps(candidates, indent=1))
    (out / COINS).write_text(json.dumps(coins))


def candidates(art) -> list[dict]:
    """Every audit candidate, planted or not (no coin), or none."""
    path = art.path / CANDIDATES
    return json.loads(path.read_text()) if path.is_file() else []


def rows(art, org: str) -> list[Row]:
    """The audit canaries planted in ``org``'s training data, one sequence each."""
    path = art.path / COINS
    if not path.is_file():
        return []
    coins = json.loads(path.read_text())
    return [Row(c["text"]) for c in candidates(art) if c["organization"] == org and coins[c["id"]]]


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


def coins(art) -> dict[str, bool]:
    """Which candidates were planted: read only after the guesses are made."""
    return json.loads((art.path / COINS).read_text())
