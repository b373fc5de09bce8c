"""One batched KV-cache decoder for every generation of the study (RQ1 pass@k, RQ2, RQ3).

Many sequences per forward pass: prompts are left-padded with position ids counted from
each prompt's first real token, so a padded prompt sees exactly what it would alone. The
next-token distribution is filtered as ``transformers`` defines it, in its order:
temperature, then top-k, then top-p (sort ascending, cumulative probability, drop the mass
at or below ``1 - top_p``, always keep the most likely token). A sequence stops at EOS or
when its text contains a stop string; the batch stops when every sequence has. No
artifacts, no benchmarks. Any change to what it draws bumps :data:`collab_lib.sampling.VERSION`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

from collab_lib.ensemble import Ensemble
from collab_lib.sampling import SamplingConfig


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
    True ends it there. A prompt repeated in ``prompts`` (n samples of one problem) runs
    through the model once. Finished sequences leave the batch once a quarter of it has
    finished (each removal copies the cache), so the cost follows the sequences still
    running. Deterministic for a seed on CPU.
    """
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)  # draws where the logits are
    pad = eos_id if pad_id is None else pad_id
    # each distinct prompt runs through the model once; its rows share the result
    distinct = list(dict.fromkeys(tuple(p) for p in prompts))
    width = max(len(p) for p in distinct)
    ids = torch.full((len(distinct), width), pad, dtype=torch.long)
    mask = torch.zeros((len(distinct), width), dtype=torch.long)
    for i, p in enumerate(distinct):
        ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    model.eval()
    decoder = _decoder(model, cfg.max_new_tokens)
    logits = decoder.start(ids, mask, positions)
    where = {p: i for i, p in enumerate(distinct)}
    expand = torch.tensor([where[tuple(p)] for p in prompts], device=device)
    if len(distinct) < len(prompts):
        decoder.keep(expand)
    logits, pos = logits[expand], positions[expand, -1]
    out: list[list[int]] = [[] for _ in prompts]
    rows = list(range(len(prompts)))  # the prompt of each row of the batch
    done = [False] * len(prompts)
    for step in range(cfg.max_new_tokens):
        tok = next_tokens(logits, cfg, gen).to(device)  # (rows,)
        for i, t in zip(rows, tok.tolist(), strict=True):
            if not done[i]:
                out[i].append(t)
                done[i] = t == eos_id or (stop_check is not None and stop_check(i, out[i]))
        live = [r for r, i in enumerate(rows) if not done[i]]
        if not live or step == cfg.max_new_tokens - 1:
            break
        if len(live) < 0.75 * len(rows):
            keep = torch.tensor(live, device=device)
            decoder.keep(keep)
            rows, tok, pos = [rows[r] for r in live], tok[keep], pos[keep]
        pos = pos + 1
        logits = decoder.step(tok, pos)
    return out


def _decoder(model, max_new_tokens: int):
    """The fastest decoder that fits ``model``: an ensemble's members each through theirs."""
    if isinstance(model, Ensemble):
        return EnsembleDecoder(model, max_new_tokens)
    return (GPT2Decoder if GPT2Decoder.fits(model) else CacheDecoder)(model, max_new_tokens)


class CacheDecoder:
    """Any causal LM through its own forward and ``transformers``' KV cache."""

    def __init__(self, model, max_new_tokens: int) -> None:
        self.model = model

    def start(self, ids, mask, positions) -> torch.Tensor:
        self.mask = mask
        r = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        self.cache = r.past_key_values
        return r.logits[:, -1]

    def keep(self, rows: torch.Tensor) -> None:
        self.mask = self.mask[rows]
        if hasattr(self.cache, "batch_select_indices"):
            self.cache.batch_select_indices(rows)
        else:  # legacy tuples
            self.cache = tuple(tuple(t[rows] for t in layer) for layer in self.cache)

    def step(self, tok, pos) -> torch.Tensor:
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(tok), 1))], dim=1)
        r = self.model(
            input_ids=tok[:, None],
            attention_mask=self.mask,
            position_ids=pos[:, None],
            past_key_values=self.cache,
            use_cache=True,
        )
        self.cache = r.past_key_values
        return r.logits[:, -1]


