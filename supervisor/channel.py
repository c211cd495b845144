"""Framed messages over a trio stream: :class:`events.wire.Conversation` plus trio I/O.

Used on both sides of the daemon: the API server's connections (raw :meth:`Channel.recv` and
:meth:`Channel.send`) and the daemon's connections to shims (:func:`connect`, then
:meth:`Channel.call` / :meth:`Channel.stream`, or raw frames when several requests share the
connection, as a shim link's ``state`` and ``events`` do).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import trio

from events import wire

__all__ = ["Channel", "Closed", "acquire", "connect"]

_RECV = 65536


async def acquire(lock: trio.Lock) -> None:
    """``await lock.acquire()``, without its scheduler round when the lock is free (for a
    caller whose next step under the lock is a checkpoint anyway)."""
    try:
        lock.acquire_nowait()
    except trio.WouldBlock:
        await lock.acquire()


class Closed(ConnectionError):
    """The peer closed the connection (or it broke)."""


class Channel:
    """One connection; ``recv`` returns whole messages, ``send`` frames one."""

    def __init__(self, stream: trio.SocketStream, max_frame: int = wire.MAX_FRAME,
                 role: str = "supervisor", unread: bytes = b"") -> None:
        self.stream = stream
        self.conv = wire.Conversation(role, max_frame)
        self._send_lock = trio.Lock()
        #: bytes of this stream someone else received (the early server, handing the
        #: connection over): read before the stream, by the first :meth:`receive`
        self._unread = unread

    @property
    def peer(self) -> dict[str, Any]:
        """The peer's hello (empty until it arrived)."""
        return self.conv.peer or {}

    async def send(self, message: dict[str, Any]) -> None:
        await self.send_bytes(wire.encode(message, self.conv.max_frame))

    async def send_bytes(self, data: bytes) -> None:
        """Frames of several tasks never interleave (the send lock). A free lock is taken
        without ``Lock.acquire``'s own scheduler round: the send is still a checkpoint (the
        socket's), and the bytes leave one round sooner (an event to its subscriber, an ack to
        its shim)."""
        await acquire(self._send_lock)
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise Closed(str(exc)) from None
        finally:
            self._send_lock.release()

    async def receive(self) -> None:
        """Read what the peer sent into the conversation (:class:`Closed` on EOF)."""
        await self._receive()

    async def _receive(self) -> None:
        if self._unread:
            data, self._unread = self._unread, b""
            self.conv.receive_data(data)
            return
        try:
            data = await self.stream.receive_some(_RECV)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise Closed(str(exc)) from None
        if not data:
            raise Closed("peer closed the connection")
        self.conv.receive_data(data)

    async def recv(self) -> dict[str, Any]:
        """The next message; :class:`Closed` on EOF; ``wire.ProtocolError`` on bad frames."""
        while (message := self.conv.next_message()) is None:
            await self._receive()
        return message

    async def next_event(self) -> tuple[str, Any]:
        """The conversation's next event (:meth:`events.wire.Conversation.next_event`)."""
        while (event := self.conv.next_event()) is None:
            await self._receive()
        return event

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self.stream.aclose()

    # -- client side -----------------------------------------------------------------------------

    async def call(self, method: str, **params: Any) -> Any:
        """One request, its result; an error reply raises ``wire.RemoteError``."""
        await self.send_bytes(self.conv.request(method, params))
        return (await self.next_event())[1]

    async def stream_items(self, method: str, **params: Any) -> AsyncGenerator[Any, None]:
        """The items of a stream request until its end."""
        await self.send_bytes(self.conv.request(method, params, stream=True))
        while (event := await self.next_event())[0] == "item":
            yield event[1]


#: A request to send behind the hello: ``(method, params, stream)``.
Then = tuple[str, dict[str, Any], bool]


async def connect(path: str, role: str = "supervisor", timeout: float = 5.0,
                  then: Sequence[Then] = ()) -> Channel:
    """Connect to a unix socket and exchange hellos; raises ``OSError``/``Closed`` on failure.

    ``then``: requests to send right behind the hello, in the same write (the last one is the
    conversation's current request). Reconciling many shims is dominated by wake-ups of the
    peers, so one write per shim instead of two or three counts.
    """
    with trio.fail_after(timeout):
        stream = await trio.open_unix_socket(path)
        chan = Channel(stream, role=role)
        try:
            conv = chan.conv
            data = conv.hello() + b"".join(conv.request(method, params, stream=is_stream)
                                           for method, params, is_stream in then)
            try:  # no one else has the channel yet: no need for its send lock
                await stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise Closed(str(exc)) from None
            await chan.next_event()  # the hello (anything else raises)
        except BaseException:
            await chan.aclose()
            raise
    return chan
