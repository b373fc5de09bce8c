"""Every setting as a curve: the snapshots scored, and memorization compared at matched
effectiveness (finding 5) on curves whose answer is known."""

import math
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_model, train_on

from collab_lib import artifacts, collaboration, curves, findings, pipeline
from collab_lib.collaboration import ModelSpec
from collab_lib.config import load_config
from tests.test_findings import _run

# Centralized learns fast and memorizes along the way; federated learns less. At their final
# checkpoints centralized memorizes more (12 vs 5); at the federated model's best loss (1.8)
# centralized, read between (2.0, 2) and (1.5, 6), sits at 3.6: less than federated's 5.
CENTRAL = ([3.0, 2.0, 1.5, 1.2], [0.0, 2.0, 6.0, 12.0])
FEDERATED = ([3.0, 2.4, 2.0, 1.8], [0.0, 2.0, 4.0, 5.0])


def test_matching_effectiveness_can_reverse_the_final_comparison():
    (xa, ya), (xb, yb) = CENTRAL, FEDERATED
    assert ya[-1] - yb[-1] == 7.0  # the point comparison: centralized memorizes more
    gap = findings.matched_gap(np.array(xa), np.array(ya), np.array(xb), np.array(yb))
    assert gap.shape == (1,) and gap[0] == pytest.approx(3.6 - 5.0)


def test_a_curve_is_read_where_it_first_reaches_the_level():
    x, y = np.array([3.0, 2.0, 2.5, 1.0]), np.array([0.0, 1.0, 9.0, 3.0])
    assert findings.at_level(x, y, 2.0) == 1.0
    assert findings.at_level(x, y, 1.5) == pytest.approx(2.0)  # the worse checkpoint passed over
    assert math.isnan(findings.at_level(x, y, 0.5))  # never reached
    # the level is the weaker curve's best, whichever of the two it is
    gap = findings.matched_gap(np.array([x]), np.array([y]), np.array([[3.0, 2.0]]), [[0, 4.0]])
    assert gap[0] == pytest.approx(1.0 - 4.0)


def test_without_canaries_finding_5_is_matched_on_k_extractability():
    """The paper profile plants no canaries: the curves' sequences decide, tokens matched on
    training minus validation sequences, read at the same perplexity."""
    rng = np.random.default_rng(0)
    run = _run({"Small_Only": 3, "Mid_Only": 2, "Big_Only": 1})
    run.roster += [
        ModelSpec("Centralized_ABC", "centralized", tuple("ABC")),
        ModelSpec("Federated_Avg_ABC", "federated", tuple("ABC"), "FedAvg"),
    ]
    ppl, seqs = [], []
    for model, (xs, ys) in {"Centralized_ABC": CENTRAL, "Federated_Avg_ABC": FEDERATED}.items():
        ppl += _curve_units(xs, ys, model, rng)[0]
        for point, y in enumerate(ys):
            for org in "ABC":
                for split, excess in (("train", y), ("validation", 0.0)):
                    seqs += [
                        {
                            "model": model,
                            "point": point,
                            "organization": org,
                            "split": split,
                            "file": f"{org}.py",
                            "start": 64 * i,
                            "matched": 3 + excess + rng.normal(0, 0.1),
                        }
                        for i in range(6)
                    ]
    run.curve_perplexity, run.curve_extractable = pd.DataFrame(ppl), pd.DataFrame(seqs)
    lines = {"organization": "A", "prompt": 0, "generated lines": 5, "memorized lines": 0}
    run.prompts = pd.DataFrame(
        [{"model": m} | lines for m in ("Centralized_ABC", "Federated_Avg_ABC")]
    )
    row = findings.evaluate(load_config("tiny"), [run]).set_index("finding").loc[5]
    assert row["estimate"] == pytest.approx(3.6 - 5.0, abs=0.15)
    assert "k-extractability" in row["measure"] and row["unit"] == findings.TOKENS
    assert "Beside it" not in row["why"]  # no canaries: no final comparison to set beside it


def test_epochs_trained_count_through_the_stages():
    class Job:
        ref = "stage/x"

    def at(stage, epoch):
        return curves.Point(Job(), stage, epoch)

    three_stages = [at(0, None)] + [at(s, e) for s in (1, 2, 3) for e in (1, 2, 3)]
    assert curves.trained(three_stages) == list(range(10))
    # a stage without snapshots: its final weights are a point, how far in is not known
    gap = curves.trained([at(0, None), at(1, 1), at(1, 2), at(2, None), at(3, 1)])
    assert gap[:3] == [0, 1, 2] and all(math.isnan(v) for v in gap[3:])


