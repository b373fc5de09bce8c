"""Type-1 clone detection, faithful to Simian 4.2.1's matching, twice as fast (paper §2.5, §4.5).

The paper measures memorization with Simian: blocks of at least ``min_lines`` (6) lines that
are identical after normalisation. This module reproduces Simian's definition of a matching
line and of a maximal block. The tokenizer is a numba port of the Java one Simian uses, run
over all files at once and in parallel; it hashes each rebuilt line instead of building it.
Maximal blocks are found by refining sets of equal windows, not by Simian's tiling of hash
maps: the same blocks, in linear time for most inputs.

How Simian 4.2.1 matches Python by default (read from its source, ``PythonParser`` on Java's
``StreamTokenizer``, with ``ignoreIdentifierCase`` and ``ignoreStringCase`` on):

- A line is rebuilt from its tokens, so whitespace is irrelevant, except that it separates two
  words. ``;`` is treated as whitespace.
- ``#`` starts a comment to the end of the line. A line left empty (blank or comment-only) is
  not a counted line: it is skipped when windows of lines are formed, and reports still give
  original line numbers.
- Identifiers and the contents of strings compare case-insensitively.
- Numbers compare by value (``1`` equals ``1.0``, ``007`` equals ``7``).
- A string is a whole token only within one line: a quote runs to the matching quote or to
  the end of the line, so a triple-quoted docstring is ``""`` + ``"text...`` and its later
  lines are tokenised like code.
- Every window of ``min_lines`` counted lines is hashed; windows that occur twice or more are
  duplicates, and runs of them are grown into maximal blocks: a block is reported at the
  longest length at which it still occurs elsewhere, and not again inside a longer block.
- Quirk: Simian also treats ``//`` as a comment start, which cuts lines with Python's floor
  division short. ``slash_comments=True`` reproduces that; it is off by default.

Modes: ``simian`` (the defaults above) and ``strict`` (case-sensitive, tokens compared as
written: whitespace and comments still do not matter, which is what Type-1 means).

Known differences from Simian, all rare in real code: bytes of non-ASCII characters are word
characters (Java: characters from U+00A0 up; U+0080 to U+009F are punctuation there); lines
are compared through 64-bit hashes (Simian: Java's 32-bit string hashes, combined), so a false
match needs a 64-bit collision; a number's token is compared by value without Java's
``Double.toString`` (the same equality). Measured against Simian 4.2.1 on 49 MB of real
Python: line-level F1 0.9995 (``bench/clones.py``).

Memorization ratio (paper Eq. 1): the counted lines of generated code that lie inside a block
also found in the training data, divided by all counted lines of generated code; lines covered
by several blocks count once.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numba
import numpy as np

# numba's OpenMP layer sets OpenMP's thread count for the whole process on its first parallel
# call (to every CPU), and torch reads that count: a model trained after the clone detector ran
# in the same process would train at another thread count, with other bits, than in a process
# of its own. numba's own work queue leaves OpenMP alone (measured: the same speed here).
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

MODES = ("simian", "strict")

# Character classes of Java's StreamTokenizer as Simian's PythonParser sets it up.
_WS, _DIGIT, _ALPHA, _QUOTE, _COMMENT = 1, 2, 4, 8, 16


def _char_classes() -> np.ndarray:
    ct = np.zeros(256, np.uint8)
    ct[: ord(" ") + 1] = _WS  # 0-32 are whitespace
    ct[ord(";")] = _WS  # PythonParser: whitespaceChars(';', ';')
    for lo, hi in (("a", "z"), ("A", "Z"), ("_", "_")):
        ct[ord(lo) : ord(hi) + 1] = _ALPHA
    ct[128:] = _ALPHA  # bytes of non-ASCII characters: word characters, as chars >= 160 are
    ct[ord("0") : ord("9") + 1] = _ALPHA | _DIGIT
    ct[ord("-")] = _DIGIT  # parseNumbers(): '-' may start a number
    ct[ord('"')] = ct[ord("'")] = _QUOTE
    ct[ord("#")] = _COMMENT
    return ct  # '.' and '/' stay ordinary (PythonParser.ordinaryChar)


_CT = _char_classes()
_ESCAPES = np.arange(256, dtype=np.int64)
for _letter, _code in zip("abfnrtv", (7, 8, 12, 10, 13, 9, 11), strict=True):
    _ESCAPES[ord(_letter)] = _code
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


@dataclass(frozen=True)
class CloneOptions:
    """What counts as a clone: ``min_lines`` counted lines, compared in ``mode``."""

    min_lines: int = 6
    mode: str = "simian"
    slash_comments: bool = False  # Simian's `//` comment quirk

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.min_lines < 1:
            raise ValueError("min_lines must be at least 1")


@numba.njit(cache=True, inline="always")
def _mix(h: np.uint64, byte: int) -> np.uint64:
    return (h ^ np.uint64(byte)) * _FNV_PRIME  # FNV-1a, one byte


@numba.njit(cache=True)
def _finish(h: np.uint64) -> np.uint64:
    """splitmix64's finalizer, so line hashes are well spread for the window polynomial."""
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


