"""The shim's single-threaded loop: socket API, reaping, output and the task's lifecycle.

One ``selectors`` loop serves everything, so there are no locks and no races between an exit
and a reply: a request that must wait (``wait``, ``stop``, ``delete`` with force) is parked as a
pending reply and answered when the exit is processed; every other request of every connection
keeps being served meanwhile. Signals arrive through ``signal.set_wakeup_fd``; SIGCHLD triggers
a ``waitpid(-1, WNOHANG)`` loop that reaps the init and every orphan reparented to us.

Ordering guarantees (the reasons this process exists):

* the exit file is written (fsynced, renamed) *before* the ``task.exit`` event is queued or any
  waiter answered, so whoever hears of an exit can also find it on disk;
* every event stays in the outbox until ``ack``; each new ``events`` stream gets all of them
  first, then live ones;
* a ``stop`` is carried out by the shim's own timer: it completes if the caller goes away.

Where :mod:`events.shim_api` leaves room, this shim does:

* error codes: ``invalid`` (bad params or request shape), ``unknown_method``, ``conflict``
  (start when not created; delete/shutdown of a live task without force; exec when not
  running, or with an ``exec_id`` used before), ``not_found`` (kill of an exited task without
  ``all``), ``exec_failed`` (start, exec),
  ``protocol`` (bad hello or frame: the connection is then closed), ``internal`` (a bug: the
  request fails, the shim goes on);
* ``kill``/``stop`` take a signal number or name (``"TERM"``, ``"SIGKILL"``); ``stop`` signals
  the init, then SIGKILLs every process of the container; ``timeout`` 0 means SIGKILL at once;
* ``ack`` beyond the last seq is clamped to it (a later event is never dropped by mistake);
* ``delete`` of a ``created`` task kills it (nothing of the user's ran) and, like force,
  answers once it is reaped; after replying the shim SIGKILLs whatever is left of the
  container, ends every ``events`` stream with an end frame, removes its socket and exits;
* ``shutdown`` of a created or running task is a ``conflict`` unless ``force``: then the shim
  exits and the container runs on without its shim (its output pipes close: writes fail);
* ``state`` adds ``exec_error``, ``seq`` (last event), ``acked``, ``runtime``, ``execs``
  (running exec ids) and ``log: {lines, dropped}`` to the contract's fields;
* OOM: the runtime's memory cgroup is watched (its fd in the loop); each wake-up with new
  kernel OOM kills publishes ``task.oom``, and the counter is read once more before the
  init's ``task.exit`` is published, so an OOM kill's ``task.oom`` always comes first;
* ``exec`` output is streamed, never logged; while a caller is behind by
  :data:`EXEC_HIGH_WATER` the process's pipes are not read (it blocks on its writes); a
  caller that leaves has the rest read and dropped, and the exit is still published. When the
  shim ends, an unfinished exec stream ends with an ``unavailable`` error.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import selectors
import signal
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from events import shim_api, wire
from events.domain import DEFAULT_STOP_TIMEOUT
from events.ids import validate_id
from events.signals import InvalidSignal, parse_signal
from shim.logs import CriLog
from shim.osutil import Diag
from shim.runtime import ExecFailed, Runtime

if TYPE_CHECKING:
    from shim.cgroups import OOMWatch

#: Largest request frame we accept: requests are small; this bounds what a client can make us hold.
MAX_REQUEST = 1024 * 1024
#: Unsent output per connection; a client that does not read past this is disconnected.
MAX_OUTBUF = 8 * 1024 * 1024
MAX_CONNECTIONS = 128
MAX_PENDING = 256  # parked replies (wait/stop/delete/streams) per connection
READ_CHUNK = 65536
F_SETPIPE_SZ = 1031
PIPE_SIZE = 1024 * 1024  # the default pipe-max-size
MAX_DRAIN = 16 * 1024 * 1024  # output read at once when the init exits or the shim ends
#: An exec's pipes are not read while its caller has this much unsent: the process then
#: blocks on its own writes (backpressure, as with a terminal) instead of the caller being
#: cut off at MAX_OUTBUF; reading resumes once the caller has taken it.
EXEC_HIGH_WATER = 1024 * 1024
_PENDING = object()  # a handler's result that will be sent later


class ShimError(Exception):
    """A request that fails with an error reply ``{"code", "message"}``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Conn:
    """One client: its decoder (bounded frames), unsent replies (bounded), parked requests."""

    __slots__ = ("closing", "decoder", "greeted", "out", "pending", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.decoder = wire.FrameDecoder(MAX_REQUEST)
        self.out = bytearray()
        self.greeted = False
        self.closing = False  # close once ``out`` is flushed
        self.pending = 0


class Exec:
    """A process started by ``exec``: where its output and exit go."""

    __slots__ = ("conn", "exec_id", "paused", "pid", "pipes", "rid")

    def __init__(self, exec_id: str, pid: int, conn: Conn | None, rid: int) -> None:
        self.exec_id = exec_id
        self.pid = pid
        self.conn = conn  # None once the caller is gone: output is read and dropped
        self.rid = rid
        self.pipes: dict[int, str] = {}
        self.paused = False  # pipes unregistered: the caller is behind (EXEC_HIGH_WATER)


class Shim:
    def __init__(self, directory: str, spec: dict[str, Any], listener: socket.socket,
                 address: str, runtime: Runtime, diag: Diag) -> None:
        self.dir = directory
        self.spec = spec
        self.id: str = spec["id"]
        self.instance: str = spec["instance"]
        self.address = address
        self.runtime = runtime
        self.diag = diag
        self.status = "new"
        self.pid = 0
        self.created_at = 0  # unix ns, once the task is created
        self.exit: dict[str, Any] | None = None
        self.exec_error: dict[str, Any] | None = None
        self.orphans_reaped = 0
        self.seq = 0
        self.acked = 0
        self.outbox: list[dict[str, Any]] = []
        self.streams: list[tuple[Conn, int]] = []
        self.waiters: list[tuple[Conn, int, str]] = []  # (conn, rid, "wait"|"delete")
        self.kill_at: float | None = None  # a stop's SIGKILL deadline (monotonic)
        self.done = False
        self.deleting = False
        self.conns: dict[int, Conn] = {}
        self.pipes: dict[int, bytes] = {}
        self.oom: OOMWatch | None = None
        self.execs: dict[int, Exec] = {}  # by pid, while running
        self.exec_ids: set[str] = set()  # every exec id used: unique per container
        log_conf = spec.get("log") or {}
        self.log = CriLog(os.path.join(directory, shim_api.CONTAINER_LOG),
                          log_conf.get("max_size", 16 << 20), log_conf.get("keep", 3),
                          warn=lambda event, **kw: diag.log("warning", event, **kw))
        self.sel = selectors.DefaultSelector()
        self.listener = listener
        self.sel.register(listener, selectors.EVENT_READ, self._accept)
        # Subscribe to SIGCHLD before any child exists, so no exit can be missed.
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.sel.register(self._wake_r, selectors.EVENT_READ, self._on_signal)
        self.methods: dict[str, Callable[[Conn, int, dict[str, Any]], Any]] = {
            "state": self.m_state, "start": self.m_start, "kill": self.m_kill,
            "stop": self.m_stop, "wait": self.m_wait, "events": self.m_events,
            "ack": self.m_ack, "delete": self.m_delete, "shutdown": self.m_shutdown,
            "exec": self.m_exec,
        }

    # -- lifecycle ----------------------------------------------------------------------------

    def create(self) -> int:
        """Create the container (stopped before exec) and record ``task.create``."""
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            self.pid = self.runtime.create(self.spec, out_w, err_w)
        except BaseException:
            for fd in (out_r, err_r):
                os.close(fd)
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        for fd, name in ((out_r, b"stdout"), (err_r, b"stderr")):
            os.set_blocking(fd, False)
            with contextlib.suppress(OSError):  # a bigger pipe: a burst never blocks the writer
                fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)
            self.pipes[fd] = name
            self.sel.register(fd, selectors.EVENT_READ, self._on_output)
        self._watch_oom()
        self.status = "created"
        self.created_at = time.time_ns()
        self._publish("task.create", {"pid": self.pid, "shim_pid": os.getpid(),
                                      "address": self.address, "instance": self.instance,
                                      "created_at": self.created_at})
        self.diag.log("info", "task_created", pid=self.pid, command=self.spec.get("command"))
        return self.pid

    def _watch_oom(self) -> None:
        """Register the runtime's OOM watch; without one (no cgroup, no memory controller, not
        root) the container runs unwatched and shim.log says why."""
        try:
            self.oom = self.runtime.oom_watch()
        except Exception as exc:
            self.diag.log("warning", "oom_watch_unavailable", error=str(exc))
            return
        if self.oom is not None:
            self.sel.register(self.oom.fileno(), selectors.EVENT_READ, self._on_oom)

    def _on_oom(self, key: selectors.SelectorKey | None = None, mask: int = 0) -> None:
        if self.oom is None:
            return
        kills = self.oom.read()
        if kills:
            self.diag.log("warning", "oom_kill", pid=self.pid, kills=kills)
            self._publish("task.oom", {})

    def _close_oom(self) -> None:
        """Before the cgroup goes: v1 signals the eventfd on removal (a spurious wake-up)."""
        if self.oom is not None:
            self.sel.unregister(self.oom.fileno())
            self.oom.close()
            self.oom = None

    def abort(self) -> None:
        """Undo a half-made start (failure before ready): nothing may be left running."""
        if self.status == "created":
            self.runtime.kill(signal.SIGKILL, True)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
        self._close_oom()
        self.runtime.delete()

    def run(self) -> None:
        """Serve until delete or shutdown; then flush replies, output, and remove the socket."""
        while not self.done:
            timeout = None
            if self.kill_at is not None:
                timeout = max(0.0, self.kill_at - time.monotonic())
            for key, mask in self.sel.select(timeout):
                if self.sel.get_map().get(key.fd) is not key:
                    continue  # closed (its fd maybe reused) by an earlier handler of this batch
                try:
                    key.data(key, mask)
                except Exception as exc:  # a bug must cost one event, never the shim
                    import traceback

                    self.diag.log("error", "handler_failed", error=repr(exc),
                                  traceback=traceback.format_exc())
            if self.kill_at is not None and time.monotonic() >= self.kill_at:
                self.kill_at = None
                self.diag.log("info", "stop_escalated", pid=self.pid, signal=signal.SIGKILL)
                self.runtime.kill(signal.SIGKILL, True)
        self._finish()

    def _finish(self) -> None:
        for conn in list(self.conns.values()):
            for _, rid in [s for s in self.streams if s[0] is conn]:
                self._send(conn, wire.end(rid))
        for ex in self.execs.values():
            if ex.conn is not None:
                self._send(ex.conn, wire.error(ex.rid, "unavailable", f"exec {ex.exec_id}: the "
                                               "shim exited before the process did"))
        deadline = time.monotonic() + 1.0
        for conn in list(self.conns.values()):
            with contextlib.suppress(OSError):
                conn.sock.setblocking(True)
                conn.sock.settimeout(max(0.01, deadline - time.monotonic()))
                conn.sock.sendall(conn.out)
            conn.sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.address)
        self.listener.close()
        if self.deleting:  # a deleted container leaves nothing: kill what is still ours
            self.runtime.kill(signal.SIGKILL, True)
            self._reap_all(timeout=2.0)
        for fd in list(self.pipes):
            self._read_pipe(fd, drain=True)
        self.log.close()
        self._close_oom()
        if self.status != "running" or self.deleting:  # else shutdown(force): it runs on
            try:
                self.runtime.delete()
            except Exception as exc:
                self.diag.log("warning", "runtime_delete_failed", error=str(exc))
        self.diag.log("info", "shim_exit", orphans_reaped=self.orphans_reaped,
                      log_dropped=self.log.dropped_lines)

    # -- events -------------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def _publish(self, etype: str, data: dict[str, Any], seq: int | None = None) -> None:
        event = {"seq": seq or self._next_seq(), "type": etype, "data": data}
        self.outbox.append(event)
        for conn, rid in list(self.streams):
            self._send(conn, wire.item(rid, event))

    # -- reaping and output -------------------------------------------------------------------

    def _on_signal(self, key: selectors.SelectorKey, mask: int) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 512):
                pass
        self._reap()

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._reaped(pid, status)

    def _reaped(self, pid: int, status: int) -> None:
        if pid in self.execs:
            self._exec_exited(self.execs.pop(pid), status)
            return
        if pid != self.pid or self.exit is not None:
            self.orphans_reaped += 1
            return
        self.runtime.pid = 0  # reaped: its pid may be reused, never signal it again
        exit_status, sig = shim_api.exit_status_of(status)
        for fd in list(self.pipes):  # the output it wrote before exiting goes first
            self._read_pipe(fd, drain=True)
        self._on_oom()  # an OOM kill is told before the exit it caused
        seq = self._next_seq()
        record = {"pid": pid, "exit_status": exit_status, "signal": sig,
                  "exited_at": time.time_ns(), "shim_seq": seq, "instance": self.instance}
        try:
            shim_api.write_exit_file(self.dir, record)
        except OSError as exc:  # still tell: the status is in memory and in the event
            self.diag.log("error", "exit_file_failed", dir=self.dir, error=str(exc))
        self.exit = record
        self.status = "stopped"
        self.kill_at = None
        self.diag.log("info", "task_exit", **record)
        self._publish("task.exit", {k: record[k] for k in ("pid", "exit_status", "signal",
                                                           "exited_at")}, seq)
        waiters, self.waiters = self.waiters, []
        self._close_oom()
        if any(kind == "delete" for _, _, kind in waiters):
            # A delete's caller removes our directory as soon as it has the reply (the
            # runtime's --log file is in it): the runtime's state must be gone before then.
            self._runtime_exited()
        for conn, rid, kind in waiters:
            conn.pending -= 1
            self._send(conn, wire.reply(rid, record))
            if kind == "delete":
                self.deleting = self.done = True
        self._runtime_exited()  # after stop/wait replies: they are not delayed by the clean-up

    def _runtime_exited(self) -> None:
        """The runtime's clean-up after the init's exit (``runc delete``); runs once."""
        try:
            self.runtime.exited()
        except Exception as exc:
            self.diag.log("warning", "runtime_cleanup_failed", error=str(exc))

    def _reap_all(self, timeout: float) -> None:
        """Reap every child left (after a SIGKILL of them all), waiting at most *timeout*."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid:
                self._reaped(pid, status)
            else:
                time.sleep(0.005)

    def _exec_exited(self, ex: Exec, status: int) -> None:
        for fd in list(ex.pipes):
            self._read_exec_pipe(ex, fd, drain=True)
            if fd in ex.pipes:  # a child of the exec'd process holds it: stop reading
                self._drop_exec_pipe(ex, fd)
        exit_status, sig = shim_api.exit_status_of(status)
        self.diag.log("info", "exec_exit", exec_id=ex.exec_id, pid=ex.pid,
                      exit_status=exit_status)
        self._publish("task.exec.exit", {"exec_id": ex.exec_id, "pid": ex.pid,
                                         "exit_status": exit_status, "signal": sig,
                                         "exited_at": time.time_ns()})
        if ex.conn is not None:
            ex.conn.pending -= 1
            self._send(ex.conn, wire.item(ex.rid, {"exit_status": exit_status, "signal": sig}))
            self._send(ex.conn, wire.end(ex.rid))

    def _read_exec_pipe(self, ex: Exec, fd: int, drain: bool = False) -> None:
        for _ in range(MAX_DRAIN // READ_CHUNK if drain else 4):
            try:
                data = os.read(fd, READ_CHUNK)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._drop_exec_pipe(ex, fd)
                return
            if ex.conn is not None:
                self._send(ex.conn, wire.item(ex.rid, {"stream": ex.pipes[fd], "data": data}))
                if not drain and len(ex.conn.out) > EXEC_HIGH_WATER and not ex.paused:
                    ex.paused = True
                    for pipe in ex.pipes:
                        self.sel.unregister(pipe)
                    return

    def _drop_exec_pipe(self, ex: Exec, fd: int) -> None:
        if not ex.paused:
            self.sel.unregister(fd)
        os.close(fd)
        del ex.pipes[fd]

    def _resume_execs(self, conn: Conn | None) -> None:
        """The caller has taken its output: read the exec's pipes again."""
        for ex in self.execs.values():
            if ex.paused and ex.conn is conn:
                ex.paused = False
                for fd in ex.pipes:
                    self._watch_exec_pipe(ex, fd)

    def _watch_exec_pipe(self, ex: Exec, fd: int) -> None:
        self.sel.register(fd, selectors.EVENT_READ,
                          lambda key, mask: self._read_exec_pipe(ex, key.fd))

    def _on_output(self, key: selectors.SelectorKey, mask: int) -> None:
        self._read_pipe(key.fd)

    def _read_pipe(self, fd: int, drain: bool = False) -> None:
        """Read what the pipe holds (a few chunks, or with *drain* until empty, at most
        :data:`MAX_DRAIN` bytes): never block, never wait for EOF (orphans may hold the pipe
        open, and keep writing, long after the init exited)."""
        stream = self.pipes[fd]
        for _ in range(MAX_DRAIN // READ_CHUNK if drain else 4):
            try:
                data = os.read(fd, READ_CHUNK)
            except BlockingIOError:
                return
            except OSError as exc:
                self.diag.log("warning", "read_output_failed", stream=stream, error=str(exc))
                data = b""
            if not data:
                self.sel.unregister(fd)
                os.close(fd)
                del self.pipes[fd]
                self.log.finish(stream)
                return
            self.log.feed(stream, data)

    # -- connections --------------------------------------------------------------------------

    def _accept(self, key: selectors.SelectorKey, mask: int) -> None:
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # EMFILE and the like: log, keep serving the others
            self.diag.log("warning", "accept_failed", error=str(exc))
            return
        if len(self.conns) >= MAX_CONNECTIONS:
            sock.close()
            return
        sock.setblocking(False)
        conn = Conn(sock)
        self.conns[sock.fileno()] = conn
        self.sel.register(sock, selectors.EVENT_READ, self._on_conn)

    def _close(self, conn: Conn) -> None:
        fd = conn.sock.fileno()
        if self.conns.pop(fd, None) is None:
            return
        self.sel.unregister(conn.sock)
        conn.sock.close()
        self.streams = [s for s in self.streams if s[0] is not conn]
        self.waiters = [w for w in self.waiters if w[0] is not conn]
        for ex in self.execs.values():
            if ex.conn is conn:
                ex.conn = None  # its output is read and dropped from now on
        self._resume_execs(None)

    def _on_conn(self, key: selectors.SelectorKey, mask: int) -> None:
        conn = self.conns.get(key.fd)
        if conn is None:
            return
        if mask & selectors.EVENT_WRITE:
            self._flush(conn)
        if not mask & selectors.EVENT_READ or conn.sock.fileno() < 0 or conn.closing:
            return
        try:
            data = conn.sock.recv(READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        try:
            messages = conn.decoder.feed(data)
        except wire.ProtocolError as exc:
            self._send(conn, wire.error(exc.rid, exc.code, str(exc)))
            self._close_after_flush(conn)
            return
        for message in messages:
            if conn.closing or conn.sock.fileno() < 0:
                return
            self._on_message(conn, message)

    def _on_message(self, conn: Conn, message: dict[str, Any]) -> None:
        if not conn.greeted:
            try:
                wire.parse_hello(message, roles={"supervisor", "client"})
            except (wire.ProtocolError, wire.RemoteError) as exc:
                self._send(conn, wire.error(None, "protocol", str(exc)))
                self._close_after_flush(conn)
                return
            conn.greeted = True
            self._send(conn, wire.hello("shim", id=self.id, instance=self.instance,
                                        pid=os.getpid()))
            return
        try:
            req = wire.parse_request(message)
        except wire.ProtocolError as exc:
            self._send(conn, wire.error(exc.rid, exc.code, str(exc)))
            return
        handler = self.methods.get(req.method)
        try:
            if handler is None:
                raise ShimError("unknown_method", f"unknown method {req.method!r}; known: "
                                f"{sorted(self.methods)}")
            result = handler(conn, req.rid, req.params)
        except ShimError as exc:
            self._send(conn, wire.error(req.rid, exc.code, str(exc)))
            return
        except Exception as exc:  # a bug must cost one request, never the shim
            self.diag.log("error", "request_failed", method=req.method, error=repr(exc))
            self._send(conn, wire.error(req.rid, "internal", f"{req.method}: {exc!r}"))
            return
        if result is not _PENDING:
            self._send(conn, wire.reply(req.rid, result))

    def _send(self, conn: Conn, message: dict[str, Any]) -> None:
        if conn.sock.fileno() < 0:
            return
        conn.out += wire.encode(message)
        if len(conn.out) > MAX_OUTBUF:
            self.diag.log("warning", "client_too_slow", buffered=len(conn.out))
            self._close(conn)
            return
        self._flush(conn)

    def _flush(self, conn: Conn) -> None:
        try:
            sent = conn.sock.send(conn.out) if conn.out else 0
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close(conn)
            return
        del conn.out[:sent]
        if len(conn.out) < EXEC_HIGH_WATER // 4 and self.execs:
            self._resume_execs(conn)
        if conn.closing and not conn.out:
            self._close(conn)
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.out else 0)
        if self.sel.get_key(conn.sock).events != events:
            self.sel.modify(conn.sock, events, self._on_conn)

    def _close_after_flush(self, conn: Conn) -> None:
        conn.closing = True
        self._flush(conn)

    def _park(self, conn: Conn) -> None:
        if conn.pending >= MAX_PENDING:
            raise ShimError("invalid", f"over {MAX_PENDING} pending requests on one connection")
        conn.pending += 1

    # -- methods ------------------------------------------------------------------------------

    def m_state(self, conn: Conn, rid: int, params: dict[str, Any]) -> dict[str, Any]:
        return {"id": self.id, "instance": self.instance, "pid": self.pid,
                "status": self.status, "exit": self.exit, "exec_error": self.exec_error,
                "orphans_reaped": self.orphans_reaped, "shim_pid": os.getpid(),
                "seq": self.seq, "acked": self.acked, "runtime": self.spec.get("runtime"),
                "execs": sorted(e.exec_id for e in self.execs.values()),
                "log": {"lines": self.log.written_lines, "dropped": self.log.dropped_lines}}

    def m_start(self, conn: Conn, rid: int, params: dict[str, Any]) -> dict[str, Any]:
        if self.status != "created":
            raise ShimError("conflict", f"cannot start a task that is {self.status}")
        try:
            self.runtime.start()
        except ExecFailed as exc:
            self.exec_error = {"errno": exc.errno, "message": str(exc)}
            self.diag.log("error", "exec_failed", **self.exec_error)
            self._reap_failed_start()
            raise ShimError("exec_failed", f"{exc} (errno {exc.errno})") from None
        self.status = "running"
        started_at = time.time_ns()
        self._publish("task.start", {"pid": self.pid, "started_at": started_at})
        return {"pid": self.pid, "started_at": started_at}

    def _reap_failed_start(self) -> None:
        """After a failed start the init is exiting (127): reap it now, so the exit is
        recorded before the error reply. A runtime whose init lingers gets SIGKILL after 2 s:
        the loop must never block on it."""
        deadline = time.monotonic() + 2.0
        flags = os.WNOHANG
        with contextlib.suppress(ChildProcessError):
            while True:
                pid, status = os.waitpid(self.pid, flags)
                if pid:
                    self._reaped(pid, status)
                    return
                if time.monotonic() > deadline:
                    self.runtime.kill(signal.SIGKILL, True)
                    flags = 0
                time.sleep(0.001)

    def m_kill(self, conn: Conn, rid: int, params: dict[str, Any]) -> None:
        sig = _signal_param(params, "signal", signal.SIGTERM)
        if self.status == "stopped":
            if params.get("all"):  # leftovers of an exited init are still ours to signal
                self.runtime.kill(sig, True)
                return None
            raise ShimError("not_found", "the task has exited")
        self.runtime.kill(sig, bool(params.get("all", False)))
        return None

    def m_stop(self, conn: Conn, rid: int, params: dict[str, Any]) -> Any:
        timeout = params.get("timeout", self.spec.get("stop_timeout", DEFAULT_STOP_TIMEOUT))
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout < 0:
            raise ShimError("invalid", f"stop timeout must be a number >= 0, got {timeout!r}")
        sig = _signal_param(params, "signal", self.spec.get("stop_signal") or signal.SIGTERM)
        if self.exit is not None:
            return self.exit
        self._park(conn)
        self.waiters.append((conn, rid, "wait"))
        deadline = time.monotonic() + timeout
        if self.kill_at is None or deadline < self.kill_at:
            self.kill_at = deadline
        self.diag.log("info", "stop", pid=self.pid, signal=sig, timeout=timeout)
        self.runtime.kill(sig if timeout > 0 else signal.SIGKILL, timeout <= 0)
        return _PENDING

    def m_wait(self, conn: Conn, rid: int, params: dict[str, Any]) -> Any:
        if self.exit is not None:
            return self.exit
        self._park(conn)
        self.waiters.append((conn, rid, "wait"))
        return _PENDING

    def m_events(self, conn: Conn, rid: int, params: dict[str, Any]) -> Any:
        self._park(conn)
        for event in self.outbox:
            self._send(conn, wire.item(rid, event))
        if conn.sock.fileno() >= 0:
            self.streams.append((conn, rid))
        return _PENDING

    def m_ack(self, conn: Conn, rid: int, params: dict[str, Any]) -> None:
        seq = params.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise ShimError("invalid", f"ack needs an integer seq >= 0, got {seq!r}")
        self.acked = max(self.acked, min(seq, self.seq))
        self.outbox = [e for e in self.outbox if e["seq"] > self.acked]
        return None

    def m_delete(self, conn: Conn, rid: int, params: dict[str, Any]) -> Any:
        if self.exit is not None:
            self.deleting = self.done = True
            return self.exit
        if self.status == "running" and not params.get("force"):
            raise ShimError("conflict", "the task is running; stop it first or delete with force")
        self._park(conn)
        self.waiters.append((conn, rid, "delete"))
        self.runtime.kill(signal.SIGKILL, True)
        return _PENDING

    def m_shutdown(self, conn: Conn, rid: int, params: dict[str, Any]) -> None:
        if self.status in ("created", "running") and not params.get("force"):
            raise ShimError("conflict", f"the task is {self.status}; shutdown would leave it "
                            "without its shim: delete it, or shutdown with force")
        self.done = True
        return None

    def m_exec(self, conn: Conn, rid: int, params: dict[str, Any]) -> Any:
        exec_id, process = self._exec_params(params)
        if self.status != "running" or self.exit is not None or self.done:
            raise ShimError("conflict", f"cannot exec in a task that is {self.status}")
        if exec_id in self.exec_ids:
            raise ShimError("conflict", f"exec id {exec_id!r} was used before in this container")
        self._park(conn)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            pid = self.runtime.exec(exec_id, process, out_w, err_w)
        except ExecFailed as exc:
            conn.pending -= 1
            os.close(out_r)
            os.close(err_r)
            self.diag.log("warning", "exec_failed", exec_id=exec_id, error=str(exc))
            raise ShimError("exec_failed", str(exc)) from None
        finally:
            os.close(out_w)
            os.close(err_w)
        ex = Exec(exec_id, pid, conn, rid)
        for fd, name in ((out_r, "stdout"), (err_r, "stderr")):
            os.set_blocking(fd, False)
            ex.pipes[fd] = name
            self._watch_exec_pipe(ex, fd)
        self.execs[pid] = ex
        self.exec_ids.add(exec_id)
        self.diag.log("info", "exec_start", exec_id=exec_id, pid=pid, command=process["command"])
        self._publish("task.exec.start", {"exec_id": exec_id, "pid": pid})
        return _PENDING

    def _exec_params(self, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        exec_id = params.get("exec_id")
        try:
            validate_id(exec_id)
        except ValueError:
            raise ShimError("invalid", f"exec_id must be 1-64 characters from [A-Za-z0-9_.-], "
                            f"starting with a letter or digit; got {exec_id!r}") from None
        command = params.get("command")
        if (not isinstance(command, list) or not command
                or not all(isinstance(a, str) for a in command)):
            raise ShimError("invalid", f"exec command must be a non-empty list of strings, "
                            f"got {command!r}")
        env = params.get("env")
        if env is None:
            env = self.spec.get("env") or {}
        if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                for k, v in env.items()):
            raise ShimError("invalid", f"exec env must be a map of strings, got {env!r}")
        cwd = params.get("cwd") or self.spec.get("cwd")
        if cwd is not None and not isinstance(cwd, str):
            raise ShimError("invalid", f"exec cwd must be a string, got {cwd!r}")
        return exec_id, {"command": command, "env": env, "cwd": cwd,
                         "user": self.spec.get("user")}


def _signal_param(params: dict[str, Any], name: str, default: int) -> int:
    try:
        return parse_signal(params.get(name, default))
    except InvalidSignal as exc:
        raise ShimError("invalid", f"{name}: {exc}") from None
