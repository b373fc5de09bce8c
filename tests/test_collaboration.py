"""The collaborative models: names as the paper's, shared prefixes trained once, listed."""

from collab_lib import artifacts
from collab_lib.cli import main
from collab_lib.collaboration import build_models, paper_models, plan
from collab_lib.config import load_config


def test_the_paper_has_seventeen_models_with_its_names():
    names = [m.name for m in paper_models()]
    assert len(names) == 17 and len(set(names)) == 17
    for name in (
        "Facebook_Only",
        "Centralized_FMG",
        "Federated_Yogi_FMG",
        "Incremental_G2M2F",
        "Centralized_MG",
        "Federated_Avg_MG",
        "Incremental_M2G",
        "Incremental_G2M",
    ):
        assert name in names


def _input_stage(art):
    step, _, key = art.manifest["inputs"][0].rpartition("/")
    return artifacts.load(step, key)


def test_models_are_trained_once_and_listed(built_book, monkeypatch, capsys):
    monkeypatch.setenv("COLLAB_ARTIFACTS", str(built_book.artifacts))
    artifact_root, local_profile = built_book.artifacts, built_book.profile
    cfg = load_config(local_profile, built_book.overrides)
    models = build_models(cfg)  # all cached by the book's build: nothing is retrained
    assert len(models) == 17
    assert plan(cfg)["Incremental_M2G"] == (
        models["Incremental_M2G"].step,
        models["Incremental_M2G"].key,
    )
    # shared prefixes: F2M2G's second stage starts from Facebook_Only; M2G from Microsoft_Only
    second = _input_stage(models["Incremental_F2M2G"])
    assert second.manifest["inputs"][0] == models["Facebook_Only"].ref
    assert models["Incremental_M2G"].manifest["inputs"][0] == models["Microsoft_Only"].ref
    assert models["Incremental_M2G"].key == _input_stage(models["Incremental_M2G2F"]).key
    # 3 single-org + 6 second + 6 third stages + 2 unions: each trained once; 4 federated runs
    assert len([p for p in (artifact_root / "stage").iterdir() if not p.name.startswith(".")]) == 17
    assert len(list((artifact_root / "federated").glob("[0-9a-f]*"))) == 4
    assert models["Federated_Avg_MG"].metrics["data"] == ["Microsoft", "Google"]

    args = ["models", "--profile", str(local_profile), "--seed", "5"]
    assert main(args) == 0
    out = capsys.readouterr()
    rows = [line.split("\t") for line in out.out.strip().splitlines()]
    assert len(rows) == 17 and all(row[1].endswith("/model") for row in rows)
    assert [r[0] for r in rows] == [m.name for m in paper_models()]

    # a model that is not federated cannot be deployed; the message names those that can
    assert (
        main(["federation", "Centralized_FMG", "--dir", "x", "--profile", str(local_profile)]) == 2
    )
    assert "Federated_Yogi_MG" in capsys.readouterr().err


def test_models_command_says_what_to_run_before_training(local_profile, capsys):
    assert main(["models", "--profile", str(local_profile)]) == 1
    assert "run train --profile" in capsys.readouterr().err
