"""Differential privacy: DP-SGD trains, clips and noises as it says; ε as published."""

import math

import pytest
import torch

from collab_lib import privacy
from collab_lib.config import TrainConfig, load_config
from collab_lib.model import init_model
from collab_lib.privacy import DPSGD
from collab_lib.training import CHECKPOINT, pack, train


@pytest.fixture(scope="module")
def setup(tiny_setup):
    return tiny_setup


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_abadi_et_al_published_epsilon():
    """Abadi et al. 2016, §3.1: q = 0.01, σ = 4, 10,000 steps, δ = 1e-5 give ε ≈ 1.26 with
    the moments accountant (Mironov's conversion); the tighter conversion we report is no
    larger."""
    published = privacy.epsilon(0.01, 4.0, 10_000, 1e-5, conversion="mironov")
    assert published == pytest.approx(1.26, abs=0.005)
    reported = privacy.epsilon(0.01, 4.0, 10_000, 1e-5)
    assert 0.7 * published < reported <= published


def test_epsilon_grows_with_steps_and_shrinks_with_noise():
    e = [privacy.epsilon(0.05, s, 100, 1e-5) for s in (0.5, 1.0, 2.0)]
    assert e[0] > e[1] > e[2] > 0
    assert privacy.epsilon(0.05, 1.0, 200, 1e-5) > e[1]
    assert (
        privacy.epsilon(0.05, 1.0, 0, 1e-5) == 0 and privacy.epsilon(0.05, 0, 5, 1e-5) == math.inf
    )


def test_dp_sgd_trains_a_tiny_model_and_learns(setup):
    cfg, tok, data = setup
    model = init_model(cfg.model, len(tok), seed=0)
    run = TrainConfig(epochs=8, batch_size=8, lr=3e-3, warmup_fraction=0.05, schedule="constant")
    curves = train(
        model, data, run, seed=0, dp=DPSGD(noise_multiplier=0.3, max_grad_norm=1.0, batch_size=8)
    )
    assert curves.epoch_loss[-1] < 0.8 * curves.epoch_loss[0]
    # the plain model again: no Opacus hooks or per-sample gradients left behind
    assert not model._forward_hooks and all(
        not hasattr(p, "grad_sample") or p.grad_sample is None for p in model.parameters()
    )


def test_dp_sgd_is_deterministic_and_resumes_to_the_same_weights(setup, tmp_path):
    cfg, tok, data = setup
    run, dp = TrainConfig(epochs=2, batch_size=4), DPSGD(1.0, 1.0, 8)
    a, b = init_model(cfg.model, len(tok), seed=1), init_model(cfg.model, len(tok), seed=1)
    train(a, data, run, seed=5, dp=dp)

    def stop(epoch, curves):
        if epoch == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(b, data, run, seed=5, checkpoint_dir=tmp_path, on_epoch=stop, dp=dp)
    assert (tmp_path / CHECKPOINT).exists()
    b = init_model(cfg.model, len(tok), seed=1)
    train(b, data, run, seed=5, checkpoint_dir=tmp_path, dp=dp)
    wa, wb = weights(a), weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_dp_batch_in_micro_batches_is_the_same_step(setup):
    """A DP-SGD batch of 16 sequences on average, processed 4 at a time or all at once: the
    per-sequence gradients are clipped and summed alike (Opacus's skipped steps), so without
    noise the weights agree."""
    cfg, tok, data = setup
    dp = DPSGD(0.0, 0.5, 16)
    finals = []
    for micro in (4, 64):
        model = init_model(cfg.model, len(tok), seed=4)
        train(model, data, TrainConfig(epochs=1, batch_size=micro), seed=2, dp=dp)
        finals.append(weights(model))
    for k in finals[0]:
        assert torch.allclose(finals[0][k], finals[1][k], atol=1e-5), k


def test_noise_at_a_large_multiplier_stops_learning(setup):
    """Same start, same data: the noise is added (σ = 30 learns nothing), and seeded."""
    cfg, tok, data = setup
    run = TrainConfig(epochs=8, batch_size=8, lr=3e-3, warmup_fraction=0.05, schedule="constant")
    losses, finals = {}, {}
    for name, sigma, seed in [("low", 0.3, 0), ("high", 30.0, 0), ("high, seed 1", 30.0, 1)]:
        model = init_model(cfg.model, len(tok), seed=3)
        losses[name] = train(model, data, run, seed=seed, dp=DPSGD(sigma, 1.0, 8)).epoch_loss
        finals[name] = weights(model)["lm_head.weight"]
    assert losses["low"][-1] < 0.85 * losses["low"][0]
    assert losses["high"][-1] > 0.95 * losses["high"][0]
    assert not torch.equal(finals["high"], finals["high, seed 1"])