def _curve_units(xs: list[float], ys: list[float], model: str, rng) -> tuple[list, list]:
    """Per point: 3 organizations x 8 validation files at loss ``x`` and 3 x 4 canaries at
    exposure ``y``, each with a little noise."""
    ppl, exp = [], []
    for point, (x, y) in enumerate(zip(xs, ys, strict=True)):
        for org in "ABC":
            ppl += [
                {
                    "model": model,
                    "point": point,
                    "organization": org,
                    "file": f,
                    "loss_sum": 100 * (x + rng.normal(0, 0.01)),
                    "tokens": 100,
                }
                for f in range(8)
            ]
            exp += [
                {
                    "model": model,
                    "point": point,
                    "organization": org,
                    "canary": f"{org}{c}",
                    "count": 8,
                    "extrapolated_exposure": y + rng.normal(0, 0.1),
                }
                for c in range(4)
            ]
    return ppl, exp


def test_finding_5_is_decided_at_matched_effectiveness_with_the_final_points_beside_it():
    rng = np.random.default_rng(0)
    run = _run({"Small_Only": 3, "Mid_Only": 2, "Big_Only": 1})
    run.roster += [
        ModelSpec("Centralized_ABC", "centralized", tuple("ABC")),
        ModelSpec("Federated_Avg_ABC", "federated", tuple("ABC"), "FedAvg"),
    ]
    ppl, exp = _curve_units(*CENTRAL, "Centralized_ABC", rng)
    more_ppl, more_exp = _curve_units(*FEDERATED, "Federated_Avg_ABC", rng)
    run.curve_perplexity = pd.DataFrame(ppl + more_ppl)
    run.curve_exposure = pd.DataFrame(exp + more_exp)
    final = pd.DataFrame(exp + more_exp)  # rq2's canaries: each model's final checkpoint
    final = final[final["point"] == 3].drop(columns="point")
    run.canaries = final
    lines = {"organization": "A", "prompt": 0, "generated lines": 5, "memorized lines": 0}
    run.prompts = pd.DataFrame(
        [{"model": m} | lines for m in ("Centralized_ABC", "Federated_Avg_ABC")]
    )
    row = findings.evaluate(load_config("tiny"), [run]).set_index("finding").loc[5]
    assert row["estimate"] == pytest.approx(3.6 - 5.0, abs=0.15)
    assert row["verdict"] == findings.FAILS  # at equal effectiveness it memorizes less
    assert "same validation perplexity" in row["measure"]
    assert "Beside it, at the final checkpoints" in row["why"] and ": 7" in row["why"]


def test_finding_5_falls_back_to_the_final_checkpoints_without_a_checkpoint_between():
    """One epoch, or no snapshots: a curve is the base model and the last checkpoint, and a
    straight line between them is no reading of where the model was; the final points decide."""
    rng = np.random.default_rng(0)
    run = _run({"Small_Only": 3, "Mid_Only": 2, "Big_Only": 1})
    run.roster += [
        ModelSpec("Centralized_ABC", "centralized", tuple("ABC")),
        ModelSpec("Federated_Avg_ABC", "federated", tuple("ABC"), "FedAvg"),
    ]
    ends = {"Centralized_ABC": CENTRAL, "Federated_Avg_ABC": FEDERATED}
    units = [_curve_units([x[0], x[-1]], [y[0], y[-1]], m, rng) for m, (x, y) in ends.items()]
    run.curve_perplexity = pd.DataFrame([r for ppl, _ in units for r in ppl])
    run.curve_exposure = pd.DataFrame([r for _, exp in units for r in exp])
    run.canaries = run.curve_exposure[run.curve_exposure["point"] == 1].drop(columns="point")
    lines = {"organization": "A", "prompt": 0, "generated lines": 5, "memorized lines": 0}
    run.prompts = pd.DataFrame([{"model": m} | lines for m in ends])
    row = findings.evaluate(load_config("tiny"), [run]).set_index("finding").loc[5]
    assert row["estimate"] == pytest.approx(7.0, abs=0.2) and row["verdict"] == findings.HOLDS
    assert "the final checkpoints decide" in row["measure"]


def test_every_models_curve_runs_from_the_base_model_through_each_epoch(course_cfg):
    table = pipeline.table("curves", course_cfg)
    t8 = pipeline.table("perplexity_by_org", course_cfg).set_index("model")["union"]
    epochs = course_cfg.train.epochs
    for spec in curves.curve_models(course_cfg):
        rows = table[table["model"] == spec.name]
        stages = len(spec.orgs) if spec.setting == "incremental" else 1
        assert len(rows) == 1 + stages * epochs, spec.name
        assert rows["stage"].iloc[0] == 0
        assert rows["epochs"].tolist() == list(range(len(rows)))
        # the last snapshot is the model itself: the curve ends at Table 8's perplexity
        # (this profile scores every validation file, with Table 8's windows)
        assert rows["validation perplexity"].iloc[-1] == pytest.approx(t8[spec.name], rel=1e-9)
    base = table[table["point"] == 0]
    assert base["validation perplexity"].nunique() == 1 and (base["exposure - base"] == 0).all()
    assert base["validation perplexity"].iloc[0] == pytest.approx(t8[collaboration.BASE])


