"""The findings: the decision rule, the paired resampling, and verdicts that can go each way."""

import math

import numpy as np
import pandas as pd
import pytest

from collab_lib import findings, pipeline
from collab_lib.collaboration import ModelSpec
from collab_lib.config import load_config

ORGS = {"Small": 1.0, "Mid": 2.0, "Big": 3.0}


def test_the_rule_needs_the_whole_interval_on_one_side():
    assert findings.decide(-0.3, -0.1, "below", 0.0) == findings.HOLDS
    assert findings.decide(0.1, 0.3, "below", 0.0) == findings.FAILS
    assert findings.decide(-0.1, 0.1, "below", 0.0) == findings.OPEN
    assert findings.decide(0.6, 0.9, "above", 0.5) == findings.HOLDS
    assert findings.decide(math.nan, 1.0, "above", 0.0) == findings.OPEN


def test_draws_resample_within_each_stratum_and_keep_the_estimate_first():
    strata = np.array(["a"] * 3 + ["b"] * 5)
    w = findings.draws(strata, 200, np.random.default_rng(0))
    assert w.shape == (201, 8) and (w[0] == 1).all()
    assert (w[1:, :3].sum(axis=1) == 3).all() and (w[1:, 3:].sum(axis=1) == 5).all()
    again = findings.draws(strata, 200, np.random.default_rng(0))
    assert (w == again).all()


def _run(loss: dict[str, float], noise: float = 0.05, files: int = 30) -> findings.Run:
    """Three single-organization models scored on every organization's validation files."""
    rng = np.random.default_rng(1)
    rows = []
    for org in ORGS:
        for f in range(files):
            tokens = int(rng.integers(50, 500))
            shared = rng.normal(0, 0.5)  # files differ in difficulty for every model alike
            per = {name: mean + shared + rng.normal(0, noise) for name, mean in loss.items()}
            if loss["Big_Only"] == loss["Mid_Only"]:  # a tie: the same model twice
                per["Big_Only"] = per["Mid_Only"]
            file = f"{org}/{f}.py"
            rows += [
                {
                    "model": m,
                    "organization": org,
                    "file": file,
                    "loss_sum": x * tokens,
                    "tokens": tokens,
                }
                for m, x in per.items()
            ]
    roster = [ModelSpec(f"{o}_Only", "single", (o,)) for o in ORGS]
    empty = pd.DataFrame()
    return findings.Run(
        0,
        roster,
        ORGS,
        {o: 1.0 for o in ORGS},
        pd.DataFrame(rows),
        empty,
        empty,
        empty,
        empty,
        empty,
    )


@pytest.mark.parametrize(
    ("big", "verdict"),
    [(2.0, findings.HOLDS), (2.5, findings.OPEN), (3.0, findings.FAILS)],
)
def test_finding_1_can_hold_fail_or_stay_open(big, verdict):
    cfg = load_config("tiny")
    run = _run({"Small_Only": 2.9, "Mid_Only": 2.5, "Big_Only": big})
    table = findings.evaluate(cfg, [run]).set_index("finding")
    assert table.loc[1, "verdict"] == verdict
    assert math.isclose(table.loc[1, "estimate"], big - 2.5, abs_tol=0.03)
    assert table.loc[1, "low"] <= table.loc[1, "estimate"] <= table.loc[1, "high"]
    assert "largest: Big" in table.loc[1, "measure"]


def test_a_finding_the_run_cannot_test_says_why():
    cfg = load_config("tiny")
    table = findings.evaluate(cfg, [_run({"Small_Only": 3, "Mid_Only": 2, "Big_Only": 1})])
    row = table.set_index("finding").loc[2]  # no centralized or federated model
    assert row["verdict"] == findings.OPEN and row["measure"] == "none"
    assert row["why"].startswith("Cannot be tested in this profile")


