"""One training loop for every setting (paper §2.3): single-organization, centralized,
incremental, and each federated client's local epoch.

Read top to bottom, as nanoGPT's loop is: pack the documents into fixed-length sequences,
set up AdamW and the schedule, then loop over epochs, shuffling with a generator seeded by
(seed, epoch) and checkpointing at the end of every epoch. A run that is interrupted resumes
from its last checkpoint and ends with the same weights as one that was not (on CPU, bit for
bit).
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm import tqdm

from collab_lib import artifacts, privacy
from collab_lib.config import TrainConfig
from collab_lib.privacy import Row

if TYPE_CHECKING:
    from collab_lib.privacy import DPSGD

CHECKPOINT = "last.pt"
EPOCHS = artifacts.EPOCHS  # the weights after each epoch (round): epochs/1, epochs/2, ...


def pack(texts: Sequence[str], tokenizer, context: int) -> torch.Tensor:
    """``(sequences, context)`` token ids: documents joined by EOS, cut into full blocks;
    then one sequence per :class:`Row`."""
    ids: list[int] = []
    rows: list[list[int]] = []
    for text in texts:
        tokens = tokenizer(text, verbose=False)["input_ids"] + [tokenizer.eos_token_id]
        if isinstance(text, Row):
            rows.append((tokens * (context // len(tokens) + 1))[:context])
        else:
            ids += tokens
    n = len(ids) // context
    packed = torch.tensor(ids[: n * context], dtype=torch.long).view(n, context)
    return torch.cat([packed, torch.tensor(rows, dtype=torch.long)]) if rows else packed


@dataclass
class Curves:
    """Training loss per optimizer step and mean loss per epoch."""

    step_loss: list[float] = field(default_factory=list)
    epoch_loss: list[float] = field(default_factory=list)
    step_lr: list[float] = field(default_factory=list)


def warmup_steps(total: int, cfg: TrainConfig) -> int:
    """Warm-up length of a ``total``-step job: ``warmup_fraction`` of it, rounded."""
    return round(cfg.warmup_fraction * total)


def lr_factor(step: int, total: int, cfg: TrainConfig) -> float:
    """Multiplier of ``cfg.lr`` at optimizer ``step`` (0-based) of a ``total``-step job.

    A linear warm-up over the first ``warmup_fraction`` of the job, then the schedule (cosine
    or linear down to zero at its end; constant stays at the peak). Every job gets the same
    shape whatever its length, so a small organization's job reaches the peak rate and
    anneals as a large one's does.
    """
    warmup = warmup_steps(total, cfg)
    if step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if cfg.schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def steps_per_epoch(sequences: int, cfg: TrainConfig, dp: DPSGD | None = None) -> int:
    """Optimizer steps per epoch: one per batch (``batch_size x grad_accum`` sequences), or
    per DP-SGD batch (``dp.batch_size`` sequences on average)."""
    if dp is not None:
        return privacy.steps_per_epoch(sequences, dp.batch_size)
    return math.ceil(sequences / (cfg.batch_size * cfg.grad_accum))


def train(
    model: torch.nn.Module,
    data: torch.Tensor,
    cfg: TrainConfig,
    seed: int,
    checkpoint_dir: Path | None = None,
    on_epoch: Callable[[int, Curves], None] | None = None,
    schedule_span: tuple[int, int] | None = None,
    snapshot_dir: Path | None = None,
    dp: DPSGD | None = None,
) -> Curves:
    """Train ``model`` on ``data`` (``(sequences, context)`` ids) for ``cfg.epochs`` epochs.

    The learning rate follows :func:`lr_factor` over this call's steps, or, with
    ``schedule_span=(first, total)``, over steps ``first, first + 1, ...`` of a longer
    ``total``-step schedule: a federated client's round continues where the last one ended.
    With ``snapshot_dir``, the weights after epoch ``n`` are saved to ``snapshot_dir/n``
    (``save_pretrained``) before that epoch's checkpoint: a run stopped between the two
    retrains the epoch and writes the same snapshot again.

    With ``dp``, DP-SGD (:mod:`collab_lib.privacy`): each step on a Poisson sample of the
    sequences (rate ``dp.batch_size / sequences``) instead of a shuffled split, processed in
    micro-batches of ``batch_size``, per-sequence clipping and noise instead of
    ``grad_clip``; the sample and the noise are seeded per epoch, so a resumed run ends with
    the same weights.
    """
    device = next(model.parameters()).device
    cuda = device.type == "cuda"
    first, total = schedule_span or (0, steps_per_epoch(len(data), cfg, dp) * cfg.epochs)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0},
        ],
        lr=cfg.lr,
        fused=cuda,
    )
    private, noise_gen = model, None
    if dp is not None:
        noise_gen = torch.Generator(device=device)
        rate = privacy.sampling_rate(dp.batch_size, len(data))  # expected batch: rate x data
        private, optimizer = privacy.make_private(model, optimizer, dp, rate * len(data), noise_gen)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(first + s, total, cfg)
    )
    curves, start_epoch = Curves(), 0
    ckpt = checkpoint_dir / CHECKPOINT if checkpoint_dir else None
    if ckpt is not None and ckpt.exists():  # resume where an interrupted run stopped
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        curves, start_epoch = state["curves"], state["epoch"]

    model.train()
    for epoch in range(start_epoch, cfg.epochs):
        generator = torch.Generator().manual_seed(seed * 1000 + epoch)
        if noise_gen is not None:
            noise_gen.manual_seed(seed * 1000 + epoch + 500)
        losses = []
        for group in tqdm(
            _steps(len(data), cfg, generator, dp),
            desc=f"epoch {epoch + 1}",
            leave=False,
            disable=None,
        ):
            optimizer.zero_grad(set_to_none=True)
            if dp is None:
                step_loss = _accumulate(model, data, group, device)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            else:
                step_loss = _dp_accumulate(private, optimizer, data, group[0], cfg, device)
            curves.step_lr.append(scheduler.get_last_lr()[0])
            optimizer.step()
            scheduler.step()
            curves.step_loss.append(step_loss)
            losses.append(step_loss)
        seen = [x for x in losses if not math.isnan(x)]  # an empty DP-SGD sample has no loss
        curves.epoch_loss.append(sum(seen) / max(len(seen), 1))
        if snapshot_dir is not None:
            save_snapshot(model, snapshot_dir / str(epoch + 1))
        if ckpt is not None:
            _save(ckpt, model, optimizer, scheduler, curves, epoch + 1)
        if on_epoch is not None:
            on_epoch(epoch, curves)
    if dp is not None:
        private._close()  # the plain model again: no hooks, no per-sample gradients
    return curves


def _accumulate(model, data: torch.Tensor, group: list[torch.Tensor], device) -> float:
    """One step's gradients over its micro-batches (each loss a share of the step's)."""
    step_loss = 0.0
    for idx in group:
        x = data[idx].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = model(input_ids=x, labels=x).loss / len(group)
        loss.backward()
        step_loss += loss.item()
    return step_loss


def _dp_accumulate(private, optimizer, data: torch.Tensor, idx, cfg: TrainConfig, device) -> float:
    """One DP-SGD step's clipped per-sequence gradients, summed over micro-batches of
    ``batch_size``: every micro-batch but the last is clipped and summed and its step skipped
    (Opacus's ``signal_skip_step``, as its ``BatchMemoryManager`` does), so the caller's
    ``optimizer.step()`` adds the noise once, to the whole sum. A Poisson sample can be empty:
    the step still adds its noise."""
    if len(idx) == 0:
        privacy.empty_batch(private)
        return math.nan
    chunks = idx.split(cfg.batch_size)
    step_loss = 0.0
    for i, chunk in enumerate(chunks):
        x = data[chunk].to(device)
        # positions per sequence: Opacus needs a batch dimension on every input
        pos = torch.arange(x.shape[1]).expand_as(x).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = private(input_ids=x, labels=x, position_ids=pos).loss
        loss.backward()
        step_loss += loss.item() * len(chunk) / len(idx)
        if i < len(chunks) - 1:
            optimizer.signal_skip_step(do_skip=True)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return step_loss


def _steps(n: int, cfg: TrainConfig, generator, dp: DPSGD | None) -> list[list[torch.Tensor]]:
    """One epoch's optimizer steps, each a list of micro-batches (index tensors): a seeded
    shuffle split into batches, or (DP-SGD) one Poisson sample per step."""
    steps = steps_per_epoch(n, cfg, dp)
    if dp is not None:
        q = privacy.sampling_rate(dp.batch_size, n)
        return [[privacy.poisson_batch(n, q, generator)] for _ in range(steps)]
    batches = torch.randperm(n, generator=generator).split(cfg.batch_size)
    return [list(batches[i : i + cfg.grad_accum]) for i in range(0, len(batches), cfg.grad_accum)]


def _save(path: Path, model, optimizer, scheduler, curves: Curves, epoch: int) -> None:
    """Write the checkpoint atomically: an interruption never leaves a half-written one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "curves": curves,
        "epoch": epoch,
    }
    torch.save(state, tmp)
    os.replace(tmp, path)


def save_snapshot(model, dest: Path) -> None:
    """``model.save_pretrained(dest)``, atomically: written to a directory beside it and
    renamed, so an interruption never leaves a half-written snapshot under ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")  # one writer per directory: a fixed name, so a
    shutil.rmtree(tmp, ignore_errors=True)  # killed write's leftover is cleared on resume
    model.save_pretrained(tmp)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)


def copy_snapshots(src: Path, dest: Path) -> None:
    """The finished snapshots of ``src`` into ``dest``, as hard links (snapshot files are
    never rewritten in place); a killed write's hidden leftover is not copied."""
    shutil.copytree(src, dest, copy_function=os.link, ignore=shutil.ignore_patterns(".*"))
