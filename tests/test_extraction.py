"""Prompts for memorization: exact function prompts, counts, sampling, the stop rule, clones."""

import sys

import pytest

from collab_lib.extraction import (
    Function,
    body_end,
    clone_prompts,
    cut_body,
    function_prompts,
    functions,
    sample_prompts,
    split_lines,
)


def n_tokens(tok, text: str) -> int:
    return len(tok(text, verbose=False)["input_ids"])


# ------------------------------------------------------------------ function prompts

LISTING_1 = '''\
class Client:
    @distributed_trace
    def async_close(self, **kwargs: Any) -> bool:
        """Close the client.

        :return: True when closed.
        """
        return True
'''


@pytest.mark.parametrize(
    "source, expected",
    [
        pytest.param(
            LISTING_1,
            [
                (
                    "Client.async_close",
                    3,
                    'def async_close(self, **kwargs: Any) -> bool:\n    """Close the client.\n\n'
                    '    :return: True when closed.\n    """\n',
                )
            ],
            id="listing-1-method-dedented-decorator-dropped",
        ),
        pytest.param(
            '@deco\n@other(1)\ndef f(x):\n    """Doc."""\n    return x\n',
            [("f", 3, 'def f(x):\n    """Doc."""\n')],
            id="decorators-excluded",
        ),
        pytest.param(
            'def f():\n    def g():\n        """G."""\n    return g\n',
            [("f", 1, None), ("f.g", 2, 'def g():\n    """G."""\n')],
            id="nested-function",
        ),
        pytest.param(
            "class Outer:\n    class Inner:\n        def m(self):\n            'M.'\n",
            [("Outer.Inner.m", 3, "def m(self):\n    'M.'\n")],
            id="nested-class",
        ),
        pytest.param(
            "class C:\n    def f(\n        self,\n        x: int,\n    ) -> int:\n"
            '        """Doc."""\n        return x\n',
            [("C.f", 2, 'def f(\n    self,\n    x: int,\n) -> int:\n    """Doc."""\n')],
            id="multi-line-signature",
        ),
        pytest.param(
            'async def fetch(url):\n    """Fetch."""\n    return await get(url)\n',
            [("fetch", 1, 'async def fetch(url):\n    """Fetch."""\n')],
            id="async-def",
        ),
        pytest.param(
            'def f(x):\n    f"""Doc {x}."""\n',
            [("f", 1, None)],
            id="f-string-is-no-docstring",
        ),
        pytest.param(
            'def f():\n    x = 1\n    """Not a docstring."""\n',
            [("f", 1, None)],
            id="string-not-first-statement",
        ),
        pytest.param(
            "def f():\n    'Single.'\n    return 1\n",
            [("f", 1, "def f():\n    'Single.'\n")],
            id="single-quoted",
        ),
        pytest.param(
            'def f():\n    r"""Match \\d+ digits."""\n',
            [("f", 1, 'def f():\n    r"""Match \\d+ digits."""\n')],
            id="raw-docstring",
        ),
        pytest.param(
            'def f(): "doc"; return 1\n',
            [("f", 1, 'def f(): "doc"\n')],
            id="docstring-on-the-def-line",
        ),
        pytest.param(
            'class Maß:\n    def größe(self, wert="€"):\n        """Größe in €."""  # Maß\n',
            [("Maß.größe", 2, 'def größe(self, wert="€"):\n    """Größe in €."""\n')],
            id="non-ascii-byte-offsets",
        ),
        pytest.param(
            'class A:\r\n    def f(self):\r\n        """One.\r\n\r\n        Two."""\r\n'
            "        return 1\r\n",
            [("A.f", 2, 'def f(self):\r\n    """One.\r\n\r\n    Two."""\n')],
            id="crlf",
        ),
        pytest.param(
            'def f(x):\n    """Doc."""\n    y = x + 1\n    return y\n',
            [("f", 1, 'def f(x):\n    """Doc."""\n')],
            id="one-line-docstring-then-code",
        ),
        pytest.param(
            's = "a\u2028b\x0cc\x1cd"\n\ndef f():\n    """Doc."""\n',
            [("f", 3, 'def f():\n    """Doc."""\n')],
            id="u2028-and-form-feed-are-no-line-breaks",
        ),
    ],
)
def test_function_prompts_are_exact(source, expected):
    """The expected prompts are written as whole lines; a prompt stops at the closing quotes."""
    want = [Function(name, line, p and p.removesuffix("\n")) for name, line, p in expected]
    assert functions(source) == want


