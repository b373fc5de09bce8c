"""One batched KV-cache sampler for every generation of the study (RQ1 pass@k, RQ2, RQ3).

Many sequences per forward pass: prompts are left-padded with position ids counted from
each prompt's first real token, so a padded prompt sees exactly what it would alone. The
next-token distribution is filtered as ``transformers`` defines it, in its order:
temperature, then top-k, then top-p (sort ascending, cumulative probability, drop the mass
at or below ``1 - top_p``, always keep the most likely token). A sequence stops at EOS or
when its text contains a stop string; the batch stops when every sequence has. No
artifacts, no benchmarks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingConfig:
    """How tokens are drawn. ``temperature`` 0 is greedy; ``top_k`` 0 and ``top_p`` 1 are off."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 128


def filter_logits(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """Logits after temperature, top-k and top-p, as ``transformers``' warpers compute them."""
    scores = logits / cfg.temperature
    if cfg.top_k > 0:
        k = min(cfg.top_k, scores.size(-1))
        kth = torch.topk(scores, k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=False, dim=-1)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= (1 - cfg.top_p)
        remove[..., -1:] = False  # keep at least the most likely token
        scores = scores.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
    return scores


def next_tokens(logits: torch.Tensor, cfg: SamplingConfig, gen: torch.Generator) -> torch.Tensor:
    """One token per row of ``logits`` (B, vocab): argmax at temperature 0, else a draw.

    With top-k on, the draw is made among the k best tokens only (sorting k values, not the
    vocabulary): top-k already gives every other token probability 0, and top-p over the
    survivors is the same computation. Ties across the k-th value (where ``transformers``
    keeps more than k tokens) take the full path.
    """
    if cfg.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float()
    k = cfg.top_k
    if 0 < k < logits.size(-1):
        values, index = torch.topk(logits, k, dim=-1)  # (B, k), descending
        kth = values[..., -1:]
        if torch.equal((logits >= kth).sum(-1), (values >= kth).sum(-1)):
            top = SamplingConfig(cfg.temperature, cfg.top_p, 0, cfg.max_new_tokens)
            probs = filter_logits(values, top).softmax(dim=-1)
            pick = torch.multinomial(probs, 1, generator=gen)
            return index.gather(-1, pick).squeeze(-1)
    probs = filter_logits(logits, cfg).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


@torch.no_grad()
def generate(
    model,
    prompts: Sequence[Sequence[int]],
    cfg: SamplingConfig,
    *,
    eos_id: int,
    pad_id: int | None = None,
    stop_check: Callable[[int, list[int]], bool] | None = None,
    seed: int = 0,
) -> list[list[int]]:
    """New token ids for each prompt (token ids), stopping at EOS (included) or ``stop_check``.

    ``stop_check(i, new_ids)`` is asked after each token of an unfinished sequence ``i``;
    True ends it there. Finished sequences leave the batch, so the cost follows the
    sequences still running. Deterministic for a seed on CPU.
    """
    device = next(model.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    pad = eos_id if pad_id is None else pad_id
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
        mask[i, width - len(p) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out: list[list[int]] = [[] for _ in prompts]
    alive = torch.arange(len(prompts), device=device)  # rows still generating, by index
    model.eval()
    result = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
    cache, logits = result.past_key_values, result.logits[:, -1]
    last_pos = positions[:, -1]
    for _ in range(cfg.max_new_tokens):
        tok = next_tokens(logits, cfg, gen).to(device)  # (B_alive,)
        keep = []
        for row, (i, t) in enumerate(zip(alive.tolist(), tok.tolist(), strict=True)):
            out[i].append(t)
            done = t == eos_id or (stop_check is not None and stop_check(i, out[i]))
            if not done:
                keep.append(row)
        if not keep or len(out[alive[0]]) >= cfg.max_new_tokens:
            break
        if len(keep) < len(alive):  # drop finished rows from the batch and its cache
            rows = torch.tensor(keep, device=device)
            alive, tok, mask, last_pos = alive[rows], tok[rows], mask[rows], last_pos[rows]
            cache = _select_rows(cache, rows)
        mask = torch.cat([mask, mask.new_ones((len(alive), 1))], dim=1)
        last_pos = last_pos + 1
        result = model(
            input_ids=tok[:, None],
            attention_mask=mask,
            position_ids=last_pos[:, None],
            past_key_values=cache,
            use_cache=True,
        )
        cache, logits = result.past_key_values, result.logits[:, -1]
    return out


def _select_rows(cache, rows: torch.Tensor):
    """Keep the batch ``rows`` of a KV cache (a ``transformers`` Cache or legacy tuples)."""
    if hasattr(cache, "batch_select_indices"):
        cache.batch_select_indices(rows)
        return cache
    return tuple(tuple(t[rows] for t in layer) for layer in cache)


def stop_at(text: str, stops: Sequence[str]) -> str:
    """``text`` cut at the first occurrence of any of ``stops`` (the stop string dropped)."""
    cut = min((i for s in stops if (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]
