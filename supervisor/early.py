"""The early server: the read-only requests answered from the recovered state while the rest
of the daemon (trio, structlog, the services) is still being loaded.

Loading the full daemon costs several times what rebuilding its state does, and a client
waiting after a restart (``supervisorctl ps``, a health check) needs only the state. So
``supervisord`` first opens the log (its lock), binds the API socket and rebuilds the state
(:mod:`supervisor.restore`: no trio), then starts this server in a thread and loads the rest
in the main thread meanwhile. This server:

* accepts on the API socket, checks the peer's credentials and answers the hello as the full
  server would (:mod:`supervisor.server`);
* answers :data:`EARLY_METHODS` -- read-only, and answered from the recovered state exactly as
  the full server will (:mod:`supervisor.rows`), containers that may still run shown
  ``unknown`` unless proven running (:mod:`supervisor.probe`: the kernel's word, checked
  before the first answer);
* answers Supervisor's read-only XML-RPC methods (:mod:`supervisor.sv_view`, Supervisor's
  UNKNOWN for ``unknown``) on ``ROOT/supervisor.sock``, from the plainest HTTP requests
  (:mod:`supervisor.httpreq`); a malformed XML-RPC body gets the full server's 400 and close;
* leaves everything else alone: at the first frame it does not answer (another method, a bad
  frame, a refused peer, a stream; on HTTP, another method or route, or a request that is not
  of the plainest kind) the connection is *parked*: nothing more is read from it,
  and it goes to the full server at the handover with every byte it sent that was not answered.
  A mutating call made in the early window therefore waits for the full server and is served
  by it: never refused, never answered from here.

:meth:`EarlyServer.handover` stops the thread and returns the listening socket's connections
(:class:`Handed`: the socket, what it sent that was not served, what was not yet written to
it); the full server goes on with each as if it had accepted it (``Server.serve_handed``), and
accepts on the same listening socket from then on: a client connecting meanwhile waits in the
socket's backlog. Nothing here appends or acknowledges anything: the log has one writer (the
full daemon's), and a kill -9 at any moment of the early window or the handover loses nothing
a client was told.
"""

from __future__ import annotations

import os
import selectors
import socket
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from events import wire
from supervisor import logsetup, probe, projection, rows
from supervisor.conncap import default_max_connections, fits
from supervisor.peercred import Creds, allowed, peer_creds
from supervisor.protocol import STATES
from supervisor.version import VERSION

if TYPE_CHECKING:
    from events.log import EventLog
    from supervisor import httpreq, sv_view

__all__ = ["EARLY_METHODS", "About", "EarlyServer", "Handed"]

log = logsetup.get_logger("supervisord.early")

#: The methods answered before the handover: read-only, and answerable from the state alone
#: (``inspect`` of a container with a health check asks its shim: not here; ``xmlrpc``: only
#: Supervisor's read-only methods, :mod:`supervisor.sv_view`).
EARLY_METHODS = frozenset({"ps", "status", "info", "inspect", "xmlrpc"})
#: Connections held before the handover; more wait in the socket's backlog (never refused).
MAX_EARLY_CONNECTIONS = 256
_RECV = 65536
#: The interpreter's default thread switch interval, restored at the handover (the daemon
#: shortens it while this server answers between its imports).
DEFAULT_SWITCH_INTERVAL = 0.005

UNKNOWN = "unknown"


class Handed(NamedTuple):
    """A connection the early server accepted, for the full server to go on with."""

    sock: socket.socket
    creds: Creds
    #: the hello was answered (the peer's credentials were allowed)
    greeted: bool
    #: bytes the peer sent that were not served: the full server reads these first
    unread: bytes
    #: replies not yet written to the peer: the full server writes these first
    unsent: bytes
    #: accepted on ``ROOT/supervisor.sock`` (HTTP: Supervisor's XML-RPC), not the API socket
    http: bool = False
    #: answered with an error that ends the connection: written, then closed
    closing: bool = False


class About(NamedTuple):
    """What ``info`` says beside the state, known before the early server starts."""

    root: str
    socket: str
    snapshot_seq: int
    log_id: str


class _Conn:
    """One connection the early server holds."""

    __slots__ = ("admitted", "closing", "creds", "greeted", "http", "parked", "sock", "unread",
                 "unsent")

    def __init__(self, sock: socket.socket, creds: Creds, http: bool = False) -> None:
        self.sock = sock
        self.creds = creds
        self.http = http
        #: within the connection cap, with credentials the full server allows: served here
        self.admitted = False
        self.greeted = False
        self.parked = False
        self.closing = False
        self.unread = bytearray()
        self.unsent = bytearray()


