"""The training loop: it learns, it is deterministic, and it resumes to the same weights."""

import pytest
import torch
from conftest import TINY_MODEL as TINY

from collab_lib.config import TrainConfig
from collab_lib.model import init_model
from collab_lib.training import CHECKPOINT, lr_factor, train


@pytest.fixture(scope="module")
def setup(tiny_setup):
    return tiny_setup


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_pack_makes_full_blocks_joined_by_eos(setup):
    cfg, tok, data = setup
    assert data.shape[1] == cfg.model.context and data.dtype == torch.long
    assert (data == tok.eos_token_id).sum() > 0


def test_a_tiny_model_overfits_one_batch(setup):
    cfg, tok, data = setup
    model = init_model(cfg.model, len(tok), seed=0)
    run = TrainConfig(epochs=60, batch_size=4, lr=3e-3, warmup_fraction=0.05, schedule="constant")
    curves = train(model, data[:4], run, seed=0)
    assert curves.epoch_loss[-1] < 0.3 * curves.epoch_loss[0]


def test_same_seed_gives_bit_identical_weights(setup):
    cfg, tok, data = setup
    run = TrainConfig(epochs=2, batch_size=4)
    a, b = init_model(cfg.model, len(tok), seed=1), init_model(cfg.model, len(tok), seed=1)
    train(a, data, run, seed=5)
    train(b, data, run, seed=5)
    wa, wb = weights(a), weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_an_interrupted_run_resumes_to_the_same_weights(setup, tmp_path):
    cfg, tok, data = setup
    run = TrainConfig(epochs=3, batch_size=4)
    straight = init_model(cfg.model, len(tok), seed=2)
    train(straight, data, run, seed=7)

    def stop_after_first(epoch, curves):
        if epoch == 0:
            raise KeyboardInterrupt

    model = init_model(cfg.model, len(tok), seed=2)
    with pytest.raises(KeyboardInterrupt):
        train(model, data, run, seed=7, checkpoint_dir=tmp_path, on_epoch=stop_after_first)
    assert (tmp_path / CHECKPOINT).exists()
    resumed = init_model(cfg.model, len(tok), seed=2)  # a new process starts from scratch
    curves = train(resumed, data, run, seed=7, checkpoint_dir=tmp_path)
    assert len(curves.epoch_loss) == 3
    ws, wr = weights(straight), weights(resumed)
    assert all(torch.equal(ws[k], wr[k]) for k in ws)


@pytest.mark.parametrize("total", [16, 48, 1000], ids=lambda t: f"{t}-steps")
def test_every_job_warms_up_once_then_anneals_to_its_end(total):
    """A small organization's job (16 steps) gets the same shape as a large one's: the peak
    within the first 10 % of its steps, then a decay to near zero at its last step."""
    cfg = TrainConfig(warmup_fraction=0.1, schedule="cosine")
    factors = [lr_factor(s, total, cfg) for s in range(total)]
    peak = factors.index(max(factors))
    assert max(factors) == 1.0 and peak < 0.1 * total + 1
    assert all(a <= b for a, b in zip(factors[:peak], factors[1 : peak + 1], strict=True))
    assert all(a >= b for a, b in zip(factors[peak:-1], factors[peak + 1 :], strict=True))
    assert factors[-1] < 0.05


def test_a_schedule_span_continues_a_longer_schedule(setup):
    """A federated client's round 2 trains with the rates of steps n..2n-1 of a 2n-step job."""
    cfg, tok, data = setup
    run = TrainConfig(epochs=1, batch_size=4)
    alone = train(
        init_model(cfg.model, len(tok), seed=3),
        data,
        run.__class__(**{**run.__dict__, "epochs": 2}),
        seed=0,
    )
    n = len(alone.step_lr) // 2
    second = train(
        init_model(cfg.model, len(tok), seed=3), data, run, seed=1, schedule_span=(n, 2 * n)
    )
    assert second.step_lr == pytest.approx(alone.step_lr[n:])


