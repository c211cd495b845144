"""supervisord's HTTP server: Supervisor's XML-RPC (``POST /RPC2``), ``GET /logtail/NAME``,
and ``GET /metrics``, on ``ROOT/supervisor.sock`` and optionally a TCP address.

h11 does the HTTP (sans-IO, like our own wire codec): this module only moves bytes between it
and a trio stream. Every client is held to limits, so that one of them can cost only itself:
a request head over :data:`MAX_HEAD` bytes or a body over :data:`MAX_BODY` gets 431/413, a
client that has not sent its whole request within :data:`REQUEST_TIMEOUT` gets 408, a
malformed request gets 400, and each connection is closed after such an error.

Who may talk: on the unix socket, the peer-credential rule of the API socket (root, the
daemon's uid, members of ``--group``); on TCP, HTTP basic auth (``--http-user``/
``--http-password``, compared in constant time) unless no credentials were configured, which
``--http-listen`` allows only on a loopback address.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hmac
import http
import os
import socket
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import structlog
import trio

from supervisor import httpreq
from supervisor.admission import Admission
from supervisor.peercred import Creds, allowed

if TYPE_CHECKING:
    from supervisor.compat import Compat
    from supervisor.early import Handed

__all__ = ["MAX_BODY", "HttpServer"]

log = structlog.get_logger("supervisord.http")

MAX_BODY = httpreq.MAX_BODY
MAX_HEAD = httpreq.MAX_HEAD
#: Seconds a client has to send a whole request, by default (``--http-request-timeout``:
#: :mod:`supervisor.limits`).
REQUEST_TIMEOUT = 30.0
IDLE_TIMEOUT = 300.0
READ_SIZE = 65536

Headers = list[tuple[bytes, bytes]]
#: Who may send a request: the peer's credentials (None on TCP) and the request's head.
Gate = Callable[[Creds | None, Any], Awaitable[bool]]


class _LazyH11:
    """h11, imported at the first connection: the socket is bound at start-up, but h11's
    import (~8 ms, more on a loaded machine) need not delay a daemon nobody asks over HTTP."""

    def __getattr__(self, name: str) -> Any:
        import h11 as module

        globals()["h11"] = module
        return getattr(module, name)


h11: Any = _LazyH11()


class _Reply(Exception):
    """An HTTP error to answer with (and close the connection after)."""

    def __init__(self, status: int, text: str, headers: Headers | None = None) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.headers = headers or []


class _Conn:
    """One connection: the h11 state and the stream, with the helpers every route needs."""

    def __init__(self, stream: trio.abc.Stream, creds: Creds | None = None,
                 unread: bytes = b"", request_timeout: float = REQUEST_TIMEOUT) -> None:
        self.stream = stream
        self.request_timeout = request_timeout
        self.creds = creds  # the peer's, read at accept (unix socket); None on TCP
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        if unread:  # what the peer sent the early server that it did not answer
            self.h11.receive_data(unread)

    async def send(self, event: Any) -> None:
        data = self.h11.send(event)
        if data:
            await self.stream.send_all(data)

    async def next_event(self, begun: trio.CancelScope | None = None) -> Any:
        """h11's next event; with *begun*, that scope's deadline becomes at most
        the request timeout away once bytes of it arrived (idling between requests is
        allowed; a request begun and not finished is not)."""
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                data = await self.stream.receive_some(READ_SIZE)
                if begun is not None and data:
                    begun.deadline = min(begun.deadline,
                                         trio.current_time() + self.request_timeout)
                self.h11.receive_data(data)
                continue
            return event

    async def respond(self, status: int, body: bytes, content_type: bytes,
                      headers: Headers | None = None) -> None:
        all_headers = [(b"content-type", content_type),
                       (b"content-length", str(len(body)).encode()),
                       (b"server", b"tether"), *(headers or [])]
        await self.send(response(status, all_headers))
        await self.send(h11.Data(data=body))
        await self.send(h11.EndOfMessage())


async def _refuse(stream: trio.SocketStream, message: str) -> None:
    """HTTP's "too many connections", written before any request is read (no h11 needed)."""
    body = f"unavailable: {message}\n".encode()
    await stream.send_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; "
                          b"charset=utf-8\r\ncontent-length: " + str(len(body)).encode()
                          + b"\r\nconnection: close\r\n\r\n" + body)


