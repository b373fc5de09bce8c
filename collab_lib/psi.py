"""Cross-organization clone removal without sharing code: private set intersection (PSI).

The paper's RQ3 (§4.5, Table 11) finds that code two organizations share is memorized, and
that in federated and incremental training nobody may look at the others' code to remove it.
Here the organizations learn which normalized windows of ``clones.min_lines`` counted lines
(the clone detector's own normalization and window, :mod:`collab_lib.clones`) they have in
common, and nothing else about each other's code, through ECDH private set intersection
(OpenMined's ``openmined.psi``: elements hashed to the P-256 curve and blinded with each
party's secret key; the server's set travels as a Golomb-compressed filter).

For every ordered pair, the organization that wants to know (the *client*) sends its
fingerprints blinded with its key (a request: one curve point per window); the other (the
*server*) answers with the request blinded again with its own key and its own fingerprints,
blinded with its key, in a filter sized for the request (the setup). The client removes its
own blinding and tests each of its elements against the filter: it learns which of its
windows the server has, and how many windows the server has; the server learns how many the
client has. No code, no fingerprint in the clear and no window outside the intersection
leaves an organization (semi-honest parties; what a party can still learn is on the Methods
page, "Private clone removal").

Each organization then cuts the lines of its shared windows from its own files (``drop``), or
keeps them where it comes first, in the agreed order, among the organizations that hold
them (``owner``), and trains on the rest.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
import re
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from collab_lib import artifacts, clone_stats, clones, datasets
from collab_lib.clones import CloneOptions, Corpus
from collab_lib.config import Config, UserError

STEP = "psi"
VERSION = 1
SUFFIX = "_PSI"
LINE_BREAK = re.compile(r"(\r\n|\r|\n)")


def _psi():
    """OpenMined's PSI library (imported late: its C++ extension loads in ~50 ms)."""
    import private_set_intersection.python as psi

    return psi


# --------------------------------------------------------------------------- fingerprints


@dataclass
class Windows:
    """One organization's windows: the corpus they come from, the counted line each starts
    at, and its fingerprint (the detector's 64-bit window key, as 16 hex digits)."""

    corpus: Corpus
    starts: np.ndarray  # counted-line index of each window
    keys: np.ndarray  # uint64 window key of each window
    min_lines: int

    @functools.cached_property
    def elements(self) -> list[str]:
        """The distinct fingerprints, sorted: the set this organization brings to PSI."""
        return [f"{k:016x}" for k in np.unique(self.keys).tolist()]


def windows(docs: Sequence[tuple[str, str]], opts: CloneOptions) -> Windows:
    """Every window of ``opts.min_lines`` counted lines within a file, with its fingerprint.

    Two windows have equal fingerprints exactly when the detector finds them equal (a 64-bit
    key of the lines' hashes, as :class:`collab_lib.clones.CloneIndex` uses).
    """
    corpus = clones.build_corpus(docs, opts)
    keys = clones._window_keys(corpus.hashes, corpus.file_end(), opts.min_lines)
    starts = np.flatnonzero(keys)
    return Windows(corpus, starts, keys[starts], opts.min_lines)


def covered(win: Windows, shared: set[str]) -> np.ndarray:
    """Mask of the counted lines inside at least one window whose fingerprint is ``shared``."""
    hit = np.isin(win.keys, np.array([int(k, 16) for k in shared], np.uint64))
    n = win.corpus.n_lines
    return clones._covered(np.full(n, win.min_lines), win.starts[hit], n)


# --------------------------------------------------------------------------- the protocol


def new_key() -> bytes:
    """A fresh secret key (32 random bytes from the OS, as the library draws its own)."""
    return _psi().client.CreateWithNewKey(True).GetPrivateKeyBytes()


def seeded_key(seed: int, party: str, role: str) -> bytes:
    """A key derived from the seed, for the study's own simulation only: the same run gives
    the same messages byte for byte. A real organization draws :func:`new_key`."""
    return hashlib.sha256(f"collab-psi/{seed}/{party}/{role}".encode()).digest()


