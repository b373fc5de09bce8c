"""The fork server inside each sandbox worker (:mod:`collab_lib.sandbox` copies this file in).

It runs as ``python -I server.py CONFIG_JSON`` under the sandbox's interpreter, which may be
any Python 3 an unprivileged uid can read: so this module imports the standard library only,
and nothing of ``collab_lib`` (the package is not inside the sandbox). Importing it runs
nothing; tests import it to check its parts.

Requests are JSON lines on stdin (``{"token", "program"}``), replies JSON lines on stdout
(``{"status": the signal that ended the child or "", "report": its last report text, "data":
the text of the file ``outputs.json`` the program left in its scratch directory, or null}``).
The server forks each child *before* the request arrives and the child reads it itself, so
no program's text ever passes through the server's memory, which every later child copies:
a program cannot find an earlier one's code there. The child sends the program's own output
to ``/dev/null`` and reports through a pipe with the one-time token, so nothing a program
prints can pass for a result. (A program that inspects its own interpreter's frames can find
the token: a verdict must not rest on the report alone. :mod:`collab_lib.verdict` decides
pass or fail outside the program's process, from its ``data``.)

``CONFIG_JSON``: ``work`` (where each program's scratch directory is made), ``guard`` (path of
EvalPlus's guard module, or null), ``limits`` (``[[RLIMIT_NAME, value], ...]``), ``kill_all``
(true when the server may kill every process of its uid: alone in a PID namespace),
``writable`` (the places emptied after each program), ``private_ipc`` (System V IPC objects
are the sandbox's own and are removed after each program).
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG, PR_SET_DUMPABLE, IPC_RMID = 1, 4, 0
REPORT_BYTES = 4096  # of the report pipe, the tail kept
OUTPUTS = "outputs.json"  # what a program hands back (its size bounded by RLIMIT_FSIZE)
NO_MORE = 3  # a child's exit code: stdin closed, no request came


def main() -> None:
    """Serve requests until stdin closes: fork a child per program, report, clean up."""
    # Not dumpable: a program (same uid) can neither ptrace this server nor write its memory
    # through /proc/<pid>/mem; the children it forks inherit the flag.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    cfg = json.loads(sys.argv[1])
    guard = load_guard(cfg["guard"])
    replies = sys.stdout
    n = 0
    while True:
        n += 1
        work = os.path.join(cfg["work"], f"s{n}")  # a fresh scratch directory per program
        os.mkdir(work, 0o700)
        read_end, write_end = os.pipe()  # the report: the program cannot read it back
        pid = fork()
        if pid == 0:
            os.close(read_end)
            child(work, write_end, cfg, guard)
        os.close(write_end)
        _, status = os.waitpid(pid, 0)
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == NO_MORE and stdin_closed():
            return  # (a program that exits with the same code does not stop the server)
        text = read_report(read_end)
        data = read_outputs(os.path.join(work, OUTPUTS))
        clean_up(pid, cfg, libc)
        ended_by = signal.Signals(os.WTERMSIG(status)).name if os.WIFSIGNALED(status) else ""
        replies.write(json.dumps({"status": ended_by, "report": text, "data": data}) + "\n")
        replies.flush()


def load_guard(path: str | None):
    """EvalPlus's guard module, loaded once (and applied in each child), or None."""
    if not path:
        return None
    import importlib.util

    spec = importlib.util.spec_from_file_location("guard", path)
    guard = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(guard)
    import shutil  # noqa: F401  (what the guard imports to disable, imported once too)

    return guard


def read_report(fd: int) -> str:
    """What the child wrote to the report pipe (its tail), without waiting for more."""
    os.set_blocking(fd, False)
    data = b""
    try:
        while len(data) < 65536:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
    except BlockingIOError:
        pass
    os.close(fd)
    return data[-REPORT_BYTES:].decode("utf-8", "replace")


def stdin_closed() -> bool:
    """Whether the client closed the requests' pipe (hung up, nothing left to read)."""
    import select

    poller = select.poll()
    poller.register(0, select.POLLIN | select.POLLHUP)
    events = dict(poller.poll(0)).get(0, 0)
    return bool(events & select.POLLHUP) and not events & select.POLLIN