@numba.njit(cache=True, nogil=True)
def _scan_into(buf, hashes, counted, ct, fold_case, by_value, slash_comments):  # noqa: C901
    """Hash every physical line of a UTF-8 buffer as Simian rebuilds it from its tokens.

    Fills ``hashes`` and ``counted`` (one entry per physical line; ``counted`` stays False
    for a line left empty: blank or comment-only). Follows Java's
    ``StreamTokenizer.nextToken`` and Simian's ``DefaultTokenVisitor``: a space is added only
    before a word or a number that follows a word; strings keep their quotes; escapes are
    processed.
    """
    n = len(buf)
    as_float = np.zeros(1, np.float64)  # a number's value is hashed through its bits
    as_bits = as_float.view(np.uint64)
    line = 0  # index of the physical line being read
    start = 0  # index of the line the current logical line started on
    h = _FNV_OFFSET
    empty = True
    need_space = False
    i = 0
    while i < n:
        c = buf[i]
        if c == 10 or c == 13:  # end of line: \n, \r\n or \r
            if not empty:
                hashes[start] = _finish(h)
                counted[start] = True
            i += 2 if (c == 13 and i + 1 < n and buf[i + 1] == 10) else 1
            line += 1
            start = line
            h = _FNV_OFFSET
            empty = True
            need_space = False
            continue
        kind = ct[c]
        if kind & 1:  # whitespace
            i += 1
            continue
        if kind & 2:  # a number, or a lone '-'
            j = i
            neg = False
            if c == 45:  # '-'
                nxt = buf[i + 1] if i + 1 < n else -1
                if nxt != 46 and (nxt < 48 or nxt > 57):
                    h = _mix(h, 45)
                    need_space = False
                    empty = False
                    i += 1
                    continue
                neg = True
                j += 1
            value = 0.0
            decexp = 0
            seendot = 0
            while j < n:
                d = buf[j]
                if d == 46 and seendot == 0:
                    seendot = 1
                elif 48 <= d <= 57:
                    value = value * 10 + (d - 48)
                    decexp += seendot
                else:
                    break
                j += 1
            if decexp != 0:
                denom = 10.0
                for _ in range(decexp - 1):
                    denom *= 10.0
                value = value / denom
            if neg:
                value = -value
            if need_space:
                h = _mix(h, 32)
            h = _mix(h, 0)  # tag: a number
            if by_value:
                as_float[0] = value
                bits = as_bits[0]
                for k in range(8):
                    h = _mix(h, (bits >> np.uint64(8 * k)) & np.uint64(255))
            else:
                for k in range(i, j):
                    h = _mix(h, buf[k])
            need_space = False
            empty = False
            i = j
            continue
        if kind & 4:  # a word
            if need_space:
                h = _mix(h, 32)
            j = i
            while j < n and (ct[buf[j]] & 6):
                d = buf[j]
                if fold_case and 65 <= d <= 90:
                    d += 32
                h = _mix(h, d)
                j += 1
            need_space = True
            empty = False
            i = j
            continue
        if kind & 8:  # a string: to the same quote, or to the end of the line
            h = _mix(h, c)
            j = i + 1
            while j < n:
                d = buf[j]
                if d == c or d == 10 or d == 13:
                    break
                if d == 92 and j + 1 < n:  # backslash escape
                    j += 1
                    e = buf[j]
                    if 48 <= e <= 55:  # octal: up to three digits, \377 at most
                        v = e - 48
                        if j + 1 < n and 48 <= buf[j + 1] <= 55:
                            j += 1
                            v = v * 8 + buf[j] - 48
                            if j + 1 < n and 48 <= buf[j + 1] <= 55 and e <= 51:
                                j += 1
                                v = v * 8 + buf[j] - 48
                        d = v
                    else:
                        d = _ESCAPES[e]  # \a \b \f \n \r \t \v; any other char stands for itself
                        if e == 10:  # an escaped newline continues the string
                            line += 1
                if fold_case and 65 <= d <= 90:
                    d += 32
                h = _mix(h, d)
                j += 1
            if j < n and buf[j] == c:
                j += 1
            h = _mix(h, c)
            need_space = False
            empty = False
            i = j
            continue
        if c == 47 and slash_comments and i + 1 < n and buf[i + 1] == 47:
            kind = 16  # Simian's '//' comment
        if kind & 16:  # a comment runs to the end of the line
            while i < n and buf[i] != 10 and buf[i] != 13:
                i += 1
            continue
        h = _mix(h, c)  # punctuation: a token of its own
        need_space = False
        empty = False
        i += 1
    if not empty:
        hashes[start] = _finish(h)
        counted[start] = True


