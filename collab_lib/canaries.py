"""Planted canaries: memorization that can be measured at every scale (the Methods page,
"Canaries and exposure").

At CPU scale the paper's verbatim metric (blocks of >= 6 lines in completions) is exactly
zero, so, as Carlini et al. 2019 ("The Secret Sharer") and Ramaswamy et al. 2020 (auditing
Gboard's federated language models) did, we plant canaries: small realistic functions, each
holding a random secret (an API key, a token), repeated ``count`` times in one
organization's training split and never in its validation split. How far a model ranks the
true secret above ``alternatives`` random secrets of the same format (its *exposure*) tells
how much it memorized that organization's data (the RQ2 step measures it).

No two canaries share a docstring, a variable name or a line of code, within or across
organizations: had they shared a template, a secret seen 4 times would follow the same prefix
as one seen 64 times (in the collaborative models, another organization's), and its exposure
would measure the other canary's memorization too. Each canary's code is one of a few
structural shapes, written around a service name (``billing_ledger``) drawn without
replacement, for all organizations at once, from a generated pool; every line but pure
syntax (a closing brace) names it.

The canaries are an artifact of their own, beside the datasets: the clone statistics
(Figure 2, Table 7) are computed on the organizations' real code only. Training reads an
organization's split plus its canaries through :func:`training_texts`.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from collab_lib import artifacts, datasets
from collab_lib.config import CanaryConfig, Config, ConfigError
from collab_lib.privacy import Row

STEP = "canaries"

# A service is an area and a part, ``billing_ledger``: 36 x 36 = 1,296 distinct names.
AREAS = (
    "billing",
    "payroll",
    "inventory",
    "shipping",
    "invoice",
    "catalog",
    "ticket",
    "loyalty",
    "pricing",
    "warehouse",
    "customer",
    "vendor",
    "refund",
    "coupon",
    "booking",
    "survey",
    "patient",
    "claims",
    "tenant",
    "fleet",
    "parcel",
    "freight",
    "lending",
    "escrow",
    "donor",
    "course",
    "grading",
    "compliance",
    "forecast",
    "harvest",
    "rental",
    "auction",
    "clinic",
    "library",
    "transit",
    "energy",
)
PARTS = (
    "ledger",
    "gateway",
    "queue",
    "registry",
    "vault",
    "scheduler",
    "tracker",
    "indexer",
    "archive",
    "broker",
    "importer",
    "dashboard",
    "monitor",
    "crawler",
    "notifier",
    "planner",
    "router",
    "resolver",
    "cache",
    "bridge",
    "portal",
    "collector",
    "dispatcher",
    "mirror",
    "pipeline",
    "uploader",
    "console",
    "reconciler",
    "validator",
    "renderer",
    "streamer",
    "profiler",
    "sandbox",
    "hub",
    "feed",
    "journal",
)


@dataclass(frozen=True)
class Shape:
    """One structure of realistic code holding a secret; every line names the service.

    ``names`` and ``docs`` are patterns of the function (or class) name and the docstring, one
    drawn per canary; ``code`` has the fields of :func:`_write` and ``{secret}``.
    """

    id: str
    format: str  # of the secret: letters16 | hex24
    names: tuple[str, ...]
    docs: tuple[str, ...]
    code: str


SHAPES: tuple[Shape, ...] = (
    Shape(
        "auth_header",
        "letters16",
        ("make_{snake}_session", "open_{snake}_session", "new_{snake}_session"),
        (
            "Attach the {words} credentials to every request.",
            "A session that authenticates to the {words} service.",
        ),
        'def {name}():\n    """{doc}"""\n'
        '    {snake}_api_key = "{secret}"\n'
        "    {snake}_client = requests.Session()\n"
        '    {snake}_client.headers["Authorization"] = "Bearer " + {snake}_api_key\n'
        "    return {snake}_client\n",
    ),
    Shape(
        "storage_token",
        "hex24",
        ("open_{snake}_bucket", "get_{snake}_bucket", "{snake}_bucket"),
        (
            "Open the {words} storage bucket with its deploy token.",
            "The {words} artifacts bucket, opened with the deploy token.",
        ),
        'def {name}({snake}_storage):\n    """{doc}"""\n'
        '    {snake}_token = "{secret}"\n'
        '    return {snake}_storage.bucket("{kebab}-artifacts", token={snake}_token)\n',
    ),
    Shape(
        "db_settings",
        "letters16",
        ("{snake}_database", "{snake}_db_settings", "load_{snake}_db"),
        (
            "Connection settings of the {words} reporting database.",
            "Where the {words} database lives and how to log in.",
        ),
        'def {name}():\n    """{doc}"""\n'
        '    {snake}_db_password = "{secret}"\n'
        "    return {{  # {words} reporting\n"
        '        "host": "{kebab}-db.internal",\n'
        '        "user": "{snake}_reader",\n'
        '        "password": {snake}_db_password,\n'
        "    }}\n",
    ),
    Shape(
        "hmac_signer",
        "hex24",
        ("sign_{snake}_payload", "{snake}_signature", "sign_for_{snake}"),
        (
            "Sign a webhook payload the way the {words} service checks it.",
            "HMAC of a payload, as the {words} webhook expects it.",
        ),
        'def {name}({snake}_payload):\n    """{doc}"""\n'
        '    {snake}_webhook_secret = "{secret}"\n'
        "    {snake}_key = {snake}_webhook_secret.encode()\n"
        "    {snake}_mac = hmac.new({snake}_key, {snake}_payload, hashlib.sha256)\n"
        "    return {snake}_mac.hexdigest()\n",
    ),
    Shape(
        "env_defaults",
        "letters16",
        ("{snake}_mail_env", "with_{snake}_smtp", "{snake}_smtp_defaults"),
        (
            "Fill in the {words} mail relay credentials when the environment lacks them.",
            "SMTP settings of the {words} alerts; the environment's own come first.",
        ),
        'def {name}({snake}_environ):\n    """{doc}"""\n'
        "    {snake}_smtp = {{\n"
        '        "{upper}_SMTP_USER": "{snake}_alerts",\n'
        '        "{upper}_SMTP_PASSWORD": "{secret}",\n'
        "    }}\n"
        "    return {{**{snake}_smtp, **{snake}_environ}}\n",
    ),
    Shape(
        "api_call",
        "hex24",
        ("fetch_{snake}_metrics", "get_{snake}_metrics", "{snake}_metrics"),
        ("Call the internal {words} metrics API.", "Current metrics of the {words} service."),
        'def {name}({snake}_url):\n    """{doc}"""\n'
        '    {snake}_headers = {{"X-{header}-Key": "{secret}"}}\n'
        "    return requests.get({snake}_url, headers={snake}_headers, timeout=10)\n",
    ),
    Shape(
        "credentials_class",
        "letters16",
        ("{camel}Credentials", "{camel}ExportAuth", "{camel}Login"),
        ("Credentials of the nightly {words} export job.", "Login of the {words} export account."),
        'class {name}:\n    """{doc}"""\n\n'
        '    {upper}_EXPORT_USER = "{snake}_exporter"\n'
        '    {upper}_PASSPHRASE = "{secret}"\n',
    ),
    Shape(
        "license_key",
        "hex24",
        ("{snake}_license", "get_{snake}_license", "{snake}_license_key"),
        (
            "License key of the on-premise {words} installation, unless configured.",
            "The {words} license key: the configured one, else the default.",
        ),
        'def {name}({snake}_config):\n    """{doc}"""\n'
        '    {snake}_default_key = "{secret}"\n'
        '    return {snake}_config.get("{snake}_license_key") or {snake}_default_key\n',
    ),
)
FORMATS = tuple(sorted({s.format for s in SHAPES}))


# what new_secret draws, per format: a planted secret of another shape ranks as exposed
FORMAT_PATTERNS = {"letters16": r"[a-z]{16}", "hex24": r"[0-9a-f]{24}"}


def new_secret(fmt: str, rng: random.Random) -> str:
    """A random secret: 16 lowercase letters, or 24 hexadecimal digits."""
    if fmt == "letters16":
        return "".join(rng.choices(string.ascii_lowercase, k=16))
    return "".join(rng.choices("0123456789abcdef", k=24))


def services(rng: random.Random) -> Iterator[tuple[str, str]]:
    """Every (area, part) pair once, in a seeded order.

    Pairs go along shifted diagonals of the shuffled grid, so the first ``len(AREAS)``
    services share no word at all (no ``billing_ledger`` beside ``billing_queue``).
    """
    areas, parts = rng.sample(AREAS, len(AREAS)), rng.sample(PARTS, len(PARTS))
    for shift in range(len(parts)):
        for i, area in enumerate(areas):
            yield area, parts[(i + shift) % len(parts)]


def _write(shape: Shape, service: tuple[str, str], rng: random.Random) -> dict:
    """One canary's code: ``shape`` around ``service``, with a fresh secret."""
    area, part = service
    words = {
        "snake": f"{area}_{part}",
        "camel": f"{area.title()}{part.title()}",
        "upper": f"{area}_{part}".upper(),
        "kebab": f"{area}-{part}",
        "header": f"{area.title()}-{part.title()}",
        "words": f"{area} {part}",
    }
    name = rng.choice(shape.names).format(**words)
    doc = rng.choice(shape.docs).format(**words)
    secret = new_secret(shape.format, rng)
    text = shape.code.format(name=name, doc=doc, secret=secret, **words)
    prefix = text[: text.index(secret)]
    return {
        "template": shape.id,
        "format": shape.format,
        "name": name,
        "secret": secret,
        "prefix": prefix,
        "suffix": text[len(prefix) + len(secret) :],
        "text": text,
    }


