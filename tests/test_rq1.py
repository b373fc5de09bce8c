"""The rq1 step on the session's book profile: Table 8 for every model, cached pieces."""

import math

import pandas as pd
import pytest

from collab_lib import collaboration, evaluation, pipeline, scoring
from collab_lib.config import ConfigError, load_config


@pytest.mark.slow
def test_table8_has_every_model_and_the_base_model(course_cfg):
    t8 = pipeline.table("table8", course_cfg)
    names = ["base model", *(s.name for s in collaboration.roster(course_cfg))]
    assert sorted(t8["model"]) == sorted(names)
    assert all(math.isfinite(p) and p > 1 for p in t8["perplexity"])
    measured = t8.dropna(subset=["pass@1 (%)"])  # the base model and Centralized_FMG
    assert sorted(measured["model"]) == ["Centralized_FMG", "base model"]
    assert measured["pass@1 (%)"].between(0, 100).all()  # n = 2: pass@1 only
    assert "pass@10 (%)" not in t8
    assert list(dict.fromkeys(t8["group"])) == [
        "Baseline",
        "Synchronous",
        "Asynchronous",
        "RQ3 pair",
        "RQ3 pair, shared clones removed (PSI)",
    ]
    assert t8.set_index("model").loc["base model", "paper perplexity"] == 1084.78


@pytest.mark.slow
def test_union_perplexity_is_the_token_weighted_mean_of_the_splits(course_cfg):
    art = pipeline.load("rq1", course_cfg)
    by_org = art.table("perplexity_by_org").set_index("model")
    orgs = [o.name for o in course_cfg.datasets.organizations]
    files = pd.read_csv(art.file(evaluation.FILES))
    assert sorted(set(files["model"])) == sorted(by_org.index)
    for name, frame in files.groupby("model"):
        union = math.exp(frame["loss_sum"].sum() / frame["tokens"].sum())
        assert math.isclose(union, by_org.loc[name, "union"], rel_tol=1e-9)
        sums = frame.groupby("organization", sort=False)[["loss_sum", "tokens"]].sum()
        per = [math.exp(r.loss_sum / r.tokens) for r in sums.itertuples()]
        assert min(per) <= union <= max(per) and list(sums.index) == orgs


@pytest.mark.slow
def test_per_file_losses_add_up_to_each_organizations_stream(course_cfg):
    """The rows the findings resample are the stream's own losses, split by file."""
    art = pipeline.load("rq1", course_cfg)
    files = pd.read_csv(art.file(evaluation.FILES))
    ds = pipeline.load("datasets", course_cfg)
    model, tok = scoring.load_model(pipeline.load("train", course_cfg)[evaluation.BASE])
    org = course_cfg.datasets.organizations[0].name
    docs = ds.documents(org, "validation")
    mine = files[(files["model"] == evaluation.BASE) & (files["organization"] == org)]
    assert list(mine["file"]) == [d["path"] for d in docs]
    texts = [d["content"] for d in docs]
    stride = course_cfg.perplexity_stride
    expected = scoring.perplexity(model, tok, texts, course_cfg.model.context, stride)
    assert math.isclose(
        math.exp(mine["loss_sum"].sum() / mine["tokens"].sum()), expected, rel_tol=1e-9
    )


@pytest.mark.slow
def test_rerun_is_cached_and_a_sandbox_setting_never_resamples(course_cfg, course_run):
    before = pipeline.load("rq1", course_cfg)
    assert pipeline.run("rq1", course_cfg)[0].key == before.key  # cached
    changed = load_config(course_run.profile, {**course_run.overrides, "evaluation.timeout_s": 2.5})
    art = pipeline.run("rq1", changed)[0]
    samples = sorted(p for p in art.metrics["parts"] if p.startswith("samples/"))
    assert samples == sorted(p for p in before.metrics["parts"] if p.startswith("samples/"))
    executions = {p for p in art.metrics["parts"] if p.startswith("executions/")}
    assert executions.isdisjoint(before.metrics["parts"])  # re-scored in the new sandbox


def test_unknown_pass_at_k_model_is_a_clear_error():
    bad = load_config("default", {"evaluation.models": ["Nobody_Only"]})
    with pytest.raises(ConfigError, match="unknown model 'Nobody_Only' \\(a setting"):
        evaluation.pass_models(bad)


def test_pass_at_k_models_by_name_or_setting():
    cfg = load_config("default", {"evaluation.models": ["federated", "Google_Only"]})
    assert evaluation.pass_models(cfg) == [
        "base model",
        "Google_Only",
        "Federated_Avg_FMG",
        "Federated_Yogi_FMG",
    ]
    every = evaluation.pass_models(load_config("default", {"evaluation.models": None}))
    # the base model, the paper's 17, the ensemble, default's two PSI twins and five DP twins
    assert len(every) == 26 and every[0] == "base model" and every[-1] == "Federated_Avg_FMG_OrgDP1"
