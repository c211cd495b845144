"""Framed messages over a trio stream: :class:`events.wire.Conversation` plus trio I/O.

Used on both sides of the daemon: the API server's connections (raw :meth:`Channel.recv` and
:meth:`Channel.send`) and the daemon's connections to shims (:func:`connect`, then
:meth:`Channel.call` / :meth:`Channel.stream`, or raw frames when several requests share the
connection, as a shim link's ``state`` and ``events`` do).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import trio

from events import wire

__all__ = ["Channel", "Closed", "ItemSender", "acquire", "connect"]

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
        #: the tail of a frame :meth:`send_now` could not write whole: sent before anything
        #: else, by a system task it started or by the next :meth:`send_bytes`
        self._unsent = b""
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
            if self._unsent:
                data, self._unsent = self._unsent + data, b""
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise Closed(str(exc)) from None
        finally:
            self._send_lock.release()

    def send_now(self, data: bytes) -> bool:
        """Write *data* at once, without a checkpoint, if the connection takes it without
        waiting: no frame is being sent (the send lock is free) and the socket has room. False
        when nothing was written (the caller sends it the usual way, or keeps it). The peer
        gets it a scheduler round (or a task's wake-up) sooner than through :meth:`send`: a
        live event sent from :meth:`supervisor.subscribers.Hub.publish` itself.

        A frame the socket takes only in part (a large one into a nearly full socket) still
        counts as sent: the rest goes before any later frame, written by a system task."""
        if self._send_lock.locked() or self._unsent:
            return False
        try:
            sent = os.write(self.stream.socket.fileno(), data)
        except OSError:  # full (EAGAIN), closed or broken: the usual send finds out which
            return False
        if sent < len(data):
            self._unsent = data[sent:]
            trio.lowlevel.spawn_system_task(self._send_unsent)
        return True

    async def _send_unsent(self) -> None:
        with contextlib.suppress(Closed):
            await self.send_bytes(b"")

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


class ItemSender:
    """``await sender(value)`` sends one item of the stream answering request *rid*;
    ``sender.now(values)`` sends items only if :meth:`Channel.send_now` can (True), for a
    stream that can skip its task's wake-up (``events``' live subscribers)."""

    __slots__ = ("chan", "rid")

    #: frames written by :meth:`now` at most at once (a Unix socket takes up to about half of
    #: its send buffer whole: 4032 bytes of the smallest one ``events`` asks for)
    NOW_MAX = 4000

    def __init__(self, chan: Channel, rid: int) -> None:
        self.chan = chan
        self.rid = rid

    async def __call__(self, value: Any) -> None:
        await self.chan.send(wire.item(self.rid, value))

    def now(self, values: Sequence[Any]) -> bool:
        chan = self.chan
        try:
            data = b"".join(wire.encode(wire.item(self.rid, v), chan.conv.max_frame)
                            for v in values)
        except (wire.FrameTooLarge, TypeError, ValueError, OverflowError):
            # raised again by the usual send, in the stream's task, which answers the error:
            # never in Hub.publish, whose failure would stop the log writer
            return False
        return len(data) <= self.NOW_MAX and chan.send_now(data)


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