@numba.njit(cache=True, parallel=True)
def _scan_all(buf, offsets, line_offsets, ct, fold_case, by_value, slash_comments):
    """:func:`_scan_into` over many files laid end to end in ``buf``, files in parallel.

    File ``f`` has at most ``line_offsets[f + 1] - line_offsets[f]`` physical lines. Returns
    per-line ``hashes`` and ``counted`` (slots past a file's last line stay uncounted).
    """
    n_files = len(offsets) - 1
    hashes = np.zeros(line_offsets[-1], np.uint64)
    counted = np.zeros(line_offsets[-1], np.bool_)
    for f in numba.prange(n_files):
        lo, hi = line_offsets[f], line_offsets[f + 1]
        _scan_into(
            buf[offsets[f] : offsets[f + 1]],
            hashes[lo:hi],
            counted[lo:hi],
            ct,
            fold_case,
            by_value,
            slash_comments,
        )
    return hashes, counted


def _prepare(text: str | bytes, opts: CloneOptions) -> bytes:
    """UTF-8 bytes as the scanner wants them: no BOM, and non-ASCII text lowercased up front
    in ``simian`` mode (the scanner folds ASCII letters; Java lowercases every character)."""
    raw = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # Simian reads through a BOM-aware reader
    if opts.mode == "simian" and not raw.isascii():
        raw = raw.decode("utf-8", "surrogateescape").lower().encode("utf-8", "surrogateescape")
    return raw


def _scan_many(raws: Sequence[bytes], opts: CloneOptions):
    """Hashes and counted flags of every physical line, and each file's first line slot."""
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in raws])]).astype(np.int64)
    # an upper bound on each file's lines, from C-speed counts (\r\n is counted twice)
    bounds = [r.count(b"\n") + r.count(b"\r") + 1 for r in raws]
    line_offsets = np.concatenate([[0], np.cumsum(bounds)]).astype(np.int64)
    buf = np.frombuffer(b"".join(raws), np.uint8)
    simian = opts.mode == "simian"
    hashes, counted = _scan_all(
        buf, offsets, line_offsets, _CT, simian, simian, opts.slash_comments
    )
    return hashes, counted, line_offsets


def _line_hashes(text: str | bytes, opts: CloneOptions) -> tuple[np.ndarray, np.ndarray]:
    """Original line numbers (1-based) and hashes of the counted lines of one text."""
    hashes, counted, _ = _scan_many([_prepare(text, opts)], opts)
    rows = np.flatnonzero(counted)
    return (rows + 1).astype(np.int32), hashes[rows]


def line_hashes(text: str | bytes, opts: CloneOptions = CloneOptions()) -> list[int | None]:
    """The hash of each physical line as the detector compares it (None: not counted).

    Two lines match exactly when their hashes are equal.
    """
    raw = _prepare(text, opts)
    hashes, counted, _ = _scan_many([raw], opts)
    n_lines = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").count(b"\n") + 1
    return [int(h) if c else None for h, c in zip(hashes[:n_lines], counted, strict=False)]


