"""The shim's event loop: one ``selectors`` loop, its timers, signals and client connections.

Everything the shim does runs on this one thread, so there are no locks and no races between an
exit, a timer and a reply. The loop knows nothing of tasks or methods: it reads frames from
connections and hands each decoded message to ``on_message``; it writes replies with bounded
buffers (backpressure: a client that does not read is cut off at :data:`MAX_OUTBUF`); it runs
timers (back-off, health checks, a stop's SIGKILL deadline) from a heap; and it turns signals
into calls through ``signal.set_wakeup_fd`` (SIGCHLD is subscribed to before any child exists,
so no exit can be missed).

Timers use the monotonic clock and have no thread: :meth:`Loop.call_later` returns a
:class:`Timer` that can be cancelled; the loop's ``select`` sleeps until the earliest one.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

from events import wire

#: Largest request frame we accept: requests are small; this bounds what a client can make us hold.
MAX_REQUEST = 1024 * 1024
#: Unsent output per connection; a client that does not read past this is disconnected.
MAX_OUTBUF = 8 * 1024 * 1024
MAX_CONNECTIONS = 128
MAX_PENDING = 256  # parked replies (wait/stop/delete/streams/execs) per connection
READ_CHUNK = 65536

FdCallback = Callable[[int], None]


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
        self.pending = 0  # parked requests (at most MAX_PENDING)

    @property
    def open(self) -> bool:
        return self.sock.fileno() >= 0


def park(conn: Conn) -> None:
    """Count one more request of *conn* answered later; bounded per connection."""
    if conn.pending >= MAX_PENDING:
        raise ShimError("invalid", f"over {MAX_PENDING} pending requests on one connection")
    conn.pending += 1


class Timer:
    """A call the loop makes at ``when`` (monotonic seconds) unless cancelled first."""

    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def __lt__(self, other: Timer) -> bool:
        return self.when < other.when


class Loop:
    """Selectors, timers, signals and connections. Handlers are plain callables:

    * ``on_message(conn, message)`` for every decoded frame of a connection;
    * ``on_close(conn)`` once a connection is closed (parked requests are forgotten there);
    * ``on_drained(conn)`` whenever a connection's unsent output went down (the exec module
      resumes reading a paused process's pipes);
    * ``on_signal()`` after signals arrived (the shim reaps).
    """

    def __init__(self, listener: socket.socket, log: Callable[..., None],
                 on_message: Callable[[Conn, dict[str, Any]], None],
                 on_close: Callable[[Conn], None], on_drained: Callable[[Conn], None],
                 on_signal: Callable[[], None]) -> None:
        self.listener = listener
        self.log = log
        self.on_message = on_message
        self.on_close = on_close
        self.on_drained = on_drained
        self.on_signal = on_signal
        self.conns: dict[int, Conn] = {}
        self.timers: list[Timer] = []
        self.sel = selectors.DefaultSelector()
        self.sel.register(listener, selectors.EVENT_READ, self._accept)
        # Subscribe to SIGCHLD before any child exists, so no exit can be missed.
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.sel.register(self._wake_r, selectors.EVENT_READ, self._signalled)

    # -- file descriptors and timers ---------------------------------------------------------

    def watch(self, fd: int, callback: FdCallback) -> None:
        """Call ``callback(fd)`` whenever *fd* is readable."""
        self.sel.register(fd, selectors.EVENT_READ, lambda key, mask: callback(key.fd))

    def unwatch(self, fd: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(fd)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """A list, not a heap: a shim has a handful of timers at most (a stop's deadline, a
        back-off, a health check's interval and timeout), and heapq costs every shim 30 kB."""
        timer = Timer(time.monotonic() + max(0.0, delay), callback)
        self.timers.append(timer)
        return timer

    def _next_timeout(self) -> float | None:
        self.timers = [t for t in self.timers if not t.cancelled]
        if not self.timers:
            return None
        return max(0.0, min(t.when for t in self.timers) - time.monotonic())

    def _run_timers(self) -> None:
        now = time.monotonic()
        for timer in sorted(t for t in self.timers if t.when <= now):
            if not timer.cancelled:  # (an earlier callback of this batch may cancel it)
                timer.cancelled = True  # ran: a later cancel() is harmless
                self._guarded(timer.callback)

    def _guarded(self, call: Callable[[], None]) -> None:
        try:
            call()
        except Exception as exc:  # a bug must cost one event, never the shim
            self._bug(exc)

    def _bug(self, exc: Exception) -> None:
        import traceback

        self.log("error", "handler_failed", error=repr(exc), traceback=traceback.format_exc())

    def run(self, done: Callable[[], bool]) -> None:
        """Serve until ``done()`` is true (checked after every batch of events and timers)."""
        while not done():
            for key, mask in self.sel.select(self._next_timeout()):
                if self.sel.get_map().get(key.fd) is not key:
                    continue  # closed (its fd maybe reused) by an earlier handler of this batch
                try:
                    key.data(key, mask)
                except Exception as exc:  # a bug must cost one event, never the shim
                    self._bug(exc)
            self._run_timers()

    def _signalled(self, key: selectors.SelectorKey, mask: int) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 512):
                pass
        self.on_signal()

    # -- connections -------------------------------------------------------------------------

    def _accept(self, key: selectors.SelectorKey, mask: int) -> None:
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # EMFILE and the like: log, keep serving the others
            self.log("warning", "accept_failed", error=str(exc))
            return
        if len(self.conns) >= MAX_CONNECTIONS:
            sock.close()
            return
        sock.setblocking(False)
        conn = Conn(sock)
        self.conns[sock.fileno()] = conn
        self.sel.register(sock, selectors.EVENT_READ, self._on_conn)

    def close(self, conn: Conn) -> None:
        fd = conn.sock.fileno()
        if self.conns.pop(fd, None) is None:
            return
        self.sel.unregister(conn.sock)
        conn.sock.close()
        self.on_close(conn)

    def _on_conn(self, key: selectors.SelectorKey, mask: int) -> None:
        conn = self.conns.get(key.fd)
        if conn is None:
            return
        if mask & selectors.EVENT_WRITE:
            self._flush(conn)
        if not mask & selectors.EVENT_READ or not conn.open or conn.closing:
            return
        try:
            data = conn.sock.recv(READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.close(conn)
            return
        try:
            messages = conn.decoder.feed(data)
        except wire.ProtocolError as exc:
            self.send(conn, wire.error(exc.rid, exc.code, str(exc)))
            self.close_after_flush(conn)
            return
        for message in messages:
            if conn.closing or not conn.open:
                return
            self.on_message(conn, message)

    def send(self, conn: Conn, message: dict[str, Any]) -> None:
        if not conn.open:
            return
        conn.out += wire.encode(message)
        if len(conn.out) > MAX_OUTBUF:
            self.log("warning", "client_too_slow", buffered=len(conn.out))
            self.close(conn)
            return
        self._flush(conn)

    def _flush(self, conn: Conn) -> None:
        try:
            sent = conn.sock.send(conn.out) if conn.out else 0
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.close(conn)
            return
        del conn.out[:sent]
        if sent:
            self.on_drained(conn)
        if conn.closing and not conn.out:
            self.close(conn)
            return
        if not conn.open:
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.out else 0)
        if self.sel.get_key(conn.sock).events != events:
            self.sel.modify(conn.sock, events, self._on_conn)

    def close_after_flush(self, conn: Conn) -> None:
        conn.closing = True
        self._flush(conn)

    def close_all(self, grace: float = 1.0) -> None:
        """Flush what every client is owed (at most *grace* seconds in all), close them and the
        listener: the shim is ending."""
        deadline = time.monotonic() + grace
        for conn in list(self.conns.values()):
            with contextlib.suppress(OSError):
                conn.sock.setblocking(True)
                conn.sock.settimeout(max(0.01, deadline - time.monotonic()))
                conn.sock.sendall(conn.out)
            conn.sock.close()
        self.conns.clear()
        self.listener.close()
