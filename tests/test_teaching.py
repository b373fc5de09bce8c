"""The Teaching guide's exercises: every command on the page runs, and shows an effect.

The page's commands name the ``tiny`` profile. Here they run against the session's course
profile (a tiny-scale profile of three local organizations with the same names), on a copy of
its run's cache (the other tests count what that run trained), so that only what an exercise
changes is computed: the commands' steps, settings and table names are what is checked, and
that each exercise's table differs from the unchanged run's.
"""

import re
import shlex
import shutil
from pathlib import Path

import pandas as pd
import pytest

from collab_lib.cli import main
from collab_lib.config import PROJECT_ROOT

PAGE = PROJECT_ROOT / "book" / "teaching.md"


def exercises() -> dict[str, list[list[str]]]:
    """``{title: [argv, ...]}`` of every ``## Exercise`` section's ``python -m collab_lib``
    commands, in order."""
    out = {}
    for section in re.split(r"^## ", PAGE.read_text(), flags=re.M)[1:]:
        title = section.splitlines()[0]
        if not title.startswith("Exercise"):
            continue
        blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
        lines = [ln for b in blocks for ln in b.splitlines() if ln.startswith("python -m")]
        out[title] = [shlex.split(ln)[3:] for ln in lines]  # after "python -m collab_lib"
    return out


def test_the_guide_has_five_or_more_complete_exercises():
    text = PAGE.read_text()
    found = exercises()
    assert len(found) >= 5
    for title, commands in found.items():
        section = text[text.index(f"## {title}") :].split("\n## ")[0]
        for part in ("**Setting**", "**Where**", "**Expect**"):
            assert part in section, (title, part)
        assert commands and all("--profile" in c and "tiny" in c for c in commands), title
        assert commands[-1][0] == "table", f"{title}: its last command prints the table"


def _on_book_profile(argv: list[str], profile: str) -> list[str]:
    i = argv.index("--profile")
    return [*argv[:i], "--profile", profile, "--set", "seed=5", *argv[i + 2 :]]


@pytest.fixture(scope="module")
def cache(course_run, tmp_path_factory) -> Path:
    """A copy of the course run's cache, which the exercises add their runs to."""
    dest = tmp_path_factory.mktemp("teaching") / "artifacts"
    shutil.copytree(course_run.artifacts, dest, symlinks=True)
    return dest


@pytest.mark.parametrize("title", list(exercises()))
def test_each_exercise_runs_and_changes_its_table(title, course_run, cache, monkeypatch, capsys):
    monkeypatch.setenv("COLLAB_ARTIFACTS", str(cache))
    profile = str(course_run.profile)
    outputs = []
    for argv in exercises()[title]:
        code = main(_on_book_profile(argv, profile))
        out, err = capsys.readouterr()
        assert code == 0, f"{shlex.join(argv)}: {err[-2000:]}"
        outputs.append(out)
    table_argv = exercises()[title][-1]
    changed = pd.read_csv(pd.io.common.StringIO(outputs[-1]))
    plain = [
        a
        for i, a in enumerate(table_argv)
        if a != "--set" and (i == 0 or table_argv[i - 1] != "--set")
    ]
    assert main(_on_book_profile(plain, profile)) == 0
    unchanged = pd.read_csv(pd.io.common.StringIO(capsys.readouterr().out))
    assert len(changed) > 0
    assert not changed.equals(unchanged), f"{title}: the setting changed nothing in its table"
