"""Type-1 clone detection: Simian's matching rules, exact spans, the ratio of Eq. 1."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collab_lib.clones import (
    CloneIndex,
    CloneOptions,
    build_corpus,
    cross_clones,
    line_hashes,
    self_clones,
)


def filler(prefix: str, n: int) -> list[str]:
    """Lines that occur nowhere else."""
    return [f"{prefix}_{i} = compute_{prefix}({i}, '{prefix}{i}')" for i in range(n)]


def block(n: int, tag: str = "blk") -> list[str]:
    return [f"result_{tag}_{i} = transform(value_{i}, {i} * 2)" for i in range(n)]


def spans(report) -> set[tuple[str, int, int, int]]:
    return {(b.file, b.start, b.end, b.lines) for b in report.blocks}


def corpus(**files: list[str] | str | bytes):
    docs = [
        (n, t if isinstance(t, (str, bytes)) else "\n".join(t) + "\n") for n, t in files.items()
    ]
    return build_corpus(docs)


# ------------------------------------------------------------------ what makes two lines equal


@pytest.mark.parametrize(
    "a, b",
    [
        pytest.param("x = a + b", "x=a+b", id="whitespace"),
        pytest.param("x = a + b", "\tx  =  a + b   ", id="tabs-and-indent"),
        pytest.param("x = a + b  # sum", "x = a + b", id="trailing-comment"),
        pytest.param("Total = Compute(X)", "total = compute(x)", id="identifier-case"),
        pytest.param('s = "Hello"', 's = "hello"', id="string-case"),
        pytest.param("y = 1", "y = 1.0", id="number-by-value"),
        pytest.param("y = 007", "y = 7", id="leading-zeros"),
        pytest.param("a; b", "a b", id="semicolon-is-space"),
        pytest.param('s = "\\d+"', 's = "d+"', id="escape-processed"),
        pytest.param('s = "a\\tb"', 's = "a\tb"', id="escape-tab"),
        pytest.param('s = "\\101"', 's = "a"', id="octal-escape-then-case"),
    ],
)
def test_lines_that_simian_considers_equal(a, b):
    assert line_hashes(a) == line_hashes(b)


@pytest.mark.parametrize(
    "a, b",
    [
        pytest.param("x = a + b", "x = a - b", id="changed-token"),
        pytest.param("return x", "returnx", id="word-boundary"),
        pytest.param('s = "a b"', 's = "ab"', id="space-inside-string"),
        pytest.param("y - 1", "y -1", id="signed-number-after-word"),
        pytest.param("a // b", "a", id="floor-division-kept"),
    ],
)
def test_lines_that_differ(a, b):
    assert line_hashes(a) != line_hashes(b)


def test_strict_mode_is_case_sensitive_and_compares_numbers_as_written():
    strict = CloneOptions(mode="strict")
    assert line_hashes("X = 1", strict) != line_hashes("x = 1", strict)
    assert line_hashes("x = 1", strict) != line_hashes("x = 1.0", strict)
    assert line_hashes("x  =  1 # c", strict) == line_hashes("x = 1", strict)


def test_slash_comment_quirk_is_an_option():
    quirk = CloneOptions(slash_comments=True)
    assert line_hashes("a = b // c", quirk) == line_hashes("a = b", quirk)
    assert line_hashes('s = "x // y"', quirk) != line_hashes('s = "x"', quirk)


def test_blank_and_comment_lines_are_not_counted():
    assert line_hashes("x = 1\n\n   \n# only a comment\ny = 2")[1:4] == [None, None, None]
    assert line_hashes("") == [None]


def test_docstrings_are_tokenised_like_code():
    text = 'def f():\n    """Summary.\n\n    Details here\n    """\n'
    h = line_hashes(text)
    assert h[3] == line_hashes("details here")[0]  # the docstring's text, as code


def test_line_endings_bom_and_encodings():
    lf = "\n".join(block(6)) + "\n"
    assert line_hashes(lf) == line_hashes(lf.replace("\n", "\r\n"))
    assert line_hashes(lf) == line_hashes(lf.replace("\n", "\r"))
    assert line_hashes(lf) == line_hashes("\ufeff" + lf)
    assert line_hashes("x = 'caf\xe9'".encode("latin-1"))[0] is not None  # not UTF-8: still read


# ------------------------------------------------------------------ blocks


@pytest.mark.parametrize("size, found", [(5, False), (6, True), (7, True), (50, True)])
def test_planted_blocks_are_found_from_six_lines(size, found):
    planted = block(size)
    noisy = [f"  {line.upper()}   # copied" for line in planted]  # case, spaces, comments
    c = corpus(a=filler("a", 10) + planted + filler("b", 5), b=filler("c", 3) + noisy)
    expected = {("a", 11, 10 + size, size), ("b", 4, 3 + size, size)} if found else set()
    assert spans(self_clones(c)) == expected


def test_blocks_at_the_start_and_end_of_files():
    planted = block(8)
    c = corpus(a=planted + filler("a", 4), b=filler("b", 4) + planted)
    assert spans(self_clones(c)) == {("a", 1, 8, 8), ("b", 5, 12, 8)}


def test_reported_spans_keep_original_line_numbers_across_blank_lines():
    planted = block(6)
    spaced = [planted[0], "", "# note", *planted[1:]]
    c = corpus(a=filler("a", 2) + planted, b=spaced)
    assert spans(self_clones(c)) == {("a", 3, 8, 6), ("b", 1, 8, 6)}


def test_adjacent_blocks_from_different_places_are_separate():
    one, two = block(6, "one"), block(7, "two")
    c = corpus(a=one + two, b=one + filler("x", 2), c=filler("y", 2) + two)
    found = spans(self_clones(c))
    assert ("a", 1, 6, 6) in found and ("a", 7, 13, 7) in found


def test_overlapping_blocks_follow_simians_maximal_rule():
    """a holds 1..10; b holds 1..8; c holds 3..10: a reports two overlapping blocks."""
    lines = block(10)
    c = corpus(a=lines, b=lines[:8] + filler("b", 2), c=filler("c", 2) + lines[2:])
    found = {s for s in spans(self_clones(c)) if s[0] == "a"}
    assert found == {("a", 1, 8, 8), ("a", 3, 10, 8)}


def test_memorization_ratio_on_a_hand_checked_example():
    """Query: 4 filler + 6 memorized + 1 comment + 7 memorized (overlapping source) = 17 lines."""
    train = block(20)
    generated = filler("g", 4) + train[0:6] + ["# a comment"] + train[10:17]
    index = CloneIndex.build([("train.py", "\n".join(train))])
    report = index.query(corpus(gen=generated))
    assert report.counted_lines == 17 and report.cloned_lines == 13
    assert report.ratio == pytest.approx(13 / 17)
    assert spans(report) == {("gen", 5, 10, 6), ("gen", 12, 18, 7)}  # line 11: the comment
    src = {(b.source_file, b.source_start, b.source_end) for b in report.blocks}
    assert src == {("train.py", 1, 6), ("train.py", 11, 17)}


def test_index_queries_agree_with_the_combined_search():
    train = corpus(t1=filler("a", 5) + block(9) + filler("b", 3), t2=block(30, "x"))
    query = corpus(q1=block(9)[2:] + block(30, "x")[5:12], q2=filler("z", 8))
    index = CloneIndex.build(
        [
            ("t1", "\n".join(filler("a", 5) + block(9) + filler("b", 3))),
            ("t2", "\n".join(block(30, "x"))),
        ]
    )
    assert spans(index.query(query)) == spans(cross_clones([query, train]))
    assert index.nbytes <= 16 * index.n_lines


def test_cross_clones_needs_every_corpus():
    shared = block(7)
    m = build_corpus([("m.py", "\n".join(filler("m", 3) + shared))])
    g = build_corpus([("g.py", "\n".join(shared + filler("g", 3)))])
    f = build_corpus([("f.py", "\n".join(filler("f", 9)))])
    assert spans(cross_clones([m, g])) == {("m.py", 4, 10, 7)}
    assert cross_clones([m, g, f]).blocks == []


@settings(max_examples=40, deadline=None)
@given(
    size=st.integers(min_value=1, max_value=30),
    before=st.integers(min_value=0, max_value=12),
    after=st.integers(min_value=0, max_value=12),
    other_before=st.integers(min_value=0, max_value=12),
)
def test_every_planted_block_is_found_with_its_exact_span(size, before, after, other_before):
    planted = block(size)
    c = corpus(
        a=filler("a", before) + planted + filler("b", after),
        b=filler("c", other_before) + planted,
    )
    expected = set()
    if size >= 6:
        expected = {
            ("a", before + 1, before + size, size),
            ("b", other_before + 1, other_before + size, size),
        }
    assert spans(self_clones(c)) == expected


def test_audit_command_prints_json(tmp_path, capsys):
    from collab_lib.cli import main

    (tmp_path / "gen.py").write_text("\n".join(filler("g", 2) + block(6)) + "\n")
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "train.py").write_text("\n".join(block(6)) + "\n")
    code = main(
        ["clones", str(tmp_path / "gen.py"), "--against", str(tmp_path / "corpus"), "--json"]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["cloned_lines"] == 6 and out["counted_lines"] == 8
    (b,) = out["blocks"]
    assert (b["start"], b["end"], b["source_start"], b["source_end"]) == (3, 8, 1, 6)
    assert b["source_file"].endswith("train.py")


def test_the_detector_leaves_torchs_thread_count_alone():
    """A step after the clone detector trains at the thread count it would train at alone."""
    import os
    import subprocess
    import sys

    code = (
        "import torch; from collab_lib import clones\n"
        "opts = clones.CloneOptions(6, 'simian')\n"
        "files = [(f'{i}.py', 'def f(x):\\n    return x + 1\\n' * 12) for i in range(40)]\n"
        "clones.self_clones(clones.build_corpus(files, opts), opts)\n"
        "print(torch.get_num_threads())"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("NUMBA_THREADING_LAYER", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.stdout.strip() == "1", done.stderr
