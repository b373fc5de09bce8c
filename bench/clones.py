"""Benchmark: our Type-1 clone detector against Simian 4.2.1, both as whole processes.

Each contender is timed the way a user meets it: a cold process from the command line
(``python -m collab_lib clones DIR`` against ``java -jar simian.jar``), the interpreter's or
the JVM's start and every import included, each warmed up alike by one untimed run (the
files then sit in the page cache for both), best of ``--repeat``. Peak memory is the
process's own maximum resident set (``wait4``). Prints, in one run:

- with ``--simian JAR`` (a Simian 4.2.1 jar you have): wall time and peak memory of both, the
  ratio Simian / ours (aim: >= 2x) and the line-level precision, recall and F1 of our
  duplicated lines against Simian's (target F1 >= 0.98);
- without it: pylint's ``symilar`` and ``jscpd`` (npm) when they are installed, timed the same
  way, with their recall of our duplicated lines;
- query mode (in this process): counted lines per second when scanning "generated" code
  (half of the files) against an index of the other half, on one core, and the index's bytes
  per indexed line.

The corpus: ``--dir`` a tree of .py files, or ``--pypi SPEC ...`` pinned releases (e.g. the
~40 MB of pandas==2.3.2 matplotlib==3.11.2 networkx==3.6.1), or by default the ``gpu``
profile's releases.

    python bench/clones.py [--dir PATH | --pypi SPEC ...] [--simian simian.jar] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numba

from collab_lib.clones import CloneIndex, build_corpus, read_tree, self_clones
from collab_lib.config import load_config
from collab_lib.sources import fetch_pypi

ROOT = Path(__file__).resolve().parent.parent


def corpus_dir(specs: list[str], dest: Path) -> Path:
    """Copy the .py files of pinned PyPI releases into one tree (Simian reads files)."""
    for spec, art in fetch_pypi(specs, None, 120.0).items():
        shutil.copytree(art.path / "files", dest / spec)
    return dest


def profile_specs(profile: str) -> list[str]:
    d = load_config(profile).datasets
    return sorted({s.pypi for o in d.organizations for s in o.sources if s.kind == "pypi"})


def timed(cmd: list[str], cwd: Path | None = None, ok=(0,)) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB) and stdout of one cold process (output goes to files, so a
    chatty process never blocks on a full pipe while we wait for it)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode not in ok:
            err.seek(0)
            raise SystemExit(f"{cmd[0]} failed ({proc.returncode}): {err.read()[-2000:]}")
        out.seek(0)
        return wall, usage.ru_maxrss / 1024, out.read()


def best_of(cmd: list[str], repeat: int, cwd: Path | None = None, ok=(0,)):
    """One untimed warm-up run, then the fastest of ``repeat`` (its own peak memory)."""
    timed(cmd, cwd, ok)
    return min((timed(cmd, cwd, ok) for _ in range(repeat)), key=lambda r: r[0])


def our_lines(root: Path) -> set[tuple[str, int]]:
    report = self_clones(build_corpus(read_tree(root)))
    return {(b.file, n) for b in report.blocks for n in range(b.start, b.end + 1)}


def simian_lines(output: str, root: Path) -> set[tuple[str, int]]:
    lines = set()
    for m in re.finditer(r"Between lines (\d+) and (\d+) in (.+)", output):
        path = str(Path(m.group(3).strip()).resolve())
        lines.update((path, n) for n in range(int(m.group(1)), int(m.group(2)) + 1))
    return lines


def f1(ours_: set, theirs: set) -> tuple[float, float, float]:
    tp = len(ours_ & theirs)
    p, r = tp / max(len(ours_), 1), tp / max(len(theirs), 1)
    return p, r, 2 * p * r / max(p + r, 1e-12)


def row(name: str, wall: float, rss: float, blocks: str, dup: str) -> None:
    print(f"{name:<28}{wall:>9.2f}{rss:>9.0f}{blocks:>9}{dup:>11}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, help="a tree of .py files")
    ap.add_argument("--pypi", nargs="+", metavar="SPEC", help="pinned releases as the corpus")
    ap.add_argument("--profile", default="gpu", help="whose releases, without --dir or --pypi")
    ap.add_argument("--simian", type=Path, help="a Simian 4.2.1 jar to compare against")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    if args.dir is None:
        args.dir = corpus_dir(args.pypi or profile_specs(args.profile), tmp / "corpus")
    root = args.dir.resolve()
    files = read_tree(root)
    raw = sum(p.read_bytes().count(b"\n") for _, p in files)
    mb = sum(p.stat().st_size for _, p in files) / 1e6
    print(f"corpus: {len(files)} files, {mb:.1f} MB, {raw:,} lines; {os.cpu_count()} cores")

    ours_cmd = [sys.executable, "-m", "collab_lib", "clones", str(root), "--json"]
    wall, rss, out = best_of(ours_cmd, args.repeat, cwd=ROOT)
    report = json.loads(out)
    print(
        f"{'contender (whole process)':<28}{'seconds':>9}{'peak MB':>9}{'blocks':>9}"
        f"{'dup lines':>11}"
    )
    row(
        "ours (collab_lib clones)",
        wall,
        rss,
        f"{len(report['blocks']):,}",
        f"{report['block_lines']:,}",
    )
    mine = our_lines(root)
    if args.simian:
        cmd = ["java", "-jar", str(args.simian.resolve()), "-threshold=6", "-includes=**/*.py"]
        # Simian exits 1 when it finds duplication
        s_wall, s_rss, s_out = best_of(cmd, args.repeat, cwd=root, ok=(0, 1))
        m = re.search(r"Found ([\d,]+) duplicate lines in ([\d,]+) blocks", s_out)
        row("Simian 4.2.1", s_wall, s_rss, *((m.group(2), m.group(1)) if m else ("?", "?")))
        p, r, f = f1(mine, simian_lines(s_out, root))
        print(
            f"ratio Simian / ours: {s_wall / wall:.2f}x (aim >= 2x); peak memory {rss:.0f} MB vs "
            f"{s_rss:.0f} MB; line-level P {p:.4f} R {r:.4f} F1 {f:.4f} (target >= 0.98)"
        )
    else:
        print(
            "Simian: no jar given (--simian simian-4.2.1.jar); the package registries do not "
            "carry it"
        )
        compare_registry_tools(root, mine, wall, args.repeat)
    query_bench(files)


def compare_registry_tools(root: Path, mine: set, ours_wall: float, repeat: int) -> None:
    """pylint's symilar and jscpd, timed as ours was, with their recall of our lines."""
    if shutil.which("symilar"):
        files = [str(p) for _, p in read_tree(root)]
        wall, rss, out = best_of(["symilar", "--duplicates=6", *files], repeat, ok=(0, 1))
        found = set()
        for m in re.finditer(r"^==(.+?):\[(\d+):(\d+)\]", out, re.M):
            path = str(Path(m.group(1)).resolve())
            found.update((path, n) for n in range(int(m.group(2)) + 1, int(m.group(3)) + 1))
        print(
            f"pylint symilar: {wall:.2f} s, {rss:.0f} MB ({wall / ours_wall:.1f}x ours); recall "
            f"of our duplicated lines {len(found & mine) / max(len(mine), 1):.3f}"
        )
    else:
        print("pylint symilar: not installed (pip install pylint)")
    if shutil.which("jscpd"):
        report = Path(tempfile.mkdtemp())
        cmd = [
            "jscpd",
            "--min-lines",
            "6",
            "--format",
            "python",
            "--reporters",
            "json",
            "--output",
            str(report),
            "--silent",
            str(root),
        ]
        wall, rss, _ = best_of(cmd, repeat, ok=(0, 1))
        data = json.loads((report / "jscpd-report.json").read_text())
        found = set()
        for dup in data.get("duplicates", []):
            for side in ("firstFile", "secondFile"):
                f = dup[side]
                path = str(Path(f["name"]).resolve())
                found.update((path, n) for n in range(f["start"], f["end"] + 1))
        print(
            f"jscpd: {wall:.2f} s, {rss:.0f} MB ({wall / ours_wall:.1f}x ours); recall of our "
            f"duplicated lines {len(found & mine) / max(len(mine), 1):.3f}"
        )
    else:
        print("jscpd: not installed (npm install -g jscpd)")


def query_bench(files: list) -> None:
    """Index half of the files; scan the other half as if it were generated code."""
    numba.set_num_threads(1)  # the target is per core
    index = CloneIndex.build(files[::2])
    generated = files[1::2]
    index.query(build_corpus(generated[:50]))  # warm-up
    best, lines = float("inf"), 0
    for _ in range(3):
        start = time.perf_counter()
        query = build_corpus(generated)
        index.query(query, with_blocks=False)
        best = min(best, time.perf_counter() - start)
        lines = query.n_lines
    print(
        f"query mode (1 thread): {lines / best / 1e6:.2f} M counted lines/s "
        f"(target >= 1 M); index: {index.nbytes / index.n_lines:.1f} bytes per indexed line "
        f"(target <= 16)"
    )


if __name__ == "__main__":
    main()
