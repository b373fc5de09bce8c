"""Memorization: generated lines only, canary exposure, greedy extraction, the tables."""

import math
import random

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_model, train_on

from collab_lib import canaries, cross_org, duplication, exposure, memorization, scoring, verbatim
from collab_lib.clones import CloneIndex, CloneOptions

TRAIN = "".join(f"    total_{i} = combine(total_{i - 1}, weight={i})\n" for i in range(1, 13))
TRAIN_LINES = TRAIN.splitlines(keepends=True)
NEW = "".join(f"    fresh_{i} = other_call({i})\n" for i in range(5))


def detect(prompt: str, completion: str) -> dict:
    index = CloneIndex.build([("lib.py", TRAIN)], CloneOptions(6))
    row, blocks, _ = verbatim.detect(
        index, [({"prompt": prompt}, {"prompt": 0, "sample": 0, "completion": completion})]
    )
    return row | {"blocks": blocks}


def test_lines_copied_inside_the_prompt_are_never_memorized():
    """A docstring (here: 8 lines) copied from training into the prompt is not the model's."""
    row = detect("".join(TRAIN_LINES[:8]), NEW)
    assert row["generated lines"] == 5
    assert row["memorized blocks"] == row["memorized lines"] == 0


def test_a_block_running_from_the_prompt_into_the_completion_counts_completion_lines_only():
    row = detect("".join(TRAIN_LINES[:4]), "".join(TRAIN_LINES[4:7]) + NEW)
    assert row["generated lines"] == 8
    assert row["memorized blocks"] == 1 and row["memorized lines"] == 3
    block = row["blocks"][0]
    assert (block["start"], block["end"], block["source_start"]) == (1, 7, 1)
    assert block["text"] == "".join(TRAIN_LINES[:7])


def test_a_block_inside_the_completion_counts_whole():
    row = detect("def f():\n", NEW + "".join(TRAIN_LINES[2:9]))
    assert row["generated lines"] == 12 and row["memorized lines"] == 7


def test_too_short_a_copy_is_not_memorized():
    row = detect("def f():\n", "".join(TRAIN_LINES[2:7]) + NEW)
    assert row["memorized lines"] == 0


def test_table10_sums_organizations_and_ranks_by_ratio():
    t9 = pd.DataFrame(
        [
            {
                "model": "A",
                "organization": "X",
                "generated lines": 100,
                "memorized blocks": 1,
                "memorized lines": 6,
            },
            {
                "model": "A",
                "organization": "Y",
                "generated lines": 100,
                "memorized blocks": 0,
                "memorized lines": 0,
            },
            {
                "model": "Centralized_FMG",
                "organization": "X",
                "generated lines": 50,
                "memorized blocks": 2,
                "memorized lines": 12,
            },
            {
                "model": "Centralized_FMG",
                "organization": "Y",
                "generated lines": 0,
                "memorized blocks": 0,
                "memorized lines": 0,
            },
        ]
    )
    t10 = memorization.table10(t9)
    assert list(t10["model"]) == ["Centralized_FMG", "A"] and list(t10["rank"]) == [1, 2]
    assert t10["ratio (%)"].tolist() == pytest.approx([24.0, 3.0])
    assert t10["paper ratio (%)"].tolist()[0] == 1.711
    tied = t9.assign(**{"memorized lines": 0, "memorized blocks": 0})  # nothing memorized
    assert list(memorization.table10(tied)["rank"]) == [1, 1]  # a tie is not a ranking


# --------------------------------------------------------------------------- canaries


@pytest.fixture(scope="module")
def canary():
    rng = random.Random(3)
    planted = canaries._write(canaries.SHAPES[0], ("billing", "ledger"), rng)
    alternatives = [canaries.new_secret(planted["format"], rng) for _ in range(63)]
    return planted, alternatives


def test_secret_losses_equal_scoring_each_candidate_whole(tok, canary):
    """The shared-prefix cache, right padding and chunking change nothing."""
    planted, alternatives = canary
    model = tiny_model(len(tok))
    secrets = [planted["secret"], *alternatives[:9], "ab"]  # lengths differ
    fast = scoring.suffix_losses(model, tok, planted["prefix"], secrets, batch_size=4)
    prefix = tok(planted["prefix"])["input_ids"]
    for secret, got in zip(secrets, fast, strict=True):
        ids = tok(secret)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prefix + ids])).logits[0]
        logp = logits.log_softmax(-1)
        want = -sum(logp[len(prefix) + j - 1, t].item() for j, t in enumerate(ids))
        assert got == pytest.approx(want, abs=1e-4)