def request(elements: Sequence[str], client_key: bytes) -> bytes:
    """The client's message: its elements hashed to the curve and blinded with its key."""
    client = _psi().client.CreateFromKey(client_key, True)
    return client.CreateRequest(list(elements)).SerializeToString()


def answer(elements: Sequence[str], request_bytes: bytes, server_key: bytes, fpr: float) -> bytes:
    """The server's message: the request blinded again, and its own elements in a filter.

    ``fpr``: the chance that any of the request's elements is falsely found in the filter.
    """
    psi = _psi()
    req = psi.Request()
    req.ParseFromString(request_bytes)
    server = psi.server.CreateFromKey(server_key, True)
    # a request of no window still gets a (valid) filter: the library refuses a size of 0
    size = max(len(req.encrypted_elements), 1)
    setup = server.CreateSetupMessage(fpr, size, list(elements), psi.DataStructure.GCS)
    setup = setup.SerializeToString()
    response = server.ProcessRequest(req).SerializeToString()
    return struct.pack(">Q", len(setup)) + setup + response


def intersect(elements: Sequence[str], client_key: bytes, answer_bytes: bytes) -> set[str]:
    """The client's own elements that the server holds (the client's key unblinds them)."""
    psi = _psi()
    (n,) = struct.unpack(">Q", answer_bytes[:8])
    setup, response = psi.ServerSetup(), psi.Response()
    setup.ParseFromString(answer_bytes[8 : 8 + n])
    response.ParseFromString(answer_bytes[8 + n :])
    if len(response.encrypted_elements) != len(elements):
        raise UserError(
            f"an answer to a request of {len(response.encrypted_elements)} windows, where this "
            f"organization asked about {len(elements)}: the answer is to another request (or "
            "the code changed since `psi request`)"
        )
    client = psi.client.CreateFromKey(client_key, True)
    return {elements[i] for i in client.GetIntersection(setup, response)}


# --------------------------------------------------------------------------- all parties


@dataclass
class Exchange:
    """What a run among several organizations found and cost: per organization, the other
    organizations it shares each of its fingerprints with; per message, its size and time."""

    shared: dict[str, dict[str, set[str]]]  # client -> server -> shared fingerprints
    messages: list[dict] = field(default_factory=list)


def run(
    elements: dict[str, list[str]],
    fpr: float,
    keys: dict[str, tuple[bytes, bytes]],
    progress: bool = True,
) -> Exchange:
    """Every organization learns, against every other, which of its fingerprints both hold.

    Each party's computation sees only its own elements and the messages it receives
    (``keys``: each party's client and server key). Run in one process here; the ``psi``
    command runs each role on its own organization's machine with the same functions.
    """
    orgs = list(elements)
    shared: dict[str, dict[str, set[str]]] = {o: {} for o in orgs}
    messages = []
    requests = {}
    for o in orgs:
        t = time.perf_counter()
        requests[o] = request(elements[o], keys[o][0])
        messages.append(_msg("request", o, "every other", requests[o], t))
    pairs = [(c, s) for c in orgs for s in orgs if c != s]
    for client, server in tqdm(pairs, desc="psi", disable=None if progress else True):
        t = time.perf_counter()
        reply = answer(elements[server], requests[client], keys[server][1], fpr)
        messages.append(_msg("answer", server, client, reply, t))
        t = time.perf_counter()
        shared[client][server] = intersect(elements[client], keys[client][0], reply)
        messages.append(_msg("intersect", client, "", b"", t))
    return Exchange(shared, messages)


def _msg(role: str, sender: str, to: str, payload: bytes, started: float) -> dict:
    return {
        "role": role,
        "party": sender,
        "to": to,
        "bytes": len(payload),
        "seconds": time.perf_counter() - started,
    }


# --------------------------------------------------------------------------- removal


