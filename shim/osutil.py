"""Small OS helpers the shim needs and the standard library lacks: subreaper, fd hygiene, the
lock that makes a shim unique per container, the short socket path, and the diagnostics log.

Kept apart from the server so that each piece can be read (and audited) on its own.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

from events import procfs, shim_api

PR_SET_CHILD_SUBREAPER = 36
PR_SET_NAME = 15
PR_SET_MM = 35
PR_SET_MM_ARG_END = 9
#: ``sun_path`` is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107
SOCKET_NAME = "shim.sock"
LOCK_NAME = shim_api.LOCK_FILE

_libc: Any = None


def read_to_eof(fd: int) -> bytes:
    """Everything *fd* gives until EOF (a pipe whose writers all closed, a file's rest)."""
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def libc() -> Any:
    """ctypes' libc, loaded on first use: only prctl and unshare need it."""
    global _libc
    if _libc is None:
        import ctypes

        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def set_subreaper() -> None:
    """Make orphaned descendants reparent to us, so we can reap them and the container init."""
    if libc().prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")


def set_title(argv: list[str], comm: str | None = None) -> bool:
    """Rewrite our command line (``/proc/self/cmdline``, what ``ps`` and the tests' leak guard
    read) to *argv*, in place, as setproctitle does; and ``comm`` (15 bytes) when given.

    A process forked from the launcher would otherwise carry the launcher's command line. The
    new title must fit in the original argv area (``arg_start``..``arg_end``, fields 48 and 49
    of ``/proc/self/stat``): the launcher is started with a padding argument for that. The
    rest of the area is zeroed (``PR_SET_MM_ARG_END``, which would trim it, needs
    CAP_SYS_RESOURCE and is tried; without it the command line ends in empty arguments).
    Python keeps its own copy of ``sys.argv``, so nothing in the interpreter points into it.
    Returns False when the title was cut.
    """
    import ctypes

    with open("/proc/self/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2 :].split()
    arg_start, arg_end = int(fields[48 - 3]), int(fields[49 - 3])
    size = arg_end - arg_start
    title = b"\0".join(os.fsencode(arg) for arg in argv) + b"\0"
    whole = len(title) <= size
    if not whole:
        title = title[: size - 1] + b"\0"
    ctypes.memmove(arg_start, title + b"\0" * (size - len(title)), size)
    if len(title) < size:  # needs CAP_SYS_RESOURCE; without it the padding stays as NULs
        libc().prctl(PR_SET_MM, PR_SET_MM_ARG_END, ctypes.c_ulong(arg_start + len(title)), 0, 0)
    if comm is not None:
        libc().prctl(PR_SET_NAME, os.fsencode(comm)[:15], 0, 0, 0)
    return whole


def unshare(flags: int) -> None:
    """unshare(2) (``os.unshare`` exists only from Python 3.12)."""
    if libc().unshare(flags) != 0:
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, f"unshare({flags:#x}): {os.strerror(err)}")


def close_fds(keep: set[int]) -> None:
    """Close every fd >= 3 not in *keep*, so no inherited pipe keeps a caller waiting."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(3, os.sysconf("SC_OPEN_MAX")))
    for fd in fds:
        if fd >= 3 and fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def refuse_symlinks(*paths: str, missing_ok: bool = False) -> None:
    """Each of *paths* must be what it looks like, not a symlink: a pre-existing
    ``ROOT/shims/ID -> elsewhere`` would make the shim write its files (and runc its state)
    outside ROOT, where ``rm`` never removes them. Raises OSError naming the path."""
    import stat

    for path in paths:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            if missing_ok:
                continue
            raise
        if stat.S_ISLNK(st.st_mode):
            raise OSError(errno.ELOOP, f"{path} is a symlink (to {os.readlink(path)!r}); the "
                          "shim refuses to follow it: remove it and start again")


def open_nofollow(path: str, flags: int, mode: int = 0o600) -> int:
    """``os.open`` that refuses a symlink as the last component, with a clear error."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, f"{path} is a symlink; the shim refuses to follow it: "
                          "remove it and start again") from None
        raise


