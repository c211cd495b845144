"""The API server on ``ROOT/supervisord.sock``.

Each connection is one task; each request on it is one task of the connection's nursery, so a
client may pipeline requests and a ``wait`` never blocks a ``ps`` on the same connection.
Whatever a client sends -- garbage, a 4 GiB length header, a list instead of a map, an unknown
method, another protocol version -- costs that client an error frame (and, for framing errors,
its connection), never the daemon or another client. A request already running when its client
goes away finishes (a half-done ``create`` would be worse than a reply nobody reads); a stream
is cancelled.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import socket
from collections.abc import Sequence
from typing import Any

import structlog
import trio

from events import wire
from events.domain import ErrorCode
from supervisor import protocol
from supervisor.admission import Admission
from supervisor.channel import Channel, Closed, ItemSender
from supervisor.commands import Commands
from supervisor.core import Core
from supervisor.early import Handed
from supervisor.errors import ApiError
from supervisor.peercred import Creds, allowed
from supervisor.version import VERSION

__all__ = ["Server"]

log = structlog.get_logger("supervisord.server")

HELLO_TIMEOUT = 10.0
#: Seconds from a frame's first byte to its last, by default (``--frame-timeout``:
#: :mod:`supervisor.limits`): far more than a 16 MiB frame takes over a unix socket, even
#: from a loaded client.
FRAME_TIMEOUT = 30.0
MAX_INFLIGHT = 64  # requests running at once on one connection


async def _refuse(stream: trio.SocketStream, message: str) -> None:
    """The API's "too many connections": an error frame in place of the hello (as a refused
    uid gets), which every client reports as it would any error."""
    await stream.send_all(wire.encode(wire.error(None, ErrorCode.UNAVAILABLE.value, message)))


async def _next_message(chan: Channel, frame_timeout: float) -> dict[str, Any]:
    """The next message, however long the client idles between requests, but within
    ``frame_timeout`` of a frame's first byte (``trio.TooSlowError``): a half frame must
    not hold a connection, and its buffer, forever."""
    with trio.CancelScope() as scope:
        while (message := chan.conv.next_message()) is None:
            if chan.conv.buffered and scope.deadline == math.inf:
                scope.deadline = trio.current_time() + frame_timeout
            await chan.receive()
        return message
    raise trio.TooSlowError


class Server:
    def __init__(self, core: Core, commands: Commands, group_gid: int | None,
                 max_connections: int | None = None, *,
                 frame_timeout: float = FRAME_TIMEOUT) -> None:
        self.frame_timeout = frame_timeout
        self.core = core
        self.commands = commands
        self.group_gid = group_gid
        self.my_uid = os.geteuid()
        self.admission = Admission("api", max_connections)

    @property
    def connections(self) -> int:
        return self.admission.open

    async def serve(self, sock: socket.socket, *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.admission.serve(sock, self._connection, _refuse, task_status=task_status)

    async def serve_handed(self, handed: Sequence[Handed]) -> None:
        """Go on with the connections the early server accepted (:mod:`supervisor.early`),
        in the order it accepted them, each admitted or refused by the same step as a
        connection accepted now (``Admission.admit``: the early server admitted under the
        same cap, and parked the others unread); an admitted one is served from where it
        stood, reading first what it sent that was not answered, after writing what it was
        not sent yet."""
        async with trio.open_nursery() as nursery:
            for conn in handed:
                stream = trio.SocketStream(trio.socket.from_stdlib_socket(conn.sock))
                await self.admission.admit(
                    nursery, stream, conn.creds,
                    functools.partial(self._connection, unread=conn.unread,
                                      unsent=conn.unsent, greeted=conn.greeted), _refuse)

    async def _connection(self, stream: trio.SocketStream, creds: Creds | None, *,
                          unread: bytes = b"", unsent: bytes = b"", greeted: bool = False
                          ) -> None:
        """One client's conversation; a connection the early server handed over continues
        where it stood: *unsent* written first, *unread* read first, *greeted* or not."""
        chan = Channel(stream, unread=unread)
        try:
            if unsent:
                await chan.send_bytes(unsent)
            await self._converse(chan, stream, creds or (0, -1, -1), greeted=greeted)
        except Closed:
            pass
        except Exception as exc:  # a bug costs this connection, never the daemon
            log.exception("connection failed", error=repr(exc))
        finally:
            await chan.aclose()

    async def _converse(self, chan: Channel, stream: trio.SocketStream, creds: Creds, *,
                        greeted: bool = False) -> None:
        raw = stream.socket
        if not greeted:
            await self._greet(chan, creds)
        await self._requests(chan, raw)

    async def _greet(self, chan: Channel, creds: Creds) -> None:
        """The peer's credentials, then the hellos; :class:`Closed` when it may not go on."""
        if not allowed(creds, self.my_uid, self.group_gid):
            log.warning("connection refused", pid=creds[0], uid=creds[1], gid=creds[2])
            await chan.send(wire.error(None, "permission_denied",
                                       f"uid {creds[1]} may not use this supervisord: it "
                                       "allows root, its own uid and members of its --group"))
            raise Closed("permission denied")
        try:
            with trio.fail_after(HELLO_TIMEOUT):
                first = await chan.recv()
            wire.parse_hello(first, roles={"client"})
        except trio.TooSlowError:
            await chan.send(wire.error(None, "protocol", "no hello within "
                                       f"{HELLO_TIMEOUT:g}s"))
            raise Closed("no hello") from None
        except (wire.ProtocolError, wire.RemoteError) as exc:
            code = getattr(exc, "code", "protocol")
            await chan.send(wire.error(None, code if code != "invalid" else "protocol",
                                       str(exc)))
            raise Closed("bad hello") from None
        await chan.send(wire.hello("daemon", version=VERSION, pid=os.getpid()))

    async def _requests(self, chan: Channel, raw: Any) -> None:
        streams: set[trio.CancelScope] = set()
        limiter = trio.Semaphore(MAX_INFLIGHT)
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    message = await _next_message(chan, self.frame_timeout)
                except trio.TooSlowError:
                    with contextlib.suppress(Closed):
                        await chan.send(wire.error(None, "protocol", "a frame begun was not "
                                                   f"finished within {self.frame_timeout:g}s"))
                    break
                except wire.ProtocolError as exc:
                    with contextlib.suppress(Closed):
                        await chan.send(wire.error(exc.rid, exc.code, str(exc)))
                    break
                except Closed:
                    break
                try:
                    req = wire.parse_request(message)
                except wire.ProtocolError as exc:
                    await chan.send(wire.error(exc.rid, exc.code, str(exc)))
                    continue
                await limiter.acquire()
                nursery.start_soon(self._request, chan, req, streams, limiter, raw)
            for scope in streams:
                scope.cancel()

    async def _request(self, chan: Channel, req: wire.Request, streams: set[trio.CancelScope],
                       limiter: trio.Semaphore, raw: Any) -> None:
        try:
            handler = self.commands.calls.get(req.method)
            stream_handler = self.commands.streams.get(req.method)
            if stream_handler is not None:
                scope = trio.CancelScope()
                streams.add(scope)
                try:
                    with scope:
                        await stream_handler(req.params, ItemSender(chan, req.rid), raw)
                        await chan.send(wire.end(req.rid))
                finally:
                    streams.discard(scope)
                return
            if handler is None:
                known = ", ".join(sorted(protocol.METHODS))
                raise ApiError(ErrorCode.UNKNOWN_METHOD,
                               f"unknown method {req.method!r}; known: {known}")
            result = await handler(req.params)
            await chan.send(wire.reply(req.rid, result))
        except ApiError as exc:
            with contextlib.suppress(Closed):
                await chan.send(wire.error(req.rid, exc.code, exc.message))
        except Closed:
            pass
        except wire.FrameTooLarge as exc:
            with contextlib.suppress(Closed):
                await chan.send(wire.error(req.rid, "internal", str(exc)))
        except Exception as exc:
            log.exception("request failed", method=req.method, error=repr(exc))
            with contextlib.suppress(Closed):
                await chan.send(wire.error(req.rid, "internal", f"{req.method}: {exc!r}"))
        finally:
            limiter.release()