def to_remove(
    shared: dict[str, set[str]], org: str, removal: str, order: Sequence[str]
) -> set[str]:
    """The fingerprints ``org`` removes: every one it shares (``drop``), or those that an
    organization before it in ``order`` also holds (``owner``: the first holder keeps it)."""
    out: set[str] = set()
    for other, common in shared.items():
        if removal == "drop" or order.index(other) < order.index(org):
            out |= common
    return out


def cut_spans(win: Windows, remove: set[str]) -> dict[str, list[tuple[int, int]]]:
    """Per file, the physical line spans (1-based, inclusive) of the windows to remove,
    merged: from each window's first counted line to its last."""
    mask = covered(win, remove)
    c = win.corpus
    spans: dict[str, list[tuple[int, int]]] = {}
    for f, name in enumerate(c.names):
        lo, hi = c.starts[f], c.starts[f + 1]
        rows = np.flatnonzero(mask[lo:hi]) + lo
        if not len(rows):
            continue
        # consecutive counted lines form one span, blank lines between them included
        breaks = np.flatnonzero(np.diff(rows) > 1)
        firsts = np.concatenate([[rows[0]], rows[breaks + 1]])
        lasts = np.concatenate([rows[breaks], [rows[-1]]])
        spans[name] = [
            (int(c.line_no[a]), int(c.line_no[b])) for a, b in zip(firsts, lasts, strict=True)
        ]
    return spans


def cut(text: str, spans: Sequence[tuple[int, int]], opts: CloneOptions | None = None) -> str:
    """``text`` without the lines of ``spans`` (1-based, inclusive), lines broken where the
    detector breaks them (``\n``, ``\r\n``, ``\r``; not at form feeds, as
    ``str.splitlines`` would)."""
    parts = LINE_BREAK.split(text)
    lines = [
        parts[i] + (parts[i + 1] if i + 1 < len(parts) else "") for i in range(0, len(parts), 2)
    ]
    drop = np.zeros(len(lines) + 1, bool)
    counted = None
    for a, b in spans:
        # a string continued by a backslash at the line's end is one line to the detector,
        # numbered by its first: cut the continuation too (not a line an explicit `\` join
        # leads to, which the detector counts on its own)
        while b < len(lines) and lines[b - 1].rstrip("\r\n").endswith("\\"):
            counted = counted or clones.line_hashes(text, opts or CloneOptions())
            if counted[b] is not None:
                break
            b += 1
        drop[a - 1 : b] = True
    return "".join(line for i, line in enumerate(lines) if not drop[i])


# --------------------------------------------------------------------------- the step


def psi_models(cfg: Config) -> list[tuple[str, str]]:
    """``(plain model, PSI model)`` names of the RQ3 pair's models the profile trains again
    on PSI-deduplicated data (``psi.models``: kinds such as ``Federated_Avg``)."""
    short = {o.name: o.short for o in cfg.datasets.organizations}
    letters = [short[o] for o in datasets.rq3_pair(cfg)]
    tags = {kind: ("2" if kind == "Incremental" else "").join(letters) for kind in cfg.psi.models}
    return [(f"{k}_{tag}", f"{k}_{tag}{SUFFIX}") for k, tag in tags.items()]


def _step_config(cfg: Config) -> dict:
    return {
        "version": VERSION,
        "clones": clone_stats.clone_options(cfg).__dict__,
        "removal": cfg.psi.removal,
        "fpr": cfg.psi.fpr,
        "seed": cfg.seed,
    }


def plan(cfg: Config, upstream: dict) -> dict[str, tuple[str, str]]:
    """The psi artifact's key, from the config and the datasets' key."""
    return {STEP: (STEP, artifacts.artifact_key(STEP, _step_config(cfg), _inputs(upstream)))}


def _inputs(upstream: dict) -> list[str]:
    return [artifacts.ref(upstream["datasets"])]


