"""The collaborative models: names as the paper's, shared prefixes trained once, listed."""

import shlex

import pytest
from conftest import make_org_dir, write_profile

from collab_lib import artifacts, pipeline
from collab_lib.artifacts import NotBuiltError
from collab_lib.cli import main
from collab_lib.collaboration import (
    jobs,
    models_table,
    roster,
    sizing_table,
)
from collab_lib.config import PROFILES, ConfigError, load_config

PAPER_NAMES = [
    "Facebook_Only",
    "Microsoft_Only",
    "Google_Only",
    "Centralized_FMG",
    "Federated_Avg_FMG",
    "Federated_Yogi_FMG",
    "Incremental_F2M2G",
    "Incremental_F2G2M",
    "Incremental_M2F2G",
    "Incremental_M2G2F",
    "Incremental_G2F2M",
    "Incremental_G2M2F",
    "Centralized_MG",
    "Federated_Avg_MG",
    "Federated_Yogi_MG",
    "Incremental_M2G",
    "Incremental_G2M",
]


PSI_TWINS = {"default": ["Federated_Avg_MG_PSI", "Incremental_M2G_PSI"]}
PSI_TWINS["gpu"] = PSI_TWINS["default"]  # gpu extends default; tiny and paper train none
DP_TWINS = {
    "tiny": ["Centralized_FMG_DP1"],
    "default": [
        "Centralized_FMG_DP0.5",
        "Centralized_FMG_DP1",
        "Centralized_FMG_DP2",
        "Federated_Avg_FMG_DP1",
        "Federated_Avg_FMG_OrgDP1",
    ],
    "paper": ["Centralized_FMG_DP1", "Federated_Avg_FMG_DP1", "Federated_Avg_FMG_OrgDP1"],
}
DP_TWINS["gpu"] = DP_TWINS["default"]


@pytest.mark.parametrize("profile", PROFILES)
def test_the_paper_profiles_give_the_papers_seventeen_models(profile):
    """The paper's seventeen, in its order; then, beyond the paper, the ensemble, the PSI
    twins (the RQ3 pair's models on PSI-deduplicated data) and the DP twins."""
    specs = roster(load_config(profile))
    beyond = ["Ensemble_FMG"] + PSI_TWINS.get(profile, []) + DP_TWINS[profile]
    assert [m.name for m in specs] == PAPER_NAMES + beyond
    assert specs[17].setting == "ensemble" and specs[17].main
    assert all(m.rq in ("PSI", "DP") for m in specs[18:])
    dp = [m for m in specs if m.rq == "DP"]
    assert all(m.privacy[0] == ("organization" if "OrgDP" in m.name else "example") for m in dp)


def _orgs(tmp_path, names: dict[str, float | None]) -> dict:
    return {
        n: (n[0], [make_org_dir(tmp_path / n, n.lower(), 2)], size) for n, size in names.items()
    }


def test_a_users_own_organizations_name_the_models(tmp_path):
    orgs = _orgs(tmp_path, {"Payments": 0.1, "Search": 0.3, "Ads": 0.2})
    specs = roster(load_config(write_profile(tmp_path / "p.yml", orgs)))
    names = [m.name for m in specs]
    assert len(names) == len(set(names)) == 17
    assert names[:6] == [
        "Payments_Only",
        "Search_Only",
        "Ads_Only",
        "Centralized_PSA",
        "Federated_Avg_PSA",
        "Federated_Yogi_PSA",
    ]
    assert "Incremental_P2S2A" in names and "Incremental_A2S2P" in names
    # RQ3: the two largest organizations, in the profile's order
    rq3 = [m for m in specs if m.rq == "RQ3"]
    assert [m.name for m in rq3] == [
        "Centralized_SA",
        "Federated_Avg_SA",
        "Federated_Yogi_SA",
        "Incremental_S2A",
        "Incremental_A2S",
    ]


