"""The trio client library of ``supervisord.sock``, for programs that live next to the daemon.

::

    async with await connect(root="/var/lib/tether") as client:
        print(await client.call("ps", all=True))
        async for event in client.events(since=last_seq, types=["task.exit"]):
            ...

It speaks the protocol of :mod:`supervisor.protocol` with the sans-IO codec of
:mod:`events.wire`, exactly like the blocking ``supervisorctl``; only the I/O differs.

One request at a time per connection (concurrent calls wait their turn; an ``events`` stream
holds the connection until it ends, and leaving its loop early closes the connection). That
keeps the client free of background tasks, so it needs no nursery of its own: open a second
connection to call while you subscribe.

Resuming is the caller's job, and the errors make it easy: both :class:`TooSlow` (the daemon cut
off a subscriber that fell behind its buffer) and :class:`Disconnected` (the daemon went away)
carry ``last_seq``, the seq of the last event this stream yielded, so
``client.events(since=exc.last_seq)`` on a new connection continues without a gap or a duplicate.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from types import TracebackType
from typing import Any

import trio

from events import wire
from events.model import Event

__all__ = ["Client", "Disconnected", "TooSlow", "connect", "default_socket"]

_RECV = 65536


class Disconnected(ConnectionError):
    """The daemon closed the connection (it stopped, crashed or is restarting).

    ``last_seq`` is the seq of the last event yielded by the stream that was cut (None outside
    a stream), so a subscriber can reconnect and resume from it.
    """

    def __init__(self, message: str, last_seq: int | None = None) -> None:
        super().__init__(message)
        self.last_seq = last_seq


class TooSlow(wire.RemoteError):
    """The daemon dropped this subscriber: it did not read fast enough for its bounded buffer.

    Nothing was lost in the log: resume with ``events(since=exc.last_seq)``.
    """

    def __init__(self, message: str, last_seq: int) -> None:
        super().__init__("too_slow", message)
        self.last_seq = last_seq


def default_socket(root: str | os.PathLike[str] | None = None) -> str:
    """``ROOT/supervisord.sock``; ROOT defaults as in DESIGN.md (same rule as supervisorctl)."""
    if root is None:
        from supervisor.defaults import default_root

        root = default_root()
    return os.path.join(os.fspath(root), "supervisord.sock")


async def connect(root: str | os.PathLike[str] | None = None, *,
                  socket: str | os.PathLike[str] | None = None,
                  max_frame: int = wire.MAX_FRAME) -> Client:
    """Connect and exchange hellos; the result is an async context manager that closes it.

    Raises ``OSError`` (e.g. ``FileNotFoundError``, ``ConnectionRefusedError``) when no daemon
    listens, :class:`Disconnected` if it hangs up during the hello, ``wire.ProtocolError`` if the
    peer is not a supervisord of our protocol version.
    """
    path = os.fspath(socket) if socket is not None else default_socket(root)
    stream = await trio.open_unix_socket(path)
    client = Client(stream, path, max_frame)
    try:
        await client._send(client._conv.hello())
        client.peer = (await client._next())[1]
    except BaseException:
        await stream.aclose()
        raise
    return client


class Client:
    """A connection to supervisord. Make one with :func:`connect`, not this constructor.

    A thin trio wrapper around :class:`events.wire.Conversation` (the sans-IO client that
    ``supervisorctl`` drives with a blocking socket).
    """

    def __init__(self, stream: trio.SocketStream, path: str, max_frame: int) -> None:
        self.path = path
        self.peer: dict[str, Any] = {}
        self._stream = stream
        self._conv = wire.Conversation("client", max_frame)
        self._busy = False
        self._idle = trio.Event()
        self._idle.set()
        self._closed = False

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._closed = True
        await self._stream.aclose()

    # -- I/O -----------------------------------------------------------------------------------

    async def _send(self, data: bytes) -> None:
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise Disconnected(f"{self.path}: connection lost: {exc}") from exc

    async def _next(self) -> tuple[str, Any]:
        while (event := self._conv.next_event()) is None:
            try:
                data = await self._stream.receive_some(_RECV)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise Disconnected(f"{self.path}: connection lost: {exc}") from exc
            if not data:
                raise Disconnected(f"{self.path}: supervisord closed the connection")
            self._conv.receive_data(data)
        return event

    # -- API -----------------------------------------------------------------------------------

    async def _acquire(self) -> None:
        """Take the connection for one request (calls and streams never interleave)."""
        while self._busy:
            await self._idle.wait()
        if self._closed:
            raise Disconnected(f"{self.path}: this connection is closed")
        self._busy = True
        self._idle = trio.Event()

    def _release(self) -> None:
        """Synchronous on purpose: a stream abandoned by ``break`` is finalized by trio in
        another task, which must still be able to hand the connection back."""
        self._busy = False
        self._idle.set()

    def _abandon(self) -> None:
        """A stream left before its end: its items keep coming and nothing would read them, so
        the connection cannot serve another request. Close it (synchronously, see above)."""
        self._closed = True
        self._stream.socket.close()

    async def call(self, method: str, **params: Any) -> Any:
        """One request; returns its result, raises ``wire.RemoteError`` for an error reply."""
        await self._acquire()
        try:
            await self._send(self._conv.request(method, params))
            return (await self._next())[1]
        finally:
            self._release()

    async def stream(self, method: str, **params: Any) -> AsyncGenerator[Any, None]:
        """The raw items of a stream request (``logs``, ``events``, ``exec``) until its end.

        Leaving the loop early closes the connection (the daemon would keep sending); wrap the
        generator in ``contextlib.aclosing`` to have that happen at once rather than when trio
        finalizes the generator.
        """
        await self._acquire()
        done = False
        try:
            await self._send(self._conv.request(method, params, stream=True))
            while True:
                try:
                    kind, value = await self._next()
                except wire.RemoteError:
                    done = True
                    raise
                if kind == "end":
                    done = True
                    return
                yield value
        finally:
            if not done:
                self._abandon()
            self._release()

    async def events(self, since: int = 0, types: Iterable[str] | None = None,
                     ids: Iterable[str] | None = None, follow: bool = True
                     ) -> AsyncIterator[Event]:
        """Events after ``since`` (exclusive), oldest first, then live ones with ``follow``.

        ``types`` are type names or prefixes (``"task"`` matches ``task.exit``); ``ids`` are
        container ids. The daemon guarantees no gap and no duplicate within a stream; across
        streams, pass the ``seq`` of the last event you handled as ``since``. An event of a type
        this version does not know is yielded like any other (check
        :func:`events.model.is_known_type`): an upgrade of the daemon never breaks a subscriber.
        """
        params: dict[str, Any] = {"since": since, "follow": follow}
        if types is not None:
            params["types"] = list(types)
        if ids is not None:
            params["ids"] = list(ids)
        last = since
        items = self.stream("events", **params)
        try:
            async for record in items:
                event = Event.from_record(record)
                last = event.seq
                yield event
        except wire.RemoteError as exc:
            if exc.code == "too_slow":
                raise TooSlow(exc.message, last) from None
            raise
        except Disconnected as exc:
            raise Disconnected(str(exc), last) from None
        finally:
            await items.aclose()