def test_an_interrupted_curves_run_scores_only_what_is_missing(course_run, tmp_path, monkeypatch):
    """The course cache, linked file by file into a copy; one point and the curves removed."""
    copy = tmp_path / "artifacts"
    shutil.copytree(course_run.artifacts, copy, copy_function=lambda s, d: shutil.os.link(s, d))
    monkeypatch.setenv("COLLAB_ARTIFACTS", str(copy))
    cfg = load_config(course_run.profile, course_run.overrides)
    planned = pipeline.plans(cfg)["curves"]["curves"]
    shutil.rmtree(artifacts.artifact_dir(*planned))
    points = sorted(p for p in (copy / curves.POINT_STEP).iterdir() if not p.name.startswith("."))
    before = {p.name: (p / artifacts.MANIFEST).stat().st_mtime_ns for p in points}
    shutil.rmtree(points[0])
    pipeline.run("curves", cfg)
    after = {
        p.name: (p / artifacts.MANIFEST).stat().st_mtime_ns
        for p in (copy / curves.POINT_STEP).iterdir()
        if not p.name.startswith(".")
    }
    assert after.keys() == before.keys()
    assert [n for n in after if after[n] != before[n]] == [points[0].name]
    assert artifacts.load(*planned) is not None


FUNCTION = (
    "def settle_invoice(ledger, invoice_id, amount):\n"
    '    """Settle one invoice and record it."""\n'
    "    entry = ledger.lookup(invoice_id)\n"
    "    entry.balance -= amount\n"
    "    entry.paid = True\n"
    "    ledger.record(entry)\n"
    "    ledger.flush()\n"
    "    audit.log(invoice_id)\n"
    "    return entry.balance\n"
)


def test_a_checkpoints_verbatim_metric_finds_the_function_it_memorized(tok):
    """RQ2's sampling and detection at one checkpoint: a model trained on a function emits its
    body from its signature and docstring; a fresh model does not."""
    from collab_lib.clone_stats import clone_options
    from collab_lib.clones import CloneIndex

    cfg = load_config(
        "tiny", {"model.context": 256, "memorization.max_new_tokens": 120, "curves.prompts": 1}
    )
    prompt = FUNCTION[: FUNCTION.index('."""') + 4]  # RQ2's prompts end at the quotes
    opts = clone_options(cfg)
    # B asks the same prompt, but its training split lacks the function: nothing of B's is
    # memorized, so each organization's completions must be searched in its own split
    inputs = curves._Inputs(
        val={},
        planted=[],
        alternatives={},
        seqs=[],
        prompts=[{"organization": "B", "prompt": prompt}, {"organization": "A", "prompt": prompt}],
        indices={
            "A": CloneIndex.build([("ledger.py", FUNCTION)], opts),
            "B": CloneIndex.build([("other.py", "x = 1\n" * 8)], opts),
        },
        refs=[],
    )
    trained = tiny_model(len(tok), seed=3)
    train_on(trained, tok(FUNCTION)["input_ids"] + [tok.eos_token_id], steps=250)
    memorized = curves._verbatim_units(cfg, trained, tok, inputs).set_index("organization")
    fresh = curves._verbatim_units(cfg, tiny_model(len(tok), seed=3), tok, inputs)
    assert memorized.loc["A", "memorized lines"] >= cfg.clones.min_lines
    assert memorized.loc["A", "prompt"] == 1 and memorized.loc["B", "prompt"] == 0
    assert memorized.loc["B", "memorized lines"] == 0 < memorized.loc["B", "generated lines"]
    assert fresh["memorized lines"].sum() == 0  # (a fresh model ends the body at once)


def test_a_checkpoints_key_moves_with_the_verbatim_settings_only_where_they_are_scored():
    def key(overrides: dict) -> str:
        cfg = load_config("default", overrides)
        config = curves._point_config(cfg) | curves._verbatim_config(cfg)
        return artifacts.artifact_key(curves.POINT_STEP, config)

    off = key({})
    assert key({"memorization.n_samples": 2}) == off  # not scored: sampling does not matter
    on = key({"curves.prompts": 5})
    assert on != off and key({"curves.prompts": 5, "memorization.n_samples": 2}) != on
    assert key({"curves.prompts": 6}) != on