def test_four_organizations_train_every_order(tmp_path):
    orgs = _orgs(tmp_path, {"Alpha": 1, "Beta": 2, "Gamma": 3, "Delta": 4})
    cfg = load_config(write_profile(tmp_path / "p.yml", orgs))
    specs = roster(cfg)
    incremental = [m for m in specs if m.setting == "incremental" and m.rq == "RQ1/RQ2"]
    assert len(incremental) == 24 and len({m.orgs for m in incremental}) == 24
    assert all(len(m.orgs) == 4 for m in incremental)
    assert {m.name for m in specs} >= {"Centralized_ABGD", "Delta_Only", "Incremental_G2D"}
    assert len(specs) == 4 + 3 + 24 + 5
    # every model's chain of jobs trains its organizations in its order
    chains = jobs(cfg, "base/x", [])
    assert [j.data for j in chains["Incremental_D2G2B2A"]] == [
        ("Delta",),
        ("Gamma",),
        ("Beta",),
        ("Alpha",),
    ]


def test_two_organizations_list_each_model_once(tmp_path):
    cfg = load_config(write_profile(tmp_path / "p.yml", _orgs(tmp_path, {"Ads": 1, "Web": 2})))
    assert [m.name for m in roster(cfg)] == [
        "Ads_Only",
        "Web_Only",
        "Centralized_AW",
        "Federated_Avg_AW",
        "Federated_Yogi_AW",
        "Incremental_A2W",
        "Incremental_W2A",
    ]


@pytest.mark.parametrize(
    "orgs, extra, message",
    [
        ({"Ads": 1, "Apps": 2}, {}, "two organizations have the short letter 'A'"),
        ({"Ads": 1}, {}, "at least two organizations"),
        ({"Ads": 1, "Web": 2}, {"collaboration": {"rq3_pair": ["Ads", "Mail"]}}, "rq3_pair"),
        (dict(zip("ABCDE", range(1, 6), strict=True)), {}, "incremental_orders"),
    ],
    ids=["same-short-letter", "one-organization", "unknown-rq3-organization", "five-orgs"],
)
def test_a_roster_that_cannot_be_built_is_one_clear_error(tmp_path, orgs, extra, message):
    path = write_profile(tmp_path / "p.yml", _orgs(tmp_path, orgs), **extra)
    with pytest.raises(ConfigError, match=message) as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_five_organizations_train_the_listed_orders(tmp_path):
    orders = [list("ABCDE"), list("EDCBA")]
    path = write_profile(
        tmp_path / "p.yml",
        _orgs(tmp_path, dict(zip("ABCDE", range(1, 6), strict=True))),
        collaboration={"incremental_orders": orders},
    )
    names = [m.name for m in roster(load_config(path))]
    assert "Incremental_A2B2C2D2E" in names and "Incremental_E2D2C2B2A" in names
    assert len([n for n in names if n.startswith("Incremental_") and n.count("2") == 4]) == 2


def test_a_missing_model_names_the_users_own_command(tmp_path, capsys):
    path = write_profile(tmp_path / "p.yml", _orgs(tmp_path, {"Ads": 1, "Web": 2}))
    cfg = load_config(path, ["seed=3", "train.epochs=2"])
    with pytest.raises(
        NotBuiltError,
        match=r"run train --profile \S+p\.yml --set seed=3 "
        r"--set train.epochs=2",
    ):
        pipeline.load("train", cfg)
    assert main(["models", "--profile", str(path), "--set", "seed=3"]) == 1
    assert "--set seed=3" in capsys.readouterr().err


def _input_stage(art):
    step, _, key = art.manifest["inputs"][0].rpartition("/")
    return artifacts.load(step, key)