class HttpServer:
    """Serves one kind of listener; :meth:`serve_unix` and :meth:`serve_tcp` differ only in
    who is let in."""

    def __init__(self, compat: Compat, routes: dict[tuple[str, str], Any]) -> None:
        self.compat = compat
        self.routes = routes
        self.my_uid = os.geteuid()
        self.admissions: list[Admission] = []
        #: the client limits (:mod:`supervisor.limits`), set before :meth:`serve`
        self.max_connections: int | None = None
        self.request_timeout = REQUEST_TIMEOUT

    @property
    def connections(self) -> int:
        return sum(a.open for a in self.admissions)

    async def serve(self, sock: socket.socket, gate: Gate, *, handed: Sequence[Handed] = (),
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve one listener, with its own cap (:mod:`supervisor.admission`), after the
        connections the early server held on it (``handed``: admitted by the same step, each
        going on where it stood)."""
        unix = sock.family == socket.AF_UNIX
        admission = Admission("http-unix" if unix else "http-tcp", self.max_connections)
        self.admissions.append(admission)

        async def handle(stream: trio.SocketStream, creds: Creds | None) -> None:
            await self._connection(stream, creds, gate)

        async with trio.open_nursery() as nursery:
            for conn in handed:
                stream = trio.SocketStream(trio.socket.from_stdlib_socket(conn.sock))
                await admission.admit(nursery, stream, conn.creds, functools.partial(
                    self._connection, gate=gate, unread=conn.unread, unsent=conn.unsent,
                    closing=conn.closing), _refuse)
            await admission.serve(sock, handle, _refuse, credentials=unix,
                                  task_status=task_status)

    # -- gates -------------------------------------------------------------------------------

    def unix_gate(self, group_gid: int | None) -> Gate:
        async def gate(creds: Creds | None, request: Any) -> bool:
            if creds is None:
                return False
            if allowed(creds, self.my_uid, group_gid):
                return True
            raise _Reply(403, f"uid {creds[1]} may not use this supervisord: it allows root, "
                         "its own uid and members of its --group\n")

        return gate

    def basic_auth_gate(self, user: str | None, password: str | None) -> Gate:
        expected = None if user is None else f"{user}:{password}".encode()

        async def gate(creds: Creds | None, request: Any) -> bool:
            if expected is None:
                return True
            given = b""
            for name, value in request.headers:
                if name == b"authorization" and value[:6].lower() == b"basic ":
                    with contextlib.suppress(ValueError):
                        given = base64.b64decode(value[6:].strip(), validate=True)
            if hmac.compare_digest(given, expected):
                return True
            raise _Reply(401, "authentication required\n",
                         [(b"www-authenticate", b'Basic realm="supervisor"')])

        return gate

    # -- one connection ----------------------------------------------------------------------

    async def _connection(self, stream: trio.SocketStream, creds: Creds | None,
                          gate: Gate, *, unread: bytes = b"", unsent: bytes = b"",
                          closing: bool = False) -> None:
        """One client; a connection the early server held goes on where it stood: *unsent*
        written first, *unread* read first, closed at once after an error it answered."""
        conn = _Conn(stream, creds, unread, self.request_timeout)
        try:
            async with stream:
                if unsent:
                    await stream.send_all(unsent)
                if not closing:
                    await self._converse(conn, gate)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception as exc:  # a bug costs this connection, never the daemon
            log.exception("http connection failed", error=repr(exc))

    async def _converse(self, conn: _Conn, gate: Gate) -> None:
        first = True
        while True:
            try:
                request, body = await self._read_request(conn, first)
            except _Reply as reply:
                await self._error(conn, reply)
                return
            if request is None:
                return
            first = False
            try:
                await gate(conn.creds, request)
                await self._route(conn, request, body)
            except _Reply as reply:
                await self._error(conn, reply)
                return
            if conn.h11.our_state is h11.MUST_CLOSE or conn.h11.their_state is h11.MUST_CLOSE:
                return
            try:
                conn.h11.start_next_cycle()
            except h11.LocalProtocolError:
                return

    async def _read_request(self, conn: _Conn, first: bool) -> tuple[Any, bytes]:
        """The next request and its body; ``(None, b"")`` when the client is done."""
        idle = trio.move_on_after(conn.request_timeout if first else IDLE_TIMEOUT)
        with idle:
            try:
                event = await conn.next_event(begun=idle)
            except h11.RemoteProtocolError as exc:
                raise _Reply(exc.error_status_hint, f"bad request: {exc}\n") from None
        if idle.cancelled_caught:
            if first or conn.h11.their_state is not h11.IDLE or conn.h11.trailing_data[0]:
                raise _Reply(408, "no request within the time allowed\n")
            return None, b""
        if isinstance(event, h11.ConnectionClosed) or not isinstance(event, h11.Request):
            return None, b""
        length = None
        for name, value in event.headers:
            if name == b"content-length":
                with contextlib.suppress(ValueError):
                    length = int(value)
        if length is not None and length > MAX_BODY:
            raise _Reply(413, f"request body over {MAX_BODY} bytes\n")
        chunks: list[bytes] = []
        size = 0
        with trio.move_on_after(conn.request_timeout) as scope:
            while True:
                try:
                    part = await conn.next_event()
                except h11.RemoteProtocolError as exc:
                    raise _Reply(400, f"bad request: {exc}\n") from None
                if isinstance(part, h11.Data):
                    size += len(part.data)
                    if size > MAX_BODY:
                        raise _Reply(413, f"request body over {MAX_BODY} bytes\n")
                    chunks.append(bytes(part.data))
                elif isinstance(part, h11.EndOfMessage):
                    break
                else:
                    return None, b""
        if scope.cancelled_caught:
            raise _Reply(408, "the request body did not arrive within the time allowed\n")
        return event, b"".join(chunks)

    async def _error(self, conn: _Conn, reply: _Reply) -> None:
        if conn.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        with contextlib.suppress(h11.LocalProtocolError, trio.BrokenResourceError,
                                 trio.ClosedResourceError):
            await conn.respond(reply.status, reply.text.encode(), b"text/plain; charset=utf-8",
                               [*reply.headers, (b"connection", b"close")])

    async def _route(self, conn: _Conn, request: Any, body: bytes) -> None:
        method = request.method.decode("ascii", "replace").upper()
        target = request.target.decode("ascii", "replace")
        path = urllib.parse.unquote(urllib.parse.urlsplit(target).path)
        for (want_method, prefix), handler in self.routes.items():
            if path == prefix or path.startswith(prefix + "/"):
                if method != want_method:
                    raise _Reply(405, f"{prefix} takes {want_method}\n",
                                 [(b"allow", want_method.encode())])
                await handler(conn, path, body)
                return
        raise _Reply(404, f"no such resource {path}\n")


def response(status: int, headers: Headers) -> h11.Response:
    """An h11 response with its reason phrase: Supervisor's own client splits the status line
    in three and fails on an empty reason."""
    return h11.Response(status_code=status, headers=headers,
                        reason=http.HTTPStatus(status).phrase.encode())


def reply(status: int, text: str) -> _Reply:
    """An HTTP error for a route handler to raise."""
    return _Reply(status, text)