def test_gpt2_projections_per_sample_gradients_are_exact(setup):
    """Our Conv1D grad sampler gives Opacus's functorch fallback's per-sample gradients, and
    each is that sequence's own gradient."""
    from opacus import GradSampleModule

    cfg, tok, data = setup
    x = data[:3]
    pos = torch.arange(x.shape[1]).expand_as(x)

    def per_sample(force: bool) -> dict[str, torch.Tensor]:
        model = init_model(cfg.model, len(tok), seed=6)
        if not force:
            privacy.register_conv1d()
        gs = GradSampleModule(model, loss_reduction="mean", force_functorch=force)
        gs(input_ids=x, labels=x, position_ids=pos).loss.backward()
        return {n: p.grad_sample.clone() for n, p in gs.named_parameters()}

    ours, fallback = per_sample(False), per_sample(True)
    conv = [n for n in ours if "c_attn.weight" in n or "c_fc.bias" in n]
    assert conv and all(torch.allclose(ours[n], fallback[n], atol=1e-6) for n in ours)
    one = init_model(cfg.model, len(tok), seed=6)
    one(input_ids=x[1:2], labels=x[1:2]).loss.backward()
    grad = dict(one.named_parameters())["transformer.h.0.attn.c_attn.weight"].grad
    assert torch.allclose(ours["_module.transformer.h.0.attn.c_attn.weight"][1], grad, atol=1e-6)


def test_poisson_batches_have_the_rate_asked():
    g = torch.Generator().manual_seed(0)
    sizes = [len(privacy.poisson_batch(1000, 0.02, g)) for _ in range(200)]
    assert 18 < sum(sizes) / len(sizes) < 22 and len(set(sizes)) > 5


# --------------------------------------------------------------------------- the audit


def _audit(setup, dp: DPSGD | None, epochs: int = 30) -> tuple[dict, int, int]:
    """Plant half of 64 random canaries (one sequence each) beside the documents, train, and
    audit: the outcome, the sequences and the optimizer steps."""
    from collab_lib import canaries, dp_audit
    from collab_lib.privacy import Row

    cfg, tok, docs = setup
    cands, coins = canaries.draw_audit(["A"], 64, seed=0)
    texts = [f"def f_{i}(x):\n    return x * {i} + {i % 7}\n" for i in range(60)]
    data = pack(texts + [Row(c["text"]) for c in cands if coins[c["id"]]], tok, cfg.model.context)
    run = TrainConfig(epochs=epochs, batch_size=8, lr=3e-3, warmup_fraction=0.05)
    base = init_model(cfg.model, len(tok), seed=0)
    model = init_model(cfg.model, len(tok), seed=0)
    curves = train(model, data, run, seed=0, dp=dp)
    strings = [c["text"] for c in cands]
    mine, ref = dp_audit.losses(model, tok, strings), dp_audit.losses(base, tok, strings)
    score = {c["id"]: a - r for c, a, r in zip(cands, mine, ref, strict=True)}
    guessed = dp_audit.guesses(score, 0.5)
    return dp_audit.bound(guessed, coins, 1e-5), len(data), len(curves.step_loss)


def test_the_audit_finds_what_plain_training_memorized(setup):
    outcome, _, _ = _audit(setup, dp=None)
    assert outcome["canaries"] == 64 and outcome["guesses"] == 32
    assert outcome["right"] >= 28
    assert outcome["epsilon lower bound"] > 1.0


def test_under_dp_sgd_the_audit_stays_below_the_accountant(setup):
    outcome, sequences, steps = _audit(setup, dp=DPSGD(2.0, 1.0, 8))
    eps = privacy.epsilon(8 / sequences, 2.0, steps, 1e-5)
    assert outcome["epsilon lower bound"] <= eps
    assert outcome["epsilon lower bound"] < 1.0  # and far from what plain training shows