KILLED_RUN = """
import os, signal, sys
from pathlib import Path
import torch
from conftest import TINY_MODEL as TINY
from collab_lib.config import TrainConfig, load_config
from collab_lib.model import init_model
from collab_lib.training import train

cfg = load_config("tiny", sys.argv[3:])
data, vocab = torch.load(sys.argv[1]), int(sys.argv[2])
steps, kill_at = 0, int(os.environ["KILL_AT_STEP"])
step = torch.optim.AdamW.step

def counted(self, *args, **kwargs):  # SIGKILL in the middle of an epoch, as a crash would
    global steps
    steps += 1
    if steps == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return step(self, *args, **kwargs)

torch.optim.AdamW.step = counted
if os.environ.get("KILL_IN_SAVE"):  # SIGKILL while epoch 2's snapshot is half written
    from transformers import PreTrainedModel

    save, saves = PreTrainedModel.save_pretrained, 0

    def half_written(self, path, *args, **kwargs):
        global saves
        saves += 1
        if saves == 2:
            Path(path).mkdir(parents=True, exist_ok=True)
            (Path(path) / "config.json").write_text('{"trunc')
            os.kill(os.getpid(), signal.SIGKILL)
        return save(self, path, *args, **kwargs)

    PreTrainedModel.save_pretrained = half_written
work = Path(os.environ["WORK"])
model = init_model(cfg.model, vocab, seed=2)
train(model, data, TrainConfig(epochs=3, batch_size=4), seed=7, checkpoint_dir=work,
      snapshot_dir=work / "epochs")
"""


@pytest.mark.parametrize("when", ["mid-epoch", "mid-snapshot"])
def test_a_killed_run_resumes_with_every_epoch_snapshot_and_the_same_weights(setup, tmp_path, when):
    """kill -9 in the middle of epoch 2, or while its snapshot is being written: only epoch
    1's snapshot is there, none is half written under its name, and the resumed run's
    snapshots and weights are those of an unbroken run, with nothing left over."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from transformers import GPT2LMHeadModel

    from collab_lib.training import steps_per_epoch

    cfg, tok, data = setup
    run = TrainConfig(epochs=3, batch_size=4)
    straight = init_model(cfg.model, len(tok), seed=2)
    train(straight, data, run, seed=7, snapshot_dir=tmp_path / "straight")

    torch.save(data, tmp_path / "data.pt")
    work = tmp_path / "work"
    kill_at = steps_per_epoch(len(data), run) + 2 if when == "mid-epoch" else 0
    env = os.environ | {"WORK": str(work), "KILL_AT_STEP": str(kill_at)}
    if when == "mid-snapshot":
        env["KILL_IN_SAVE"] = "1"
    args = [sys.executable, "-c", KILLED_RUN, str(tmp_path / "data.pt"), str(len(tok)), *TINY]
    proc = subprocess.run(args, env=env, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    names = sorted(p.name for p in (work / "epochs").iterdir() if not p.name.startswith("."))
    assert names == ["1"]  # no half-written snapshot under an epoch's name

    resumed = init_model(cfg.model, len(tok), seed=2)
    train(resumed, data, run, seed=7, checkpoint_dir=work, snapshot_dir=work / "epochs")
    ws, wr = weights(straight), weights(resumed)
    assert all(torch.equal(ws[k], wr[k]) for k in ws)
    assert sorted(p.name for p in (work / "epochs").iterdir()) == ["1", "2", "3"]  # no leftover
    for n in ("1", "2", "3"):
        a = GPT2LMHeadModel.from_pretrained(Path(tmp_path / "straight" / n)).state_dict()
        b = GPT2LMHeadModel.from_pretrained(work / "epochs" / n).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), f"epoch {n}"
    last = GPT2LMHeadModel.from_pretrained(work / "epochs" / "3").state_dict()
    assert all(torch.equal(last[k], ws[k]) for k in last)
