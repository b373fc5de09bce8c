"""Our batched sampler (``collab_lib.decoding.generate``) vs ``transformers``' ``model.generate``.

Same model, same prompts, same settings for both, in one run: sampling at the RQ2 settings
(temperature 0.6, top-p 0.6, top-k 50), every sequence exactly ``--new`` tokens long (EOS
can never end one early, so both do the same work), left-padded prompts of ``--prompt``
tokens. Both are warmed up on the same shapes first; the timed runs alternate and the best
of ``--repeat`` is kept. Prints new tokens per second of each and the ratio (targets: >= 3x
on a CPU for the default model; >= 100k tokens/s for GPT-2 124M in bf16 on one GPU).

    .venv/bin/python bench/generate.py                       # default model shape, CPU
    .venv/bin/python bench/generate.py --shape gpt2 --device cuda --dtype bfloat16 \\
        --batch 256 --prompt 128 --new 256
"""

from __future__ import annotations

import argparse
import time

import torch

from collab_lib.config import load_config
from collab_lib.decoding import generate
from collab_lib.model import gpt2_config
from collab_lib.sampling import SamplingConfig

SHAPES = {  # (n_layer, n_embd, n_head, context, vocab)
    "default": None,  # the default profile's model
    "gpt2": (12, 768, 12, 1024, 50257),  # GPT-2 124M
}


def build_model(shape: str, device: str, dtype: torch.dtype):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    if SHAPES[shape] is None:
        m = load_config("default").model
        config = gpt2_config(m, m.vocab_size)
    else:
        n_layer, n_embd, n_head, context, vocab = SHAPES[shape]
        config = GPT2Config(
            vocab_size=vocab, n_positions=context, n_embd=n_embd, n_layer=n_layer, n_head=n_head
        )
    return GPT2LMHeadModel(config).to(device=device, dtype=dtype).eval()


def prompts(batch: int, length: int, vocab: int, samples: int) -> list[list[int]]:
    """``batch`` rows: distinct prompts of ``length // 2`` to ``length`` tokens (left padding
    matters), each repeated ``samples`` times in a row (n completions of one prompt)."""
    g = torch.Generator().manual_seed(1)
    distinct = -(-batch // samples)
    sizes = torch.randint(length // 2, length + 1, (distinct,), generator=g).tolist()
    rows = [torch.randint(1, vocab, (n,), generator=g).tolist() for n in sizes]
    return [r for r in rows for _ in range(samples)][:batch]


def hf_generate(model, rows: list[list[int]], cfg: SamplingConfig, pad: int) -> int:
    width = max(map(len, rows))
    device = next(model.parameters()).device
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    out = model.generate(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        do_sample=True,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=cfg.top_k,
        max_new_tokens=cfg.max_new_tokens,
        min_new_tokens=cfg.max_new_tokens,
        pad_token_id=pad,
        eos_token_id=None,
    )
    return (out.shape[1] - width) * len(rows)


def ours(model, rows: list[list[int]], cfg: SamplingConfig, pad: int) -> int:
    out = generate(model, rows, cfg, eos_id=-1, pad_id=pad)  # -1: no token ends a sequence
    return sum(map(len, out))


def timed(fn, *args) -> tuple[float, int]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    n = fn(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=list(SHAPES), default="default")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--batch", type=int, default=160)
    ap.add_argument("--prompt", type=int, default=96, help="longest prompt, tokens")
    ap.add_argument("--new", type=int, default=128, help="new tokens per sequence")
    ap.add_argument(
        "--samples",
        type=int,
        default=5,
        help="rows per distinct prompt (RQ2 samples 5 per prompt, RQ1 10)",
    )
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-hf", action="store_true", help="time ours only (large batches)")
    args = ap.parse_args()
    model = build_model(args.shape, args.device, getattr(torch, args.dtype))
    rows = prompts(args.batch, args.prompt, model.config.vocab_size, args.samples)
    cfg = SamplingConfig(temperature=0.6, top_p=0.6, top_k=50, max_new_tokens=args.new)
    contenders = (
        {"ours": ours} if args.skip_hf else {"transformers generate": hf_generate, "ours": ours}
    )
    warm = SamplingConfig(0.6, 0.6, 50, min(8, args.new))
    for fn in contenders.values():  # the same shapes: every prompt, a few tokens
        fn(model, rows, warm, 0)
    best = {name: float("inf") for name in contenders}
    tokens = {}
    for _ in range(args.repeat):
        for name, fn in contenders.items():
            seconds, tokens[name] = timed(fn, model, rows, cfg, 0)
            best[name] = min(best[name], seconds)
    print(
        f"{args.shape} model on {args.device} ({args.dtype}), batch {args.batch}, prompts "
        f"<= {args.prompt} tokens, {args.new} new tokens each, best of {args.repeat}"
    )
    print(f"{'contender':<22} {'seconds':>8} {'new tokens/s':>13}")
    for name in contenders:
        print(f"{name:<22} {best[name]:>8.2f} {tokens[name] / best[name]:>13,.0f}")
    if not args.skip_hf:
        ratio = best["transformers generate"] / best["ours"]
        print(f"ratio ours / transformers generate: {ratio:.2f}x")


if __name__ == "__main__":
    main()
