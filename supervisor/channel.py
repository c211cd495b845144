"""Framed messages over a trio stream: the sans-IO codec of :mod:`events.wire` plus trio I/O.

Used for both sides of the daemon: the API server's connections and the daemon's connections
to shims (:func:`connect`, :meth:`Channel.call`, :meth:`Channel.stream`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import trio

from events import wire

__all__ = ["Channel", "Closed", "connect"]


class Closed(ConnectionError):
    """The peer closed the connection (or it broke)."""


class Channel:
    """One connection; ``recv`` returns whole messages, ``send`` frames one."""

    def __init__(self, stream: trio.SocketStream, max_frame: int = wire.MAX_FRAME) -> None:
        self.stream = stream
        self.decoder = wire.FrameDecoder(max_frame)
        self.max_frame = max_frame
        self._pending: list[dict[str, Any]] = []
        self._send_lock = trio.Lock()
        self._next_id = 1
        self.peer: dict[str, Any] = {}

    async def send(self, message: dict[str, Any]) -> None:
        data = wire.encode(message, self.max_frame)
        async with self._send_lock:
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise Closed(str(exc)) from None

    async def recv(self) -> dict[str, Any]:
        """The next message; :class:`Closed` on EOF; ``wire.ProtocolError`` on bad frames."""
        while not self._pending:
            try:
                data = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise Closed(str(exc)) from None
            if not data:
                raise Closed("peer closed the connection")
            self._pending.extend(self.decoder.feed(data))
        return self._pending.pop(0)

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self.stream.aclose()

    # -- client side -----------------------------------------------------------------------------

    async def _request(self, method: str, params: dict[str, Any]) -> int:
        rid = self._next_id
        self._next_id += 1
        await self.send(wire.request(rid, method, params))
        return rid

    async def call(self, method: str, **params: Any) -> Any:
        """One request, its result; an error reply raises ``wire.RemoteError``."""
        rid = await self._request(method, params)
        while True:
            response = wire.response_to(rid, await self.recv())
            if response is not None and response[0] == "result":
                return response[1]

    async def stream_items(self, method: str, **params: Any) -> AsyncIterator[Any]:
        rid = await self._request(method, params)
        while True:
            response = wire.response_to(rid, await self.recv())
            if response is None or response[0] == "result":
                continue
            if response[0] == "end":
                return
            yield response[1]


async def connect(path: str, role: str = "supervisor", timeout: float = 5.0,
                  then: list[dict[str, Any]] | None = None) -> Channel:
    """Connect to a unix socket and exchange hellos; raises ``OSError``/``Closed`` on failure.

    ``then``: requests to send right behind the hello, in the same write. Reconciling 1,000
    shims is dominated by wake-ups of the peers, so one write per shim instead of three counts.
    """
    with trio.fail_after(timeout):
        stream = await trio.open_unix_socket(path)
        chan = Channel(stream)
        try:
            data = wire.encode(wire.hello(role)) + b"".join(wire.encode(m) for m in then or ())
            try:
                await stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise Closed(str(exc)) from None
            chan.peer = wire.parse_hello(await chan.recv())
        except BaseException:
            await chan.aclose()
            raise
    return chan