def test_a_model_trained_on_a_canary_exposes_it_and_one_that_was_not_does_not(tok, canary):
    planted, alternatives = canary
    fresh = tiny_model(len(tok))
    trained = tiny_model(len(tok))
    train_on(trained, tok(planted["text"])["input_ids"])
    measured = {}
    for name, model in (("fresh", fresh), ("trained", trained)):
        losses = scoring.suffix_losses(
            model, tok, planted["prefix"], [planted["secret"], *alternatives]
        )
        measured[name] = (
            exposure.rank_exposure(losses[0], losses[1:]),
            exposure.extrapolated_exposure(losses[0], losses[1:]),
        )
    assert measured["trained"][0] == math.log2(64)  # ranked first of 64
    assert measured["fresh"][0] < 4
    # the extrapolation goes on where the rank saturates
    assert measured["trained"][1] > math.log2(64) > measured["fresh"][1]
    greedy = exposure.greedy_secrets(trained, tok, [planted])
    assert greedy[0].startswith(planted["secret"])
    assert not exposure.greedy_secrets(fresh, tok, [planted])[0].startswith(planted["secret"])


def test_extrapolated_exposure_is_about_one_bit_at_the_median():
    rng = np.random.default_rng(0)
    alt = rng.gamma(16.0, 1.0, 5000) + 20  # skewness 0.5
    assert exposure.extrapolated_exposure(float(np.median(alt)), alt) == pytest.approx(1.0, abs=0.1)
    assert exposure.extrapolated_exposure(float(alt.min()) - 5, alt) > math.log2(5001)


def test_extrapolated_exposure_stays_finite_beyond_a_skew_normal():
    """Alternatives more skewed than a skew-normal can be: the normal gives the tail."""
    alt = 50 + 5 * np.random.default_rng(0).exponential(size=1000)  # skewness about 2
    values = [exposure.extrapolated_exposure(s, alt) for s in (45.0, 40.0, 30.0)]
    assert all(math.isfinite(v) for v in values) and values == sorted(values)


def test_rank_exposure_counts_only_strictly_better_alternatives():
    alt = np.array([1.0, 2.0, 3.0])
    assert exposure.rank_exposure(0.5, alt) == 2.0  # first of 4
    assert exposure.rank_exposure(2.5, alt) == pytest.approx(math.log2(4) - math.log2(3))


def test_exposure_table_subtracts_the_base_models_value_per_canary():
    def frame(rank: list[float]) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "canary": ["a", "b"],
                "organization": ["X", "X"],
                "count": [4, 4],
                "candidates": [64, 64],
                "rank_exposure": rank,
                "extrapolated_exposure": rank,
                "extracted": [False, True],
                "leaked": [None, "a"],
            }
        )

    t = exposure.exposure_table({"base model": frame([1.0, 2.0]), "M": frame([5.0, 6.0])})
    row = t[t["model"] == "M"].iloc[0]
    assert row["rank exposure - base"] == 4.0 and row["rank exposure"] == 5.5
    assert row["extracted (%)"] == 50.0 and row["leaked (%)"] == 50.0


def test_no_canaries_give_an_empty_exposure_table_with_its_columns(tmp_path):
    from collab_lib import report

    empty = pd.DataFrame(columns=exposure.EXPOSURE_COLUMNS)
    table = exposure.exposure_table({"base model": empty, "M": empty})
    table.to_csv(tmp_path / "exposure.csv", index=False)
    back = pd.read_csv(tmp_path / "exposure.csv")
    assert back.empty and "extrapolated exposure - base" in back.columns
    report.exposure_heatmap(back)  # a figure that says so, no error


def test_rq3_models_of_a_two_organization_profile_are_its_union_models():
    from collab_lib.config import load_config

    names = cross_org.rq3_models(
        load_config(
            "tiny",
            {
                "datasets.organizations": [
                    {
                        "name": "Ads",
                        "short": "A",
                        "size_mb": 0.1,
                        "sources": [{"installed": "absl-py"}],
                    },
                    {
                        "name": "Web",
                        "short": "W",
                        "size_mb": 0.2,
                        "sources": [{"installed": "torch"}],
                    },
                ]
            },
        )
    )
    assert names == [
        "base model",
        "Centralized_AW",
        "Federated_Avg_AW",
        "Federated_Yogi_AW",
        "Incremental_A2W",
        "Incremental_W2A",
    ]


# --------------------------------------------------------------------------- duplication


def test_tokens_are_placed_on_the_line_of_their_first_visible_character(tok):
    text = "def f(x):\n    return x\n\n\ny = f(1)\n"
    enc = tok(text, return_offsets_mapping=True)
    lines = duplication.line_of_tokens(text, enc["offset_mapping"])
    for (a, b), line in zip(enc["offset_mapping"], lines, strict=True):
        piece = text[a:b]
        if piece.strip():
            first = a + len(piece) - len(piece.lstrip())
            assert line == text[:first].count("\n") + 1
        else:
            assert line == 0
    assert set(lines.tolist()) == {0, 1, 2, 5}


