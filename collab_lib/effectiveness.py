"""Effectiveness (paper §2.4, RQ1): how well a model predicts code it was not trained on.

Perplexity is exp of the mean next-token loss over the union of every organization's
validation split, packed into the model's context (the same packing as training).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from collab_lib.training import pack


@torch.no_grad()
def perplexity(model, tokenizer, texts: Sequence[str], context: int, batch_size: int = 16) -> float:
    """Token-level perplexity of ``texts`` (documents joined by EOS, full blocks only)."""
    data = pack(texts, tokenizer, context)
    if len(data) == 0:
        raise ValueError("not enough text for one block of the model's context")
    device = next(model.parameters()).device
    model.eval()
    total, n = 0.0, 0
    for batch in data.split(batch_size):
        x = batch.to(device)
        loss = model(input_ids=x, labels=x).loss  # mean over the batch's predicted tokens
        tokens = x.numel() - len(x)
        total += loss.item() * tokens
        n += tokens
    return math.exp(total / n)