def test_models_are_trained_once_and_listed(course_run, course_cfg, capsys):
    artifact_root, local_profile, cfg = course_run.artifacts, course_run.profile, course_cfg
    models = pipeline.run("train", cfg)[0]  # all cached by the course run: nothing is retrained
    assert len(models) == 18  # the paper's 17 and Federated_Avg_MG_PSI
    assert pipeline.planned_for("train", cfg)["Incremental_M2G"] == (
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
    assert len(list((artifact_root / "federated").glob("[0-9a-f]*"))) == 5  # a PSI twin too
    assert models["Federated_Avg_MG_PSI"].key != models["Federated_Avg_MG"].key
    assert models["Federated_Avg_MG"].metrics["data"] == ["Microsoft", "Google"]

    args = ["models", "--profile", str(local_profile), "--seed", "5"]
    assert main(args) == 0
    out = capsys.readouterr()
    rows = [line.split("\t") for line in out.out.strip().splitlines()]
    assert len(rows) == 18 and all(row[1].endswith("/model") for row in rows)
    assert [r[0] for r in rows] == [m.name for m in roster(cfg)]

    # a model that is not federated cannot be deployed; the message names those that can
    assert (
        main(
            [
                "federation",
                "Centralized_FMG",
                "--dir",
                "x",
                "--profile",
                str(local_profile),
                "--set",
                "seed=5",
            ]
        )
        == 2
    )
    assert "Federated_Yogi_MG" in capsys.readouterr().err


def test_models_command_says_what_to_run_before_training(local_profile, capsys):
    # no sizes in this profile: the RQ3 pair (the two largest) waits for the datasets
    assert main(["models", "--profile", str(local_profile)]) == 2
    assert "run datasets --profile" in capsys.readouterr().err


def test_two_renamed_organizations_run_end_to_end(tmp_path, capsys):
    """A user's own organizations, named as they are: every step, the models command and the
    Models chapter's tables work, and the RQ3 pair names Table 7's row."""
    orgs = {
        "Payments": ("P", [make_org_dir(tmp_path / "pay", "ledger", 4)], None),
        "Search": ("S", [make_org_dir(tmp_path / "search", "index", 8)], None),
    }
    path = write_profile(tmp_path / "p.yml", orgs, federated={"rounds": 2})
    assert main(["run", "all", "--profile", str(path)]) == 0
    capsys.readouterr()
    assert main(["models", "--profile", str(path)]) == 0
    names = [line.split("\t")[0] for line in capsys.readouterr().out.strip().splitlines()]
    assert names == [
        "Payments_Only",
        "Search_Only",
        "Centralized_PS",
        "Federated_Avg_PS",
        "Federated_Yogi_PS",
        "Incremental_P2S",
        "Incremental_S2P",
    ]
    cfg = load_config(path)
    models = pipeline.load("train", cfg)
    assert list(models_table(cfg, models)["Data"])[:3] == ["P", "S", "P + S"]
    sizing = sizing_table(cfg, models)
    assert list(sizing["Organization"][:2]) == ["Payments", "Search"]
    assert sizing["Steps per epoch"][0] >= 1
    assert main(["table", "table7", "--profile", str(path)]) == 0
    assert "Payments ∩ Search" in capsys.readouterr().out


@pytest.mark.parametrize(
    "federated, collaboration, message",
    [
        ({"yogi_eta": 0.05, "yogi_tau": None}, {}, "set both"),
        ({}, {"incremental_orders": []}, "at least one order"),
    ],
    ids=["half-a-yogi-pair", "no-orders"],
)
def test_settings_that_would_be_silently_replaced_are_errors(
    tmp_path, federated, collaboration, message
):
    path = write_profile(
        tmp_path / "p.yml",
        _orgs(tmp_path, {"Ads": 1, "Web": 2}),
        federated=federated,
        collaboration=collaboration,
    )
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_a_command_hint_can_be_pasted_into_a_shell(tmp_path):
    path = write_profile(tmp_path / "p.yml", _orgs(tmp_path, {"Ads": 1, "Web": 2}))
    cfg = load_config(path, {"federated.yogi_sweep.etas": [0.01, 0.1]})
    words = shlex.split(cfg.command("run", "train"))
    assert words[-2:] == ["--set", "federated.yogi_sweep.etas=[0.01,0.1]"]
    assert load_config(words[words.index("--profile") + 1], [words[-1]]) == cfg


def test_order_effects_hold_the_incremental_models_on_all_organizations_only():
    """The RQ3 pair's incremental models and their PSI twins are not orders of all three."""
    from collab_lib import report

    models = set(report.incremental_positions(load_config("default"))["model"])
    assert models == {n for n in PAPER_NAMES if n.startswith("Incremental_") and n.count("2") == 2}
