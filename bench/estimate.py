"""Benchmark: the cost estimate (``python -m collab_lib plan``) against the measured stage times.

Calibrates this machine for the profile in a cache of its own, estimates every step from the
profile alone (``size_mb``, as before any run), then runs the steps in order on an empty
cache, each step in a process of its own (``python -m collab_lib run STEP``), timed; prints
each step's estimate, its measured time and their ratio (goal: within 1.5x either way for
every step that takes more than ``--floor`` seconds, and for the total).

    python bench/estimate.py --profile tiny
    python bench/estimate.py --profile default            # about 25 minutes on 2 cores
    python bench/estimate.py --profile default --times measured.json   # reuse a run's times
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def measure(profile: str, root: Path) -> dict[str, float]:
    """Seconds of each step on the empty cache ``root``: the steps run in order in one process
    of their own, as ``book`` runs them (``--steps`` mode of this script)."""
    env = {**os.environ, "COLLAB_ARTIFACTS": str(root)}
    cmd = [sys.executable, __file__, "--profile", profile, "--steps"]
    done = subprocess.run(cmd, env=env, cwd=ROOT, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_steps(profile: str) -> None:
    """Each step of ``profile`` in order in this process, timed; the times as JSON."""
    from collab_lib import pipeline
    from collab_lib.config import load_config

    cfg = load_config(profile)
    out = {}
    for step in pipeline.STEPS:
        start = time.perf_counter()
        pipeline.run(step, cfg)
        out[step] = time.perf_counter() - start
        print(f"  {step}: {out[step]:.1f} s", file=sys.stderr, flush=True)
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--times", type=Path, help="measured step times (JSON) to compare with")
    parser.add_argument(
        "--floor", type=float, default=10.0, help="steps shorter than this are not held to 1.5x"
    )
    parser.add_argument("--steps", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps:
        return run_steps(args.profile)

    from collab_lib import calibration, cost
    from collab_lib.config import load_config

    cfg = load_config(args.profile)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["COLLAB_ARTIFACTS"] = str(Path(tmp) / "calibration-cache")
        tp = calibration.calibrate(cfg)
        works = cost.estimate(cfg, tp, cost.facts(cfg))
        del os.environ["COLLAB_ARTIFACTS"]
        if args.times:
            measured = json.loads(args.times.read_text())
        else:
            measured = measure(args.profile, Path(tmp) / "run")
            (Path(tmp) / "times.json").write_text(json.dumps(measured))
            print(json.dumps({k: round(v, 2) for k, v in measured.items()}), file=sys.stderr)
    print(f"profile {args.profile} on {tp.machine}: {calibration.rates(tp)}")
    print(f"{'step':<11} {'estimate s':>10} {'measured s':>10} {'ratio':>6}")
    worst = 1.0
    for w in works:
        got = measured.get(w.step, 0.0)
        ratio = w.seconds / got if got > 0 else float("nan")
        if got >= args.floor:
            worst = max(worst, ratio, 1 / ratio)
        print(f"{w.step:<11} {w.seconds:>10.1f} {got:>10.1f} {ratio:>6.2f}")
    total_est, total = sum(w.seconds for w in works), sum(measured.values())
    print(f"{'total':<11} {total_est:>10.1f} {total:>10.1f} {total_est / total:>6.2f}")
    worst = max(worst, total_est / total, total / total_est)
    print(f"worst factor over steps of {args.floor:g} s or more and the total: {worst:.2f}x")


if __name__ == "__main__":
    main()
