"""Benchmark: clone removal by private set intersection against the centralized detector.

The baseline is what a trusted party holding every organization's code would run: the clone
detector on each pair of organizations (Table 7's method, ``clones.cross_covered``).
The contender is the PSI protocol among the organizations (``psi.run``: every request,
answer and intersection, one after another on this machine, where each organization would
run its own share in parallel on its own). Both are timed the same way: a cold process each
(``python bench/psi.py --contender NAME``: the interpreter, the imports and reading every
file included), warmed alike by one untimed run, best of ``--repeat``. Prints, per
contender, wall seconds and peak memory, the bytes that travel (PSI only: the central
detector needs all the code in one place), and the ratio PSI / central.

The organizations: the training splits of a profile whose datasets step is built
(``--profile``, default ``default``; ``gpu`` after ``python -m collab_lib run datasets
--profile gpu``).

    python bench/psi.py [--profile gpu] [--repeat 3]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def write_orgs(profile: str, dest: Path) -> list[str]:
    """Each organization's training split as a tree of files under ``dest/<org>``."""
    from collab_lib import datasets, pipeline
    from collab_lib.config import load_config

    cfg = load_config(profile)
    ds = datasets.load(cfg, pipeline.planned_for("datasets", cfg))
    orgs = [o.name for o in cfg.datasets.organizations]
    for org in orgs:
        for i, d in enumerate(ds.documents(org, "train")):
            path = dest / org / f"{i:05d}.py"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(d["content"], encoding="utf-8", errors="surrogateescape")
    return orgs


def contender(name: str, root: Path, orgs: list[str]) -> dict:
    """One contender's whole job, in this process; what it found and sent."""
    from collab_lib import clones, psi
    from collab_lib.clones import CloneOptions

    opts = CloneOptions()
    docs = {o: clones.read_tree(root / o) for o in orgs}  # (name, path): read in the search
    if name == "central":
        corpora = {o: clones.build_corpus(docs[o], opts) for o in orgs}
        lines = sum(  # one search per pair gives both sides' lines
            int(mask.sum())
            for a, b in itertools.combinations(orgs, 2)
            for mask in clones.cross_covered([corpora[a], corpora[b]], opts)
        )
        return {"shared lines": lines, "bytes": 0}
    wins = {o: psi.windows(docs[o], opts) for o in orgs}
    keys = {o: (psi.new_key(), psi.new_key()) for o in orgs}
    ex = psi.run({o: wins[o].elements for o in orgs}, 1e-9, keys, progress=False)
    lines = sum(
        int(psi.covered(wins[a], ex.shared[a][b]).sum()) for a in orgs for b in orgs if a != b
    )
    return {"shared lines": lines, "bytes": sum(m["bytes"] for m in ex.messages)}


def timed(name: str, root: Path, orgs: list[str]) -> tuple[float, float, dict]:
    """Wall seconds, peak RSS (MB) and result of one cold process."""
    cmd = [sys.executable, __file__, "--contender", name, "--root", str(root), *orgs]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)  # the child's own peak memory
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{name} failed ({os.waitstatus_to_exitcode(status)})")
    peak = usage.ru_maxrss / 1024
    return wall, peak, json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="default")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--contender", help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    p.add_argument("orgs", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.contender:  # a child: one contender's job
        print(json.dumps(contender(args.contender, Path(args.root), args.orgs)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        orgs = write_orgs(args.profile, Path(tmp))
        rows = {}
        for name in ("central", "psi"):
            timed(name, Path(tmp), orgs)  # warm-up: imports compiled, files in the page cache
            runs = [timed(name, Path(tmp), orgs) for _ in range(args.repeat)]
            rows[name] = min(runs, key=lambda r: r[0])
    print(f"profile {args.profile}: {', '.join(orgs)}; best of {args.repeat} cold processes")
    print(f"{'contender':<10} {'wall s':>8} {'peak MB':>8} {'shared lines':>13} {'MB sent':>8}")
    for name, (wall, peak, res) in rows.items():
        mb = res["bytes"] / 1e6
        print(f"{name:<10} {wall:>8.2f} {peak:>8.0f} {res['shared lines']:>13} {mb:>8.2f}")
    same = rows["psi"][2]["shared lines"] == rows["central"][2]["shared lines"]
    ratio = rows["psi"][0] / rows["central"][0]
    print(f"ratio psi / central (wall): {ratio:.2f}x; same shared lines: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
