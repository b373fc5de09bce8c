from pathlib import Path

import pytest
import yaml

from collab_lib.config import CONFIG_DIR, PROFILES, ConfigError, load_config


@pytest.mark.parametrize("profile", PROFILES)
def test_every_shipped_profile_loads(profile):
    cfg = load_config(profile)
    assert cfg.profile == profile
    assert {o.name for o in cfg.datasets.organizations} == {"Google", "Microsoft", "Facebook"}


@pytest.mark.parametrize("profile", PROFILES)
def test_profiles_keep_the_papers_size_order(profile):
    """F << M < G as in the paper (38.6 / 703 / 1,019 MB)."""
    sizes = {o.name: o.size_mb for o in load_config(profile).datasets.organizations}
    assert sizes["Facebook"] < sizes["Microsoft"] < sizes["Google"]


def _profile(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p.yml"
    path.write_text(text)
    return path


def test_unknown_key_names_key_and_file(tmp_path):
    path = _profile(tmp_path, "extends: tiny\ndatasets:\n  dedup:\n    treshold: 0.9\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "datasets.dedup.treshold" in str(err.value) and str(path) in str(err.value)


def test_wrong_type_names_key(tmp_path):
    path = _profile(tmp_path, "extends: tiny\nseed: three\n")
    with pytest.raises(ConfigError, match=r"seed: expected an integer, got 'three'"):
        load_config(path)


def test_missing_directory_names_key_and_path(tmp_path):
    data = {
        "seed": 0,
        "datasets": {"organizations": [{"name": "A", "short": "A", "sources": [{"dir": "nope"}]}]},
    }
    path = _profile(tmp_path, yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"organizations\[0\]\.sources\[0\]\.dir: directory not"):
        load_config(path)


def test_missing_profile_lists_known_ones():
    with pytest.raises(ConfigError, match="known profiles: .*default"):
        load_config("nosuchprofile")


def test_unpinned_pypi_source_is_rejected(tmp_path):
    data = {
        "seed": 0,
        "datasets": {"organizations": [{"name": "A", "short": "A", "sources": [{"pypi": "six"}]}]},
    }
    with pytest.raises(ConfigError, match="pin an exact version"):
        load_config(_profile(tmp_path, yaml.safe_dump(data)))


def test_overrides_from_cli_strings_and_dicts():
    cfg = load_config("tiny", ["seed=7", "datasets.organizations.Google.size_mb=0.5"])
    assert cfg.seed == 7 and cfg.org("Google").size_mb == 0.5
    assert load_config("tiny", {"datasets.dedup.threshold": 0.9}).datasets.dedup.threshold == 0.9


def test_override_with_a_bad_value_is_a_config_error():
    with pytest.raises(ConfigError, match="datasets.validation_fraction"):
        load_config("tiny", ["datasets.validation_fraction=2"])
    with pytest.raises(ConfigError, match="no list item named 'Amazon'"):
        load_config("tiny", ["datasets.organizations.Amazon.size_mb=1"])


def test_relative_dirs_are_relative_to_the_profile(tmp_path):
    (tmp_path / "code").mkdir()
    data = {
        "seed": 0,
        "datasets": {
            "organizations": [{"name": n, "short": n, "sources": [{"dir": "code"}]} for n in "AB"]
        },
    }
    cfg = load_config(_profile(tmp_path, yaml.safe_dump(data)))
    assert cfg.datasets.organizations[0].sources[0].dir == str((tmp_path / "code").resolve())


def test_profiles_directory_holds_the_public_profiles():
    assert {p.stem for p in CONFIG_DIR.glob("*.yml")} >= set(PROFILES)


def test_relative_dirs_of_an_extended_profile_stay_relative_to_it(tmp_path):
    (tmp_path / "base" / "code").mkdir(parents=True)
    data = {
        "seed": 0,
        "datasets": {
            "organizations": [{"name": n, "short": n, "sources": [{"dir": "code"}]} for n in "AB"]
        },
    }
    (tmp_path / "base" / "base.yml").write_text(yaml.safe_dump(data))
    (tmp_path / "child").mkdir()
    child = tmp_path / "child" / "child.yml"
    child.write_text("extends: ../base/base.yml\nseed: 4\n")
    cfg = load_config(child)
    assert cfg.seed == 4
    assert cfg.datasets.organizations[0].sources[0].dir == str(tmp_path / "base" / "code")


@pytest.mark.parametrize(
    "override, message",
    [
        pytest.param(
            {"evaluation.max_new_tokens": 256},
            "evaluation.max_new_tokens: below",
            id="no-room-for-a-prompt",
        ),
        pytest.param(
            {"evaluation.perplexity_stride": 256},
            "perplexity_stride: below",
            id="stride-of-a-whole-window",
        ),
        pytest.param({"evaluation.benchmark": "mbpp"}, "humaneval or humaneval+", id="benchmark"),
        pytest.param({"evaluation.temperatures": [0.0]}, "each above 0", id="temperature"),
    ],
)
def test_evaluation_settings_are_checked_at_load(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("default", override)


@pytest.mark.parametrize("profile", PROFILES)
def test_paper_scale_profiles_keep_the_papers_pass_at_k_settings(profile):
    e = load_config(profile).evaluation
    if profile == "paper":
        assert e.n_samples == 200 and len(e.temperatures) == 10 and e.models is None
    if profile == "gpu":  # trimmed to one GPU-hour (tests/test_cost.py): pass@1 and pass@10
        assert e.n_samples >= 10 and set(e.temperatures) < {t / 10 for t in range(1, 11)}
    assert e.max_new_tokens < load_config(profile).model.context


def test_a_seed_that_seeds_would_override_is_refused_with_what_to_set():
    with pytest.raises(ConfigError, match="add --set seeds=null"):
        load_config("tiny", {"seeds": [0, 1, 2], "seed": 3})
    assert load_config("tiny", {"seeds": None, "seed": 3}).run_seeds == (3,)
    assert load_config("tiny", {"seeds": [0, 1]}).run_seeds == (0, 1)


def test_a_profile_at_another_scale_sweeps_fedyogi_rather_than_inherit_defaults_pair():
    """default fixes the pair its sweep picked for its 2-layer CPU model; a profile that
    extends it at another scale must not inherit that pair silently."""
    assert not load_config("default").federated.tuned
    assert load_config("tiny").federated.tuned and load_config("gpu").federated.tuned
    paper = load_config("paper").federated  # the paper's: Flower's defaults, no sweep
    assert not paper.tuned and (paper.yogi_eta, paper.yogi_tau) == (1e-2, 1e-3)


@pytest.mark.parametrize("profile", PROFILES)
def test_the_resolved_settings_file_gives_back_the_same_config(profile, tmp_path):
    from collab_lib.config import read_settings, settings_digest, write_settings

    cfg = load_config(profile, ["train.lr=0.001"])
    back = read_settings(write_settings(cfg, tmp_path / "settings.yml"))
    assert back == cfg and settings_digest(back) == settings_digest(cfg)
    assert back.command("run", "all").endswith("--set train.lr=0.001")  # messages keep the --set
    with pytest.raises(ConfigError, match="settings file not found"):
        read_settings(tmp_path / "none.yml")


def test_a_chapter_run_by_hand_resolves_its_profile_and_overrides(tmp_path):
    from collab_lib.config import chapter_config, write_settings

    by_hand = chapter_config(None, "tiny", {"seed": 3})
    assert by_hand == load_config("tiny", {"seed": 3}) and by_hand.seed == 3
    written = write_settings(load_config("tiny", {"seed": 4}), tmp_path / "settings.yml")
    assert chapter_config(str(written), "tiny", {"seed": 3}).seed == 4  # the book's file wins


def test_the_settings_hash_depends_on_the_values_not_on_where_or_how_they_were_given(tmp_path):
    from collab_lib.config import settings_digest

    copy = tmp_path / "elsewhere.yml"
    copy.write_text((CONFIG_DIR / "tiny.yml").read_text())
    a = load_config("tiny", ["train.lr=0.001"])
    b = load_config(copy, ["profile=tiny", "train.lr=1e-3"])
    assert settings_digest(a) == settings_digest(b)
    assert settings_digest(a) != settings_digest(load_config("tiny", ["train.lr=0.002"]))


def test_k_extractability_fits_the_context_unless_told_otherwise():
    assert load_config("paper").extractable_lengths == (50, 50)  # Carlini et al. 2023's
    small = load_config(
        "tiny", ["memorization.extractable_k=null", "memorization.extractable_match=null"]
    )
    assert small.model.context == 64 and small.extractable_lengths == (16, 16)
    with pytest.raises(ConfigError, match="extractable_k \\+ extractable_match: at most"):
        load_config("tiny", ["memorization.extractable_k=50", "memorization.extractable_match=50"])
    with pytest.raises(ConfigError, match="must be at least 1, or null"):
        load_config("tiny", ["memorization.extractable_k=0"])


def test_keeping_epoch_snapshots_rekeys_the_models_but_not_the_base_model_or_the_sweep():
    from collab_lib import collaboration, pipeline

    keep = pipeline.planned_for("train", load_config("tiny"))
    last_only = pipeline.planned_for(
        "train", load_config("tiny", ["train.epoch_checkpoints=false"])
    )
    assert keep[collaboration.BASE] == last_only[collaboration.BASE]
    assert keep[collaboration.SWEEP] == last_only[collaboration.SWEEP]  # tiny tunes FedYogi
    assert keep["Centralized_FMG"] != last_only["Centralized_FMG"]  # its files differ


@pytest.mark.parametrize(
    "override, message",
    [
        ({"privacy.noise_multipliers": [0.0]}, "noise_multipliers: different numbers above 0"),
        ({"privacy.federated_noise": [1.0, 1.0]}, "federated_noise: different numbers above 0"),
        ({"privacy.max_grad_norm": 0}, "max_grad_norm and organization_clip above 0"),
        ({"privacy.delta": 0.1}, r"delta: in \(0, 0.01\)"),
        ({"privacy.audit_guesses": 0}, r"audit_guesses in \(0, 1\]"),
        ({"ensemble.weights": "posterior"}, "weights: tokens or uniform"),
    ],
)
def test_privacy_and_ensemble_settings_are_checked_at_load(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("default", override)


def test_audit_canaries_rekey_the_data_only_where_a_profile_plants_them():
    """The canaries' key (and so every model's) changes with the audit's canaries; a profile
    without them keeps the key it had before the audit existed."""
    from collab_lib import canaries

    none = load_config("default", {"privacy.audit_canaries": 0})
    assert canaries._config(none) == {"canaries": none.canaries, "seed": 0}
    assert canaries._config(load_config("default"))["audit"] == 32