def read_outputs(path: str) -> str | None:
    """The text the program left in ``outputs.json`` (a regular file only), or None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        import stat

        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", "replace")
    finally:
        os.close(fd)


def read_request(fd: int = 0) -> dict | None:
    """The next request, read by the child from the server's stdin; None when it closed.

    Raw reads: the client sends one request and waits for its reply, so nothing past the
    line's end can be in the pipe.
    """
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return None
        data += chunk
    return json.loads(data)


def fork() -> int:
    """``os.fork``, waiting out the moment the last program's killed processes still count
    against the process limit, until they are reaped."""
    for _ in range(200):
        try:
            return os.fork()
        except BlockingIOError:
            time.sleep(0.01)
    return os.fork()


def child(work: str, report: int, cfg: dict, guard) -> None:
    """In the forked child: the request, limits, no output, the guard, then the program;
    report; exit.

    The names it needs after the program ran are bound first: the program may replace
    ``os``'s functions or builtins, never these locals.
    """
    _exit, write, name_of, catch_all = os._exit, os.write, type, BaseException
    try:
        req = read_request()
    except catch_all:  # a broken request: the client sees no report
        _exit(1)
    if req is None:
        _exit(NO_MORE)
    token = req["token"]
    try:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # dies with us
        os.setsid()
        os.chdir(work)
        for name, value in cfg["limits"]:
            limit = getattr(resource, name)
            resource.setrlimit(limit, (value, value))
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        source = req["program"]
        req.clear()
        if guard is not None:
            guard.reliability_guard()
        result = "ok"
        try:
            # dont_inherit: the program gets none of this module's __future__ flags (with
            # `annotations`, a wrong name in an annotation would no longer raise)
            exec(compile(source, "program.py", "exec", dont_inherit=True), {})
        except catch_all as exc:
            try:  # %-formatting copies the characters: no method of the program's objects
                result = "exception %.80s" % (name_of(exc).__name__,)  # noqa: UP031
            except catch_all:
                result = "exception ?"
        write(report, ("\n%s %s\n" % (token, result.replace("\n", " "))).encode())  # noqa: UP031
    except catch_all as exc:  # the set-up failed: say so (never the program's doing)
        write(report, ("\n%s crashed set-up: %.80r\n" % (token, exc)).encode())  # noqa: UP031
    finally:
        _exit(0)


def clean_up(pid: int, cfg: dict, libc) -> None:
    """Kill what the program left behind (in the sandbox, everything but this server), reap
    it, and empty every place it could write."""
    while True:
        try:
            if cfg["kill_all"]:
                os.kill(-1, signal.SIGKILL)  # every process we may signal, but ourselves
            else:
                os.killpg(pid, signal.SIGKILL)  # as a plain user: its process group only
        except (ProcessLookupError, PermissionError):
            pass
        try:
            if os.waitpid(-1, 0)[0] == 0:
                break
        except ChildProcessError:
            break
    for place in cfg["writable"]:
        for entry in os.listdir(place):
            remove(os.path.join(place, entry))
    if cfg["private_ipc"]:
        remove_ipc(libc)


def remove_ipc(libc) -> None:
    """Remove every System V shared memory segment, message queue and semaphore set."""
    for kind, rmid in (("shm", libc.shmctl), ("msg", libc.msgctl), ("sem", libc.semctl)):
        try:
            with open("/proc/sysvipc/" + kind) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            ident = int(row.split()[1])
            if kind == "sem":
                rmid(ident, 0, IPC_RMID, 0)
            else:
                rmid(ident, IPC_RMID, None)


def remove(path: str) -> None:
    """Delete a file or a tree the program may have made unreadable or very deep."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            os.chmod(path, 0o700)
            for entry in os.listdir(path):
                remove(os.path.join(path, entry))
            os.rmdir(path)
        else:
            os.unlink(path)
    except (OSError, RecursionError):  # a deep or unreadable tree: the tools that cope
        subprocess.run(["chmod", "-R", "u+rwx", path], stderr=subprocess.DEVNULL)
        subprocess.run(["rm", "-rf", "--one-file-system", path], stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
