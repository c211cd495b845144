"""Run a command to completion from the shim: spawn, wait on a pidfd, capture its output.

Not :mod:`subprocess`, for memory: it imports :mod:`threading`, whose fork handler runs in
every child the launcher forks and writes to pages every shim would otherwise share with the
launcher (a forked child that does nothing else owns ~0.4 MB more with :mod:`threading`
imported; bench/shim_pages.py). What the shim needs of it is small: the runtime's commands
(``runc run``, ``create``, ``start``, ``kill``, ``delete``...) run synchronously, with their
stdio set, an optional function run in the child before the exec, and a timeout.

The child gets what :mod:`subprocess` gave these commands: stdio on 0-2, no other fd of ours,
SIGPIPE and SIGXFSZ back to their defaults (the shim ignores SIGPIPE; an ignored disposition
would survive the exec). Without a *preexec* function it is started by ``posix_spawn``, which
glibc does with ``vfork``: the child shares the shim's memory until it execs, so the kernel
copies no page table and no copy-on-write fault follows, and no Python runs in it. A fork of
a shim costs that copy and the child's own Python before the exec, several times the spawn,
and a runtime command is on the path of every run and stop. Every
fd the shim opens is close-on-exec (Python's default); any other inheritable fd above 2 is
closed in the child by the spawn's file actions, so the guarantee does not rest on that.

With *preexec* (crun's private mount namespace, :func:`shim.oci.hide_unified_cgroup`) the child
is forked, runs it, then execs. A failure before the exec comes back to the caller as
:class:`OSError` (the exec's own, e.g. ``ENOENT``) or :class:`PreexecFailed`; the forked child
ends in ``os._exit(127)`` inside ``finally``, so it never runs the shim's code twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import selectors
import signal
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

from shim import osutil

if TYPE_CHECKING:
    import resource

__all__ = ["DEVNULL", "PIPE", "Completed", "PreexecFailed", "Ran", "TimedOut", "last_ran",
           "run_command"]

#: a stdio slot of :func:`run_command`: captured into :attr:`Completed.stdout` / ``stderr``
PIPE = -1
#: a stdio slot of :func:`run_command`: ``/dev/null``
DEVNULL = -3


class Completed(NamedTuple):
    args: list[str]
    returncode: int  # negative: killed by that signal
    stdout: bytes | None
    stderr: bytes | None


class Ran(NamedTuple):
    """When a command ran and what it cost the CPU: its wall time against its own work (the
    CPU time the kernel charged it and the children it reaped) tells waiting from working.
    The shim's ready line carries the runtime's (``bench/phases.py`` sets them beside runc
    run from the bench)."""

    spawned_ns: int  # unix ns, just before the spawn
    exited_ns: int  # unix ns, when its end was seen (the pidfd)
    cpu_ns: int  # user + system


_last: list[Ran] = []

#: Keep each command's :class:`Ran` (``bench/phases.py`` sets ``TETHER_SHIM_PHASES=1`` in the
#: daemon's environment, which the launcher, whose import reads it, and its shims inherit).
#: Off by default: the clock reads, ``wait4``'s usage and the record are pages every runc
#: shim would write for a benchmark's sake (0.03-0.09 MB a shim, measured).
MEASURE = os.environ.get("TETHER_SHIM_PHASES") == "1"


def last_ran() -> Ran | None:
    """The last command :func:`run_command` ran to its end in this process (None: none, or
    :data:`MEASURE` off)."""
    return _last[-1] if _last else None


class PreexecFailed(Exception):
    """The *preexec* function raised in the child (its message)."""


class TimedOut(Exception):
    """The command ran longer than its timeout; it was killed and reaped."""


def run_command(cmd: Sequence[str], stdio: Sequence[int], timeout: float,
        preexec: Callable[[], None] | None = None) -> Completed:
    """Run *cmd* to its end. *stdio*: three fds for its stdin, stdout and stderr, each an fd
    of ours, :data:`PIPE` (captured; never for stdin) or :data:`DEVNULL`. The captured pipes
    are read while it runs, so a long output never blocks it; its end is seen on a pidfd the
    moment it exits (no polling), then it is reaped by its exact pid."""
    argv = list(cmd)
    opened: list[int] = []  # ours, closed before returning
    child_fds: list[int] = []
    readers: list[int | None] = []
    try:
        for slot in stdio:
            if slot == PIPE:
                r, w = os.pipe()
                opened += [r, w]
                child_fds.append(w)
                readers.append(r)
            elif slot == DEVNULL:
                null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
                opened.append(null)
                child_fds.append(null)
                readers.append(None)
            else:
                child_fds.append(slot)
                readers.append(None)
        spawned = time.time_ns() if MEASURE else 0
        pid = _spawn(argv, child_fds, preexec)
        for fd in child_fds:  # the child's ends: EOF comes once it (and its heirs) close them
            if fd in opened:
                opened.remove(fd)
                os.close(fd)
        out = _wait(pid, argv, [r for r in readers[1:]], timeout)
        if MEASURE:
            _last[:] = [Ran(spawned, out[3], out[4])]
        return Completed(argv, out[0], out[1], out[2])
    finally:
        for fd in opened:
            with contextlib.suppress(OSError):
                os.close(fd)


def _spawn(argv: list[str], child_fds: list[int], preexec: Callable[[], None] | None) -> int:
    if preexec is None:
        return _posix_spawn(argv, child_fds)
    err_r, err_w = os.pipe()  # close-on-exec: EOF at the exec, data if anything before failed
    try:
        pid = os.fork()
        if pid == 0:
            try:
                _child(argv, child_fds, preexec, err_w)
            finally:
                os._exit(127)
    finally:
        os.close(err_w)
    try:
        data = b""
        while chunk := _read(err_r):
            data += chunk
    finally:
        os.close(err_r)
    if not data:
        return pid
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    number, _, message = data.decode(errors="replace").partition(":")
    if number == "preexec":
        raise PreexecFailed(message)
    errno = int(number) if number.isdigit() else 0
    raise OSError(errno, os.strerror(errno) if errno else message, argv[0])


def _posix_spawn(argv: list[str], child_fds: list[int]) -> int:
    """``posix_spawn`` (``posix_spawnp`` for a bare name, as ``execvp``): *child_fds* on 0-2,
    every other inheritable fd closed, SIGPIPE and SIGXFSZ at their defaults."""
    # copies above 2 first (close-on-exec), so that a dup2 onto 0-2 never overwrites a source
    # that is itself 0-2 before it is used; the copies are closed in the child by the exec
    high: list[int] = []
    try:
        for fd in child_fds:
            high.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3))
        actions: list[tuple[int, ...]] = [
            (os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(high)]
        actions += [(os.POSIX_SPAWN_CLOSE, fd) for fd in _inheritable_fds() if fd > 2]
        spawn = os.posix_spawn if "/" in argv[0] else os.posix_spawnp
        return spawn(argv[0], argv, os.environ, file_actions=actions,
                     setsigdef=(signal.SIGPIPE, signal.SIGXFSZ))
    finally:
        for fd in high:
            os.close(fd)


def _inheritable_fds() -> list[int]:
    """Our fds that an exec would pass on (normally 0-2 only: Python opens every fd
    close-on-exec unless told otherwise)."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(3, os.sysconf("SC_OPEN_MAX")))
    found = []
    for fd in fds:
        with contextlib.suppress(OSError):  # the listing's own fd, closed by now
            if os.get_inheritable(fd):
                found.append(fd)
    return found