def test_the_bound_matches_steinke_et_al():
    """The figures of Steinke, Nasr and Jagielski 2023 (Appendix D and §7)."""
    from collab_lib.dp_audit import epsilon_lower, p_value

    assert p_value(100, 100, 75, math.log(3), 0) == pytest.approx(0.553, abs=5e-4)
    assert epsilon_lower(100, 100, 75, 0) == pytest.approx(0.702, abs=5e-4)
    assert epsilon_lower(100, 100, 75, 1e-4) == pytest.approx(0.699, abs=5e-4)
    assert epsilon_lower(1000, 100, 75, 1e-4) == pytest.approx(0.673, abs=5e-4)
    assert epsilon_lower(100_000, 1510, 1439, 1e-5) == pytest.approx(2.675, abs=1e-3)
    assert epsilon_lower(100, 100, 50, 1e-5) == 0  # chance: no bound


def test_audit_candidates_hide_their_coins_and_each_is_one_sequence(setup):
    from collab_lib import canaries
    from collab_lib.privacy import Row

    cfg, tok, _ = setup
    cands, coins = canaries.draw_audit(["A", "B"], 50, seed=3)
    assert cands == canaries.draw_audit(["A", "B"], 50, seed=3)[0]
    assert all(set(c) == {"id", "organization", "text"} for c in cands)
    assert 30 < sum(coins.values()) < 70 and len({c["text"] for c in cands}) == 100
    docs = ["x = 1\n" * 20, "def g():\n    pass\n" * 9]
    plain = pack(docs, tok, cfg.model.context)
    with_rows = pack(docs + [Row(cands[0]["text"]), Row(cands[1]["text"])], tok, cfg.model.context)
    # the documents' packing is untouched: adding a canary adds exactly one sequence
    assert torch.equal(with_rows[: len(plain)], plain) and len(with_rows) == len(plain) + 2
    first = tok(cands[0]["text"], verbose=False)["input_ids"]
    assert with_rows[len(plain), : len(first)].tolist() == first


class _Job:
    """What the accountant reads of a trained job: the mechanism in its key, its record."""

    def __init__(self, tmp_path, dp: dict, metrics: dict, examples: dict | None = None):
        import json

        self.manifest, self.metrics = {"config": {"dp": dp}}, metrics
        self.path = tmp_path
        (tmp_path / "curves.json").write_text(json.dumps({"organization_examples": examples}))

    def file(self, name: str):
        return self.path / name


def test_the_accountant_reads_each_jobs_own_rate_and_steps(tmp_path):
    """Centralized: the union's rate and the steps it took; federated DP-SGD: the largest ε
    over the organizations (the smallest's rate); organization level: rate 1, one step per
    round."""
    from collab_lib import dp_audit
    from collab_lib.collaboration import ModelSpec

    cfg = load_config("default")
    example = {"level": "example", "noise": 1.0, "clip": 1.0, "batch": 64}
    orgs = ("F", "M", "G")
    cen = ModelSpec("C_DP1", "centralized", orgs, rq="DP", privacy=("example", 1.0))
    row = dp_audit.accountant(
        cfg, cen, _Job(tmp_path, example, {"sequences": 1371, "optimizer_steps": 66})
    )
    assert row["Sampling rate"] == 64 / 1371 and row["Steps"] == 66
    assert row["epsilon (accountant)"] == privacy.epsilon(64 / 1371, 1.0, 66, 1e-5)

    fed = ModelSpec("F_DP1", "federated", orgs, "FedAvg", rq="DP", privacy=("example", 1.0))
    examples = {"F": 138, "M": 402, "G": 831}
    row = dp_audit.accountant(cfg, fed, _Job(tmp_path, example, {"rounds": 3}, examples))
    assert row["Sampling rate"] == 64 / 138 and row["Steps"] == 3 * 3  # Facebook's
    others = [privacy.epsilon(64 / n, 1.0, 3 * math.ceil(n / 64), 1e-5) for n in (402, 831)]
    assert row["epsilon (accountant)"] > max(others)

    org = {"level": "organization", "noise": 1.0, "clip": 1.0}
    spec = ModelSpec(
        "F_OrgDP1", "federated", orgs, "FedAvg", rq="DP", privacy=("organization", 1.0)
    )
    row = dp_audit.accountant(cfg, spec, _Job(tmp_path, org, {"rounds": 3}))
    assert (row["Sampling rate"], row["Steps"]) == (1.0, 3)
    assert row["epsilon (accountant)"] == pytest.approx(9.01, abs=0.01)
