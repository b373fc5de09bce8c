"""Collaboration at inference time (the paper's §6.2, beyond it): the organizations keep
their own models and share only their predictions.

``Ensemble_<orgs>`` mixes the single-organization models' next-token distributions,

    p(x_t | x_<t) = sum_o w_o p_o(x_t | x_<t),

with ``w_o`` each organization's share of the training tokens (``ensemble.weights:
tokens``): if each model were its organization's code distribution exactly, this mixture
would be the union's, the distribution the centralized model fits. ``uniform`` gives each
the same weight. It trains nothing: its artifact names its members' final jobs (and, per
epoch, their snapshots, so it has a curve) and their weights, and every step scores it
through :class:`Ensemble`, which answers as a causal language model does (``logits`` are the
mixture's log-probabilities, so a softmax, a temperature or top-p apply to the mixture).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import torch

from collab_lib import artifacts

MEMBERS = "ensemble.json"


def write(members: list, weights: str, tok, dest: Path) -> dict:
    """The ensemble's artifact: its members' refs and weights, for the final weights and for
    every epoch all members kept (``epochs/<n>/ensemble.json``), and the tokenizer."""
    tokens = [m.metrics["tokens_per_epoch"] for m in members]
    w = (
        [t / sum(tokens) for t in tokens]
        if weights == "tokens"
        else [1 / len(members)] * len(members)
    )
    record = {"members": [m.ref for m in members], "weights": w}
    (dest / MEMBERS).write_text(json.dumps(record | {"epoch": None}))
    common = set.intersection(*(set(artifacts.snapshot_epochs(m)) for m in members))
    for epoch in sorted(common):
        (dest / "epochs" / str(epoch)).mkdir(parents=True)
        (dest / "epochs" / str(epoch) / MEMBERS).write_text(json.dumps(record | {"epoch": epoch}))
    tok.save_pretrained(dest / "model")
    return {"members": [m.ref for m in members], "weights": w, "final_loss": None}


def is_ensemble(art) -> bool:
    return (art.path / MEMBERS).is_file()


def load(art, epoch: int | None, load_member) -> Ensemble:
    """The ensemble of ``art`` at ``epoch`` (None: final), its members loaded by
    ``load_member(member artifact, epoch)``."""
    name = MEMBERS if epoch is None else f"epochs/{epoch}/{MEMBERS}"
    record = json.loads(art.file(name).read_text())
    members = []
    root = art.path.parent.parent  # the members live in the ensemble's own cache
    for ref in record["members"]:
        step, _, key = ref.rpartition("/")
        member = artifacts.load(step, key, root)
        if member is None:
            raise artifacts.NotBuiltError(
                f"{art.ref}: its member {ref} is not in the cache {root} (removed?): run the "
                "train step again to rebuild it"
            )
        members.append(load_member(member, record["epoch"]))
    return Ensemble(members, record["weights"])


class Ensemble(torch.nn.Module):
    """A mixture of causal language models' next-token distributions with fixed weights.

    ``forward`` takes what a GPT-2 does (``input_ids``, ``attention_mask``,
    ``position_ids``, ``past_key_values``, ``use_cache``) and returns ``logits`` = log of
    the mixture, and a KV cache that holds every member's layers one after the other (so
    code that copies, selects or rebuilds a cache layer by layer works unchanged).
    """

    def __init__(self, members: list[torch.nn.Module], weights: list[float]) -> None:
        super().__init__()
        self.members = torch.nn.ModuleList(members)
        self.register_buffer("log_weights", torch.tensor([math.log(w) for w in weights]))
        first = members[0].config
        self.layers = [m.config.n_layer for m in members]
        # what callers read of a config; not "gpt2": the fused GPT-2 decoder does not apply
        self.config = SimpleNamespace(
            model_type="ensemble", n_positions=first.n_positions, vocab_size=first.vocab_size
        )

    def get_output_embeddings(self):
        return self.members[0].get_output_embeddings()

    def forward(self, input_ids, past_key_values=None, use_cache: bool = False, **kwargs):
        from transformers import DynamicCache

        caches = self._split(past_key_values)
        logits, layers = [], []
        for member, cache in zip(self.members, caches, strict=True):
            out = member(input_ids=input_ids, past_key_values=cache, use_cache=use_cache, **kwargs)
            logits.append(out.logits)
            if use_cache:
                layers += [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        cache = DynamicCache(layers) if layers else None
        return SimpleNamespace(logits=self.mix(logits), past_key_values=cache)

    def mix(self, logits: list[torch.Tensor]) -> torch.Tensor:
        """The mixture's log-probabilities from each member's logits (summed one member at
        a time: no stack of every member's full-vocabulary distribution)."""
        out = None
        for x, log_w in zip(logits, self.log_weights, strict=True):
            part = x.float().log_softmax(-1) + log_w
            out = part if out is None else torch.logaddexp(out, part)
        return out

    def _split(self, cache) -> list:
        """Each member's part of a combined cache (None: no cache)."""
        from transformers import DynamicCache

        if cache is None:
            return [None] * len(self.members)
        layers = [(layer.keys, layer.values) for layer in cache.layers]
        out, start = [], 0
        for n in self.layers:
            out.append(DynamicCache(layers[start : start + n]))
            start += n
        return out