class GPT2Decoder(CacheDecoder):
    """GPT-2's decoding step written out, over the prompts' KV cache shared by their rows.

    ``transformers``' dynamic cache grows by concatenation, copying the whole cache at every
    token: on a CPU and a small model that and the framework's per-call work cost several
    times the arithmetic. The prompts still run through the model's own forward, once per
    distinct prompt; each new token then goes through the same modules (layer norms,
    projections, MLP, LM head) with attention computed here in two parts. Reading the KV
    cache bounds a decoding step, and the n samples of one prompt share its keys: the rows of
    a prompt attend to its keys together (one small matrix product per prompt, reading them
    once), and each row to its own generated keys in a preallocated cache; one softmax spans
    both. A test checks the logits against the model's own forward.
    """

    @staticmethod
    def fits(model) -> bool:
        c = getattr(model, "config", None)
        return (
            getattr(c, "model_type", None) == "gpt2"
            and c.scale_attn_weights
            and not c.scale_attn_by_inverse_layer_idx
            and not c.reorder_and_upcast_attn
            and not model.training
        )

    def __init__(self, model, max_new_tokens: int) -> None:
        super().__init__(model, max_new_tokens)
        self.max_new_tokens = max_new_tokens
        c = model.config
        self.heads, self.width = c.n_head, c.n_embd
        self.scale = (c.n_embd // c.n_head) ** -0.5

    def start(self, ids, mask, positions) -> torch.Tensor:
        logits = super().start(ids, mask, positions)
        layers = self.cache.layers
        self.kp = torch.stack([layer.keys for layer in layers])  # (L, P, H, T, D): per prompt
        self.vp = torch.stack([layer.values for layer in layers])
        self.cache = None
        n_layers, n_prompts, heads, _, dim = self.kp.shape
        shape = (n_layers, n_prompts, heads, self.max_new_tokens, dim)
        self.kg = self.kp.new_zeros(shape)  # (L, B, H, new, D): each row's generated keys
        self.vg = torch.zeros_like(self.kg)
        self.prompt_ok = mask.bool()  # (P, T): left padding is False
        self.group = torch.arange(n_prompts, device=ids.device)  # the prompt of each row
        self.generated = 0
        self._layout = None
        return logits

    def keep(self, rows: torch.Tensor) -> None:
        self.group, self.kg, self.vg = self.group[rows], self.kg[:, rows], self.vg[:, rows]
        used = torch.unique(self.group)
        if len(used) < self.kp.shape[1]:  # prompts with no row left are dropped
            self.kp, self.vp = self.kp[:, used], self.vp[:, used]
            self.prompt_ok = self.prompt_ok[used]
            self.group = torch.searchsorted(used, self.group)
        self._layout = None

    def layout(self) -> tuple[torch.Tensor, int]:
        """Each row's slot among its prompt's rows, and the most rows any prompt has."""
        if self._layout is None:
            order = torch.argsort(self.group, stable=True)
            counts = torch.bincount(self.group, minlength=self.kp.shape[1])
            first = torch.cumsum(counts, 0) - counts
            slot = torch.empty_like(order)
            slot[order] = torch.arange(len(order), device=order.device) - first[self.group[order]]
            self._layout = (slot, int(counts.max()))
        return self._layout

    def _per_prompt(self, rows: torch.Tensor, slot, width: int, other: torch.Tensor):
        """``rows`` (B, H, X) of each row times ``other`` (P, H, X, Y) of its prompt: (B, H, Y),
        computed one prompt at a time for all its rows (``other`` read once per prompt)."""
        dense = rows.new_zeros((other.shape[0], width, *rows.shape[1:]))  # (P, W, H, X)
        dense[self.group, slot] = rows
        out = dense.transpose(1, 2) @ other  # (P, H, W, Y)
        return out.transpose(1, 2)[self.group, slot]

    def mlp(self, mlp, x: torch.Tensor) -> torch.Tensor:
        """GPT-2's MLP; its "gelu_new" is the tanh GELU, here in one fused call."""
        if self.model.config.activation_function in ("gelu_new", "gelu_pytorch_tanh"):
            return mlp.c_proj(F.gelu(mlp.c_fc(x), approximate="tanh"))
        return mlp(x)

    def step(self, tok, pos) -> torch.Tensor:
        m, j = self.model, self.generated
        b, h = len(tok), self.heads
        slot, width = self.layout()
        blocked = ~self.prompt_ok[self.group][:, None, :]  # (B, 1, T)
        x = m.transformer.wte(tok) + m.transformer.wpe(pos)  # (B, C)
        for i, block in enumerate(m.transformer.h):
            q, k, v = block.attn.c_attn(block.ln_1(x)).split(self.width, dim=-1)
            self.kg[i, :, :, j] = k.view(b, h, -1)
            self.vg[i, :, :, j] = v.view(b, h, -1)
            q = q.view(b, h, -1) * self.scale  # (B, H, D)
            on_prompt = self._per_prompt(q, slot, width, self.kp[i].transpose(-1, -2))
            on_new = (q[:, :, None] @ self.kg[i, :, :, : j + 1].transpose(-1, -2))[:, :, 0]
            scores = torch.cat([on_prompt.masked_fill(blocked, float("-inf")), on_new], -1)
            p_prompt, p_new = scores.softmax(-1).split([on_prompt.shape[-1], j + 1], -1)
            y = self._per_prompt(p_prompt, slot, width, self.vp[i])  # (B, H, D)
            y = y + (p_new[:, :, None] @ self.vg[i, :, :, : j + 1])[:, :, 0]
            x = x + block.attn.c_proj(y.reshape(b, self.width))
            x = x + self.mlp(block.mlp, block.ln_2(x))
        self.generated += 1
        return m.lm_head(m.transformer.ln_f(x))


def sample_texts(
    model,
    tok,
    prompts: Sequence[Sequence[int]],
    n: int,
    cfg: SamplingConfig,
    *,
    cut: Callable[[str], int | None],
    batch_size: int,
    seed: int,
    desc: str = "sampling",
) -> tuple[list[str], int]:
    """``n`` completions of each prompt (token ids), prompt-major, and the new tokens drawn.

    ``cut(text)`` gives the index where a completion ends (its stop rule: a stop string, the
    end of a function body), or None; it is asked about the whole text after every token
    (a scan of a few KB at C speed). A sequence stops at its ending or EOS, and its text is
    cut there. Batches of
    ``batch_size`` rows each draw with their own seed, so a batch's draws do not depend on
    how many batches ran before it in this process.
    """
    rows = [list(p) for p in prompts for _ in range(n)]
    pieces = [tok.decode([i]) for i in range(len(tok))]
    texts: dict[int, str] = {}

    def stop_check(i: int, new: list[int]) -> bool:
        texts[i] = texts.get(i, "") + pieces[new[-1]]
        return cut(texts[i]) is not None

    out, new_tokens = [], 0
    for b in tqdm(range(0, len(rows), batch_size), desc=desc, leave=False):
        texts.clear()
        gen = generate(
            model,
            rows[b : b + batch_size],
            cfg,
            eos_id=tok.eos_token_id,
            stop_check=stop_check,
            seed=seed * 1_000_003 + b,
        )
        new_tokens += sum(len(g) for g in gen)
        for g in gen:
            text = tok.decode(g, skip_special_tokens=True)
            end = cut(text)
            out.append(text if end is None else text[:end])
    return out, new_tokens


class EnsembleDecoder:
    """An ensemble (:class:`collab_lib.ensemble.Ensemble`) decoded member by member, each
    through its own fastest decoder (its own KV cache, GPT-2's fused step where it fits), the
    members' next-token logits mixed at every step."""

    def __init__(self, model: Ensemble, max_new_tokens: int) -> None:
        self.model = model
        self.members = [_decoder(m, max_new_tokens) for m in model.members]

    def start(self, ids, mask, positions) -> torch.Tensor:
        return self.model.mix([d.start(ids, mask, positions) for d in self.members])

    def keep(self, rows: torch.Tensor) -> None:
        for d in self.members:
            d.keep(rows)

    def step(self, tok, pos) -> torch.Tensor:
        return self.model.mix([d.step(tok, pos) for d in self.members])
