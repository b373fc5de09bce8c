"""Run untrusted programs (model-generated code) so that they can harm nothing but themselves.

EvalPlus says of its own ``reliability_guard`` that it "is NOT a security sandbox", and
under it alone writes through ``io.open``, sockets, ``ctypes`` ``fork`` and ``os.execv``
still work and grandchildren outlive ``Process.kill()``. So every program runs inside four
layers, each of which holds when the ones inside it are bypassed:

1. **bubblewrap**: new user, PID, network, IPC and UTS namespaces (no network at all, not
   even the host's loopback), a new session, killed with its parent; the system and the
   interpreter's prefix read-only, a private ``/tmp`` and one scratch directory per program.
2. **A real non-root user id** (one per worker slot, dropped with ``setpriv`` before
   bubblewrap starts) and **resource limits**: address space, CPU seconds, file size, open
   files, processes, no core files. The kernel never applies ``RLIMIT_NPROC`` to root, so
   dropping the real uid is what makes the process limit bind.
3. **A wall-clock limit**, after which the whole process tree is killed (bubblewrap's PID
   namespace dies with its init; without bubblewrap, every process of the slot's uid).
4. **EvalPlus's guard** inside the interpreter, as a second line only.

Without bubblewrap, layers 2-4 run and :attr:`Sandbox.isolation` says so (callers warn, or
refuse with ``require_isolation``). This module knows nothing of benchmarks: a program is a
string, its outcome one of ``ok`` (ran to the end), ``exception`` (raised, the exception's
type in ``detail``), ``timeout`` or ``crashed`` (ended without reporting: killed by a
signal, ``os._exit``, an interpreter that could not start).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import resource
import secrets
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
UID_BASE = 61000  # worker slot i runs as uids UID_BASE + UIDS_PER_SLOT * i + (0 .. 3)
# A slot rotates through its uids: the kernel reaps a finished sandbox's processes a moment
# after it exits, and until then they count against the next program's RLIMIT_NPROC.
UIDS_PER_SLOT = 4

# The interpreter inside runs this file. It keeps the harness's channel (the original
# stdout, a file outside the sandbox capped by RLIMIT_FSIZE), sends the program's own output
# to /dev/null, reads the program before the guard removes ``open``, and reports with a
# one-time token so that text a program prints can never pass for a result.
RUNNER = r"""
import os, sys
def main():
    token = sys.stdin.readline().strip()
    report, write, leave, name_of = os.dup(1), os.write, os._exit, type
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    with open("program.py", encoding="utf-8") as f:
        source = f.read()
    if os.path.exists("/sandbox/guard.py") or os.path.exists(GUARD):
        import importlib.util
        path = "/sandbox/guard.py" if os.path.exists("/sandbox/guard.py") else GUARD
        spec = importlib.util.spec_from_file_location("guard", path)
        guard = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(guard)
        guard.reliability_guard()
    result = "ok"
    try:
        exec(compile(source, "program.py", "exec"), {})
    except BaseException as exc:
        try:
            result = "exception " + str(name_of(exc).__name__)[:80].replace("\n", " ")
        except BaseException:
            result = "exception ?"
    write(report, ("\n%s %s\n" % (token, result)).encode())
    leave(0)
