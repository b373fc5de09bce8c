"""What the server and the clients share: the model and its weights as Flower records.

GPT-2 ties its output layer to the token embedding, so ``state_dict()`` holds the same tensor
twice. FedYogi keeps per-key optimizer state and needs the same float keys every round, so the
tied ``lm_head.weight`` never crosses the wire; loading restores the tie.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context

from collab_lib.config import TrainConfig
from collab_lib.privacy import DPSGD, Row

TIED = "lm_head.weight"
# The training settings a client needs, as Flower run-config keys (hyphens, as Flower's own).
TRAIN_KEYS = {f.name.replace("_", "-"): f.name for f in dataclasses.fields(TrainConfig)}


def to_run_config(train: TrainConfig) -> dict:
    """``TrainConfig`` as Flower run-config entries: ``warmup_fraction`` -> ``warmup-fraction``."""
    return {key: getattr(train, name) for key, name in TRAIN_KEYS.items()}


def train_config(config: dict | ConfigRecord, **changes) -> TrainConfig:
    """The ``TrainConfig`` back from Flower's hyphenated keys (the one place they are read)."""
    types = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    cast = {"int": int, "float": float, "str": str, "bool": bool}
    values = {name: cast[str(types[name])](config[key]) for key, name in TRAIN_KEYS.items()}
    return TrainConfig(**(values | changes))


def client_schedule(
    rnd: int, num_rounds: int, sequences: int, train: TrainConfig, dp: DPSGD | None = None
):
    """Round ``rnd`` (1-based) of a client's schedule: ``(first step, total steps)``.

    A client follows, across rounds, the schedule its data would get alone over
    ``num_rounds`` epochs: warm-up in round 1 only, then the decay carries on from round to
    round. Clients stay stateless (a fresh optimizer each round, as Flower clients are).
    """
    from collab_lib.training import steps_per_epoch

    per_round = steps_per_epoch(sequences, train, dp)
    return (rnd - 1) * per_round, num_rounds * per_round


def dp_settings(config) -> DPSGD | None:
    """The round's DP-SGD mechanism, where the run trains under example-level DP."""
    if "dp-noise" not in config:
        return None
    return DPSGD(float(config["dp-noise"]), float(config["dp-clip"]), int(config["dp-batch"]))


def organization_seed(seed: int, organization: str) -> int:
    """A client's own seed for the round: the round's message is the same for every
    organization, and DP-SGD's noise must be drawn independently by each (shared noise
    would cancel in the server's view of two updates, and not average out)."""
    import zlib

    return seed * 1009 + zlib.crc32(organization.encode()) % 1009


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def to_arrays(model: torch.nn.Module) -> ArrayRecord:
    """The model's weights, without the tied output layer."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items() if k != TIED}
    return ArrayRecord(state)


def set_arrays(model: torch.nn.Module, arrays: ArrayRecord) -> torch.nn.Module:
    """Load weights sent without the tied output layer, and restore the tie."""
    missing, unexpected = model.load_state_dict(arrays.to_torch_state_dict(), strict=False)
    if set(missing) != {TIED} or unexpected:
        raise ValueError(f"weights do not fit the model: {missing=} {unexpected=}")
    model.tie_weights()
    return model


def load_model(base_dir: str | Path, arrays: ArrayRecord | None = None) -> torch.nn.Module:
    """The base model's architecture, with ``arrays`` loaded when given."""
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(Path(base_dir) / "model")
    if arrays is not None:
        set_arrays(model, arrays)
    return model.to(device())


@dataclass(frozen=True)
class Node:
    """Where one organization's client finds its data (and the public base model)."""

    organization: str
    data_path: str  # JSONL of {"content": ...}: the organization's training documents
    base_model: str


def node_settings(context: Context) -> Node:
    """This client's organization and data.

    On the deployment engine each SuperNode is started with ``--node-config`` naming its
    organization and its data, and nothing else. On the simulation engine all virtual nodes
    live on one machine: the run config maps each partition id to an organization.
    """
    nc, rc = context.node_config, context.run_config
    base = str(nc.get("base-model", rc["base-model"]))
    if "data-path" in nc:
        return Node(str(nc["organization"]), str(nc["data-path"]), base)
    nodes = json.loads(str(rc["simulation-nodes"]))
    node = nodes[int(nc["partition-id"])]
    return Node(node["organization"], node["data-path"], base)


@lru_cache(maxsize=4)
def packed_data(data_path: str, base_model: str, context: int) -> torch.Tensor:
    """The organization's documents as packed sequences (cached for the following rounds)."""
    from collab_lib.model import load_tokenizer
    from collab_lib.training import pack

    with open(data_path, encoding="utf-8") as fh:
        texts = [text(json.loads(line)) for line in fh]
    return pack(texts, load_tokenizer(Path(base_model) / "model"), context)


def record(t: str) -> dict:
    """One line of a node's data file: a document, or a sequence of its own (``row``)."""
    return {"row": str(t)} if isinstance(t, Row) else {"content": t}


def text(rec: dict) -> str:
    """:func:`record` read back."""
    return Row(rec["row"]) if "row" in rec else rec["content"]