def build_psi(cfg: Config, planned: dict, *, force: bool = False) -> artifacts.Artifact:
    """Run PSI among the profile's organizations on their training splits; record what each
    removes, what the protocol cost, and its accuracy against the centralized detector."""
    ds = datasets.load(cfg, planned)
    opts = clone_stats.clone_options(cfg)
    orgs = [o.name for o in cfg.datasets.organizations]

    def produce(out: Path) -> dict:
        docs = {o: [(d["path"], d["content"]) for d in ds.documents(o, "train")] for o in orgs}
        wins = {o: windows(docs[o], opts) for o in orgs}
        elements = {o: wins[o].elements for o in orgs}
        keys = {
            o: (seeded_key(cfg.seed, o, "client"), seeded_key(cfg.seed, o, "server")) for o in orgs
        }
        ex = run(elements, cfg.psi.fpr, keys)
        removed = []
        for o in orgs:
            remove = to_remove(ex.shared[o], o, cfg.psi.removal, orgs)
            for name, spans in cut_spans(wins[o], remove).items():
                removed.append({"organization": o, "file": name, "spans": spans})
        artifacts.write_jsonl(out / "removed.jsonl", removed)
        accuracy = accuracy_table(wins, ex, opts)
        accuracy.to_csv(out / "psi_accuracy.csv", index=False)
        cost = cost_table(ex, elements)
        cost.to_csv(out / "psi_cost.csv", index=False)
        pd.DataFrame(ex.messages).to_csv(out / "psi_messages.csv", index=False)
        return {
            "removal": cfg.psi.removal,
            "recall": float(accuracy["recall"].min()) if len(accuracy) else 1.0,
            "false_positive_lines": int(accuracy["false positive lines"].sum()),
            "bytes": int(cost["bytes sent"].sum()),
            "seconds": float(cost["seconds"].sum()),
        }

    return artifacts.build(
        STEP, _step_config(cfg), produce, _inputs(planned), seed=cfg.seed, force=force
    )


def accuracy_table(wins: dict[str, Windows], ex: Exchange, opts: CloneOptions) -> pd.DataFrame:
    """Per ordered pair: the lines PSI marks shared against the centralized detector's
    (Table 7's method, :func:`collab_lib.clones.cross_covered`, run once per pair with both
    sides' code)."""
    truth = {}
    for a, b in itertools.combinations(wins, 2):
        truth[a, b], truth[b, a] = clones.cross_covered([wins[a].corpus, wins[b].corpus], opts)
    rows = []
    for client, per_server in ex.shared.items():
        for server, common in per_server.items():
            true_mask = truth[client, server]
            found = covered(wins[client], common)
            true_windows = set(
                f"{k:016x}" for k in np.intersect1d(wins[client].keys, wins[server].keys).tolist()
            )
            rows.append(
                {
                    "organization": client,
                    "against": server,
                    "windows": len(wins[client].elements),
                    "shared windows (PSI)": len(common),
                    "shared windows (detector)": len(true_windows),
                    "shared lines (detector)": int(true_mask.sum()),
                    "shared lines (PSI)": int(found.sum()),
                    "recall": (found & true_mask).sum() / true_mask.sum()
                    if true_mask.any()
                    else 1.0,
                    "false positive lines": int((found & ~true_mask).sum()),
                }
            )
    return pd.DataFrame(rows)


def cost_table(ex: Exchange, elements: dict[str, list[str]]) -> pd.DataFrame:
    """Per organization: windows, bytes it sent (its request, its answers), its seconds."""
    frame = pd.DataFrame(ex.messages)
    rows = []
    for o, els in elements.items():
        mine = frame[frame["party"] == o]
        rows.append(
            {
                "organization": o,
                "windows": len(els),
                "bytes sent": int(mine["bytes"].sum()),
                "seconds": float(mine["seconds"].sum()),
            }
        )
    return pd.DataFrame(rows)


def load(cfg: Config, planned: dict) -> artifacts.Artifact:
    return artifacts.require_step(cfg, planned, STEP, STEP)


