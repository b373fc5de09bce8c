"""Prompts for memorization: functions' signatures and docstrings, clone prefixes (paper §2.5).

RQ2 (§4.4) asks how much of an organization's training code a model reproduces when prompted
the way a developer would prompt it: with a function's signature and docstring. The paper's
Listing 1 shows such a prompt, a method cut out of its class::

    def async_close(self, **kwargs: Any) -> bool:
        \"\"\"...\"\"\"

so a prompt here runs from the ``def`` (or ``async def``) keyword, never its decorators,
through the end of the docstring, exactly as written (a multi-line signature too), dedented
by the def line's indentation so that a method starts at column 0 as in the listing. It ends
at the docstring's closing quotes, not after a line break: a byte-level BPE merges a line
break with the indentation after it (``"\\n   "`` is one token), so a prompt ending in
``"\\n"`` would stop where training never stopped and the model would start a new
top-level statement, not the body (measured: most completions empty). Only
functions whose first statement is a plain string (what ``ast.get_docstring`` accepts; not an
f-string) give a prompt: without a docstring the prompt would be a bare signature, not the
paper's. Prompts longer than ``max_tokens`` tokens (512 in the paper's setting) are dropped,
not cut, so a prompt and its completion fit the model's context together.

RQ3 (§4.5) prompts a model with the first half of a block of code that two organizations
share (a clone block) and compares the completion with the second half. A block whose first
half is too long is split in two, each half a block of its own, until the prompt fits; a
piece too short to split keeps its prompt's last lines. Clone prompts are not dedented: a
clone block is code as written, at its own indentation; for the same reason as above the
prompt's last line break starts the target.

The stop rule: a completion is the function's body until the first line that starts at the
def's column or left of it (:func:`body_end`); blank lines never end it. Lines of the prompt
are never counted as generated; the memorization detector handles that, not this module.

Positions come from ``ast``: lines counted as its tokenizer counts them (``\\n``,
``\\r\\n`` and ``\\r``; ``str.splitlines`` would also split on form feeds and U+2028) and
columns in UTF-8 bytes, so a line is sliced as bytes (``\"\"\"Größe\"\"\"`` ends 2 bytes
later than its characters say).
"""

from __future__ import annotations

import ast
import random
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

LINE_BREAK = re.compile(r"\r\n|\r|\n")  # as ast and the clone detector break lines
# A line break followed by a character that neither indents nor breaks: a line at column 0.
_BODY_END = re.compile(r"(?:\r\n|\r|\n)(?=[^ \t\f\r\n])")
_BATCH = 1024  # texts per tokenizer call


@dataclass(frozen=True)
class Function:
    """One function of a source file; ``prompt`` is None when it has no docstring."""

    name: str  # qualified by the enclosing classes and functions: "Cls.method", "outer.inner"
    line: int  # 1-based line of the def keyword
    prompt: str | None  # signature + docstring, dedented


def split_lines(text: str) -> list[str]:
    """``text``'s physical lines with their endings, numbered as ``ast`` numbers them."""
    lines, start = [], 0
    for m in LINE_BREAK.finditer(text):
        lines.append(text[start : m.end()])
        start = m.end()
    if start < len(text):
        lines.append(text[start:])
    return lines


def functions(source: str) -> list[Function] | None:
    """Every function (def and async def, at any depth) of ``source``, in source order.

    None when ``ast`` rejects the source (a syntax error, Python 2, a null byte, newer
    syntax than this interpreter's, nesting too deep), so the caller can count it.
    """
    tree = _parse(source)
    if tree is None:
        return None
    lines = split_lines(source)
    found = sorted(_defs(tree), key=lambda d: (d[0].lineno, d[0].col_offset))
    return [Function(name, node.lineno, _prompt(node, lines)) for node, name in found]


