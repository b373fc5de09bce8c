"""FedYogi's server rate: chosen on held-out training files, used by every FedYogi model."""

from collab_lib import collaboration, pipeline, tuning
from collab_lib.config import load_config


def test_hold_out_takes_a_seeded_slice_of_each_organizations_files_never_a_canary():
    texts = {"A": [f"a{i}" for i in range(50)], "B": [f"b{i}" for i in range(10)] + ["canary"]}
    train, held = tuning.hold_out(texts, 0.2, seed=1, keep={"canary"})
    assert (
        len([t for t in held if t[0] == "a"]) == 10 and len([t for t in held if t[0] == "b"]) == 2
    )
    assert "canary" in train["B"] and "canary" not in held
    for org, docs in texts.items():  # a partition of each organization's documents, in order
        assert sorted(train[org] + [t for t in held if t in docs]) == sorted(docs)
        assert train[org] == [t for t in docs if t not in held]
    assert tuning.hold_out(texts, 0.2, seed=1, keep={"canary"}) == (train, held)
    assert tuning.hold_out(texts, 0.2, seed=2, keep={"canary"})[1] != held


def test_the_sweeps_best_pair_trains_every_fedyogi_model(course_run, course_cfg):
    cfg = course_cfg
    sweep = pipeline.load("train", cfg)[collaboration.SWEEP]
    table = tuning.table(sweep)
    assert list(zip(table["eta"], table["tau"], strict=True)) == [
        ("0.01", "0.001"),
        ("0.1", "0.001"),
    ]
    best = table.loc[table["held-out perplexity"].idxmin()]
    assert list(table["chosen"]).count("yes") == 1 and best["chosen"] == "yes"
    models = pipeline.load("train", cfg)
    for spec in collaboration.roster(cfg):
        if spec.strategy == "FedYogi":
            m = models[spec.name].metrics
            assert (m["yogi_eta"], m["yogi_tau"]) == tuning.best(sweep), spec.name
            assert sweep.ref in models[spec.name].manifest["inputs"]
    # a profile that fixes the pair (the paper's) has no sweep and names its values
    fixed = load_config(
        course_run.profile,
        {**course_run.overrides, "federated.yogi_eta": 0.01, "federated.yogi_tau": 0.001},
    )
    assert collaboration.SWEEP not in pipeline.planned_for("train", fixed)