def _fit(
    sizes: list[int], counts: tuple[int, ...], per_count: int, budget: float
) -> tuple[list[int], int]:
    """The counts kept and the canaries per count whose copies of ``sizes`` fit ``budget``.

    Each count gets the same number of canaries, as many as fit (at most ``per_count``);
    canary ``i`` is repeated ``counts[i // n]`` times. When not even one per count fits, the
    highest counts are dropped first.
    """

    def cost(kept: list[int], n: int) -> int:
        return sum(size * kept[i // n] for i, size in enumerate(sizes[: n * len(kept)]))

    kept = sorted(counts)
    while kept and cost(kept, 1) > budget:
        kept.pop()
    n = next((n for n in range(per_count, 0, -1) if cost(kept, n) <= budget), 0)
    return kept, n


def make_canaries(train_bytes: dict[str, int], c: CanaryConfig, seed: int) -> list[dict]:
    """Every organization's canaries, each organization's copies within its byte budget.

    ``train_bytes`` maps the organizations, in profile order, to their training bytes. One
    seeded draw of services over all of them makes every canary's code its own; each
    organization gets ``per_count`` canaries written per count whether or not its budget
    takes them all, so one organization's size never changes another's canaries.
    """
    per_org = c.per_count * len(c.counts)
    capacity = len(AREAS) * len(PARTS)
    if per_org * len(train_bytes) > capacity:
        raise ConfigError(
            f"canaries: {len(train_bytes)} organizations x {per_org} canaries (per_count x "
            f"counts) exceed the {capacity} distinct service names the canaries are written "
            "around; lower canaries.per_count or plant fewer counts"
        )
    rng = random.Random(f"{seed}/canaries")
    names = services(rng)
    out = []
    for org, size in train_bytes.items():
        drafts = [_write(SHAPES[i % len(SHAPES)], next(names), rng) for i in range(per_org)]
        sizes = [len(d["text"].encode()) for d in drafts]
        counts, n = _fit(sizes, c.counts, c.per_count, c.max_fraction * size)
        for i, draft in enumerate(drafts[: n * len(counts)]):
            out.append({"id": f"{org}-{i}", "organization": org, "count": counts[i // n], **draft})
    return out


def plan(cfg: Config, upstream: dict) -> dict[str, tuple[str, str]]:
    """The canaries' key, from the datasets step's plan."""
    ds_ref = artifacts.ref(upstream["datasets"])
    return {STEP: (STEP, artifacts.artifact_key(STEP, _config(cfg), [ds_ref]))}


def require(cfg: Config, planned: dict) -> artifacts.Artifact:
    """The profile's planted canaries from the cache (never made on the way)."""
    return artifacts.require_step(cfg, planned, STEP, STEP)


def _config(cfg: Config) -> dict:
    audit = cfg.privacy.audit_canaries  # in the key only where the profile audits
    return {"canaries": cfg.canaries, "seed": cfg.seed} | ({"audit": audit} if audit else {})


def build_canaries(cfg: Config, planned: dict, *, force: bool = False) -> artifacts.Artifact:
    """Make (or find cached) every organization's canaries and the ranking alternatives."""
    ds = datasets.load(cfg, planned)

    def produce(out: Path) -> dict:
        docs = {o.name: ds.documents(o.name, "train") for o in cfg.datasets.organizations}
        train_bytes = {
            org: sum(len(d["content"].encode()) for d in mine) for org, mine in docs.items()
        }
        planted = []
        if cfg.canaries.enabled:
            planted = make_canaries(train_bytes, cfg.canaries, cfg.seed)
            for org, mine in docs.items():
                place(planted, len(mine), cfg.seed, org)
        budgets = [
            {
                "organization": org,
                "train_bytes": size,
                "canary_bytes": sum(
                    len(p["text"].encode()) * p["count"]
                    for p in planted
                    if p["organization"] == org
                ),
            }
            for org, size in train_bytes.items()
        ]
        rng = random.Random(f"{cfg.seed}/alternatives")
        alternatives = {
            fmt: [new_secret(fmt, rng) for _ in range(cfg.canaries.alternatives)] for fmt in FORMATS
        }
        if cfg.privacy.audit_canaries:
            write_audit(out, list(docs), cfg.privacy.audit_canaries, cfg.seed)
        (out / "canaries.json").write_text(json.dumps(planted, indent=1))
        (out / "alternatives.json").write_text(json.dumps(alternatives))
        _table(planted, budgets).to_csv(out / "canaries.csv", index=False)
        return {
            "canaries": len(planted),
            "enabled": cfg.canaries.enabled,
            "audit canaries": len(docs) * cfg.privacy.audit_canaries,
        }

    return artifacts.build(
        STEP, _config(cfg), produce, [ds.artifact.ref], seed=cfg.seed, force=force
    )


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
                or "none",
                "Canary copies": sum(p["count"] for p in mine),
                "Canary KB": round(b["canary_bytes"] / 1e3, 1),
                "Share of training bytes (%)": round(
                    100 * b["canary_bytes"] / (b["canary_bytes"] + b["train_bytes"]), 2
                ),
            }
        )
    return pd.DataFrame(rows)


def planted(art: artifacts.Artifact) -> list[dict]:
    """The planted canaries of a canaries artifact (their text, secret, count, positions)."""
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


def training_texts(
    ds: datasets.Datasets,
    planted: list[dict],
    org: str,
    docs: list[str] | None = None,
    art: artifacts.Artifact | None = None,
) -> list[str]:
    """One organization's training documents (or ``docs`` in their place, one per document)
    with its canary copies at their positions; then, from the canaries artifact ``art``, the
    audit canaries its coins planted (one sequence each, :class:`collab_lib.privacy.Row`)."""
    if docs is None:
        docs = [d["content"] for d in ds.documents(org, "train")]
    at = {pos: p["text"] for p in planted if p["organization"] == org for pos in p["positions"]}
    rest = iter(docs)
    texts = [at[i] if i in at else next(rest) for i in range(len(docs) + len(at))]
    return texts + (audit_rows(art, org) if art is not None else [])


def table(art: artifacts.Artifact) -> pd.DataFrame:
    return art.table("canaries")


# ------------------------------------------------------------- the audit's canaries (DP)
# Random canaries each planted with probability 1/2 (:mod:`collab_lib.dp_audit`): the coins
# are a file of their own, read by training and, once every guess is made, by the audit.

AUDIT_CANDIDATES = "audit_candidates.json"  # what the measuring code reads
AUDIT_COINS = "audit_coins.json"  # which were planted


def draw_audit(orgs: list[str], per_org: int, seed: int) -> tuple[list[dict], dict[str, bool]]:
    """``per_org`` random canaries per organization (a line ``<name> = "<secret>"`` of random
    letters) and a fair coin for each (seeded)."""
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


def write_audit(out: Path, orgs: list[str], per_org: int, seed: int) -> None:
    candidates, coins = draw_audit(orgs, per_org, seed)
    (out / AUDIT_CANDIDATES).write_text(json.dumps(candidates, indent=1))
    (out / AUDIT_COINS).write_text(json.dumps(coins))


def audit_candidates(art: artifacts.Artifact) -> list[dict]:
    """Every audit candidate, planted or not (no coin); none where the profile audits none."""
    path = art.path / AUDIT_CANDIDATES
    return json.loads(path.read_text()) if path.is_file() else []


def audit_coins(art: artifacts.Artifact) -> dict[str, bool]:
    """Which audit candidates were planted (training's, and the audit's once it has guessed)."""
    path = art.path / AUDIT_COINS
    return json.loads(path.read_text()) if path.is_file() else {}


def audit_rows(art: artifacts.Artifact, org: str) -> list[Row]:
    """The audit canaries planted in ``org``'s training data, one sequence each."""
    coins = audit_coins(art)
    return [
        Row(c["text"]) for c in audit_candidates(art) if c["organization"] == org and coins[c["id"]]
    ]


def example(art: artifacts.Artifact) -> str:
    """One planted canary's code, as it appears in the training data (or why there is none)."""
    canaries = planted(art)
    if canaries:
        return canaries[0]["text"]
    return "# no canaries planted: disabled, or every organization too small for one\n"