def deduplicated(art: artifacts.Artifact, ds, org: str) -> list[str]:
    """``org``'s training documents with the lines PSI marked for removal cut out (a file
    left empty stays, empty, so canaries keep their positions)."""
    spans = {
        r["file"]: r["spans"]
        for r in artifacts.read_jsonl(art.file("removed.jsonl"))
        if r["organization"] == org
    }
    opts = CloneOptions(**art.manifest["config"]["clones"])
    docs = ds.documents(org, "train")
    return [cut(d["content"], spans.get(d["path"], ()), opts) for d in docs]


# --------------------------------------------------------------------------- one organization

FORMAT = "collab-psi/1"


@dataclass(frozen=True)
class Party:
    """One organization's side, on its own machine: its code and its private state."""

    code: Path
    state: Path  # private: its keys and what it removed; never sent
    opts: CloneOptions

    def windows(self) -> Windows:
        if not self.code.is_dir():
            raise UserError(f"{self.code}: not a directory (--code names your code's folder)")
        docs = clones.read_tree(self.code)
        if not docs:
            raise UserError(f"{self.code}: no Python files (.py) to fingerprint")
        return windows([(str(Path(n).relative_to(self.code)), p) for n, p in docs], self.opts)

    def keys(self, create: bool = False) -> tuple[bytes, bytes]:
        """The client and server keys, made on the first request and kept in ``state``."""
        path = self.state / "secret.json"
        if not path.exists():
            if not create:
                raise UserError(
                    f"{path}: no keys yet: run `python -m collab_lib psi request --code "
                    f"{self.code} --state {self.state}` first"
                )
            self.state.mkdir(mode=0o700, parents=True, exist_ok=True)
            keys = {"client": new_key().hex(), "server": new_key().hex()}
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable
            with os.fdopen(fd, "w") as fh:  # by others, not even for a moment
                fh.write(json.dumps(keys))
        try:
            keys = json.loads(path.read_text())
            return bytes.fromhex(keys["client"]), bytes.fromhex(keys["server"])
        except (ValueError, KeyError, TypeError):
            raise UserError(
                f"{path}: damaged: delete {self.state} and run the three steps again"
            ) from None

    def asked(self) -> dict:
        """What step 1 asked (its request's and its windows' digests)."""
        path = self.state / "request.json"
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise UserError(
                f"{path}: no request made from this state: run `python -m collab_lib psi "
                f"request --code {self.code} --state {self.state} --out FILE` first"
            ) from None
        except ValueError:
            raise UserError(f"{path}: damaged: run `psi request` again") from None


def _header(kind: str, opts: CloneOptions, elements: int, **more) -> dict:
    return {"format": FORMAT, "kind": kind, "window": opts.__dict__, "elements": elements} | more


def _digest(data: bytes | list[str]) -> str:
    if isinstance(data, list):
        data = "\n".join(data).encode()
    return hashlib.sha256(data).hexdigest()


def write_message(path: Path, header: dict, payload: bytes) -> int:
    """A message file: one JSON line (what it is, the window settings) and the payload."""
    data = json.dumps(header).encode() + b"\n" + payload
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return len(data)


def read_message(path: Path, kind: str, opts: CloneOptions) -> tuple[dict, bytes]:
    """A message of ``kind``, refused when another program or other window settings made it
    (the two sides would fingerprint differently and find nothing in common)."""
    try:
        raw = Path(path).read_bytes()
        head, _, payload = raw.partition(b"\n")
        header = json.loads(head)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a psi message ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise UserError(f"{path}: not a {FORMAT} message")
    if header.get("kind") != kind:
        raise UserError(f"{path}: a {header.get('kind')} message, where a {kind} was expected")
    if header.get("window") != opts.__dict__:
        raise UserError(
            f"{path}: made with window settings {header.get('window')}, these are "
            f"{opts.__dict__}: every organization must use the same --min-lines and --mode"
        )
    return header, payload


