"""Run untrusted programs (model-generated code) so that they can harm nothing but themselves.

EvalPlus says of its own ``reliability_guard`` that it "is NOT a security sandbox", and
under it alone writes through ``io.open``, sockets, ``ctypes`` ``fork`` and ``os.execv``
still work and grandchildren outlive ``Process.kill()``. So every program runs inside four
layers, each of which holds when the ones inside it are bypassed:

1. **bubblewrap**: new user, PID, network, IPC and UTS namespaces (no network at all, not
   even the host's loopback), a new session, killed with its parent; the system and the
   interpreter's prefix read-only, a private ``/tmp``, and one scratch directory per program.
2. **A real non-root user id** (one per worker, dropped with ``setpriv`` before bubblewrap
   starts) and **resource limits**: address space, CPU seconds, file size, open files,
   processes, no core files. The kernel never applies ``RLIMIT_NPROC`` to root, so dropping
   the real uid is what makes the process limit bind.
3. **A wall-clock limit**, after which the whole process tree is killed: the worker's
   sandbox goes, and the next program gets a fresh one.
4. **EvalPlus's guard** inside the interpreter, as a second line only.

Each worker is one sandbox holding a small server (:mod:`collab_lib.sandbox_server`, a file of
standard-library code copied in) that forks one child per
program, as ``multiprocessing``'s fork server does: the child gets a fresh scratch directory,
its limits and the guard, runs the program and reports; then the server kills every other
process in the sandbox and empties ``/tmp``, so nothing one program leaves behind meets the
next. A fresh interpreter per program would cost 50-100 ms each (startup, the guard's
imports, the namespaces); a fork costs about one. A program that outlives the wall clock,
kills the server or breaks the protocol takes the whole sandbox down with it.

Without bubblewrap, layers 2-4 run and :attr:`Sandbox.isolation` says so (callers warn, or
refuse with ``require_isolation``). This module knows nothing of benchmarks: a program is a
string, its outcome one of ``ok`` (ran to the end), ``exception`` (raised; the exception's
type in ``detail``), ``timeout`` or ``crashed`` (ended without reporting: killed by a
signal, ``os._exit``, a broken interpreter).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import resource
import secrets
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MB = 1024 * 1024
# Part of every cached execution's key: a change to the layers re-runs them, never sampling.
VERSION = 5  # 5: the child reads its request; a program's outputs file comes back
UID_BASE = 61000  # worker i runs as uids block + UIDS_PER_SLOT * i + (0 .. 3)
# Each Sandbox at a time on this machine holds its own block of uids (a lock file), so two
# (an `evaluate` beside a `run rq1`) never share a process limit or kill each other's.
UID_BLOCK, UID_BLOCKS = 256, 64
# A worker's next sandbox takes the next of its uids: the kernel reaps a killed sandbox's
# processes a moment after, and until then they count against RLIMIT_NPROC.
UIDS_PER_SLOT = 4

SERVER = Path(__file__).with_name("sandbox_server.py")  # copied into each sandbox


class SandboxError(RuntimeError):
    """The sandbox cannot run here as configured; the message says what to change."""


@dataclass(frozen=True)
class Limits:
    """Per-program limits. ``timeout_s`` is wall clock; CPU seconds follow it."""

    timeout_s: float = 3.0
    memory_mb: int = 1024  # address space (RLIMIT_AS)
    file_mb: int = 16  # largest file a program may write, its report included
    open_files: int = 64
    processes: int = 16  # of the worker's uid, the sandbox's own two included
    scratch_mb: int = 64  # each of the sandbox's writable places: /work, /tmp, /dev/shm


@dataclass(frozen=True)
class Outcome:
    status: str  # ok | exception | timeout | crashed
    detail: str = ""
    data: str | None = None  # the text of the outputs.json the program left, if any


def bubblewrap() -> str | None:
    """Path of ``bwrap`` if installed (Debian: ``apt-get install bubblewrap``)."""
    return shutil.which("bwrap")


def evalplus_guard() -> Path | None:
    """EvalPlus's ``reliability_guard`` module (a file of stdlib imports only), if installed.

    Located without importing ``evalplus.eval`` (whose ``__init__`` needs numpy, which the
    sandbox's interpreter may not have); the file is copied into the sandbox and loaded there.
    """
    spec = importlib.util.find_spec("evalplus")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "eval" / "utils.py"
    return path if path.is_file() else None


class Sandbox:
    """Runs programs under the layers above, on ``workers`` sandboxes at a time.

    Args:
        python: the interpreter inside; it must be readable by a non-root uid (a pyenv
            Python under ``/root`` is not; Debian's ``/usr/bin/python3`` is).
        require_isolation: refuse to run without bubblewrap instead of warning.
        use_bubblewrap: False skips layer 1 even where it is installed (tests of layers 2-4).
    """

    def __init__(
        self,
        python: str = "/usr/bin/python3",
        limits: Limits = Limits(),
        workers: int | None = None,
        require_isolation: bool = False,
        use_bubblewrap: bool = True,
        guard: bool = True,
    ) -> None:
        self.python = python
        self.limits = limits
        self.require_isolation = require_isolation
        self.workers = min(workers or len(os.sched_getaffinity(0)) or 1, UID_BLOCK // UIDS_PER_SLOT)
        self.root_user = os.geteuid() == 0
        self.bwrap = bubblewrap() if use_bubblewrap else None
        if self.bwrap is None and require_isolation:
            raise SandboxError(
                "bubblewrap is not installed and the profile requires isolation "
                "(evaluation.require_isolation): install it (Debian/Ubuntu: "
                "`apt-get install bubblewrap`) or set evaluation.require_isolation=false"
            )
        if self.root_user and shutil.which("setpriv") is None:
            raise SandboxError("running as root needs `setpriv` (util-linux) to drop the uid")
        self.guard = evalplus_guard() if guard else None
        self._lock_file, self.uid_base = _claim_uid_block()
        self._dir = Path(tempfile.mkdtemp(prefix="collab-sandbox-"))
        os.chmod(self._dir, 0o711)  # the sandbox uids traverse it, never list it
        self._lib = self._dir / "lib"
        self._lib.mkdir(mode=0o755)
        shutil.copyfile(SERVER, self._lib / "server.py")
        if self.guard is not None:
            shutil.copyfile(self.guard, self._lib / "guard.py")
        for f in self._lib.iterdir():
            f.chmod(0o644)
        self._free = [_Worker(self, i) for i in range(self.workers)]
        self._referee: Sandbox | None = None
        self._lock = threading.Lock()
        # bubblewrap's --die-with-parent fires when the *thread* that started it ends, so
        # every sandbox is started from this one thread, which lives as long as the Sandbox
        self._spawner = ThreadPoolExecutor(1, thread_name_prefix="sandbox-spawner")
        try:
            self._prefixes = self._interpreter_prefixes()
            self._check()
        except BaseException:
            self.close()
            raise

    @property
    def isolation(self) -> str:
        """The layers in force, in words (Table 8 states it)."""
        layers = []
        if self.bwrap:
            layers.append("bubblewrap (no network, own PID namespace, read-only system)")
        layers.append(f"uid {self.uid_base}+ with rlimits" if self.root_user else "rlimits")
        layers.append(f"{self.limits.timeout_s:g} s wall clock")
        if self.guard is not None:
            layers.append("EvalPlus reliability_guard")
        return " + ".join(layers)

    def referee(self) -> Sandbox:
        """A second sandbox with the same settings that never runs a sample: the benchmark's
        own code (canonical solutions, checks, expected values) runs there, so no sample's
        process, nor the fork server it was forked from, ever holds it. Started on first
        use, closed with this one."""
        if self._referee is None:
            self._referee = Sandbox(
                self.python,
                self.limits,
                self.workers,
                self.require_isolation,
                use_bubblewrap=self.bwrap is not None,
                guard=self.guard is not None,
            )
        return self._referee

    def close(self) -> None:
        if self._referee is not None:
            self._referee.close()
        for worker in self._free:
            worker.stop()
        self._spawner.shutdown()
        _remove_tree(self._dir)
        self._lock_file.close()  # the uid block is free again

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run_many(
        self, programs: Sequence[str], progress: Callable[[int], None] | None = None
    ) -> list[Outcome]:
        """Outcomes of ``programs``, in order, run in parallel on the workers."""

        def one(program: str) -> Outcome:
            outcome = self.run(program)
            if progress is not None:
                progress(1)
            return outcome

        with ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(one, programs))

    def run(self, program: str) -> Outcome:
        """Run one program on a free worker; never raises for what the program does."""
        with self._lock:
            worker = self._free.pop()
        try:
            return worker.run(program)
        finally:
            with self._lock:
                self._free.append(worker)

    # ------------------------------------------------------------------ set-up checks

    def _interpreter_prefixes(self) -> list[str]:
        """Directories the interpreter needs besides /usr (bound read-only)."""
        if not os.path.isfile(self.python) or not os.access(self.python, os.X_OK):
            raise SandboxError(
                f"the sandbox's interpreter {self.python!r} is not an executable file: set "
                "evaluation.sandbox_python to a Python 3 every user can read (e.g. Debian's "
                "/usr/bin/python3)"
            )
        out = subprocess.run(
            [self.python, "-I", "-c", "import sys; print(sys.prefix); print(sys.base_prefix)"],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        real = {os.path.realpath(self.python).rsplit("/bin/", 1)[0]}
        real |= {os.path.realpath(p) for p in out.stdout.split()}
        return sorted(p for p in real if p and not (p == "/usr" or p.startswith("/usr/")))

    def _check(self) -> None:
        """Run a probe program through every layer; a clear error if the set-up fails."""
        probe = "import sys\nassert sys.version_info >= (3, 8)\n"
        outcome = self.run(probe)
        if outcome.status == "ok":
            return
        if self.bwrap is not None and not self.require_isolation:
            log.warning("bubblewrap failed here (%s); running without it", outcome.detail)
            self.bwrap = None
            outcome = self.run(probe)
            if outcome.status == "ok":
                return
        who = f"as uid {self.uid_base}" if self.root_user else "as this user"
        raise SandboxError(
            f"the sandbox's interpreter {self.python!r} cannot run a program {who} "
            f"({outcome.status}: {outcome.detail}): set evaluation.sandbox_python to a Python 3 "
            "that every user can read (Debian's /usr/bin/python3 works; a pyenv Python under "
            "/root does not)"
        )


class _Worker:
    """One sandbox and the server inside it, started on first use and after each kill."""

    def __init__(self, box: Sandbox, slot: int) -> None:
        self.box, self.slot, self.starts = box, slot, 0
        self.proc: subprocess.Popen | None = None
        self.buffer = b""
        self.stderr = None

    @property
    def uid(self) -> int:
        return self.box.uid_base + UIDS_PER_SLOT * self.slot + self.starts % UIDS_PER_SLOT

    def run(self, program: str) -> Outcome:
        if self.proc is not None and self.proc.poll() is not None:
            self.stop()  # it ended while idle: start afresh rather than blame this program
        if self.proc is None:
            self.start()
        token = secrets.token_hex(16)
        request = json.dumps({"token": token, "program": program}).encode() + b"\n"
        try:
            self.proc.stdin.write(request)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return self.fail(Outcome("crashed", self.why_dead()))
        line = self.read_line(self.box.limits.timeout_s)
        if line is None:
            return self.fail(Outcome("timeout", f"wall clock {self.box.limits.timeout_s:g} s"))
        if not line:
            return self.fail(Outcome("crashed", self.why_dead()))
        reply = json.loads(line)
        if reply["status"]:  # the program's process died of a signal
            sig = reply["status"]
            return Outcome("timeout" if sig == "SIGXCPU" else "crashed", sig)
        data = reply.get("data")
        for text in reversed(reply["report"].splitlines()):
            if text.startswith(token + " "):
                status, _, detail = text[len(token) + 1 :].partition(" ")
                return Outcome(status, detail, data)
        return Outcome("crashed", "no report", data)

    def fail(self, outcome: Outcome) -> Outcome:
        """The sandbox is in an unknown state: kill it whole; the next run starts afresh."""
        self.stop()
        return outcome

    def read_line(self, timeout_s: float) -> bytes | None:
        """The server's next reply line; ``b""`` if it died, None after ``timeout_s``."""
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return b""
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    def start(self) -> None:
        self.starts += 1
        box, uid = self.box, self.uid
        work = box._dir / f"w{self.slot}-{self.starts}"  # the scratch area without bubblewrap
        work.mkdir(mode=0o700)
        if box.root_user:
            os.chown(work, uid, uid)
        inside = "/work" if box.bwrap else str(work)
        guard = (
            ("/sandbox/guard.py" if box.bwrap else str(box._lib / "guard.py"))
            if box.guard
            else None
        )
        cfg = {
            "work": inside,
            "guard": guard,
            "limits": self.child_limits(),
            "kill_all": bool(box.bwrap or box.root_user),
            "writable": ["/work", "/tmp", "/dev/shm"] if box.bwrap else [str(work)],
            "private_ipc": bool(box.bwrap),
        }
        server = "/sandbox/server.py" if box.bwrap else str(box._lib / "server.py")
        cmd = [box.python, "-I", server, json.dumps(cfg)]
        if box.bwrap:
            size = str(box.limits.scratch_mb * MB)
            # the server is PID 1 (it reaps); every writable place a size-capped tmpfs of the
            # sandbox's own, emptied after each program; the rest read-only
            cmd = [
                box.bwrap,
                "--unshare-all",
                "--unshare-user",
                "--disable-userns",
                "--die-with-parent",
                "--new-session",
                "--as-pid-1",
                *self.system_binds(),
                "--proc",
                "/proc",
                "--dev",
                "/dev",
                "--size",
                size,
                "--tmpfs",
                "/dev/shm",
                "--remount-ro",
                "/dev",
                "--size",
                size,
                "--tmpfs",
                "/tmp",
                "--perms",
                "0700",
                "--size",
                size,
                "--tmpfs",
                "/work",
                "--ro-bind",
                str(box._lib),
                "/sandbox",
                "--remount-ro",
                "/",
                "--chdir",
                "/work",
                "--clearenv",
                "--setenv",
                "PATH",
                "/usr/bin:/bin",
                "--",
                *cmd,
            ]
        if box.root_user:
            cmd = [
                "setpriv",
                f"--reuid={uid}",
                f"--regid={uid}",
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
                "--no-new-privs",
                "--",
                *cmd,
            ]
        self.stderr = open(box._dir / f"w{self.slot}.err", "w+b")  # noqa: SIM115
        self.proc = box._spawner.submit(
            subprocess.Popen,
            cmd,
            cwd=work,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            start_new_session=True,  # its own process group: the wall clock kills it whole
            preexec_fn=self.worker_limits,
        ).result()
        self.buffer = b""

    def child_limits(self) -> list[tuple[str, int]]:
        """Limits of each program's process (set in the child the server forks)."""
        lim = self.box.limits
        return [
            ("RLIMIT_AS", lim.memory_mb * MB),
            ("RLIMIT_CPU", int(lim.timeout_s) + 2),
            ("RLIMIT_FSIZE", lim.file_mb * MB),
            ("RLIMIT_NOFILE", lim.open_files),
            ("RLIMIT_CORE", 0),
        ]

    def worker_limits(self) -> None:
        """In the forked child, before ``setpriv``/``bwrap``: the worker's process limit."""
        lim = self.box.limits
        nproc = lim.processes + (0 if self.box.root_user else _own_processes())
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        resource.setrlimit(resource.RLIMIT_FSIZE, (lim.file_mb * MB, lim.file_mb * MB))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    def system_binds(self) -> list[str]:
        args = ["--ro-bind", "/usr", "/usr"]
        for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
            p = Path(top)
            if p.is_symlink():
                args += ["--symlink", os.readlink(p), top]
            elif p.is_dir():
                args += ["--ro-bind", top, top]
        for prefix in self.box._prefixes:
            args += ["--ro-bind", prefix, prefix]
        return args

    def why_dead(self) -> str:
        if self.stderr is None:
            return "no report"
        self.stderr.seek(0)
        tail = self.stderr.read()[-300:].decode("utf-8", "replace").strip()
        return tail or "no report"

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.stderr):
            with contextlib.suppress(OSError):
                stream.close()
        self.proc = None
        if self.box.root_user and self.box.bwrap is None:
            _kill_uid(self.uid)  # what left the process group (setsid) dies too
        _remove_tree(self.box._dir / f"w{self.slot}-{self.starts}")


def _claim_uid_block():
    """A lock file held for the Sandbox's life, and the first uid of the block it stands for."""
    import fcntl

    for k in range(UID_BLOCKS):
        path = Path(tempfile.gettempdir()) / f"collab-sandbox-uids-{k}.lock"
        f = open(path, "a")  # noqa: SIM115 - held open until close()
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        return f, UID_BASE + k * UID_BLOCK
    raise SandboxError(f"{UID_BLOCKS} sandboxes already run on this machine: wait for one")


def _remove_tree(path: Path) -> None:
    """Remove what a program may have left (deep, or unreadable trees too) without raising."""
    try:
        shutil.rmtree(path, ignore_errors=True)
    except RecursionError:
        subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of ``uid`` (used where no PID namespace holds them)."""
    subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "kill", "-KILL", "-1"],
        capture_output=True,
        check=False,
    )


def _own_processes() -> int:
    """Processes of this real uid now (RLIMIT_NPROC counts them all, not only ours)."""
    uid, n = os.getuid(), 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                n += entry.stat().st_uid == uid
    return n
