"""What a model's tokens cost: the scoring kit below every step that reads a model.

Loading a trained model, each token's next-token loss over windows that slide across a long
stream, perplexity, the loss of continuations after a prompt, and the per-token statistics
of Min-K%++. RQ1 (:mod:`collab_lib.evaluation`), the memorization measures, Table 5
(:mod:`collab_lib.membership`) and the FedYogi sweep (:mod:`collab_lib.tuning`) all score
through here, so one model is scored one way everywhere.

Perplexity, one method for every model: each organization's validation files are tokenized
and joined by EOS into one stream (as training packs them); windows of the model's
``context`` tokens slide over it by ``stride`` tokens, and each window scores only the
tokens the previous window did not, so every token after the first is predicted exactly
once, with at least ``context - stride`` tokens of left context (fewer only at the start).
No padding is ever scored (a stream shorter than the context is one shorter window). The
union's perplexity is exp of the mean loss over the scored tokens of every organization's
stream (token-weighted across files and organizations).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F


def token_stream(texts: Sequence[str], tokenizer) -> list[int]:
    """Token ids of ``texts``, each document followed by EOS (training's packing)."""
    ids: list[int] = []
    for text in texts:
        ids += tokenizer(text, verbose=False)["input_ids"] + [tokenizer.eos_token_id]
    return ids


def windows(n_tokens: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """``(begin, end, first_scored)`` of each window over a stream of ``n_tokens``.

    Positions ``first_scored .. end-1`` are predicted in that window; together the windows
    score positions 1 .. n_tokens-1 exactly once.
    """
    if not 0 < stride < context:  # each scored token needs one before it in its window
        raise ValueError(f"stride must be in 1..context-1 ({context - 1}), got {stride}")
    out, scored_to, end = [], 1, 0
    while end < n_tokens:
        end = min(scored_to + stride, n_tokens) if out else min(context, n_tokens)
        begin = max(0, end - context)
        out.append((begin, end, scored_to))
        scored_to = end
    return out


@torch.no_grad()
def window_logits(model, ids: Sequence[int], context: int, stride: int, batch_size: int = 16):
    """Yield ``(logits, x, spans)`` per batch of the windows of :func:`windows` over ``ids``.

    ``x`` (B, length) holds the windows' ids, ``logits`` (B, length-1, vocab) the float
    next-token logits of ``x[:, 1:]``, ``spans`` each row's ``(begin, end, first_scored)``:
    row r predicts positions ``first .. end-1`` at ``logits[r, first - begin - 1:]``.
    """
    spans = windows(len(ids), context, stride)
    device = next(model.parameters()).device
    model.eval()
    stream = torch.tensor(ids, dtype=torch.long)
    # equal-length windows share a batch; only the last one can be shorter
    for length in sorted({e - b for b, e, _ in spans}):
        same = [s for s in spans if s[1] - s[0] == length]
        for i in range(0, len(same), batch_size):
            part = same[i : i + batch_size]
            x = torch.stack([stream[b:e] for b, e, _ in part]).to(device)  # (B, length)
            yield model(input_ids=x).logits[:, :-1].float(), x, part


def token_losses(
    model, ids: Sequence[int], context: int, stride: int, batch_size: int = 16
) -> np.ndarray:
    """Next-token loss (nats) of every position of ``ids``; NaN where never scored (the first)."""
    out = np.full(len(ids), np.nan)
    for logits, x, part in window_logits(model, ids, context, stride, batch_size):
        nll = F.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none")
        nll = nll.cpu().double().numpy()
        for row, (b, e, first) in enumerate(part):
            out[first:e] = nll[row, first - b - 1 :]  # scored by this window only
    return out


def token_losses_sum(
    model, ids: Sequence[int], context: int, stride: int, batch_size: int = 16
) -> tuple[float, int]:
    """Summed next-token loss (nats) and the number of tokens scored over ``ids``."""
    losses = token_losses(model, ids, context, stride, batch_size)
    scored = losses[~np.isnan(losses)]
    return float(scored.sum()), len(scored)


def perplexity(
    model, tokenizer, texts: Sequence[str], context: int, stride: int | None = None
) -> float:
    """Token-weighted perplexity of ``texts`` (see the module's docstring for the windows).

    ``stride`` defaults to half the context.
    """
    ids = token_stream(texts, tokenizer)
    if len(ids) < 2:
        raise ValueError("no text to score: perplexity needs at least two tokens")
    total, count = token_losses_sum(model, ids, context, stride or max(1, context // 2))
    return math.exp(total / count)


def load_model(model_art, epoch: int | None = None):
    """A trained model of the cache (on the GPU when there is one) and its tokenizer; with
    ``epoch``, its weights after that epoch (round) of the job (``epochs/<epoch>``). An
    ensemble's artifact gives :class:`collab_lib.ensemble.Ensemble` of its members."""
    from transformers import GPT2LMHeadModel

    from collab_lib import ensemble
    from collab_lib.model import load_tokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if ensemble.is_ensemble(model_art):  # a mixture of its members, at the same epoch
        model = ensemble.load(model_art, epoch, lambda art, e: load_model(art, e)[0])
        return model.to(device).eval(), load_tokenizer(model_art.path / "model")
    path = model_art.file("model/model.safetensors").parent  # a clear error if imported
    weights = path if epoch is None else model_art.file(f"epochs/{epoch}/model.safetensors").parent
    return GPT2LMHeadModel.from_pretrained(weights).to(device).eval(), load_tokenizer(path)


@torch.no_grad()
def suffix_losses(
    model, tok, prefix: str, suffixes: list[str], batch_size: int = 256, context: int | None = None
) -> np.ndarray:
    """Summed loss (nats) of each suffix's tokens right after ``prefix`` (a canary's secret
    and its alternatives, Carlini et al. 2019).

    The prefix runs through the model once; every batch of suffixes continues from a copy of
    its KV cache, right-padded (causal attention: padding after a token never reaches it).
    A context too small for prefix and secret keeps the prefix's end (``context``: the
    model's, where its config does not call it ``n_positions``). A suffix gets no special
    token of its own: it continues the prefix.
    """
    from transformers import DynamicCache

    device = next(model.parameters()).device
    model.eval()
    rows = [tok(s, add_special_tokens=False, verbose=False)["input_ids"] for s in suffixes]
    keep = (context or model.config.n_positions) - max(map(len, rows))
    p_ids = tok(prefix, verbose=False)["input_ids"][-keep:]
    first = model(input_ids=torch.tensor([p_ids], device=device), use_cache=True)
    first_logp = first.logits[0, -1].float().log_softmax(-1)  # (V,)
    layers = [(layer.keys, layer.values) for layer in first.past_key_values.layers]
    out = np.zeros(len(rows))
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(map(len, chunk)) - 1
        if width == 0:  # one-token suffixes: the prefix's logits say everything
            out[start : start + len(chunk)] = [-first_logp[r[0]].item() for r in chunk]
            continue
        x = torch.full((len(chunk), width), tok.eos_token_id, dtype=torch.long)
        target = torch.full_like(x, -100)
        for i, r in enumerate(chunk):
            x[i, : len(r) - 1] = torch.tensor(r[:-1])
            target[i, : len(r) - 1] = torch.tensor(r[1:])
        cache = DynamicCache(
            [
                (k.expand(len(chunk), -1, -1, -1), v.expand(len(chunk), -1, -1, -1))
                for k, v in layers
            ]
        )
        pos = torch.arange(len(p_ids), len(p_ids) + width, device=device).expand(len(chunk), -1)
        logits = model(input_ids=x.to(device), position_ids=pos, past_key_values=cache).logits
        nll = F.cross_entropy(
            logits.float().transpose(1, 2), target.to(device), reduction="none", ignore_index=-100
        ).sum(1)
        heads = torch.tensor([r[0] for r in chunk], device=device)
        out[start : start + len(chunk)] = (nll - first_logp[heads]).cpu().numpy()
    return out


@torch.no_grad()
def continuation_losses(
    model, tok, prompts: list[dict], context: int, batch_size: int = 32
) -> pd.DataFrame:
    """Per prompt: summed loss (nats) and number of the ``target`` tokens given the prompt.

    What a model has memorized of a clone block it predicts with a low loss even when it
    does not generate it verbatim. Each sequence is EOS, prompt, target, cut to the context
    (the target's end goes first); padding on the right changes nothing before it.
    """
    device = next(model.parameters()).device
    model.eval()
    seqs = []
    for p in prompts:
        head = [tok.eos_token_id, *tok(p["prompt"], verbose=False)["input_ids"]][-context + 1 :]
        tail = tok(p["target"], verbose=False)["input_ids"][: context - len(head)]
        seqs.append((head, tail))
    rows = []
    for at in range(0, len(seqs), batch_size):
        part = seqs[at : at + batch_size]
        width = max(len(h) + len(t) for h, t in part)
        x = torch.tensor([h + t + [0] * (width - len(h) - len(t)) for h, t in part], device=device)
        nll = (
            F.cross_entropy(
                model(input_ids=x).logits[:, :-1].float().transpose(1, 2),
                x[:, 1:],
                reduction="none",
            )
            .cpu()
            .double()
            .numpy()
        )
        for row, (h, t) in enumerate(part):
            scored = nll[row, len(h) - 1 : len(h) - 1 + len(t)]  # predicts t[0] .. t[-1]
            rows.append({"prompt": at + row, "loss_sum": float(scored.sum()), "tokens": len(t)})
    return pd.DataFrame(rows, columns=["prompt", "loss_sum", "tokens"])


def token_stats(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``log p`` of each target token, and the mean and spread of ``log p`` under the model's
    next-token distribution at that position (Min-K%++'s ``mu`` and ``sigma``)."""
    logp = F.log_softmax(logits, dim=-1)
    p = logp.exp()
    plogp = torch.where(p > 0, p * logp, 0.0)  # a masked token (-inf) weighs nothing
    mu = plogp.sum(-1)
    sigma = (torch.where(p > 0, plogp * logp, 0.0).sum(-1) - mu * mu).clamp_min(0).sqrt()
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1), mu, sigma


@torch.no_grad()
def sample_token_stats(
    model, encoded: list[list[int]], context: int, stride: int, budget: int = 2**23
) -> Iterator[tuple[int, tuple[np.ndarray, ...]]]:
    """``(index, (logp, mu, sigma))`` of every token but the first of each sample.

    Samples that fit the context share padded batches of at most ``budget`` logits (a few
    vocabulary-sized copies of them are alive at once: 2**23 floats are 32 MB each; larger
    batches measured slower on a CPU); the model is causal, so padding on the right changes
    nothing before it. A longer sample slides windows over itself as perplexity does.
    """
    device = next(model.parameters()).device
    model.eval()
    vocab = model.get_output_embeddings().weight.shape[0]
    short = sorted(
        (i for i, ids in enumerate(encoded) if len(ids) <= context), key=lambda i: len(encoded[i])
    )
    batch = max(1, budget // (context * vocab))
    for at in range(0, len(short), batch):
        part = short[at : at + batch]
        width = len(encoded[part[-1]])
        x = torch.tensor(
            [encoded[i] + [0] * (width - len(encoded[i])) for i in part], device=device
        )
        stats = token_stats(model(input_ids=x).logits[:, :-1].float(), x[:, 1:])
        for row, i in enumerate(part):
            yield i, tuple(s[row, : len(encoded[i]) - 1].cpu().double().numpy() for s in stats)
    for i, ids in enumerate(encoded):
        if len(ids) > context:
            parts = [[], [], []]
            windows = window_logits(model, ids, context, stride, batch)
            for logits, x, spans in windows:
                stats = token_stats(logits, x[:, 1:])
                for row, (b, _, first) in enumerate(spans):
                    for dest, s in zip(parts, stats, strict=True):
                        dest.append(s[row, first - b - 1 :].cpu().double().numpy())
            yield i, tuple(np.concatenate(p) for p in parts)