# --------------------------------------------------------------------------- corpus


@dataclass
class Corpus:
    """The counted lines of many files, concatenated: what every search runs on.

    ``hashes[k]`` is the hash of counted line ``k``; it sits in file ``file_of(k)`` at
    original line ``line_no[k]``. ``group[k]`` tells which corpus a line came from when
    several are searched together.
    """

    names: list[str]
    starts: np.ndarray  # (files + 1,) offsets of each file's first counted line
    line_no: np.ndarray  # (lines,) int32
    hashes: np.ndarray  # (lines,) uint64
    group: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))

    @property
    def n_lines(self) -> int:
        return len(self.hashes)

    def file_end(self) -> np.ndarray:
        """For every counted line, the index one past its file's last counted line."""
        return np.repeat(self.starts[1:], np.diff(self.starts))

    def file_index(self, k: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.starts, k, side="right") - 1


def build_corpus(
    docs: Iterable[tuple[str, str | bytes | Path]], opts: CloneOptions = CloneOptions()
) -> Corpus:
    """Hash the counted lines of ``(name, text)`` pairs; text is ``str``, UTF-8 ``bytes``, or
    a ``Path`` to read. All files are scanned in one parallel pass."""
    docs = list(docs)
    raws = [_prepare(_read(text), opts) for _, text in docs]
    hashes, counted, line_offsets = _scan_many(raws, opts)
    rows = np.flatnonzero(counted)
    starts = np.searchsorted(rows, line_offsets).astype(np.int64)
    file_of = np.repeat(np.arange(len(docs)), np.diff(starts))
    return Corpus(
        [name for name, _ in docs],
        starts,
        (rows - line_offsets[file_of] + 1).astype(np.int32),
        hashes[rows],
        np.zeros(len(rows), np.int8),
    )


def _read(text: str | bytes | Path) -> str | bytes:
    if not isinstance(text, Path):
        return text
    try:
        fd = os.open(text, os.O_RDONLY)  # cheaper than open() for thousands of small files
    except OSError:  # a dangling link or an unreadable file: nothing to compare
        return b""
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_tree(path: str | Path) -> list[tuple[str, Path]]:
    """``(name, path)`` of a ``.py`` file, or of every ``.py`` file under a directory, for
    :func:`build_corpus` to read. Bytes go to the scanner as they are (it reads UTF-8; other
    bytes count as word characters), so an audit never skips a file for its encoding."""
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such file or directory")
    if root.is_file():
        return [(str(root), root)]
    files = []
    for dirpath, dirnames, names in os.walk(root):  # os.walk: far cheaper than Path.rglob
        dirnames.sort()
        files += [os.path.join(dirpath, n) for n in sorted(names) if n.endswith(".py")]
    return [(f, Path(f)) for f in files]


def combine(corpora: Sequence[Corpus]) -> Corpus:
    """Several corpora as one, each line remembering which it came from."""
    names, starts, offset = [], [0], 0
    for c in corpora:
        names += c.names
        starts += [s + offset for s in c.starts[1:]]
        offset += c.n_lines
    return Corpus(
        names,
        np.array(starts, np.int64),
        np.concatenate([c.line_no for c in corpora]),
        np.concatenate([c.hashes for c in corpora]),
        np.concatenate([np.full(c.n_lines, i, np.int8) for i, c in enumerate(corpora)]),
    )


# --------------------------------------------------------------------------- repeated windows

_BASE = np.uint64(0x9E3779B97F4A7C15)


@numba.njit(cache=True)
def _repeated(keys, group, need):
    """Mask of keys that occur twice or more (``need`` <= 1), or in ``need`` distinct groups.

    An open-addressing hash table (keys are never 0, which marks an empty slot): linear time,
    where sorting every key would dominate the run.
    """
    n = len(keys)
    size = 1
    while size < 2 * n + 1:
        size *= 2
    mask = np.uint64(size - 1)
    table = np.zeros(size, np.uint64)
    seen = np.zeros(size, np.int32)  # occurrence count, or bit set of groups
    slot_of = np.empty(n, np.int32)
    for i in range(n):
        k = keys[i]
        s = np.int64((k ^ (k >> np.uint64(29))) & mask)
        while table[s] != 0 and table[s] != k:
            s = (s + 1) & (size - 1)
        table[s] = k
        seen[s] = seen[s] + 1 if need <= 1 else seen[s] | (np.int32(1) << group[i])
        slot_of[i] = s
    out = np.empty(n, np.bool_)
    for i in range(n):
        v = seen[slot_of[i]]
        if need <= 1:
            out[i] = v >= 2
        else:
            bits = 0
            while v:
                bits += v & 1
                v >>= 1
            out[i] = bits >= need
    return out


