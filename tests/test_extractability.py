"""k-extractability: a model that memorized a sequence emits it from its prefix, one that did
not does not; the draw is seeded; the table nets out the validation control."""

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_model, train_on

from collab_lib import extractability
from collab_lib.collaboration import BASE

CODE = (
    "def settle_invoice(ledger, invoice_id, amount):\n"
    "    entry = ledger.lookup(invoice_id)\n"
    "    entry.balance -= amount\n"
    "    ledger.record('settled', invoice_id, entry.balance)\n"
    "    return entry.balance\n"
)


def test_a_model_that_memorized_a_sequence_extracts_it_and_a_fresh_one_does_not(tok):
    ids = tok(CODE)["input_ids"]
    k = 8
    prefix, target = ids[:k], ids[k:]
    trained = tiny_model(len(tok), seed=1)
    train_on(trained, ids, steps=200)
    fresh = tiny_model(len(tok), seed=1)
    eos = tok.eos_token_id
    assert extractability.matched(trained, [prefix], [target], eos, batch_size=4) == [len(target)]
    assert extractability.matched(fresh, [prefix], [target], eos, batch_size=4) < [len(target)]
    # a wrong token in the match stops the count there: not extracted
    wrong = [*target[:5], (target[5] + 1) % len(tok), *target[6:]]
    assert extractability.matched(trained, [prefix], [wrong], eos, batch_size=4) == [5]


def test_batches_and_unequal_lengths_change_no_outcome(tok):
    ids = tok(CODE)["input_ids"]
    model = tiny_model(len(tok), seed=2)
    train_on(model, ids, steps=200)
    prefixes = [ids[:6], ids[:9], ids[:4], ids[:6]]
    targets = [ids[6:20], ids[9:14], ids[4:30], ids[7:12]]  # the last skips a token
    one = [
        extractability.matched(model, [p], [t], tok.eos_token_id, 1)[0]
        for p, t in zip(prefixes, targets, strict=True)
    ]
    assert extractability.matched(model, prefixes, targets, tok.eos_token_id, 3) == one
    assert one == [14, 5, 26, 0]


def test_windows_are_whole_and_back_to_back_and_the_draw_is_seeded():
    assert extractability.windows(10, 4) == [0, 4]
    assert extractability.windows(3, 4) == []
    files = [40, 3, 25]  # each file's size in tokens
    every = extractability.draw(files, 4, None, "s")
    assert every == [(0, s) for s in range(0, 37, 4)] + [(2, s) for s in range(0, 22, 4)]
    drawn = extractability.draw(files, 4, 5, "0/extractable/A/train")
    assert len(set(drawn)) == 5 and set(drawn) <= set(every) and drawn == sorted(drawn)
    assert drawn == extractability.draw(files, 4, 5, "0/extractable/A/train")
    assert drawn != extractability.draw(files, 4, 5, "1/extractable/A/train")


def test_the_table_nets_out_the_validation_control_and_shows_the_base_models():
    rows = []
    for model, train_hits, val_hits in ((BASE, 1, 1), ("Centralized_AB", 6, 2)):
        for split, hits in (("train", train_hits), ("validation", val_hits)):
            rows += [
                {
                    "model": model,
                    "organization": "A",
                    "split": split,
                    "extracted": i < hits,
                    "matched": 32 if i < hits else 4,
                }
                for i in range(10 if split == "train" else 8)
            ]
    table = extractability.extractable_table(pd.DataFrame(rows)).set_index("model")
    cen = table.loc["Centralized_AB"]
    assert (cen["train sequences"], cen["validation sequences"]) == (10, 8)
    assert cen["train (%)"] == 60 and cen["validation (%)"] == 25
    assert cen["train - validation (points)"] == 35
    assert cen["base model's train - validation (points)"] == 10 - 12.5
    assert np.isclose(table.loc[BASE, "train - validation (points)"], -2.5)
    assert cen["matched, train (tokens)"] == 0.6 * 32 + 0.4 * 4
    assert cen["matched, train - validation (tokens)"] == pytest.approx((0.6 - 0.25) * 28)
    assert list(extractability.extractable_table(pd.DataFrame()).columns) == extractability.COLUMNS
