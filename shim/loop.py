"""The shim's event loop: one epoll loop, its timers, signals and client connections.

Everything the shim does runs on this one thread, so there are no locks and no races between an
exit, a timer and a reply. The loop knows nothing of tasks or methods: it reads frames from
connections and hands each decoded message to ``on_message``; it writes replies with bounded
buffers (backpressure: a client that does not read is cut off at :data:`MAX_OUTBUF`); it runs
timers (back-off, health checks, a stop's SIGKILL deadline) from a heap; and it turns signals
into calls through ``signal.set_wakeup_fd`` (SIGCHLD is subscribed to before any child exists,
so no exit can be missed).

Timers use the monotonic clock and have no thread: :meth:`Loop.call_later` returns a
:class:`Timer` that can be cancelled; the loop's ``poll`` sleeps until the earliest one.

``select.epoll`` itself, not :mod:`selectors`: its Python layer (keys, mappings, a dozen
functions run on every event) is pages of the launcher's heap each launcher-forked shim would
touch, and own (bench/shim_pages.py).
"""

from __future__ import annotations

import contextlib
import os
import select
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
#: what the loop calls when a registered fd is ready: ``(fd, mask)``, *mask* of
#: :data:`READ` and :data:`WRITE` (a hang-up or an error is both, as :mod:`selectors` has it)
Handler = Callable[[int, int], None]
READ = 1
WRITE = 2