@numba.njit(cache=True)
def _accepts(labels, lo, hi, need):
    """A set of equal windows counts when it has two members, or ``need`` distinct labels."""
    if hi - lo < 2:
        return False
    if need <= 1:
        return True
    seen = np.int64(0)
    for k in range(lo, hi):
        seen |= np.int64(1) << labels[k]
    bits = 0
    while seen:
        bits += seen & 1
        seen >>= 1
    return bits >= need


@numba.njit(cache=True)
def _record(members, labels, lo, hi, length, longest, partner, need):
    """Members ``lo:hi`` repeat at ``length``; each gets a partner (of another label if asked)."""
    other = lo + 1  # the first member that can partner members[lo]
    if need > 1:
        while labels[other] == labels[lo]:
            other += 1
    for k in range(lo, hi):
        longest[members[k]] = length
        mate = lo if (k != lo and (need <= 1 or labels[k] != labels[lo])) else other
        partner[members[k]] = members[mate]


@numba.njit(cache=True)
def _grow_set(lo0, hi0, min_lines, work, lab, nxt, hashes, file_end, need, longest, partner):
    """Grow one set of equal windows (``work[lo0:hi0]``), splitting it depth-first."""
    stack_lo = np.empty(1 if hi0 - lo0 == 2 else hi0 - lo0 + 1, np.int64)  # pairs: no split
    stack_hi = np.empty_like(stack_lo)
    stack_len = np.empty_like(stack_lo)
    stack_lo[0], stack_hi[0], stack_len[0] = lo0, hi0, min_lines
    top = 1
    while top > 0:
        top -= 1
        lo, hi, length = stack_lo[top], stack_hi[top], stack_len[top]
        _record(work, lab, lo, hi, length, longest, partner, need)
        if hi - lo == 2:  # a pair (with two labels, if asked): grow it line by line
            a, b = work[lo], work[lo + 1]
            grown = length
            while (
                a + grown < file_end[a]
                and b + grown < file_end[b]
                and hashes[a + grown] == hashes[b + grown]
            ):
                grown += 1
            longest[a] = longest[b] = grown
            continue
        end = lo  # members that can grow, packed at work[lo:end]
        for k in range(lo, hi):
            m = work[k]
            if m + length < file_end[m]:
                work[end] = m
                lab[end] = lab[k]
                nxt[end] = hashes[m + length]
                end += 1
        if end - lo < 2:
            continue
        sub = np.argsort(nxt[lo:end]) + lo
        work[lo:end] = work[sub]
        lab[lo:end] = lab[sub]
        nxt[lo:end] = nxt[sub]
        run = lo
        for k in range(lo + 1, end + 1):
            if k == end or nxt[k] != nxt[run]:
                if _accepts(lab, run, k, need):
                    stack_lo[top], stack_hi[top], stack_len[top] = run, k, length + 1
                    top += 1
                run = k


