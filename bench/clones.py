"""Benchmark: our Type-1 clone detector against Simian 4.2.1 (or what the registries offer).

Self-mode on a corpus of real Python (default: every .py file of the `gpu` profile's PyPI
releases, about 50 MB), then query mode against an index. Prints, in one run:

- with ``--simian JAR`` (a Simian 4.2.1 jar you have): wall time and peak memory of both, the
  speed ratio (target >= 10x) and the line-level precision, recall and F1 of our duplicated
  lines against Simian's (target F1 >= 0.98);
- without it: pylint's ``symilar`` and ``jscpd`` (npm) when they are installed, with their
  recall of our duplicated lines;
- query mode: counted lines per second when scanning "generated" code (half of the files)
  against an index of the other half, on one core, and the index's bytes per indexed line.

    python bench/clones.py [--dir PATH] [--simian simian.jar] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numba

from collab_lib.clones import CloneIndex, build_corpus, read_tree, self_clones, summarize_self
from collab_lib.config import load_config
from collab_lib.sources import fetch_pypi


def corpus_dir(profile: str, dest: Path) -> Path:
    """Copy the .py files of a profile's PyPI releases into one tree (Simian reads files)."""
    d = load_config(profile).datasets
    specs = sorted({s.pypi for o in d.organizations for s in o.sources if s.kind == "pypi"})
    for spec, art in fetch_pypi(specs, d.index_url, d.download_timeout_s).items():
        shutil.copytree(art.path / "files", dest / spec)
    return dest


def ours(root: Path) -> tuple[float, dict]:
    start = time.perf_counter()
    summary = summarize_self(build_corpus(read_tree(root)))
    return time.perf_counter() - start, summary


def our_lines(root: Path) -> set[tuple[str, int]]:
    report = self_clones(build_corpus(read_tree(root)))
    return {(b.file, n) for b in report.blocks for n in range(b.start, b.end + 1)}


def peak_rss_mb(cmd: list[str], cwd: Path | None = None) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB) and stdout of a child process."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode not in (0, 1):  # Simian exits 1 when it finds duplication
        raise SystemExit(f"{cmd[0]} failed: {proc.stderr[-2000:]}")
    return wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, proc.stdout


def our_peak_rss_mb(root: Path) -> float:
    code = (
        "import resource, sys; from collab_lib.clones import *; "
        "summarize_self(build_corpus(read_tree(sys.argv[1]))); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True)
    return float(out.stdout.strip())


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, help="a tree of .py files (default: the gpu profile's)")
    ap.add_argument("--profile", default="gpu")
    ap.add_argument("--simian", type=Path, help="a Simian 4.2.1 jar to compare against")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    root = (args.dir or corpus_dir(args.profile, tmp / "corpus")).resolve()
    files = read_tree(root)
    raw = sum(p.read_bytes().count(b"\n") for _, p in files)
    mb = sum(p.stat().st_size for _, p in files) / 1e6
    print(f"corpus: {len(files)} files, {mb:.1f} MB, {raw:,} lines")

    ours(root)  # warm-up: compile the scanner and load files into the page cache
    best, summary = min(ours(root) for _ in range(args.repeat))
    rss = our_peak_rss_mb(root)
    print(f"{'contender':<22}{'seconds':>9}{'peak MB':>9}{'blocks':>9}{'dup lines':>11}")
    print(
        f"{'ours (self-mode)':<22}{best:>9.2f}{rss:>9.0f}{summary['blocks']:>9,}"
        f"{summary['block_lines']:>11,}"
    )
    mine = our_lines(root)
    if args.simian:
        cmd = ["java", "-jar", str(args.simian.resolve()), "-threshold=6", "-includes=**/*.py"]
        peak_rss_mb(cmd, cwd=root)  # warm-up
        wall, s_rss, out = min(peak_rss_mb(cmd, cwd=root) for _ in range(args.repeat))
        m = re.search(r"Found ([\d,]+) duplicate lines in ([\d,]+) blocks", out)
        blocks, dup = (m.group(2), m.group(1)) if m else ("?", "?")
        print(f"{'Simian 4.2.1':<22}{wall:>9.2f}{s_rss:>9.0f}{blocks:>9}{dup:>11}")
        p, r, f = f1(mine, simian_lines(out, root))
        print(
            f"speed ratio: {wall / best:.1f}x (target >= 10x); peak memory: {rss:.0f} MB vs "
            f"{s_rss:.0f} MB; line-level P {p:.4f} R {r:.4f} F1 {f:.4f} (target >= 0.98)"
        )
    else:
        compare_registry_tools(root, mine)
    query_bench(files)


def compare_registry_tools(root: Path, mine: set) -> None:
    if shutil.which("symilar"):
        files = [str(p) for _, p in read_tree(root)]
        wall, _, out = peak_rss_mb(["symilar", "--duplicates=6", *files])
        found = set()
        for m in re.finditer(r"^==(.+?):\[(\d+):(\d+)\]", out, re.M):
            path = str(Path(m.group(1)).resolve())
            found.update((path, n) for n in range(int(m.group(2)) + 1, int(m.group(3)) + 1))
        print(
            f"pylint symilar: {wall:.2f} s; recall of our duplicated lines "
            f"{len(found & mine) / max(len(mine), 1):.3f}"
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
        wall, _, _ = peak_rss_mb(cmd)
        data = json.loads((report / "jscpd-report.json").read_text())
        found = set()
        for dup in data.get("duplicates", []):
            for side in ("firstFile", "secondFile"):
                f = dup[side]
                path = str(Path(f["name"]).resolve())
                found.update((path, n) for n in range(f["start"], f["end"] + 1))
        print(
            f"jscpd: {wall:.2f} s; recall of our duplicated lines "
            f"{len(found & mine) / max(len(mine), 1):.3f}"
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