main()
"""


class SandboxError(RuntimeError):
    """The sandbox cannot run here as configured; the message says what to change."""


@dataclass(frozen=True)
class Limits:
    """Per-program limits. ``timeout_s`` is wall clock; CPU seconds follow it."""

    timeout_s: float = 3.0
    memory_mb: int = 1024  # address space (RLIMIT_AS)
    file_mb: int = 16  # largest file a program may write, its report included
    open_files: int = 64
    processes: int = 16  # of the slot's uid, bubblewrap's own two included


@dataclass(frozen=True)
class Outcome:
    status: str  # ok | exception | timeout | crashed
    detail: str = ""


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
    """Runs programs under the layers above, ``workers`` at a time.

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
        self.workers = workers or os.cpu_count() or 1
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
        self._dir = Path(tempfile.mkdtemp(prefix="collab-sandbox-"))
        os.chmod(self._dir, 0o711)  # the sandbox uids traverse it, never list it
        self._lib = self._dir / "lib"
        self._lib.mkdir(mode=0o755)
        (self._lib / "runner.py").write_text(
            RUNNER.replace("GUARD", repr(str(self._lib / "guard.py")))
        )
        if self.guard is not None:
            shutil.copyfile(self.guard, self._lib / "guard.py")
        for f in self._lib.iterdir():
            f.chmod(0o644)
        self._slots = list(range(self.workers))
        self._runs = [0] * self.workers
        self._lock = threading.Lock()
        self._prefixes = self._interpreter_prefixes()
        self._check()

    @property
    def isolation(self) -> str:
        """The layers in force, in words (Table 8 states it)."""
        layers = (
            ["bubblewrap (no network, own PID namespace, read-only system)"] if self.bwrap else []
        )
        layers.append(f"uid {UID_BASE}+ with rlimits" if self.root_user else "rlimits")
        layers.append(f"{self.limits.timeout_s:g} s wall clock")
        if self.guard is not None:
            layers.append("EvalPlus reliability_guard")
        return " + ".join(layers)

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ running programs

    def run_many(
        self, programs: Sequence[str], progress: Callable[[int], None] | None = None
    ) -> list[Outcome]:
        """Outcomes of ``programs``, in order, run in parallel on ``workers`` slots."""

        def one(program: str) -> Outcome:
            outcome = self.run(program)
            if progress is not None:
                progress(1)
            return outcome

        with ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(one, programs))

    def run(self, program: str) -> Outcome:
        """Run one program in a fresh scratch directory; never raises for what it does."""
        with self._lock:
            slot = self._slots.pop()
            self._runs[slot] += 1
            uid = UID_BASE + UIDS_PER_SLOT * slot + self._runs[slot] % UIDS_PER_SLOT
        try:
            outcome = self._run_in_slot(program, slot, uid)
            if outcome.status == "crashed" and "bwrap: Can't fork" in outcome.detail:
                time.sleep(0.05)  # the uid's last sandbox is still being reaped: once more
                outcome = self._run_in_slot(program, slot, uid)
            return outcome
        finally:
            with self._lock:
                self._slots.append(slot)

    def _run_in_slot(self, program: str, slot: int, uid: int) -> Outcome:
        work = Path(tempfile.mkdtemp(dir=self._dir, prefix=f"s{slot}-"))
        work.chmod(0o711)  # the slot's uid reaches its scratch directory, nothing else
        try:
            (work / "program.py").write_text(program, encoding="utf-8")
            token = secrets.token_hex(16)
            with open(work / "in", "w+b") as stdin, open(work / "out", "w+b") as stdout:
                stdin.write(token.encode() + b"\n")
                stdin.seek(0)
                scratch = work / "scratch"
                scratch.mkdir()
                shutil.copyfile(work / "program.py", scratch / "program.py")
                if self.root_user:
                    os.chown(scratch, uid, uid)
                outcome = self._execute(self._command(scratch, uid), scratch, stdin, stdout)
                stdout.seek(0)
                report = stdout.read()[-4096:].decode("utf-8", "replace")
        finally:
            if self.root_user and self.bwrap is None:
                self._kill_uid(uid)  # stragglers that left the process group
            shutil.rmtree(work, ignore_errors=True)
        if outcome is not None:
            return outcome
        for line in reversed(report.splitlines()):
            if line.startswith(token + " "):
                status, _, detail = line[len(token) + 1 :].partition(" ")
                return Outcome(status, detail)
        return Outcome("crashed", report.strip()[-200:] or "no report")

    def _execute(self, argv: list[str], cwd: Path, stdin, stdout) -> Outcome | None:
        """Start ``argv`` under the limits; ``timeout`` or ``crashed`` Outcome, else None."""
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=stdin,
            stdout=stdout,
            stderr=stdout,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            start_new_session=True,  # its own process group: the wall clock kills it whole
            preexec_fn=self._set_limits,
        )
        try:
            rc = proc.wait(timeout=self.limits.timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return Outcome("timeout", f"wall clock {self.limits.timeout_s:g} s")
        _kill_group(proc)  # whatever it left behind in its group
        if rc < 0:
            sig = signal.Signals(-rc).name
            return Outcome("timeout" if sig == "SIGXCPU" else "crashed", sig)
        return None

    def _command(self, scratch: Path, uid: int) -> list[str]:
        inner = [self.python, "-I", "runner.py" if self.bwrap is None else "/sandbox/runner.py"]
        if self.bwrap is None:
            shutil.copyfile(self._lib / "runner.py", scratch / "runner.py")
            cmd = inner
        else:
            cmd = [self.bwrap, "--unshare-all", "--die-with-parent", "--new-session",
                   *self._system_binds(),
                   "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
                   "--ro-bind", str(self._lib), "/sandbox",
                   "--bind", str(scratch), "/work", "--chdir", "/work",
                   "--clearenv", "--setenv", "PATH", "/usr/bin:/bin",
                   "--", *inner]  # fmt: skip
        if self.root_user:
            cmd = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                   "--inh-caps=-all", "--", *cmd]  # fmt: skip
        return cmd

    def _system_binds(self) -> list[str]:
        args = ["--ro-bind", "/usr", "/usr"]
        for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
            p = Path(top)
            if p.is_symlink():
                args += ["--symlink", os.readlink(p), top]
            elif p.is_dir():
                args += ["--ro-bind", top, top]
        for prefix in self._prefixes:
            args += ["--ro-bind", prefix, prefix]
        return args

    def _set_limits(self) -> None:
        """In the child, before ``setpriv``/``bwrap``: limits every descendant inherits."""
        lim = self.limits
        cpu = int(lim.timeout_s) + 2
        nproc = lim.processes + (0 if self.root_user else _own_processes())
        for which, value in (
            (resource.RLIMIT_AS, lim.memory_mb * MB),
            (resource.RLIMIT_CPU, cpu),
            (resource.RLIMIT_FSIZE, lim.file_mb * MB),
            (resource.RLIMIT_NOFILE, lim.open_files),
            (resource.RLIMIT_NPROC, nproc),
            (resource.RLIMIT_CORE, 0),
        ):
            resource.setrlimit(which, (value, value))

    def _kill_uid(self, uid: int) -> None:
        """SIGKILL every process of ``uid`` (what escaped the process group, e.g. by setsid)."""
        subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                        "kill", "-KILL", "-1"], capture_output=True, check=False)  # fmt: skip

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
            capture_output=True, text=True, check=False, timeout=30,
        )  # fmt: skip
        real = {os.path.realpath(self.python).rsplit("/bin/", 1)[0]}
        real |= {os.path.realpath(p) for p in out.stdout.split()}
        return sorted(p for p in real if p and not (p == "/usr" or p.startswith("/usr/")))

    def _check(self) -> None:
        """Run a probe program through every layer; a clear error if the set-up fails."""
        outcome = self.run("import sys\nassert sys.version_info >= (3, 8)\n")
        if outcome.status == "ok":
            return
        if self.bwrap is not None and not self.require_isolation:
            log.warning("bubblewrap failed here (%s); retrying without it", outcome.detail)
            self.bwrap = None
            outcome = self.run("import sys\nassert sys.version_info >= (3, 8)\n")
            if outcome.status == "ok":
                return
        who = f"as uid {UID_BASE}" if self.root_user else "as this user"
        raise SandboxError(
            f"the sandbox's interpreter {self.python!r} cannot run a program {who} "
            f"({outcome.status}: {outcome.detail}): set evaluation.sandbox_python to a Python 3 "
            "that every user can read (Debian's /usr/bin/python3 works; a pyenv Python under "
            "/root does not)"
        )


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _own_processes() -> int:
    """Processes of this real uid now (RLIMIT_NPROC counts them all, not only ours)."""
    uid, n = os.getuid(), 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                n += entry.stat().st_uid == uid
    return n