@numba.njit(cache=True, parallel=True)
def _grow(hashes, file_end, group, min_lines, need):
    """Longest repeated window at every line, by refining sets of equal windows.

    Start from the sets of equal ``min_lines``-line windows. A set of equal windows of L
    lines is split by its members' next line into the sets of L + 1 lines (members whose file
    ends drop out, and so do sets left with one member or too few labels); a pair is grown
    line by line until its windows differ. A member's ``longest`` is the last length at which
    it still belonged to a set, and ``partner`` another member of that set.
    """
    n = len(hashes)
    longest = np.zeros(n, np.int64)
    partner = np.full(n, -1, np.int64)
    valid = np.flatnonzero(np.arange(n) + min_lines <= file_end)
    keys = np.zeros(len(valid), np.uint64)
    for t in numba.prange(len(valid)):
        key = np.uint64(0)
        for k in range(min_lines):
            key = key * _BASE + hashes[valid[t] + k]
        keys[t] = key | np.uint64(1)  # never 0, the empty slot of _repeated
    repeated = _repeated(keys, group[valid], need)  # most windows are unique: drop them first
    order = np.argsort(keys[repeated])
    work = valid[repeated][order]
    keys = keys[repeated][order]
    nxt = np.empty(len(work), np.uint64)
    lab = group[work]
    set_lo = np.empty(len(work) + 1, np.int64)
    set_hi = np.empty(len(work) + 1, np.int64)
    n_sets = 0
    lo = 0
    for hi in range(1, len(work) + 1):
        if hi == len(work) or keys[hi] != keys[lo]:
            if _accepts(lab, lo, hi, need):
                set_lo[n_sets], set_hi[n_sets] = lo, hi
                n_sets += 1
            lo = hi
    for s in numba.prange(n_sets):  # sets of equal windows grow independently
        _grow_set(
            set_lo[s],
            set_hi[s],
            min_lines,
            work,
            lab,
            nxt,
            hashes,
            file_end,
            need,
            longest,
            partner,
        )
    return longest, partner