def _child(argv: list[str], child_fds: list[int], preexec: Callable[[], None] | None,
           err_w: int) -> None:
    """In the forked child; returns only to ``os._exit(127)``."""
    stage = "exec"
    try:
        # moved above 2 first, so that an fd of ours that is 0-2 is not overwritten early
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3) for fd in child_fds]
        for target, fd in enumerate(high):
            os.dup2(fd, target)  # inheritable
        osutil.close_fds({err_w})
        for sig in (signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)
        if preexec is not None:
            stage = "preexec"
            preexec()
            stage = "exec"
        os.execvp(argv[0], argv)
    except BaseException as exc:
        if stage == "preexec":
            report = f"preexec:{exc}"
        else:
            report = f"{getattr(exc, 'errno', 0) or 0}:{exc}"
        with contextlib.suppress(OSError):
            os.write(err_w, report.encode(errors="replace"))


def _read(fd: int) -> bytes:
    while True:
        try:
            return os.read(fd, 65536)
        except InterruptedError:
            continue


def _wait(pid: int, argv: list[str], readers: list[int | None], timeout: float
          ) -> tuple[int, bytes | None, bytes | None, int, int]:
    """Until *pid* has exited (reaped) and every captured pipe is at EOF: its exit code, its
    output, when its end was seen (unix ns) and its CPU time (ns, ``wait4``'s usage)."""
    chunks: dict[int, list[bytes]] = {fd: [] for fd in readers if fd is not None}
    deadline = time.monotonic() + timeout
    status: int | None = None
    exited = cpu = 0
    try:
        pidfd: int | None = os.pidfd_open(pid)
    except OSError:  # a kernel without pidfds: its end is polled
        pidfd = None
    try:
        with selectors.DefaultSelector() as sel:
            for fd in (*chunks, *([] if pidfd is None else [pidfd])):
                sel.register(fd, selectors.EVENT_READ)
            while True:
                if status is None and pidfd is None:
                    if MEASURE:
                        reaped, raw, usage = os.wait4(pid, os.WNOHANG)
                        if reaped:
                            status, exited, cpu = raw, time.time_ns(), _cpu_ns(usage)
                    else:
                        reaped, raw = os.waitpid(pid, os.WNOHANG)
                        status = raw if reaped else None
                if status is not None and not sel.get_map():
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    if status is None:  # never a signal to a pid already reaped
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                        os.waitpid(pid, 0)
                    raise TimedOut(f"{' '.join(argv)}: killed after {timeout} s")
                if not sel.get_map():
                    time.sleep(min(left, 0.002))
                    continue
                for key, _ in sel.select(left if pidfd is not None else min(left, 0.002)):
                    data = b"" if key.fd == pidfd else _read(key.fd)
                    if data:
                        chunks[key.fd].append(data)
                        continue
                    sel.unregister(key.fd)
                    if key.fd == pidfd:
                        if MEASURE:
                            exited = time.time_ns()
                            _, status, usage = os.wait4(pid, 0)
                            cpu = _cpu_ns(usage)
                        else:
                            status = os.waitpid(pid, 0)[1]
    finally:
        if pidfd is not None:
            os.close(pidfd)
    assert status is not None  # the loop ends only once it is reaped
    out = [b"".join(chunks[fd]) if fd is not None else None for fd in readers]
    return os.waitstatus_to_exitcode(status), out[0], out[1], exited, cpu


def _cpu_ns(usage: resource.struct_rusage) -> int:
    return round((usage.ru_utime + usage.ru_stime) * 1e9)