class EarlyServer:
    """The early server of one start (see the module's docstring). Its records are named
    tuples and slotted classes, not dataclasses: making a dataclass costs ~0.5-1 ms, paid
    before the first answer."""

    def __init__(self, sock: socket.socket, state: projection.State, unreconciled: Iterable[str],
                 group_gid: int | None, root: Path, this_boot: str,
                 previous_boot: str | None, *, http: socket.socket | None = None,
                 eventlog: EventLog | None = None, about: About | None = None,
                 cap: int | None = None) -> None:
        self._listener = sock
        #: ``ROOT/supervisor.sock`` (Supervisor's XML-RPC over HTTP), when bound
        self._http = http
        self._eventlog = eventlog
        self._about = about
        self._view: sv_view.View | None = None
        self._state = state
        self._unreconciled = set(unreconciled)
        self._group_gid = group_gid
        self._my_uid = os.geteuid()
        self._started = time.monotonic()
        self._candidates = [state.containers[cid] for cid in sorted(self._unreconciled)]
        self._root = root
        self._this_boot = this_boot
        self._previous_boot = previous_boot
        self._proven: set[str] = set()
        self._sel = selectors.DefaultSelector()
        self._conns: dict[int, _Conn] = {}
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread = threading.Thread(target=self._run, name="early-server", daemon=True)
        self._handed: list[Handed] = []
        #: the API server's connection cap (:mod:`supervisor.conncap`), and the connections
        #: admitted under it so far (the full server counts them as its own)
        self.cap = cap or default_max_connections()
        self._admitted = {False: 0, True: 0}  # by ``http``
        #: answered requests, by method (tests and the start-up log line)
        self.answered: dict[str, int] = {}
        self.error: BaseException | None = None

    @property
    def listener(self) -> socket.socket:
        """The API socket (listening): the full server accepts on it after the handover."""
        return self._listener

    @property
    def http_listener(self) -> socket.socket | None:
        """``ROOT/supervisor.sock`` (listening), for the HTTP server after the handover."""
        return self._http

    @property
    def proven(self) -> set[str]:
        """The recovered containers proven running (:mod:`supervisor.probe`), shown so."""
        return set(self._proven)

    def start(self) -> None:
        self._thread.start()

    def handover(self) -> list[Handed]:
        """Stop serving; every connection held, for the full server. Idempotent."""
        if self._thread.is_alive():
            os.write(self._wake_w, b"x")
            self._thread.join()
        sys.setswitchinterval(DEFAULT_SWITCH_INTERVAL)
        if self._wake_r >= 0:
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1
        handed, self._handed = self._handed, []
        return handed

    # -- the loop --------------------------------------------------------------------------------

    def _run(self) -> None:
        sel = self._sel
        try:
            # before the first answer (connections wait in the backlog meanwhile): /proc and
            # a lock per container, no shim woken
            self._proven = probe.proven_running(self._root, self._candidates, self._this_boot,
                                                self._previous_boot)
            self._unreconciled -= self._proven
            self._listener.setblocking(False)
            sel.register(self._listener, selectors.EVENT_READ, "accept")
            if self._http is not None:
                self._http.setblocking(False)
                sel.register(self._http, selectors.EVENT_READ, "accept-http")
            sel.register(self._wake_r, selectors.EVENT_READ, "wake")
            while True:
                for key, mask in sel.select():
                    if key.data == "wake":
                        return
                    if key.data == "accept":
                        self._accept(self._listener, http=False)
                    elif key.data == "accept-http":
                        self._accept(key.fileobj, http=True)  # type: ignore[arg-type]
                    else:
                        self._io(key.data, mask)
        except BaseException as exc:  # a bug here must not lose a connection: hand them over
            self.error = exc
        finally:
            self._stop()

    def _stop(self) -> None:
        for conn in self._conns.values():
            self._handed.append(Handed(conn.sock, conn.creds, conn.greeted, bytes(conn.unread),
                                       bytes(conn.unsent), conn.http, conn.closing))
        self._conns.clear()
        self._sel.close()
        self._listener.setblocking(True)
        if self._http is not None:
            self._http.setblocking(True)

    def _accept(self, listener: socket.socket, http: bool) -> None:
        while len(self._conns) < MAX_EARLY_CONNECTIONS:
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE: the rest wait in the backlog for the full server
                log.warning("accept failed", server="http-unix (early)" if http else
                            "api (early)", error=str(exc))
                self._sel.unregister(listener)
                return
            try:
                creds = peer_creds(sock)
            except OSError:
                creds = (0, -1, -1)  # nobody: the full server's rule refuses it
            sock.setblocking(False)
            conn = _Conn(sock, creds, http)
            # the full server's rules, applied by the full server: a peer it refuses (its
            # credentials, or over its server's connection cap, the last slot root's) is
            # parked unread
            if fits(self._admitted[http], self.cap, creds[1]) and \
                    allowed(creds, self._my_uid, self._group_gid):
                conn.admitted = True
                self._admitted[http] += 1
                self._sel.register(sock, selectors.EVENT_READ, conn)
            else:
                conn.parked = True
            self._conns[sock.fileno()] = conn
        for full in (self._listener, self._http):  # full: the backlogs hold the rest
            if full is not None and full.fileno() in self._sel.get_map():
                self._sel.unregister(full)

    def _io(self, conn: _Conn, mask: int) -> None:
        if mask & selectors.EVENT_READ and not conn.parked and not conn.closing:
            try:
                data = conn.sock.recv(_RECV)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                data = b""
            if data == b"":  # the peer left: nothing to hand over
                self._drop(conn)
                return
            if data:
                conn.unread += data
                self._serve(conn)  # flushes what it answered
                return
        if mask & selectors.EVENT_WRITE:
            self._flush(conn)

    def _serve(self, conn: _Conn) -> None:
        """Answer the frames at the head of ``conn.unread`` while they are ours to answer."""
        if conn.http:
            self._serve_http(conn)
            return
        while not conn.parked and (head := _frame(conn.unread)):
            message, size = head
            if message is None:
                conn.parked = True
            elif not conn.greeted:
                conn.greeted = self._hello(conn, message)
                conn.parked = not conn.greeted
            elif (answer := self._answer(conn, message)) is not None:
                try:
                    conn.unsent += wire.encode(answer)
                except wire.FrameTooLarge:
                    conn.parked = True  # the full server answers it (with its error)
            if conn.parked:
                break
            del conn.unread[:size]
        self._flush(conn)

    def _hello(self, conn: _Conn, message: dict[str, Any]) -> bool:
        try:
            wire.parse_hello(message, roles={"client"})
        except (wire.ProtocolError, wire.RemoteError):
            return False
        conn.unsent += wire.encode(wire.hello("daemon", version=VERSION, pid=os.getpid()))
        return True

    def _answer(self, conn: _Conn, message: dict[str, Any]) -> dict[str, Any] | None:
        """The reply to a request of :data:`EARLY_METHODS`, or None (parked)."""
        try:
            req = wire.parse_request(message)
        except wire.ProtocolError:
            req = None
        if req is None or req.method not in EARLY_METHODS:
            conn.parked = True
            return None
        try:
            result = self._result(req.method, req.params)
        except _NotHere:
            conn.parked = True
            return None
        self.answered[req.method] = self.answered.get(req.method, 0) + 1
        return wire.reply(req.rid, result)

    def _result(self, method: str, params: dict[str, Any]) -> Any:
        """The full server's result of ``method`` (:mod:`supervisor.commands`), from the
        recovered state; :class:`_NotHere` when only the full server can answer."""
        state = self._state
        if method == "ps":
            return rows.ps_rows(state.containers.values(), self._shown, params)
        if method == "status":
            return {"ok": True, "pid": os.getpid(),
                    "uptime": time.monotonic() - self._started,
                    "last_seq": state.last_seq, "reconciling": True}
        if method == "info" and self._about is not None:
            counts = dict.fromkeys(STATES, 0)
            for c in state.containers.values():
                shown = self._shown(c)
                counts[shown] = counts.get(shown, 0) + 1
            about = self._about
            # no shim linked and no subscriber yet: the full server's counts at this moment
            return {"version": VERSION, "pid": os.getpid(), "root": about.root,
                    "socket": about.socket, "last_seq": state.last_seq,
                    "containers": counts, "shims": 0, "snapshot_seq": about.snapshot_seq,
                    "subscribers": 0, "skipped_events": 0, "log_id": about.log_id}
        if method == "inspect" and self._eventlog is not None:
            cid = params.get("id")
            found = state.containers.get(cid) if isinstance(cid, str) else None
            if found is None or found.spec.get("health"):  # errors, the shim's health log
                raise _NotHere
            try:
                hist = rows.history(self._eventlog, found, state.last_seq)
            except Exception:  # the full server says why (and still answers)
                raise _NotHere from None
            return rows.inspect_row(found, self._shown(found), hist, None)
        if method == "xmlrpc":
            sv, fault = self._supervisor()
            try:
                value = sv.call(self._supervisor_view(), params.get("name"),
                                params.get("args") or [])
            except sv.NotReadOnly:
                raise _NotHere from None
            except fault as exc:
                return {"fault": {"code": exc.code, "string": exc.text}}
            return {"result": value}
        raise _NotHere

    # -- Supervisor's XML-RPC over HTTP (ROOT/supervisor.sock) ------------------------------

    def _supervisor(self) -> tuple[Any, type[Any]]:
        """:mod:`supervisor.sv_view` and its Fault: imported at the first use (a daemon nobody
        asks that way does not pay for them)."""
        from supervisor import sv_view
        from supervisor.sv_xmlrpc import Fault

        return sv_view, Fault

    def _supervisor_view(self) -> sv_view.View:
        if self._view is None:
            sv, _ = self._supervisor()
            self._view = sv.View(self._state.containers, self._shown, self._root / "shims")
        return self._view

    def _serve_http(self, conn: _Conn) -> None:
        """Answer the plain ``POST /RPC2`` requests at the head of ``conn.unread`` while they
        call read-only methods (:mod:`supervisor.httpreq`, :mod:`supervisor.sv_view`)."""
        from supervisor import httpreq  # at the first HTTP bytes, as the rest of this path

        while not conn.parked and not conn.closing:
            try:
                req = httpreq.parse(conn.unread)
            except httpreq.NotPlain:
                conn.parked = True  # the full server answers it, with h11
                break
            if req is None:
                break
            try:
                reply = self._rpc2(req)
            except Exception:  # a bug here: the full server answers (and logs) it
                reply = None
            if reply is None:
                conn.parked = True
                break
            conn.unsent += reply[0]
            del conn.unread[:req.size]
            conn.closing = req.close or reply[1]
        self._flush(conn)

    def _rpc2(self, req: httpreq.Request) -> tuple[bytes, bool] | None:
        """The full server's response to ``POST /RPC2`` (``Compat._rpc2``) and whether it
        closes the connection after it (an error), or None (not ours)."""
        from supervisor import httpreq
        from supervisor.sv_xmlrpc import BadRequest, dump_fault, dump_result, load_call

        sv, fault = self._supervisor()
        try:
            method, params = load_call(req.body)
        except BadRequest as exc:  # the full server's 400, and its close after an error
            body = f"{exc}\n".encode()
            return httpreq.response(400, body, b"text/plain; charset=utf-8",
                                    asked_close=req.close, error=True), True
        try:
            payload = dump_result(sv.call(self._supervisor_view(), method, list(params)))
        except sv.NotReadOnly:
            return None
        except fault as exc:
            payload = dump_fault(exc.code, exc.text)
        self.answered["xmlrpc"] = self.answered.get("xmlrpc", 0) + 1
        return httpreq.response(200, payload, b"text/xml", asked_close=req.close), False

    def _shown(self, c: projection.Container) -> str:
        return UNKNOWN if c.id in self._unreconciled else c.state

    def _flush(self, conn: _Conn) -> None:
        if conn.unsent:
            try:
                sent = conn.sock.send(conn.unsent)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._drop(conn)
                return
            del conn.unsent[:sent]
        if conn.closing and not conn.unsent:  # its error is written: closed, as after one
            self._drop(conn)
            return
        # parked (or closing): nothing more is read
        events = 0 if conn.parked or conn.closing else selectors.EVENT_READ
        if conn.unsent:
            events |= selectors.EVENT_WRITE
        registered = self._sel.get_map().get(conn.sock.fileno()) is not None
        if events and registered:
            self._sel.modify(conn.sock, events, conn)
        elif events:
            self._sel.register(conn.sock, events, conn)
        elif registered:
            self._sel.unregister(conn.sock)

    def _drop(self, conn: _Conn) -> None:
        if self._conns.pop(conn.sock.fileno(), None) is not None and conn.admitted:
            self._admitted[conn.http] -= 1
        if self._sel.get_map().get(conn.sock.fileno()) is not None:
            self._sel.unregister(conn.sock)
        conn.sock.close()
        for listener, data in ((self._listener, "accept"), (self._http, "accept-http")):
            if listener is not None and listener.fileno() not in self._sel.get_map():
                self._sel.register(listener, selectors.EVENT_READ, data)


class _NotHere(Exception):
    """A request only the full server answers (parked for it)."""


def _frame(buf: bytearray) -> tuple[dict[str, Any] | None, int] | None:
    """The first whole frame of ``buf`` and its size; ``(None, 0)`` when it is not one this
    server may read (too large, empty, not a map: the full server says so); None when more
    bytes are needed."""
    if len(buf) < wire.HEADER_SIZE:
        return None
    length = int.from_bytes(buf[:wire.HEADER_SIZE], "big")
    if length == 0 or length > wire.MAX_FRAME:
        return None, 0
    size = wire.HEADER_SIZE + length
    if len(buf) < size:
        return None
    try:
        (message,) = wire.FrameDecoder().feed(bytes(buf[:size]))
    except wire.ProtocolError:
        return None, 0
    return message, size