def longest_common(
    corpus: Corpus, min_lines: int, need_groups: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """For every counted line ``k``: ``longest[k]``, the most lines a window starting there can
    have while an identical window occurs elsewhere (in ``need_groups`` different groups when
    > 1; 0 below ``min_lines``), and ``partner[k]``, where such a window starts.

    Every sub-window of a repeated window is repeated, so the sets of equal windows of L + 1
    lines are found by splitting those of L lines: each round works only on what repeats.
    """
    return _grow(corpus.hashes, corpus.file_end(), corpus.group, min_lines, need_groups)


# --------------------------------------------------------------------------- blocks


@dataclass(frozen=True)
class Block:
    """A maximal clone block: ``lines`` counted lines of ``file`` from ``start`` to ``end``
    (original line numbers, inclusive), and one place it also occurs."""

    file: str
    start: int
    end: int
    lines: int
    source_file: str
    source_start: int
    source_end: int


def maximal_starts(longest: np.ndarray, corpus: Corpus) -> np.ndarray:
    """Counted-line indices where a reported (maximal) block starts.

    Simian reports a window of L lines unless it is part of a repeated window of L + 1 lines:
    the one starting at the same line (then ``longest[k] > L``) or one line earlier (then
    ``longest[k - 1] > L``). So a block starts at ``k`` with ``longest[k]`` lines when
    ``longest[k] > 0`` and ``longest[k - 1] <= longest[k]`` (or ``k`` starts its file).
    """
    k = np.flatnonzero(longest)
    prev = np.where(k > 0, longest[np.maximum(k - 1, 0)], 0)
    first_of_file = np.isin(k, corpus.starts[:-1])
    return k[first_of_file | (prev <= longest[k])]


def _block(corpus: Corpus, k: int, length: int, src: int) -> Block:
    length = int(length)
    f, g = corpus.file_index(np.array([k, src]))
    return Block(
        corpus.names[f],
        int(corpus.line_no[k]),
        int(corpus.line_no[k + length - 1]),
        length,
        corpus.names[g],
        int(corpus.line_no[src]),
        int(corpus.line_no[src + length - 1]),
    )


@dataclass(frozen=True)
class CloneReport:
    """Blocks found, and the counted-line totals the memorization ratio is made of."""

    blocks: list[Block]
    counted_lines: int  # counted lines searched (the query's, or the corpus's in self-mode)
    cloned_lines: int  # of those, lines inside at least one block (each line once)
    # per line of the query: counted and inside a block (None in self-mode); how a caller
    # splits the totals by file
    covered: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def ratio(self) -> float:
        return self.cloned_lines / self.counted_lines if self.counted_lines else 0.0

    def to_json(self) -> dict:
        return {
            "blocks": [b.__dict__ for b in self.blocks],
            "block_count": len(self.blocks),
            "block_lines": sum(b.lines for b in self.blocks),
            "counted_lines": self.counted_lines,
            "cloned_lines": self.cloned_lines,
            "ratio": self.ratio,
        }


def _covered(longest: np.ndarray, starts: np.ndarray, n: int) -> np.ndarray:
    """Mask of counted lines inside at least one block."""
    delta = np.zeros(n + 1, np.int64)
    np.add.at(delta, starts, 1)
    np.add.at(delta, starts + longest[starts], -1)
    return np.cumsum(delta[:-1]) > 0


def _report(corpus: Corpus, longest: np.ndarray, partner: np.ndarray, first: int) -> CloneReport:
    """Blocks and covered lines among the first ``first`` counted lines of ``corpus``."""
    longest[first:] = 0  # report that side only
    starts = maximal_starts(longest, corpus)
    covered = _covered(longest, starts, corpus.n_lines)[:first]
    blocks = [_block(corpus, k, longest[k], partner[k]) for k in starts.tolist()]
    return CloneReport(blocks, first, int(covered.sum()))


def self_clones(corpus: Corpus, opts: CloneOptions = CloneOptions()) -> CloneReport:
    """Clone blocks within one corpus (Simian's own mode)."""
    longest, partner = longest_common(corpus, opts.min_lines)
    return _report(corpus, longest, partner, corpus.n_lines)


def summarize_self(corpus: Corpus, opts: CloneOptions = CloneOptions()) -> dict[str, int]:
    """Simian's summary numbers without listing blocks: blocks, duplicate lines, lines."""
    longest, _ = longest_common(corpus, opts.min_lines)
    starts = maximal_starts(longest, corpus)
    return {
        "blocks": int(len(starts)),
        "block_lines": int(longest[starts].sum()),
        "cloned_lines": int(_covered(longest, starts, corpus.n_lines).sum()),
        "counted_lines": corpus.n_lines,
    }


def self_covered(corpus: Corpus, opts: CloneOptions = CloneOptions()) -> np.ndarray:
    """Mask of the corpus's counted lines that lie inside an internal clone block."""
    longest, _ = longest_common(corpus, opts.min_lines)
    return _covered(longest, maximal_starts(longest, corpus), corpus.n_lines)


def cross_clones(corpora: Sequence[Corpus], opts: CloneOptions = CloneOptions()) -> CloneReport:
    """Blocks of the first corpus that also occur in every other one (Table 7: M and G).

    With two corpora this is also the reference query (what :class:`CloneIndex` computes
    faster): blocks of a query that occur in an index, each with one place in the index.
    """
    both = combine(corpora)
    longest, partner = longest_common(both, opts.min_lines, need_groups=len(corpora))
    return _report(both, longest, partner, corpora[0].n_lines)


def cross_covered(
    corpora: Sequence[Corpus], opts: CloneOptions = CloneOptions()
) -> list[np.ndarray]:
    """Per corpus, the mask of its counted lines inside a block that also occurs in every
    other one (the first's: the lines of the blocks :func:`cross_clones` reports), from one
    search: a window never crosses a file's end, so the corpora's blocks do not mix."""
    both = combine(corpora)
    longest, _ = longest_common(both, opts.min_lines, need_groups=len(corpora))
    mask = _covered(longest, maximal_starts(longest, both), both.n_lines)
    return np.split(mask, np.cumsum([c.n_lines for c in corpora])[:-1])


# --------------------------------------------------------------------------- index


@numba.njit(cache=True)
def _window_keys(hashes, file_end, min_lines):
    """Key of the window of ``min_lines`` lines starting at each line (0: runs past its file)."""
    n = len(hashes)
    keys = np.zeros(n, np.uint64)
    for i in range(n):
        if i + min_lines <= file_end[i]:
            key = np.uint64(0)
            for k in range(min_lines):
                key = key * _BASE + hashes[i + k]
            keys[i] = key | np.uint64(1)  # never 0
    return keys


@numba.njit(cache=True)
def _match(q_keys, q_lines, q_end, keys, order, lines, starts, min_lines):
    """For each query line: the longest window starting there found in the index, and where.

    ``keys``/``order`` are the index's sorted window keys and the lines they start at;
    ``lines`` the index's 32-bit line hashes, grown past the first window line by line.
    """
    n = len(q_keys)
    longest = np.zeros(n, np.int64)
    source = np.full(n, -1, np.int64)
    for i in range(n):
        key = q_keys[i]
        if key == 0:
            continue
        a = np.searchsorted(keys, key)
        best = 0
        for t in range(a, len(keys)):
            if keys[t] != key:
                break
            j = order[t]
            end_j = starts[np.searchsorted(starts, j, side="right")]
            grown = min_lines
            while (
                i + grown < q_end[i]
                and j + grown < end_j
                and q_lines[i + grown] == lines[j + grown]
            ):
                grown += 1
            if grown > best:
                best = grown
                source[i] = j
            if i + grown >= q_end[i]:
                break  # cannot grow further: the query file ends
        longest[i] = best
    return longest, source


@dataclass
class CloneIndex:
    """A corpus indexed once for fast queries: 16 bytes per counted line.

    Sorted window keys (8 B) and the lines they start at (4 B) find a query's windows; 32-bit
    line hashes (4 B) grow a match past its first window (a false extension needs a 32-bit
    collision on top of a 64-bit window match). Original line numbers are not kept: the few
    reported source blocks are mapped back by rescanning their files.
    """

    names: list[str]
    texts: list[str | bytes | Path]
    starts: np.ndarray
    keys: np.ndarray  # uint64, sorted
    order: np.ndarray  # int32: the counted line each key starts at
    lines: np.ndarray  # uint32 line hashes
    opts: CloneOptions

    @classmethod
    def build(
        cls, docs: Iterable[tuple[str, str | bytes | Path]], opts: CloneOptions = CloneOptions()
    ):
        docs = list(docs)
        corpus = build_corpus(docs, opts)
        keys = _window_keys(corpus.hashes, corpus.file_end(), opts.min_lines)
        valid = np.flatnonzero(keys)
        order = valid[np.argsort(keys[valid], kind="stable")].astype(np.int32)
        return cls(
            corpus.names,
            [text for _, text in docs],
            corpus.starts,
            keys[order],
            order,
            corpus.hashes.astype(np.uint32),
            opts,
        )

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.order.nbytes + self.lines.nbytes

    @property
    def n_lines(self) -> int:
        return len(self.lines)

    def query(
        self, query: Corpus, with_blocks: bool = True, counts: np.ndarray | None = None
    ) -> CloneReport:
        """Blocks of ``query`` found in the index, and the memorization ratio's line counts.

        ``counts`` (one bool per counted line of ``query``) says which lines count: matching
        runs over every line, so a block that starts in a prompt and runs into its completion
        is found whole, but only its counted lines are counted (in ``counted_lines`` and
        ``cloned_lines``), and a block with none of them is not reported.
        """
        q_end = query.file_end()
        q_keys = _window_keys(query.hashes, q_end, self.opts.min_lines)
        longest, source = _match(
            q_keys,
            query.hashes.astype(np.uint32),
            q_end,
            self.keys,
            self.order,
            self.lines,
            self.starts,
            self.opts.min_lines,
        )
        starts = maximal_starts(longest, query)
        covered = _covered(longest, starts, query.n_lines)
        if counts is not None:
            if counts.shape != (query.n_lines,):
                raise ValueError(f"counts: {query.n_lines} lines expected, got {counts.shape}")
            # a block counts if any of its lines does: prefix sums over the mask
            upto = np.concatenate([[0], np.cumsum(counts)])
            starts = starts[upto[starts + longest[starts]] > upto[starts]]
            covered &= counts
        n = query.n_lines if counts is None else int(counts.sum())
        blocks = self._blocks(query, longest, source, starts) if with_blocks else []
        return CloneReport(blocks, n, int(covered.sum()), covered)

    def _blocks(self, query, longest, source, starts) -> list[Block]:
        line_numbers: dict[int, np.ndarray] = {}
        out = []
        for k in starts.tolist():
            length, j = int(longest[k]), int(source[k])
            f = int(np.searchsorted(self.starts, j, side="right") - 1)
            if f not in line_numbers:  # rescan the source file for its line numbers
                line_numbers[f] = _line_hashes(_read(self.texts[f]), self.opts)[0]
            src = line_numbers[f]
            q = int(query.file_index(np.array([k]))[0])
            out.append(
                Block(
                    query.names[q],
                    int(query.line_no[k]),
                    int(query.line_no[k + length - 1]),
                    length,
                    self.names[f],
                    int(src[j - self.starts[f]]),
                    int(src[j - self.starts[f] + length - 1]),
                )
            )
        return sorted(out, key=lambda b: (b.file, b.start))