def _parse(source: str) -> ast.Module | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escapes in old code are not our concern
            return ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def _defs(tree: ast.AST) -> Iterator[tuple[ast.FunctionDef | ast.AsyncFunctionDef, str]]:
    """Every function node and its qualified name.

    Iterative like ``ast.walk`` (a deep expression must not overflow Python's stack), but
    carrying the names of the enclosing classes and functions.
    """
    stack: list[tuple[ast.AST, str]] = [(tree, "")]
    while stack:
        node, prefix = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = prefix + child.name
                if not isinstance(child, ast.ClassDef):
                    yield child, name
                stack.append((child, name + "."))
            else:
                stack.append((child, prefix))


def _prompt(node: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> str | None:
    """The def keyword through the docstring's end, dedented by the def line's indentation."""
    if ast.get_docstring(node, clean=False) is None:
        return None
    doc = node.body[0]
    raw = [line.encode() for line in lines[node.lineno - 1 : doc.end_lineno]]
    indent = raw[0][: node.col_offset]
    raw[-1] = raw[-1][: doc.end_col_offset]  # before the first line's cut: they may be one
    raw[0] = raw[0][node.col_offset :]
    if indent:  # a continuation written left of the def (docstring text at column 0) stays
        raw[1:] = [r[len(indent) :] if r.startswith(indent) else r for r in raw[1:]]
    return b"".join(raw).decode()


def _token_counts(tokenizer, texts: list[str]) -> list[int]:
    """Tokens of each text, as ``len(tokenizer(text)["input_ids"])``, in batches."""
    counts: list[int] = []
    for b in range(0, len(texts), _BATCH):
        ids = tokenizer(texts[b : b + _BATCH], verbose=False)["input_ids"]
        counts += [len(i) for i in ids]
    return counts


def function_prompts(
    docs: Iterable[tuple[str, str]], tokenizer, max_tokens: int
) -> tuple[list[dict], dict]:
    """RQ2's prompts: every function with a docstring whose prompt has at most ``max_tokens``.

    ``docs``: ``(path, source)``. Each prompt is ``{"file", "function", "line", "prompt",
    "tokens"}``, in the order of ``docs`` and then of the source. ``counts`` has ``files``,
    ``unparsable_files``, ``functions`` (all), ``with_docstring`` and ``prompts`` (kept).
    """
    counts = dict.fromkeys(("files", "unparsable_files", "functions", "with_docstring"), 0)
    found = []
    for path, source in docs:
        counts["files"] += 1
        funcs = functions(source)
        if funcs is None:
            counts["unparsable_files"] += 1
            continue
        counts["functions"] += len(funcs)
        found += [
            {"file": path, "function": f.name, "line": f.line, "prompt": f.prompt}
            for f in funcs
            if f.prompt is not None
        ]
    counts["with_docstring"] = len(found)
    for p, n in zip(found, _token_counts(tokenizer, [p["prompt"] for p in found]), strict=True):
        p["tokens"] = n
    prompts = [p for p in found if p["tokens"] <= max_tokens]
    counts["prompts"] = len(prompts)
    return prompts, counts


def sample_prompts(prompts: list[dict], fraction: float, seed: int | str) -> list[dict]:
    """A seeded sample of ``round(fraction * len(prompts))`` prompts, in their original order.

    At least one when there is any and ``fraction > 0``: a small organization still gets
    prompted (the paper samples 10 % per organization).
    """
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be between 0 and 1, got {fraction}")
    k = round(fraction * len(prompts))
    if fraction > 0 and prompts:
        k = max(k, 1)
    chosen = random.Random(seed).sample(range(len(prompts)), k)
    return [prompts[i] for i in sorted(chosen)]


def body_end(completion: str) -> int | None:
    """Where the function body ends in ``completion``: the start of its first line at column 0.

    A completion follows a prompt that ends with the docstring's closing quotes, so its first
    line break starts the body; a line starting at column 0 (the def's) with anything but
    indentation (a ``def``, a decorator, a comment, code) is outside the body. Blank and
    whitespace-only lines never end it; None while the body has not ended.
    """
    m = _BODY_END.search(completion)
    return None if m is None else m.end()


def cut_body(completion: str) -> str:
    """``completion`` up to the end of the function body (the ending line dropped), or all."""
    end = body_end(completion)
    return completion if end is None else completion[:end]


def clone_prompts(
    blocks: Iterable[dict],
    texts: Mapping[str, str],
    tokenizer,
    max_tokens: int,
    min_lines: int = 6,
) -> list[dict]:
    """RQ3's prompts: the first half of each clone block's lines, the rest as the target.

    ``blocks``: ``{"file", "start", "end"}``, 1-based inclusive line numbers in
    ``texts[file]``. A piece of ``n`` lines prompts with its first ``max(n // 2, 1)``; when
    that has more than ``max_tokens`` tokens, a piece of at least ``min_lines`` lines is
    split into two halves, each a piece of its own, and a shorter one keeps only the prompt's
    last lines that fit (at least one). Each result is ``{"file", "start", "end",
    "prompt_lines", "prompt", "target", "tokens", "block"}``: ``block`` is the index in
    ``blocks``, ``start`` the first line kept, so ``prompt + target`` is lines ``start`` to
    ``end`` as written.
    Sorted by block, then line.
    """
    file_lines: dict[str, list[str]] = {}
    pending = []
    for i, b in enumerate(blocks):
        if b["file"] not in file_lines:
            file_lines[b["file"]] = split_lines(texts[b["file"]])
        pending.append((i, b["file"], b["start"], _block_lines(file_lines[b["file"]], b)))
    out = []
    while pending:  # one tokenizer batch per level of splitting
        prompts = [_halves(lines)[0] for *_, lines in pending]
        split = []
        for piece, n in zip(pending, _token_counts(tokenizer, prompts), strict=True):
            i, file, start, lines = piece
            if n <= max_tokens:
                out.append(_record(piece, max(len(lines) // 2, 1), n))
            elif len(lines) >= max(min_lines, 2):
                h = len(lines) // 2
                split += [(i, file, start, lines[:h]), (i, file, start + h, lines[h:])]
            else:
                out.append(_trimmed(piece, n, tokenizer, max_tokens))
        pending = split
    return sorted(out, key=lambda r: (r["block"], r["start"]))


def _block_lines(lines: list[str], block: dict) -> list[str]:
    start, end = block["start"], block["end"]
    if not 1 <= start <= end <= len(lines):
        raise ValueError(
            f"clone block {block['file']}:{start}-{end} is not within its {len(lines)} lines"
        )
    return lines[start - 1 : end]


def _halves(lines: list[str], k: int | None = None) -> tuple[str, str]:
    """(prompt, target): the first ``k`` lines (default: half, at least one), then the rest;
    the prompt's last line break begins the target (see the module's docstring)."""
    k = max(len(lines) // 2, 1) if k is None else k
    prompt = "".join(lines[:k])
    body = prompt.rstrip("\r\n")
    return body, prompt[len(body) :] + "".join(lines[k:])


def _record(piece: tuple, k: int, tokens: int) -> dict:
    """The result for a piece whose prompt is its first ``k`` lines."""
    i, file, start, lines = piece
    prompt, target = _halves(lines, k)
    return {
        "file": file,
        "start": start,
        "end": start + len(lines) - 1,
        "prompt_lines": k,
        "prompt": prompt,
        "target": target,
        "tokens": tokens,
        "block": i,
    }


def _trimmed(piece: tuple, tokens: int, tokenizer, max_tokens: int) -> dict:
    """A piece's result with leading prompt lines dropped until the prompt fits (>= 1 line).

    ``tokens``: the whole prompt's. A suffix's tokens are not the sum of its lines' (BPE
    merges across line breaks), so each candidate is tokenized.
    """
    i, file, start, lines = piece
    k = max(len(lines) // 2, 1)
    suffixes = [_halves(lines[j:], k - j)[0] for j in range(1, k)]
    counts = [tokens] + _token_counts(tokenizer, suffixes)  # counts[j]: j lines dropped
    drop = next((j for j, n in enumerate(counts) if n <= max_tokens), k - 1)
    return _record((i, file, start + drop, lines[drop:]), k - drop, counts[drop])