class ShimError(Exception):
    """A request that fails with an error reply ``{"code", "message"}``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Conn:
    """One client: its decoder (bounded frames), unsent replies (bounded), parked requests,
    and the *owner* of the socket it came in on (None for a shim of its own; in a shared shim,
    the member whose socket it is: :mod:`shim.group`)."""

    __slots__ = ("closing", "decoder", "greeted", "out", "owner", "pending", "sock")

    def __init__(self, sock: socket.socket, owner: Any = None) -> None:
        self.sock = sock
        self.owner = owner
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
        self.log = log
        self.on_message = on_message
        self.on_close = on_close
        self.on_drained = on_drained
        self.on_signal = on_signal
        self.conns: dict[int, Conn] = {}
        self.timers: list[Timer] = []
        self.poller = select.epoll()
        self.handlers: dict[int, tuple[int, Handler]] = {}  # fd -> (mask, handler)
        self.listeners: dict[int, tuple[socket.socket, Any]] = {}  # fd -> (socket, owner)
        self.listen(listener, None)
        # Subscribe to SIGCHLD before any child exists, so no exit can be missed.
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self._register(self._wake_r, READ, self._signalled)

    # -- file descriptors and timers ---------------------------------------------------------

    def _register(self, fd: int, mask: int, handler: Handler) -> None:
        if fd in self.handlers:
            raise KeyError(f"fd {fd} is already registered")
        self.poller.register(fd, _epoll_events(mask))
        self.handlers[fd] = (mask, handler)

    def _modify(self, fd: int, mask: int) -> None:
        current, handler = self.handlers[fd]
        if current != mask:
            self.poller.modify(fd, _epoll_events(mask))
            self.handlers[fd] = (mask, handler)

    def _unregister(self, fd: int) -> None:
        del self.handlers[fd]
        with contextlib.suppress(OSError):  # already closed: the kernel dropped it
            self.poller.unregister(fd)

    def listen(self, listener: socket.socket, owner: Any) -> None:
        """Accept connections on *listener* too; each one's :attr:`Conn.owner` is *owner*."""
        self.listeners[listener.fileno()] = (listener, owner)
        self._register(listener.fileno(), READ, self._accept)

    def watch(self, fd: int, callback: FdCallback) -> None:
        """Call ``callback(fd)`` whenever *fd* is readable."""
        self._register(fd, READ, lambda fd, mask: callback(fd))

    def unwatch(self, fd: int) -> None:
        with contextlib.suppress(KeyError):
            self._unregister(fd)

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
            timeout = self._next_timeout()
            ready = [(fd, events, self.handlers.get(fd)) for fd, events in
                     self.poller.poll(-1 if timeout is None else timeout)]
            for fd, events, registered in ready:
                if registered is None or self.handlers.get(fd) is not registered:
                    continue  # closed (its fd maybe reused) by an earlier handler of this batch
                mask = ((WRITE if events & ~select.EPOLLIN else 0)
                        | (READ if events & ~select.EPOLLOUT else 0)) & registered[0]
                try:
                    registered[1](fd, mask)
                except Exception as exc:  # a bug must cost one event, never the shim
                    self._bug(exc)
            self._run_timers()

    def _signalled(self, fd: int, mask: int) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 512):
                pass
        self.on_signal()

    # -- connections -------------------------------------------------------------------------

    def _accept(self, fd: int, mask: int) -> None:
        listener, owner = self.listeners[fd]
        try:
            sock, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # EMFILE and the like: log, keep serving the others
            self.log("warning", "accept_failed", error=str(exc))
            return
        if len(self.conns) >= MAX_CONNECTIONS:
            sock.close()
            return
        sock.setblocking(False)
        conn = Conn(sock, owner)
        self.conns[sock.fileno()] = conn
        self._register(sock.fileno(), READ, self._on_conn)

    def close(self, conn: Conn) -> None:
        fd = conn.sock.fileno()
        if self.conns.pop(fd, None) is None:
            return
        self._unregister(fd)
        conn.sock.close()
        self.on_close(conn)

    def _on_conn(self, fd: int, mask: int) -> None:
        conn = self.conns.get(fd)
        if conn is None:
            return
        if mask & WRITE:
            self._flush(conn)
        if not mask & READ or not conn.open or conn.closing:
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
        self._modify(conn.sock.fileno(), READ | (WRITE if conn.out else 0))

    def request_of(self, conn: Conn, message: dict[str, Any], roles: set[str],
                   hello: Callable[[], dict[str, Any]]) -> wire.Request | None:
        """The request *message* is, once *conn* has said hello; None when it was the hello
        (answered with ``hello("shim", **hello())``, made only then), a bad hello (refused, the
        connection closed) or not a request (answered with its error)."""
        if not conn.greeted:
            try:
                wire.parse_hello(message, roles=roles)
            except (wire.ProtocolError, wire.RemoteError) as exc:
                self.send(conn, wire.error(None, "protocol", str(exc)))
                self.close_after_flush(conn)
                return None
            conn.greeted = True
            self.send(conn, wire.hello("shim", **hello()))
            return None
        try:
            return wire.parse_request(message)
        except wire.ProtocolError as exc:
            self.send(conn, wire.error(exc.rid, exc.code, str(exc)))
            return None

    def close_after_flush(self, conn: Conn) -> None:
        conn.closing = True
        self._flush(conn)

    def close_all(self, grace: float = 1.0) -> None:
        """Flush what every client is owed (at most *grace* seconds in all), close them and the
        listeners: the shim is ending."""
        self._close_conns(list(self.conns.values()), grace)
        self.conns.clear()
        for listener, _ in self.listeners.values():
            listener.close()
        self.listeners.clear()

    def close_owner(self, owner: Any, grace: float = 1.0) -> None:
        """The same for one member of a shared shim: its listener and its clients, flushed
        (at most *grace* seconds); the loop serves the others on."""
        for fd, (listener, who) in list(self.listeners.items()):
            if who is owner:
                self._unregister(fd)
                del self.listeners[fd]
                listener.close()
        conns = [c for c in self.conns.values() if c.owner is owner]
        for conn in conns:
            fd = conn.sock.fileno()
            del self.conns[fd]
            self._unregister(fd)
        self._close_conns(conns, grace)

    @staticmethod
    def _close_conns(conns: list[Conn], grace: float) -> None:
        deadline = time.monotonic() + grace
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.sock.setblocking(True)
                conn.sock.settimeout(max(0.01, deadline - time.monotonic()))
                conn.sock.sendall(conn.out)
            conn.sock.close()


def _epoll_events(mask: int) -> int:
    return (select.EPOLLIN if mask & READ else 0) | (select.EPOLLOUT if mask & WRITE else 0)
