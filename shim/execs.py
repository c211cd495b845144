"""Pipes out of the container: the init's output (to the log) and exec sessions (to a caller).

One reader, :func:`read_pipe`, serves both: it reads what a pipe holds without blocking and never
waits for EOF (orphans may hold a pipe open, and keep writing, long after the process that was
given it exited).

* :class:`InitOutput`: each task's stdout/stderr pipes, written to ``container.log``
  (:class:`shim.logs.CriLog`). A new pair per task; an old pair stays read until EOF.
* :class:`Execs`: processes started in the running container, by ``exec`` (output streamed to
  the caller, never logged; while the caller is behind by :data:`EXEC_HIGH_WATER` the process's
  pipes are not read, so it blocks on its own writes, as with a terminal; a caller that leaves
  has the rest read and dropped) and by the health checker (output captured, first bytes kept).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from events import shim_api, wire

if TYPE_CHECKING:
    from shim.logs import CriLog
    from shim.loop import Conn, Loop
    from shim.outbox import Outbox
    from shim.runtime import Runtime

READ_CHUNK = 65536
F_SETPIPE_SZ = 1031
PIPE_SIZE = 1024 * 1024  # the default pipe-max-size
MAX_DRAIN = 16 * 1024 * 1024  # output read at once when a process exits or the shim ends
#: An exec's pipes are not read while its caller has this much unsent: the process then
#: blocks on its own writes (backpressure, as with a terminal) instead of the caller being
#: cut off at MAX_OUTBUF; reading resumes once the caller has taken most of it.
EXEC_HIGH_WATER = 1024 * 1024


def read_pipe(fd: int, drain: bool = False) -> tuple[list[bytes], bool]:
    """What *fd* (non-blocking) holds: a few chunks, or with *drain* until empty (at most
    :data:`MAX_DRAIN`). Returns ``(chunks, eof)``; a read error counts as EOF."""
    chunks: list[bytes] = []
    for _ in range(MAX_DRAIN // READ_CHUNK if drain else 4):
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return chunks, False
        except OSError:
            return chunks, True
        if not data:
            return chunks, True
        chunks.append(data)
    return chunks, False


class InitOutput:
    """The tasks' stdout/stderr pipes, read into the container's log."""

    def __init__(self, loop: Loop, log: CriLog) -> None:
        self.loop = loop
        self.log = log
        self.pipes: dict[int, bytes] = {}  # read end -> b"stdout" | b"stderr"

    def open(self) -> tuple[int, int]:
        """A new pair of pipes for the next task: returns the write ends (stdout, stderr), which
        the caller closes once the runtime has given them to the task."""
        ends = []
        for name in (b"stdout", b"stderr"):
            r, w = os.pipe()
            os.set_blocking(r, False)
            with contextlib.suppress(OSError):  # a bigger pipe: a burst never blocks the writer
                fcntl.fcntl(r, F_SETPIPE_SZ, PIPE_SIZE)
            self.pipes[r] = name
            self.loop.watch(r, self.read)
            ends.append(w)
        return ends[0], ends[1]

    def read(self, fd: int, drain: bool = False) -> None:
        stream = self.pipes[fd]
        chunks, eof = read_pipe(fd, drain)
        for data in chunks:
            self.log.feed(stream, data)
        if eof:
            self.loop.unwatch(fd)
            os.close(fd)
            del self.pipes[fd]
            self.log.finish(stream)

    def drain(self) -> None:
        """Everything written so far (before an exit is told: its output goes first)."""
        for fd in list(self.pipes):
            self.read(fd, drain=True)

    def close(self) -> None:
        self.drain()
        for fd in list(self.pipes):  # held open by a process that outlives the shim
            self.loop.unwatch(fd)
            os.close(fd)
        self.pipes.clear()
        self.log.close()


class Exec:
    """A process started in the container: where its output and exit go.

    A caller's exec has ``conn``/``rid`` (None once the caller left: output is dropped); an
    internal one (a health check) has ``on_exit`` and keeps the first ``capture`` bytes."""

    __slots__ = ("capture", "captured", "conn", "exec_id", "on_exit", "paused", "pid", "pipes",
                 "rid")

    def __init__(self, exec_id: str, pid: int, conn: Conn | None, rid: int,
                 on_exit: Callable[[Exec, int], None] | None = None, capture: int = 0) -> None:
        self.exec_id = exec_id
        self.pid = pid
        self.conn = conn
        self.rid = rid
        self.on_exit = on_exit
        self.capture = capture
        self.captured = bytearray()
        self.pipes: dict[int, str] = {}
        self.paused = False  # pipes unwatched: the caller is behind (EXEC_HIGH_WATER)


class Execs:
    def __init__(self, loop: Loop, runtime: Runtime, outbox: Outbox,
                 log: Callable[..., None]) -> None:
        self.loop = loop
        self.runtime = runtime
        self.outbox = outbox
        self.log = log
        self.running: dict[int, Exec] = {}  # by pid
        self.ids: set[str] = set()  # every exec id a caller used: unique per container

    def spawn(self, exec_id: str, process: dict[str, Any], conn: Conn | None = None,
              rid: int = 0, on_exit: Callable[[Exec, int], None] | None = None,
              capture: int = 0) -> Exec:
        """Run *process* in the container (raises :class:`shim.runtime.ExecFailed`). A caller's
        exec (with *conn*) publishes ``task.exec.start``/``exit``; an internal one does not,
        and its stdout and stderr share one pipe (their order kept)."""
        out_r, out_w = os.pipe()
        err_r, err_w = (-1, out_w) if on_exit is not None else os.pipe()
        try:
            pid = self.runtime.exec(exec_id, process, out_w, err_w)
        except BaseException:
            for fd in (out_r, err_r):
                if fd >= 0:
                    os.close(fd)
            raise
        finally:
            os.close(out_w)
            if err_w != out_w:
                os.close(err_w)
        ex = Exec(exec_id, pid, conn, rid, on_exit, capture)
        for fd, name in ((out_r, "stdout"), (err_r, "stderr")):
            if fd >= 0:
                os.set_blocking(fd, False)
                ex.pipes[fd] = name
                self._watch(ex, fd)
        self.running[pid] = ex
        if on_exit is None:
            self.ids.add(exec_id)
            self.log("info", "exec_start", exec_id=exec_id, pid=pid, command=process["command"])
            self.outbox.publish("task.exec.start", {"exec_id": exec_id, "pid": pid})
        return ex

    def _watch(self, ex: Exec, fd: int) -> None:
        self.loop.watch(fd, lambda fd: self._read(ex, fd))

    def _read(self, ex: Exec, fd: int, drain: bool = False) -> None:
        chunks, eof = read_pipe(fd, drain)
        for data in chunks:
            if ex.on_exit is not None:
                room = ex.capture - len(ex.captured)
                if room > 0:
                    ex.captured += data[:room]
            elif ex.conn is not None:
                self.loop.send(ex.conn, wire.item(ex.rid, {"stream": ex.pipes[fd], "data": data}))
        if eof:
            self._drop_pipe(ex, fd)
        elif (not drain and ex.conn is not None and len(ex.conn.out) > EXEC_HIGH_WATER
              and not ex.paused):
            ex.paused = True
            for pipe in ex.pipes:
                self.loop.unwatch(pipe)

    def _drop_pipe(self, ex: Exec, fd: int) -> None:
        if not ex.paused:
            self.loop.unwatch(fd)
        os.close(fd)
        del ex.pipes[fd]

    def exited(self, pid: int, status: int) -> bool:
        """The reaper got *pid*: True if it was one of ours (its exit is handled)."""
        ex = self.running.pop(pid, None)
        if ex is None:
            return False
        for fd in list(ex.pipes):
            self._read(ex, fd, drain=True)
            if fd in ex.pipes:  # a child of the exec'd process holds it: stop reading
                self._drop_pipe(ex, fd)
        if ex.on_exit is not None:
            ex.on_exit(ex, status)
            return True
        exit_status, sig = shim_api.exit_status_of(status)
        self.log("info", "exec_exit", exec_id=ex.exec_id, pid=ex.pid, exit_status=exit_status)
        self.outbox.publish("task.exec.exit", {"exec_id": ex.exec_id, "pid": ex.pid,
                                               "exit_status": exit_status, "signal": sig,
                                               "exited_at": time.time_ns()})
        if ex.conn is not None:
            ex.conn.pending -= 1
            self.loop.send(ex.conn, wire.item(ex.rid, {"exit_status": exit_status,
                                                       "signal": sig}))
            self.loop.send(ex.conn, wire.end(ex.rid))
        return True

    def forget(self, conn: Conn) -> None:
        """The caller left: its processes run on, their output read and dropped."""
        for ex in self.running.values():
            if ex.conn is conn:
                ex.conn = None
        self.drained(None)

    def drained(self, conn: Conn | None) -> None:
        """The caller has taken most of its output: read the exec's pipes again."""
        if conn is not None and len(conn.out) >= EXEC_HIGH_WATER // 4:
            return
        for ex in self.running.values():
            if ex.paused and ex.conn is conn:
                ex.paused = False
                for fd in ex.pipes:
                    self._watch(ex, fd)

    def callers(self) -> list[str]:
        return sorted(e.exec_id for e in self.running.values() if e.on_exit is None)

    def end(self) -> None:
        """The shim is ending: every unfinished exec stream ends with ``unavailable``."""
        for ex in self.running.values():
            if ex.conn is not None:
                self.loop.send(ex.conn, wire.error(ex.rid, "unavailable", f"exec {ex.exec_id}: "
                                                   "the shim exited before the process did"))
