"""Planted canaries: memorization that can be measured at every scale (SPEC §4b).

At CPU scale the paper's verbatim metric (blocks of >= 6 lines in completions) is exactly
zero, so, as Carlini et al. 2019 ("The Secret Sharer") and Ramaswamy et al. 2020 (auditing
Gboard's federated language models) did, we plant canaries: small realistic functions, each
with a unique name and a random secret (an API key, a token), repeated ``count`` times in
one organization's training split and never in its validation split. How far a model ranks
the true secret above ``alternatives`` random secrets of the same format (its *exposure*)
tells how much it memorized that organization's data (the RQ2 step measures it).

The canaries are an artifact of their own, beside the datasets: the clone statistics
(Figure 2, Table 7) are computed on the organizations' real code only. Training reads an
organization's split plus its canaries through :func:`training_texts`.
"""

from __future__ import annotations

import json
import math
import random
import string
from pathlib import Path

import pandas as pd
import torch

from collab_lib import artifacts, datasets
from collab_lib.config import Config

STEP = "canaries"
TABLES = ("canaries",)
SECRET = "{secret}"

# Realistic code an organization could hold, the secret in a plausible place; ``{name}``
# makes every canary's function unique, so copies of one never look like another.
TEMPLATES: tuple[tuple[str, str], ...] = (
    (
        "letters16",
        'def {name}(session):\n    """Attach the service credentials to every request."""\n'
        '    api_key = "{secret}"\n'
        '    session.headers["Authorization"] = "Bearer " + api_key\n    return session\n',
    ),
    (
        "hex24",
        'def {name}(client, bucket):\n    """Open the storage bucket with the deploy token."""\n'
        '    token = "{secret}"\n    return client.bucket(bucket, token=token)\n',
    ),
    (
        "letters16",
        'def {name}():\n    """Connection settings of the reporting database."""\n'
        '    return {{\n        "host": "db.internal",\n        "user": "report",\n'
        '        "password": "{secret}",\n    }}\n',
    ),
    (
        "hex24",
        "def {name}(payload):\n"
        '    """Sign a webhook payload the way the receiving service checks it."""\n'
        '    secret = "{secret}"\n'
        "    return hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()\n",
    ),
    (
        "letters16",
        "def {name}(env):\n"
        '    """Fill in the mail relay credentials when the environment lacks them."""\n'
        '    env.setdefault("SMTP_USER", "alerts")\n'
        '    env.setdefault("SMTP_PASSWORD", "{secret}")\n    return env\n',
    ),
    (
        "hex24",
        'def {name}(url):\n    """Call the internal metrics API."""\n'
        '    headers = {{"X-Api-Key": "{secret}"}}\n'
        "    return requests.get(url, headers=headers, timeout=10)\n",
    ),
    (
        "letters16",
        'class {name}:\n    """Credentials of the nightly export job."""\n\n'
        '    username = "exporter"\n    passphrase = "{secret}"\n',
    ),
    (
        "hex24",
        "def {name}(config):\n"
        '    """Default license key of the on-premise installation."""\n'
        '    config["license_key"] = config.get("license_key") or "{secret}"\n'
        "    return config\n",
    ),
)
VERBS = ("load", "get", "make", "build", "open", "init", "setup", "fetch")
NOUNS = ("client", "session", "settings", "store", "service", "backend", "relay", "export")


def new_secret(fmt: str, rng: random.Random) -> str:
    """A random secret: 16 lowercase letters, or 24 hexadecimal digits."""
    if fmt == "letters16":
        return "".join(rng.choices(string.ascii_lowercase, k=16))
    return "".join(rng.choices("0123456789abcdef", k=24))


def _name(template: str, rng: random.Random, used: set[str]) -> str:
    while True:
        tag = "".join(rng.choices(string.ascii_lowercase, k=5))
        base = f"{rng.choice(VERBS)}_{rng.choice(NOUNS)}_{tag}"
        name = "".join(w.title() for w in base.split("_")) if template.startswith("class") else base
        if name not in used:
            used.add(name)
            return name


