"""Benchmark: our training loop against ``transformers.Trainer``, same model, data and batch.

Both start from the same weights, train on the same packed sequences (the stdlib sample the
base model is pretrained on) with the same batch size, schedule and precision (fp32 on CPU,
bf16 autocast on CUDA), and are warmed up on the same shapes before they are timed. Prints
tokens/s of each and the ratio (target: >= 1.2x). On a GPU it also prints the model FLOPs
utilization (MFU) of our loop, from 6 * parameters * tokens plus the attention term.

    python bench/train.py                        # the tiny and default profiles' model shapes
    python bench/train.py --profile gpu --steps 50
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from dataclasses import replace

import torch

from collab_lib.config import load_config
from collab_lib.model import build_tokenizer, init_model, load_tokenizer, stdlib_texts
from collab_lib.training import pack, train

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense, per device


def data_for(profile: str, sequences: int) -> tuple:
    cfg = load_config(profile)
    tok = load_tokenizer(build_tokenizer(cfg).path)
    data = pack(stdlib_texts(cfg.model.pretrain_corpus_mb + 1, cfg.seed), tok, cfg.model.context)
    return cfg, tok, data[:sequences]


def ours(cfg, vocab: int, data: torch.Tensor, device: str, warm: bool = True) -> float:
    model = init_model(cfg.model, vocab, cfg.seed).to(device)
    if warm:  # the same shapes as the timed run
        train(model, data[: cfg.train.batch_size * 3], replace(cfg.train, epochs=1), cfg.seed)
    _sync(device)
    start = time.perf_counter()
    train(model, data, replace(cfg.train, epochs=1), cfg.seed)
    _sync(device)
    return data.numel() / (time.perf_counter() - start)


def trainer(cfg, vocab: int, data: torch.Tensor, device: str, warm: bool = True) -> float:
    from transformers import Trainer, TrainingArguments

    model = init_model(cfg.model, vocab, cfg.seed).to(device)
    rows = [{"input_ids": x, "labels": x} for x in data]
    cuda = device == "cuda"

    def run(rows) -> None:
        with tempfile.TemporaryDirectory() as out:
            args = TrainingArguments(
                output_dir=out,
                per_device_train_batch_size=cfg.train.batch_size,
                gradient_accumulation_steps=cfg.train.grad_accum,
                num_train_epochs=1,
                learning_rate=cfg.train.lr,
                weight_decay=cfg.train.weight_decay,
                warmup_steps=cfg.train.warmup_fraction,  # a float < 1: a ratio (transformers 5)
                lr_scheduler_type=cfg.train.schedule,
                max_grad_norm=cfg.train.grad_clip,
                bf16=cuda,
                use_cpu=not cuda,
                logging_strategy="no",
                save_strategy="no",
                report_to=[],
                disable_tqdm=True,
                dataloader_num_workers=0,
                seed=cfg.seed,
            )
            with contextlib.redirect_stdout(io.StringIO()):  # its end-of-run metrics line
                Trainer(model=model, args=args, train_dataset=rows).train()

    if warm:
        run(rows[: cfg.train.batch_size * 3])  # warm-up on the same shapes
    _sync(device)
    start = time.perf_counter()
    run(rows)
    _sync(device)
    return data.numel() / (time.perf_counter() - start)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def mfu(cfg, vocab: int, tokens_per_s: float) -> float | None:
    """Model FLOPs utilization on a known GPU (PaLM's estimate: 6N + 12 L T d per token)."""
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    if peak is None:
        return None
    m = cfg.model
    n = sum(p.numel() for p in init_model(m, vocab, 0).parameters())
    flops = 6 * n + 12 * m.n_layer * m.context * m.n_embd
    return flops * tokens_per_s / peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", action="append", help="profiles whose model shape to time")
    ap.add_argument("--sequences", type=int, default=512, help="sequences per timed epoch")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs of each; the best counts")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(
        f"device: {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}, "
        f"threads {torch.get_num_threads()}"
    )
    cols = f"{'ours tok/s':>11} {'Trainer tok/s':>14} {'ratio':>6} {'MFU':>6}"
    print(f"{'profile':8} {'model':22} {cols}")
    for profile in args.profile or ["tiny", "default"]:
        cfg, tok, data = data_for(profile, args.sequences)
        vocab = len(tok)
        a = b = 0.0
        for i in range(args.repeat):  # alternate, so machine noise hits both alike
            a = max(a, ours(cfg, vocab, data, device, warm=i == 0))
            b = max(b, trainer(cfg, vocab, data, device, warm=i == 0))
        m = cfg.model
        shape = f"{m.n_layer}x{m.n_embd} V{vocab} T{m.context}"
        u = mfu(cfg, vocab, a)
        print(
            f"{profile:8} {shape:22} {a:11,.0f} {b:14,.0f} {a / b:5.2f}x "
            f"{'' if u is None else f'{100 * u:5.1f}%'}"
        )


if __name__ == "__main__":
    main()