def test_line_sample_classes_lines_as_the_detector_breaks_them(tok):
    """A lone carriage return breaks a line; a last file with no counted line is no error."""
    from types import SimpleNamespace

    from collab_lib.config import load_config

    block = "".join(f"value_{i} = compute({i})\r" for i in range(7))  # lone \r line breaks
    docs = {
        "train": [
            {"path": "a.py", "content": block + "x = 1\r\n"},
            {"path": "b.py", "content": "y = 2\n" + block},
            {"path": "c/__init__.py", "content": "# license only\n"},
        ]
    }
    ds = SimpleNamespace(documents=lambda org, split: docs[split])
    cfg = load_config("tiny", {"memorization.duplication_tokens": None})
    sample = duplication.line_sample(ds, tok, "X", "train", CloneOptions(6), cfg)
    assert sample["files"][:2] == ["a.py", "b.py"] or sample["files"][:2] == ["b.py", "a.py"]
    kinds = dict(zip(sample["file"].tolist(), sample["kind"].tolist(), strict=True))
    assert set(sample["kind"].tolist()) == {0, 1, 2} and len(kinds) == 3
    first_file = sample["files"].index("a.py")
    a_tokens = sample["kind"][sample["file"] == first_file]
    assert (a_tokens == 1).sum() > (a_tokens == 2).sum()  # 7 clone lines, 1 other


def test_duplication_signal_is_the_training_excess_net_of_validation():
    def frame(train_clone, train_other, val_clone, val_other):
        rows = []
        for split, lines, mean in (
            ("train", "clone", train_clone),
            ("train", "other", train_other),
            ("validation", "clone", val_clone),
            ("validation", "other", val_other),
        ):
            rows.append(
                {
                    "organization": "X",
                    "split": split,
                    "file": "a.py",
                    "lines": lines,
                    "loss_sum": 10 * mean,
                    "tokens": 10,
                }
            )
        return pd.DataFrame(rows)

    t = duplication.duplication_table(
        {"base model": frame(3.0, 3.0, 3.0, 3.0), "M": frame(1.0, 2.0, 2.5, 2.6)}
    )
    row = t[t["model"] == "M"].iloc[0]
    assert row["train clone drop"] == 2.0 and row["train other drop"] == 1.0
    assert row["duplication signal"] == pytest.approx((2.0 - 1.0) - (0.5 - 0.4))


def test_thresholds_around_the_papers_six_lines_and_rq3s_three():
    assert verbatim.thresholds(6) == (4, 6, 8) and verbatim.thresholds(3) == (2, 3, 4)


def test_a_five_line_copy_is_memorized_at_four_lines_only():
    indices = verbatim.threshold_indices([("lib.py", TRAIN)], CloneOptions(6))
    copied = [
        (
            {"prompt": "def f():\n"},
            {"prompt": 0, "sample": 0, "completion": "".join(TRAIN_LINES[2:7]) + NEW},
        )
    ]
    found = {
        t: verbatim.detect(index, copied)[0]["memorized lines"] for t, index in indices.items()
    }
    assert found == {4: 5, 6: 0, 8: 0}


def test_the_threshold_table_ranks_per_threshold_and_says_where_the_ranking_changes():
    rows = [
        {
            "threshold (lines)": t,
            "model": m,
            "organization": o,
            "generated lines": 100,
            "memorized lines": n,
        }
        for t, ms in ((4, {"A": 9, "B": 5}), (6, {"A": 4, "B": 2}), (8, {"A": 0, "B": 1}))
        for m, n in ms.items()
        for o in ("X", "Y")
    ]
    table = verbatim.threshold_table(rows, "rq2")
    six = table[table["threshold (lines)"] == 6].set_index("model")
    assert six.loc["A", "memorized lines"] == 8 and six.loc["A", "ratio (%)"] == 4.0
    assert list(six["rank"]) == [1, 2]
    note = verbatim.ranking_note(table, {"RQ2": 6})
    assert note == "RQ2: the ranking of the models at 6 lines changes at 8 lines."
    zeros = table.assign(**{"memorized lines": 0})
    assert "no line is memorized at any threshold" in verbatim.ranking_note(zeros, {"RQ2": 6})
    only_four = table.assign(
        **{"memorized lines": table["memorized lines"].where(table["threshold (lines)"] == 4, 0)}
    )
    assert verbatim.ranking_note(only_four, {"RQ2": 6}) == (
        "RQ2: no line is memorized at 6 lines (every model ties); lines are memorized at 4 lines."
    )
