"""The cost of a run before it starts: the work counted as the steps do it, the calibration,
and `run` asking before a run of hours."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from collab_lib import artifacts, calibration, collaboration, cost, pipeline
from collab_lib.cli import main
from collab_lib.config import UserError, load_config


def _manifests(root, step: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((root / step).glob("*/manifest.json"))]


@pytest.fixture
def course_tp(course_run) -> calibration.Throughput:
    """A preset machine with the course tokenizer's own bytes per token (counts only)."""
    (tok,) = _manifests(course_run.artifacts, "tokenizer")
    return replace(calibration.PRESETS["h100"], bytes_per_token=tok["metrics"]["bytes_per_token"])


def test_estimate_counts_the_work_the_steps_did(course_cfg, course_run, course_tp):
    """On a finished run: RQ1's completions, programs and model loads, the curves' points and
    each training job's tokens as the artifacts record them (tokens within 1.5x: the sizes
    become tokens at the tokenizer's ratio on the standard library)."""
    f = cost.facts(course_cfg, cost.data_plans(course_cfg))
    assert f.source == "datasets"
    works = {w.step: w for w in cost.estimate(course_cfg, course_tp, f)}
    root = course_run.artifacts

    sampled = sum(m["metrics"]["sequences"] for m in _manifests(root, "samples"))
    assert sampled > 0 and works["rq1"].completions == sampled
    assert works["rq1"].programs > sampled  # each completion, and the harness's programs
    assert works["rq1"].loads == len(_manifests(root, "perplexity")) + len(
        _manifests(root, "samples")
    )
    assert len(cost.curve_points(course_cfg)) == len(_manifests(root, "curve_point"))

    refs = collaboration.chain_refs(pipeline.planned_for("train", course_cfg))
    jobs = cost.job_tokens(course_cfg, f, course_tp, refs)
    stages = {f"stage/{m['key']}": m for m in _manifests(root, "stage")}
    trained = [(n, stages[ref]) for ref, (_, n) in jobs.items() if ref in stages]
    assert len(trained) == len(stages) > 3  # every cached stage is one the estimate counts
    epochs = course_cfg.train.epochs
    for n, m in trained:
        assert 1 / 1.5 < n / (m["metrics"]["tokens_per_epoch"] * epochs) < 1.5, m["config"]


def test_pending_counts_only_what_is_missing(course_cfg, course_tp):
    """A finished run has nothing left to do; the whole run's estimate is still there."""
    f = cost.facts(course_cfg, cost.data_plans(course_cfg))
    assert sum(w.seconds for w in cost.pending(course_cfg, course_tp, f)) == 0
    whole = cost.estimate(course_cfg, course_tp, f)
    assert all(w.seconds > 0 for w in whole if w.step in ("train", "rq1", "rq2", "curves"))


def test_plan_prints_each_step_and_the_total(course_cfg, course_run, capsys):
    profile = ["--profile", str(course_run.profile), "--set", "seed=5"]
    assert main(["plan", "--all", "--machine", "h100", *profile]) == 0
    out = capsys.readouterr().out
    for step in pipeline.STEPS:
        assert step in out
    assert "the whole run: about" in out and "counted from the built datasets" in out
    assert main(["plan", "--machine", "h100", "--json", *profile]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["steps"][-1]["step"] == "total" and data["steps"][-1]["minutes"] == 0


def test_facts_need_sizes_or_built_datasets(local_profile):
    cfg = load_config(local_profile)
    with pytest.raises(UserError, match="run datasets"):
        cost.facts(cfg)


def test_presets_scale_to_the_profiles_model():
    """A larger model's tokens cost more; the sandbox does not care."""
    paper = load_config("paper")
    h100 = calibration.PRESETS["h100"]
    big = calibration.throughput(paper, "h100")
    assert big.train < h100.train and big.decode < h100.decode and big.load > h100.load
    assert big.programs == h100.programs
    assert calibration.throughput(load_config("gpu"), "h100") == h100  # the preset's own shape
    with pytest.raises(UserError, match="not a preset"):
        calibration.throughput(paper, "no-such-machine")


def test_gpu_profile_fits_one_gpu_hour_by_the_estimate():
    """The gpu profile's promise, held to the estimate on the H100 the presets describe; the
    paper profile's n = 200 at ten temperatures takes far longer."""
    gpu, paper = load_config("gpu"), load_config("paper")
    hours = sum(w.seconds for w in cost.estimate(gpu, calibration.PRESETS["h100"], cost.facts(gpu)))
    assert hours / 3600 <= 1.0
    tp = calibration.throughput(paper, "h100")
    assert sum(w.seconds for w in cost.estimate(paper, tp, cost.facts(paper))) / 3600 > 10


def test_calibration_is_measured_once_per_machine_and_shape(tmp_path):
    """The real loop, scorer, decoder and sandbox at the tiny profile's shape, cached."""
    cfg = load_config("tiny")
    tp = calibration.calibrate(cfg)
    assert tp.train > 0 and tp.score > 0 and tp.decode > 0 and tp.programs > 0
    assert 1.5 < tp.bytes_per_token < 4 and tp.load > 0
    (path,) = (artifacts.artifacts_root() / "calibration").glob("*.json")
    assert calibration.calibrate(cfg) == tp  # read back, not measured again
    wider = load_config("tiny", ["model.n_embd=64"])
    assert calibration.calibration_path(wider, calibration.machine()) != path


def test_run_asks_before_hours_of_work(course_cfg, course_run, capsys):
    """Non-interactive, a run estimated above the limit refuses with the figure and builds
    nothing; at a terminal, the user's answer decides."""
    sets = ["--set", "seed=5", "--set", "evaluation.n_samples=2000000"]
    args = ["run", "rq1", "--profile", str(course_run.profile), *sets]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "hours on this machine" in err and "--yes" in err and "plan" in err
    cfg = load_config(course_run.profile, sets[1::2])
    assert {r["state"] for r in pipeline.status(cfg) if r["step"] == "rq1"} == {"missing"}
    cost.confirm(cfg, ["rq1"], yes=False, ask=lambda _: "y")  # goes on
    with pytest.raises(UserError, match="--yes"):
        cost.confirm(cfg, ["rq1"], yes=False, ask=lambda _: "n")
    cost.confirm(cfg, ["rq1"], yes=True)


def test_force_counts_the_work_it_redoes(course_cfg, monkeypatch):
    """A finished run asks nothing; with --force, its whole cost counts again."""
    monkeypatch.setattr(cost, "HOURS_TO_ASK", 0.0)
    cost.confirm(course_cfg, ["rq1"], yes=False)  # cached: nothing to ask, nothing measured
    with pytest.raises(UserError, match="--yes"):
        cost.confirm(course_cfg, ["rq1"], yes=False, force=True)