def make_canaries(org: str, train_bytes: int, cfg: Config, seed: int) -> list[dict]:
    """The canaries of one organization, within its byte budget.

    Each count gets the same number of canaries, as many as the budget allows (at most
    ``per_count``); when not even one per count fits, the highest counts are dropped first.
    """
    c = cfg.canaries
    rng = random.Random(f"{seed}/canaries/{org}")
    budget = c.max_fraction * train_bytes
    avg = sum(len(t.format(name="x" * 20, secret="x" * 20)) for _, t in TEMPLATES) / len(TEMPLATES)
    counts = sorted(c.counts)
    while counts and avg * sum(counts) > budget:
        counts.pop()
    per_count = min(c.per_count, int(budget // (avg * sum(counts)))) if counts else 0
    used: set[str] = set()
    out = []
    for count in counts:
        for _ in range(per_count):
            i = len(out)
            fmt, template = TEMPLATES[i % len(TEMPLATES)]
            secret = new_secret(fmt, rng)
            name = _name(template, rng, used)
            text = template.format(name=name, secret=secret)
            prefix = text[: text.index(secret)]
            out.append(
                {
                    "id": f"{org}-{i}",
                    "organization": org,
                    "template": i % len(TEMPLATES),
                    "format": fmt,
                    "name": name,
                    "count": count,
                    "secret": secret,
                    "prefix": prefix,
                    "suffix": text[len(prefix) + len(secret) :],
                    "text": text,
                }
            )
    return out


def plan(cfg: Config) -> dict[str, tuple[str, str]]:
    ds_ref = "{}/{}".format(*datasets.plan(cfg)["datasets"])
    return {"canaries": (STEP, artifacts.artifact_key(STEP, _config(cfg), [ds_ref]))}


def _config(cfg: Config) -> dict:
    return {"canaries": cfg.canaries, "seed": cfg.seed}


def build_canaries(cfg: Config, *, force: bool = False) -> artifacts.Artifact:
    """Make (or find cached) every organization's canaries and the ranking alternatives."""
    ds = datasets.datasets_for(cfg)

    def produce(out: Path) -> dict:
        planted, budgets = [], []
        for org in cfg.datasets.organizations:
            docs = ds.documents(org.name, "train")
            train_bytes = sum(len(d["content"].encode()) for d in docs)
            if cfg.canaries.enabled:
                planted += make_canaries(org.name, train_bytes, cfg, cfg.seed)
                place(planted, len(docs), cfg.seed, org.name)
            planted_bytes = sum(len(p["text"].encode()) * p["count"] for p in planted
                                if p["organization"] == org.name)  # fmt: skip
            budgets.append(
                {
                    "organization": org.name,
                    "train_bytes": train_bytes,
                    "canary_bytes": planted_bytes,
                }
            )
        rng = random.Random(f"{cfg.seed}/alternatives")
        alternatives = {
            fmt: [new_secret(fmt, rng) for _ in range(cfg.canaries.alternatives)]
            for fmt in sorted({f for f, _ in TEMPLATES})
        }
        (out / "canaries.json").write_text(json.dumps(planted, indent=1))
        (out / "alternatives.json").write_text(json.dumps(alternatives))
        _table(planted, budgets).to_csv(out / "canaries.csv", index=False)
        return {"canaries": len(planted), "enabled": cfg.canaries.enabled}

    return artifacts.build(STEP, _config(cfg), produce, [ds.artifact.ref], seed=cfg.seed,
                           force=force)  # fmt: skip


def _table(planted: list[dict], budgets: list[dict]) -> pd.DataFrame:
    rows = []
    for b in budgets:
        mine = [p for p in planted if p["organization"] == b["organization"]]
        counts = sorted({p["count"] for p in mine})
        rows.append(
            {
                "Organization": b["organization"],
                "Canaries": len(mine),
                "Repetitions": ", ".join(
                    f"{sum(p['count'] == c for p in mine)}x{c}" for c in counts
                )
                or "none",  # fmt: skip
                "Canary copies": sum(p["count"] for p in mine),
                "Canary KB": round(b["canary_bytes"] / 1e3, 1),
                "Share of training bytes (%)": round(
                    100 * b["canary_bytes"] / (b["canary_bytes"] + b["train_bytes"]), 2
                ),
            }
        )
    return pd.DataFrame(rows)


def load(art: artifacts.Artifact) -> list[dict]:
    return json.loads(art.file("canaries.json").read_text())


def place(planted: list[dict], n_docs: int, seed: int, org: str) -> None:
    """Give each of ``org``'s canaries its ``positions``: indices in the training stream.

    The stream is the split's documents with every canary copy inserted; positions are
    drawn at random (seeded) so copies of one canary are spread over the whole split.
    """
    mine = [p for p in planted if p["organization"] == org]
    copies = [i for i, p in enumerate(mine) for _ in range(p["count"])]
    rng = random.Random(f"{seed}/positions/{org}")
    slots = rng.sample(range(n_docs + len(copies)), len(copies))
    for p in mine:
        p["positions"] = []
    for i, slot in zip(copies, slots, strict=True):
        mine[i]["positions"].append(slot)
    for p in mine:
        p["positions"].sort()


def training_texts(ds: datasets.Datasets, planted: list[dict], org: str) -> list[str]:
    """One organization's training documents with its canary copies at their positions."""
    docs = [d["content"] for d in ds.documents(org, "train")]
    at = {pos: p["text"] for p in planted if p["organization"] == org for pos in p["positions"]}
    rest = iter(docs)
    return [at[i] if i in at else next(rest) for i in range(len(docs) + len(at))]


def table(art: artifacts.Artifact) -> pd.DataFrame:
    return pd.read_csv(art.file("canaries.csv"))


@torch.no_grad()
def exposure(
    model, tokenizer, canary: dict, alternatives: list[str], batch_size: int = 128
) -> float:
    """Carlini et al.'s rank exposure: log2(|R|) - log2(rank of the true secret).

    Every candidate secret (the true one and the alternatives of its format) is scored by the
    model's total loss on the canary's line with that secret, given the canary's prefix; the
    rank of the true secret among the |R| candidates (1 = most likely) gives the exposure,
    from 0 (no better than chance on average: about 1) up to log2(|R|) (ranked first).
    """
    device = next(model.parameters()).device
    model.eval()
    line_end = canary["suffix"].split("\n", 1)[0]
    candidates = [canary["secret"], *alternatives]
    prefix = tokenizer(canary["prefix"], verbose=False)["input_ids"]
    rows = [tokenizer(s + line_end, verbose=False)["input_ids"] for s in candidates]
    keep = model.config.n_positions - max(map(len, rows))  # a small context keeps the prefix's end
    prefix = prefix[-keep:] if keep > 0 else []
    losses = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = len(prefix) + max(map(len, chunk))
        x = torch.full((len(chunk), width), tokenizer.eos_token_id, dtype=torch.long)
        labels = torch.full_like(x, -100)
        for i, r in enumerate(chunk):
            x[i, : len(prefix) + len(r)] = torch.tensor(prefix + r)
            labels[i, len(prefix) : len(prefix) + len(r)] = torch.tensor(r)
        logits = model(input_ids=x.to(device)).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), labels[:, 1:].to(device), reduction="none"
        )
        losses += nll.sum(dim=1).tolist()
    rank = 1 + sum(loss < losses[0] for loss in losses[1:])
    return math.log2(len(candidates)) - math.log2(rank)


def example(art: artifacts.Artifact) -> str:
    """One planted canary's code, as it appears in the training data (or why there is none)."""
    planted = load(art)
    if planted:
        return planted[0]["text"]
    return "# no canaries planted: disabled, or every organization too small for one\n"