@pytest.mark.parametrize(
    "source",
    [
        pytest.param('print "x"\n', id="python-2-print"),
        pytest.param(
            "def f[T](x: T) -> T:\n    return x\n",
            id="python-3.12-generics",
            marks=pytest.mark.skipif(sys.version_info >= (3, 12), reason="valid from 3.12"),
        ),
        pytest.param('def f():\n    "doc"\x00\n', id="null-byte"),
        pytest.param("def f(:\n    pass\n", id="syntax-error"),
        pytest.param("x = " + "(" * 1000 + ")" * 1000 + "\n", id="too-deep"),
    ],
)
def test_unparsable_source_gives_none(source):
    assert functions(source) is None


def test_lines_split_only_where_ast_counts_a_line():
    assert split_lines("a\r\nb\rc\nd\x0ce\u2028f") == ["a\r\n", "b\r", "c\n", "d\x0ce\u2028f"]
    assert split_lines("") == []


def test_function_prompts_counts_and_the_token_limit(tok):
    short = 'def short():\n    """Short."""'
    long = 'def long():\n    """' + " ".join(f"word{i}" for i in range(60)) + '."""'
    source = short + "\n    return 1\n\n" + long + "\n    return 2\n\ndef bare():\n    return 3\n"
    docs = [("a.py", source), ("py2.py", 'print "x"\n'), ("empty.py", "")]

    prompts, counts = function_prompts(docs, tok, max_tokens=n_tokens(tok, short))

    assert prompts == [
        {
            "file": "a.py",
            "function": "short",
            "line": 1,
            "prompt": short,
            "tokens": n_tokens(tok, short),
        },
    ]
    assert counts == {
        "files": 3,
        "unparsable_files": 1,
        "functions": 3,
        "with_docstring": 2,
        "prompts": 1,
    }
    everything, _ = function_prompts(docs, tok, max_tokens=10_000)
    assert [p["prompt"] for p in everything] == [short, long]
    assert [p["tokens"] for p in everything] == [n_tokens(tok, short), n_tokens(tok, long)]


# ------------------------------------------------------------------ sampling

ITEMS = [{"i": i} for i in range(100)]


@pytest.mark.parametrize(
    "n, fraction, size",
    [
        pytest.param(10, 0.3, 3, id="rounded"),
        pytest.param(3, 0.1, 1, id="at-least-one"),
        pytest.param(10, 0.0, 0, id="zero"),
        pytest.param(0, 0.5, 0, id="none-to-sample"),
        pytest.param(7, 1.0, 7, id="all"),
    ],
)
def test_sample_size(n, fraction, size):
    assert len(sample_prompts(ITEMS[:n], fraction, seed=0)) == size


def test_sample_is_seeded_and_keeps_order():
    a = sample_prompts(ITEMS, 0.5, seed="org/0")
    assert a == sample_prompts(ITEMS, 0.5, seed="org/0")
    assert a != sample_prompts(ITEMS, 0.5, seed="org/1")
    assert [x["i"] for x in a] == sorted(x["i"] for x in a)
    assert sample_prompts(ITEMS, 1.0, seed=3) == ITEMS


def test_sample_rejects_a_fraction_out_of_range():
    with pytest.raises(ValueError, match="fraction"):
        sample_prompts(ITEMS, 1.5, seed=0)


# ------------------------------------------------------------------ the stop rule


@pytest.mark.parametrize(
    "completion, end",
    [
        # a completion starts right after the docstring's closing quotes
        pytest.param("\n    return x\n\ndef g():\n", 15, id="dedented-def"),
        pytest.param("\n    a = 1\n\n   \n\t\n    return a\n", None, id="blank-lines-inside"),
        pytest.param("\ndef g():\n    pass\n", 1, id="empty-body"),
        pytest.param("  # same line\n    return 1\n", None, id="rest-of-the-docstring-line"),
        pytest.param("\n    return 1\n", None, id="next-line-unknown"),
        pytest.param("", None, id="empty"),
        pytest.param("\r\n    x = 1\r\n\r\n@deco\r\n", 15, id="crlf"),
        pytest.param("\n    x = 1\rclass A:", 11, id="lone-cr"),
        pytest.param("\n    x\n# note\n", 7, id="comment-at-column-0"),
        pytest.param("\n    x\nde", 7, id="partial-line"),
    ],
)
def test_body_end(completion, end):
    assert body_end(completion) == end
    assert cut_body(completion) == (completion if end is None else completion[:end])