@pytest.mark.parametrize(("sync", "verdict"), [(2.0, findings.HOLDS), (2.6, findings.FAILS)])
def test_finding_7_uses_the_continuation_loss_when_no_line_is_memorized(sync, verdict):
    """No verbatim line: the loss drop on the shared blocks' second halves decides."""
    rng = np.random.default_rng(0)
    pair = [
        ModelSpec("Centralized_MG", "centralized", ("M", "G"), rq="RQ3"),
        ModelSpec("Incremental_M2G", "incremental", ("M", "G"), rq="RQ3"),
    ]
    means = {findings.BASE: 3.0, "Centralized_MG": sync, "Incremental_M2G": 2.3}
    blocks, prompts = [], []
    for p in range(40):
        tokens, hard = int(rng.integers(20, 60)), rng.normal(0, 0.3)
        for m, x in means.items():
            blocks.append(
                {
                    "model": m,
                    "prompt": p,
                    "tokens": tokens,
                    "loss_sum": (x + hard + rng.normal(0, 0.05)) * tokens,
                }
            )
            prompts.append({"model": m, "prompt": p, "generated lines": 5, "memorized lines": 0})
    # on the pair's validation files every model gains the same: only the blocks differ
    val = [
        {
            "model": m,
            "organization": o,
            "file": f"{o}/{f}.py",
            "loss_sum": (x - d) * 100,
            "tokens": 100,
        }
        for o in ("M", "G")
        for f in range(10)
        for m, x, d in (
            (findings.BASE, 3.0, 0),
            ("Centralized_MG", 3.0, 0.2),
            ("Incremental_M2G", 3.0, 0.2),
        )
    ]
    run = _run({"Small_Only": 3, "Mid_Only": 2, "Big_Only": 1})
    run.roster += pair
    run.perplexity = pd.concat([run.perplexity, pd.DataFrame(val)], ignore_index=True)
    run.rq3_prompts, run.rq3_blocks = pd.DataFrame(prompts), pd.DataFrame(blocks)
    row = findings.evaluate(load_config("tiny"), [run]).set_index("finding").loc[7]
    assert row["verdict"] == verdict and "second half of the shared clone" in row["measure"]
    assert row["estimate"] == pytest.approx(2.3 - sync, abs=0.03)


@pytest.mark.parametrize(("gain", "verdict"), [(0.6, findings.HOLDS), (0.0, findings.FAILS)])
def test_finding_4_compares_the_most_duplicated_organization_with_the_others(gain, verdict):
    """No verbatim line: the duplication signal decides, organization against organization.
    Clone lines are more predictable in some organizations than in others (``easy``): the
    single-organization models that never saw an organization measure that, so only what the
    collaborative model learned beyond it (``gain``) counts."""
    rng = np.random.default_rng(0)
    easy = {"Small": 0.3, "Mid": 0.1, "Big": 0.5}  # any trained model's extra gain on clones
    learned = {"Small": 0.2, "Mid": 0.25, "Big": gain}  # the collaborative model's beyond it
    models = {"Centralized_SMB": None, "Small_Only": "Small", "Mid_Only": "Mid", "Big_Only": "Big"}
    rows = []
    for org in ORGS:
        for f in range(12):
            for lines in ("clone", "other"):
                hard = rng.normal(0, 0.2)
                file = f"{org}/train/{f}.py"
                for model, own in {findings.BASE: "", **models}.items():
                    extra = 0.0
                    if model != findings.BASE and lines == "clone":
                        saw = own is None or own == org
                        extra = easy[org] + (learned[org] if own is None else 0.4 if saw else 0)
                    x = 3.0 - (0.5 if model != findings.BASE else 0) - extra
                    rows.append(
                        {
                            "model": model,
                            "organization": org,
                            "split": "train",
                            "file": file,
                            "lines": lines,
                            "tokens": 100,
                            "loss_sum": (x + hard + rng.normal(0, 0.02)) * 100,
                        }
                    )
    run = _run({"Small_Only": 3, "Mid_Only": 2, "Big_Only": 1})
    run.roster.append(ModelSpec("Centralized_SMB", "centralized", tuple(ORGS)))
    run.duplication = pd.DataFrame(rows)
    run.clone_density = {"Small": 10.0, "Mid": 20.0, "Big": 50.0}  # clone lines per MB
    row = findings.evaluate(load_config("tiny"), [run]).set_index("finding").loc[4]
    assert row["verdict"] == verdict
    assert row["estimate"] == pytest.approx(gain - 0.225, abs=0.03)
    assert "Big, the most duplicated, minus the mean of Small, Mid" in row["measure"]
    assert "the single-organization models of the others" in row["measure"]