def party_request(party: Party, out: Path) -> dict:
    """Step 1 (every organization): its blinded fingerprints, for every other one. What it
    asked is remembered (privately) so that step 3 can tell an answer to it from another."""
    elements = party.windows().elements  # first: a folder without code makes no keys
    if out.is_dir():
        raise UserError(f"--out {out}: a directory: name the request's file")
    client_key, _ = party.keys(create=True)
    payload = request(elements, client_key)
    size = write_message(out, _header("request", party.opts, len(elements)), payload)
    asked = {"request": _digest(payload), "windows": _digest(elements)}
    (party.state / "request.json").write_text(json.dumps(asked))
    return {"windows": len(elements), "bytes": size}


def party_answer(party: Party, their_request: Path, out: Path, fpr: float) -> dict:
    """Step 2 (every organization, once per other): answer another's request."""
    _, server_key = party.keys()
    header, payload = read_message(their_request, "request", party.opts)
    elements = party.windows().elements
    try:
        asked = _psi().Request()
        asked.ParseFromString(payload)
        if len(asked.encrypted_elements) != header.get("elements"):
            raise UserError(
                f"{their_request}: its header says {header.get('elements')} windows, it holds "
                f"{len(asked.encrypted_elements)}: not answered"
            )
        reply = answer(elements, payload, server_key, fpr)
    except UserError:
        raise
    except Exception as exc:  # the library's own errors: a damaged request, a bad fpr
        raise UserError(f"{their_request}: cannot answer it ({exc})") from None
    header = _header("answer", party.opts, len(elements), request=_digest(payload))
    size = write_message(out, header, reply)
    # what the request asked about: an organization may refuse one far larger than it expects
    return {"windows": len(elements), "their windows": len(asked.encrypted_elements), "bytes": size}


def party_remove(
    party: Party,
    answers: dict[str, Path],
    out: Path,
    removal: str = "drop",
    me: str = "",
    order: Sequence[str] = (),
) -> dict:
    """Step 3 (every organization): learn its shared windows from the answers to its request
    and write its code without them into ``out`` (every ``.py`` file, the rest left out).

    ``owner``: ``me`` keeps a shared window unless an organization before it in ``order``
    (every organization's name, agreed beforehand) holds it too."""
    code, dest = party.code.resolve(), out.resolve()
    if dest == code or code in dest.parents:
        raise UserError(f"--out {out}: inside --code {party.code}: name a new directory")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: a file: name a directory for the deduplicated copy")
    if removal == "owner" and sorted(order) != sorted([me, *answers]):
        raise UserError(
            f"--order must list this organization ({me or 'give --me'}) and every one that "
            f"answered ({', '.join(answers)}), each once"
        )
    client_key, _ = party.keys()
    win = party.windows()
    elements = win.elements
    asked = party.asked()
    if asked["windows"] != _digest(elements):
        raise UserError(
            f"{party.code} changed since `psi request`: run the three steps again (the "
            "answers are to the code as it was)"
        )
    shared = {}
    for org, path in answers.items():
        header, payload = read_message(path, "answer", party.opts)
        if header.get("request") != asked["request"]:
            raise UserError(
                f"{path}: {org}'s answer is to another request than this organization's "
                f"last (`psi request` ran again since?): ask {org} to answer the latest"
            )
        try:
            shared[org] = intersect(elements, client_key, payload)
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"{path}: a damaged answer ({type(exc).__name__})") from None
    remove = to_remove(shared, me, removal, order)
    spans = cut_spans(win, remove)
    for name in win.corpus.names:
        dest = out / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        # newline="": line ends stay as they are (CRLF files stay CRLF)
        with open(party.code / name, encoding="utf-8", errors="surrogateescape", newline="") as fh:
            text = fh.read()
        with open(dest, "w", encoding="utf-8", errors="surrogateescape", newline="") as fh:
            fh.write(cut(text, spans.get(name, ()), party.opts))
    record = {"shared": {o: len(s) for o, s in shared.items()}, "removed": spans}
    (party.state / "removed.json").write_text(json.dumps(record, indent=1))
    lines = sum(b - a + 1 for s in spans.values() for a, b in s)
    return {"windows": len(elements), "shared": record["shared"], "lines removed": lines}