def take_lock(directory: str) -> int:
    """Hold ``directory/shim.lock`` (flock) for our whole life: a second shim for the same id
    fails here. The kernel drops the lock when we die, however we die, so no stale lock."""
    path = os.path.join(directory, LOCK_NAME)
    fd = open_nofollow(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise OSError(exc.errno, f"flock({path}): another shim is already running for this "
                          "container") from None
        raise OSError(exc.errno, f"flock({path}): {exc.strerror}") from None
    return fd


def socket_path(directory: str) -> str:
    """``directory/shim.sock``, or a short fallback when that is over 107 bytes:
    ``/run/tether/<hash>.sock`` as root, ``/tmp/tether-UID/<hash>.sock`` otherwise, the hash
    being the first 16 hex digits of sha256 of the full path (so each shim has its own)."""
    path = os.path.join(os.path.abspath(directory), SOCKET_NAME)
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        return path
    uid = os.getuid()
    base = "/run/tether" if uid == 0 and os.path.isdir("/run") else f"/tmp/tether-{uid}"
    os.makedirs(base, mode=0o700, exist_ok=True)
    st = os.lstat(base)
    if st.st_uid != uid or st.st_mode & 0o077:
        raise OSError(errno.EPERM, f"{base}: not a private directory of uid {uid}; refusing to "
                      "put a socket there")
    import hashlib  # only here: it loads OpenSSL, memory every shim would pay for

    return os.path.join(base, hashlib.sha256(os.fsencode(path)).hexdigest()[:16] + ".sock")


def bind_unix(path: str) -> socket.socket:
    """A listening, non-blocking unix socket at *path*, mode 0600 from the start (umask),
    replacing a stale socket file: the caller holds the lock, so no live shim owns it."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(64)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"bind({path}): {exc.strerror}") from None
    finally:
        os.umask(old)
    sock.setblocking(False)
    return sock


def children(pid: int) -> list[int] | None:
    """Direct children of *pid* from ``/proc/PID/task/*/children`` (None when the kernel does
    not have that file)."""
    found: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []  # gone: no children
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                found += [int(p) for p in f.read().split()]
        except FileNotFoundError:
            if not os.path.exists(f"/proc/{pid}/task/{tid}"):
                continue  # the thread ended meanwhile
            return None  # no CONFIG_PROC_CHILDREN
        except OSError:
            continue
    return found


def descendants(ancestor: int) -> list[int]:
    """Pids whose chain of parents reaches *ancestor* (best effort). Walks the ``children``
    files from *ancestor* down (a handful of reads: a crash loop calls this for every restart),
    and scans all of ``/proc`` only on a kernel without them."""
    found: list[int] = []
    stack = [ancestor]
    while stack:
        kids = children(stack.pop())
        if kids is None:
            return _descendants_by_scan(ancestor)
        found += kids
        stack += kids
    return found


def session_of(pid: int) -> int:
    """The session id of *pid* (``/proc/PID/stat``'s sixth field), or 0 when it is gone."""
    stat = procfs.read_stat(pid)
    return stat.session if stat is not None else 0


def _descendants_by_scan(ancestor: int) -> list[int]:
    by_parent: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        stat = procfs.read_stat(int(name))
        if stat is not None:
            by_parent.setdefault(stat.ppid, []).append(int(name))
    found: list[int] = []
    stack = list(by_parent.get(ancestor, []))
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(by_parent.get(pid, []))
    return found


class Diag:
    """The shim's own diagnostics: one JSON object per line in ``shim.log`` (no structlog:
    it would cost memory in every shim). A failing write is ignored; diagnostics must never
    take the shim down.

    With *path*, the file is rotated once it passes *max_size* (renamed to ``shim.log.1``,
    replacing the previous one, and a new one opened on the same fd): a crash loop with no
    back-off logs a few lines per restart, and must not fill the disk over weeks."""

    def __init__(self, fd: int, path: str | None = None, max_size: int = 4 << 20) -> None:
        self.fd = fd
        self.path = path
        self.max_size = max_size
        self.size = 0
        if path is not None:
            with contextlib.suppress(OSError):
                self.size = os.fstat(fd).st_size

    def log(self, level: str, event: str, **fields: Any) -> None:
        record = {"time": time.time_ns(), "level": level, "event": event, "pid": os.getpid(),
                  **fields}
        data = json.dumps(record, default=str).encode() + b"\n"
        with contextlib.suppress(OSError):
            os.write(self.fd, data)
            self.size += len(data)
            if self.path is not None and self.size > self.max_size:
                self._rotate(self.path)

    def _rotate(self, path: str) -> None:
        os.rename(path, path + ".1")
        fd = open_nofollow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL)
        os.dup2(fd, self.fd)  # fd 2 too: a traceback still lands in the current file
        os.close(fd)
        self.size = 0


def become_shim(directory: str, ready_w: int) -> Diag:
    """What a shim process (a single shim or a shared one) does first: stdin and stdout on
    /dev/null, stderr into *directory*'s ``shim.log`` (a traceback nobody foresaw lands there),
    every inherited fd but *ready_w* closed, the signals it ignores, a child subreaper. Its
    diagnostics writer."""
    null = os.open("/dev/null", os.O_RDWR)
    log_path = os.path.join(directory, shim_api.SHIM_LOG)
    log_fd = open_nofollow(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.dup2(log_fd, 2)
    close_fds({ready_w})
    diag = Diag(2, log_path)

    # Only delete, shutdown or SIGKILL end a shim: a SIGTERM sent to "everything" (an
    # operator, a careless unit) must not orphan the container and lose its exit status.
    # Caught (logged), not SIG_IGN: an ignored disposition would be inherited through exec by
    # runc and the container's processes; a caught one is reset to the default.
    def ignored(signum: int, frame: object) -> None:
        diag.log("warning", "signal_ignored", signal=signal.Signals(signum).name)

    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, ignored)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    set_subreaper()
    return diag


def read_own_spec(directory: str, container_id: str) -> dict[str, Any]:
    """The spec the daemon wrote for *container_id*, refused unless it names that id and an
    instance (a directory holding another container's spec is no place to start in)."""
    spec = shim_api.read_spec(directory)
    if spec.get("id") != container_id or not spec.get("instance"):
        raise ValueError(f"{directory}/{shim_api.SPEC_FILE}: id {spec.get('id')!r} and "
                         f"instance {spec.get('instance')!r} must match {container_id!r}")
    return spec


def write_reach_files(directory: str, address: str) -> list[str]:
    """``shim.pid`` (this process) and ``address`` in *directory*: how supervisord reaches a
    live shim. Not fsynced (no shim survives a power loss, the only thing a fsync would guard
    against; the durable record of a shim is the daemon's ``task.create``). The paths written,
    for a failed start to remove."""
    written = []
    for name, value in ((shim_api.PID_FILE, str(os.getpid())), (shim_api.ADDRESS_FILE, address)):
        path = os.path.join(directory, name)
        shim_api.write_atomic(path, value.encode(), durable=False)
        written.append(path)
    return written


def failure_reason(exc: BaseException) -> str:
    """How a failed start is told: an OSError's own words, else its type and message."""
    return str(exc) if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}"


def report_start_failure(ready_w: int, exc: BaseException, files: list[str]) -> None:
    """A start that failed: remove the files it wrote, then say why, in ``shim.log`` (fd 2)
    and on the ready pipe (one ``error <reason>`` line)."""
    for path in files:
        with contextlib.suppress(OSError):
            os.unlink(path)
    reason = failure_reason(exc)
    with contextlib.suppress(OSError):
        os.write(2, json.dumps({"level": "error", "event": "start_failed",
                                "error": reason}).encode() + b"\n")
        os.write(ready_w, b"error " + reason.replace("\n", " ").encode() + b"\n")


def reap_each(on_reaped: Callable[[int, int], None]) -> None:
    """Reap every child that has exited (``waitpid(-1, WNOHANG)``), each told to *on_reaped*."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        on_reaped(pid, status)