def test_cut_body_drops_the_ending_line():
    assert cut_body("\n    y = 2\n    return y\n\nprint(f(1))\n") == "\n    y = 2\n    return y\n\n"


# ------------------------------------------------------------------ clone prompts

CODE = "".join(f"    value_{i} = compute(value_{i - 1}, {i})\n" for i in range(1, 41))
LINES = split_lines(CODE)


def piece_text(r: dict) -> str:
    return "".join(LINES[r["start"] - 1 : r["end"]])


def test_a_clone_prompt_is_the_first_half_of_the_block(tok):
    [r] = clone_prompts([{"file": "a.py", "start": 2, "end": 8}], {"a.py": CODE}, tok, 10_000)
    # 7 // 2 = 3 lines, as written (indented); the last line break starts the target
    assert r["prompt"] == "".join(LINES[1:4]).removesuffix("\n")
    assert r["target"] == "\n" + "".join(LINES[4:8])
    assert (r["file"], r["start"], r["end"], r["prompt_lines"], r["block"]) == ("a.py", 2, 8, 3, 0)
    assert r["tokens"] == n_tokens(tok, r["prompt"])


def test_a_one_line_block_at_the_end_of_a_file(tok):
    [r] = clone_prompts([{"file": "a.py", "start": 2, "end": 2}], {"a.py": "x = 1\ny = 2"}, tok, 99)
    assert (r["prompt"], r["target"], r["prompt_lines"]) == ("y = 2", "", 1)


def test_a_long_block_is_split_until_every_prompt_fits(tok):
    most = max(n_tokens(tok, "".join(LINES[i : i + 5])) for i in range(len(LINES) - 4))
    out = clone_prompts([{"file": "a.py", "start": 1, "end": 40}], {"a.py": CODE}, tok, most)
    # 40 lines: prompts of 20, then 10 lines are too long; pieces of 10 prompt with 5
    assert [(r["start"], r["end"], r["prompt_lines"]) for r in out] == [
        (1, 10, 5),
        (11, 20, 5),
        (21, 30, 5),
        (31, 40, 5),
    ]
    for r in out:
        assert r["tokens"] == n_tokens(tok, r["prompt"]) <= most
        assert r["prompt"] + r["target"] == piece_text(r)
        assert r["block"] == 0


def test_a_short_piece_keeps_the_last_prompt_lines_that_fit(tok):
    blocks = [{"file": "a.py", "start": 1, "end": 5}]  # fewer than min_lines: not split
    fits = n_tokens(tok, LINES[1])
    [r] = clone_prompts(blocks, {"a.py": CODE}, tok, fits, min_lines=6)
    assert (r["start"], r["end"], r["prompt_lines"], r["prompt"]) == (2, 5, 1, LINES[1][:-1])
    assert r["prompt"] + r["target"] == piece_text(r)
    [r] = clone_prompts(blocks, {"a.py": CODE}, tok, 1, min_lines=6)  # not even one line fits
    assert (r["start"], r["prompt"]) == (2, LINES[1][:-1])
    assert r["tokens"] > 1


def test_a_one_line_block_that_never_fits_does_not_loop(tok):
    [r] = clone_prompts([{"file": "a.py", "start": 3, "end": 3}], {"a.py": CODE}, tok, 1, 1)
    assert (r["start"], r["end"], r["prompt"], r["target"]) == (3, 3, LINES[2][:-1], "\n")


def test_clone_prompts_keep_the_blocks_order(tok):
    texts = {"a.py": CODE, "b.py": "p = 1\nq = 2\nr = 3\n"}
    blocks = [{"file": "b.py", "start": 1, "end": 3}, {"file": "a.py", "start": 1, "end": 4}]
    out = clone_prompts(blocks, texts, tok, 10_000)
    assert [(r["block"], r["file"], r["prompt"]) for r in out] == [
        (0, "b.py", "p = 1"),
        (1, "a.py", "".join(LINES[:2])[:-1]),
    ]


def test_a_block_outside_its_file_is_an_error(tok):
    with pytest.raises(ValueError, match="a.py:39-41"):
        clone_prompts([{"file": "a.py", "start": 39, "end": 41}], {"a.py": CODE}, tok, 99)