@pytest.mark.parametrize(("b_last_in_b2a", "most"), [(3.0, 2), (0.5, 1)])
def test_finding_6_gives_the_papers_form_beside_the_average(b_last_in_b2a, most):
    """Canary exposure over the base model's, per organization: A2B memorizes B (last) most;
    B2A memorizes A (last) most, or not. B alone has 32-copy canaries, far more exposed: they
    are left out, since A has none to compare with."""
    rng = np.random.default_rng(0)
    gains = {
        "Incremental_A2B": {"A": 1.0, "B": 3.0},
        "Incremental_B2A": {"A": b_last_in_b2a, "B": 1.0},
    }
    rows = []
    for c in range(60):
        org, count = ("AB"[c % 2], 8) if c < 40 else ("B", 32)
        rows.append(
            {
                "model": findings.BASE,
                "canary": c,
                "organization": org,
                "count": count,
                "extrapolated_exposure": 5.0,
            }
        )
        for model, g in gains.items():
            x = 5.0 + g[org] + (30 if count == 32 else 0) + rng.normal(0, 0.1)
            rows.append(
                {
                    "model": model,
                    "canary": c,
                    "organization": org,
                    "count": count,
                    "extrapolated_exposure": x,
                }
            )
    run = _run({"Small_Only": 3, "Mid_Only": 2, "Big_Only": 1})
    run.roster += [
        ModelSpec("Incremental_A2B", "incremental", ("A", "B")),
        ModelSpec("Incremental_B2A", "incremental", ("B", "A")),
    ]
    run.canaries = pd.DataFrame(rows)
    run.prompts = pd.DataFrame(  # sampled, no line memorized verbatim: exposure decides
        [
            {"model": m, "organization": o, "prompt": p, "generated lines": 5, "memorized lines": 0}
            for m in gains
            for o in "AB"
            for p in range(3)
        ]
    )
    row = findings.evaluate(load_config("tiny"), [run]).set_index("finding").loc[6]
    assert row["estimate"] == pytest.approx(((3 - 1) + (b_last_in_b2a - 1)) / 2, abs=0.05)
    assert f"orders (of 2) in which the last organization is memorized most: {most} " in row["why"]


def test_seeds_that_disagree_widen_the_interval():
    one = np.concatenate([[1.0], np.random.default_rng(0).normal(1.0, 0.01, 500)])
    other = np.concatenate([[-1.0], np.random.default_rng(1).normal(-1.0, 0.01, 500)])
    est, reps = findings.combine([one, other], 500, np.random.default_rng(2))
    assert est == pytest.approx(0.0)
    low, high = np.quantile(reps, [0.025, 0.975])
    assert low < -0.9 and high > 0.9  # the seed-to-seed spread is inside the interval
    _, alone = findings.combine([one], 500, np.random.default_rng(2))
    assert np.quantile(alone, 0.975) - np.quantile(alone, 0.025) < 0.1


@pytest.mark.slow
def test_the_step_decides_all_seven_from_the_runs_own_tables(course_cfg):
    table = pipeline.table("findings", course_cfg).set_index("finding")
    assert list(table.index) == list(range(1, 8))
    assert set(table["verdict"]) <= {findings.HOLDS, findings.FAILS, findings.OPEN}
    assert table["rule"].str.startswith("holds if").all() and (table["seeds"] == 1).all()
    # finding 1's estimate is Table 8's own numbers: log perplexity differences
    by_org = pipeline.table("perplexity_by_org", course_cfg).set_index("model")["union"]
    t3 = pipeline.table("table3", course_cfg)
    sizes = t3[t3["split"] == "train"].set_index("organization")["size_mb"]
    largest = f"{sizes.idxmax()}_Only"
    others = [f"{o}_Only" for o in sizes.index if f"{o}_Only" != largest]
    expected = math.log(by_org[largest]) - min(math.log(by_org[o]) for o in others)
    assert table.loc[1, "estimate"] == pytest.approx(expected, rel=1e-9)
    assert table.loc[1, "unit"] == table.loc[1, "paper unit"] == findings.NATS  # both: nats
    # the book profile measures memorization on its centralized model only
    assert table.loc[5, "measure"] == "none" and "memorization.models" in table.loc[5, "why"]


def test_key_tables_show_mean_and_spread_across_seeds(monkeypatch):
    from collab_lib import report

    cfg = load_config("tiny", {"seeds": [0, 1, 2]})
    models = ["base model", "Centralized_FMG"]
    by_seed = {
        s: pd.DataFrame({"model": models, "perplexity": [100.0 + s, 10.0 + 2 * s]})
        for s in (0, 1, 2)
    }
    monkeypatch.setattr(pipeline, "table", lambda name, c: by_seed[c.seed])
    out = report.across_seeds(cfg, "table8")
    assert list(out["model"]) == ["base model", "Centralized_FMG"]
    assert list(out["perplexity"]) == ["101 ± 1", "12 ± 2"]  # pass@k: not in this table
