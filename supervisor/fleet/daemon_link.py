"""An asyncio client of ``ROOT/supervisord.sock`` around the sans-IO codec of :mod:`events.wire`.

The daemon is trio, the NATS client asyncio; the exporter is a process of its own, so it is
asyncio end to end and talks to the daemon the way :mod:`events.rpc` (blocking) and
:mod:`supervisor.channel` (trio) do: bytes in, :class:`~events.wire.FrameDecoder` out,
:func:`~events.wire.response_to` for the meaning of each reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

from events import wire

__all__ = ["Compacted", "DaemonLink", "DaemonUnavailable"]

_OLDEST = re.compile(r"oldest kept is (\d+)")


class DaemonUnavailable(ConnectionError):
    """The daemon cannot be reached, or went away: retry later from the stream's position."""


class Compacted(Exception):
    """``events since=N`` was refused: the daemon's log no longer holds N+1."""

    def __init__(self, since: int, oldest: int, message: str) -> None:
        super().__init__(message)
        self.since = since
        self.oldest = oldest


class DaemonLink:
    """One connection: :meth:`open` exchanges hellos; then :meth:`call` or :meth:`events`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._decoder = wire.FrameDecoder()
        self._pending: list[dict[str, Any]] = []
        self._next_id = 1
        self.peer: dict[str, Any] = {}

    @classmethod
    async def open(cls, path: str, timeout: float = 10.0) -> DaemonLink:
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_unix_connection(path, limit=2**20)
                link = cls(reader, writer)
                try:
                    writer.write(wire.encode(wire.hello("client")))
                    link.peer = wire.parse_hello(await link.recv())
                except BaseException:
                    await link.aclose()
                    raise
        except (OSError, TimeoutError) as exc:
            raise DaemonUnavailable(f"{path}: {exc}") from None
        except (wire.ProtocolError, wire.RemoteError) as exc:
            raise DaemonUnavailable(f"{path}: refused: {exc}") from None
        return link

    async def aclose(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self._writer.wait_closed()

    async def recv(self) -> dict[str, Any]:
        while not self._pending:
            try:
                data = await self._reader.read(65536)
            except OSError as exc:
                raise DaemonUnavailable(f"the daemon's connection broke: {exc}") from None
            if not data:
                raise DaemonUnavailable("the daemon closed the connection")
            self._pending.extend(self._decoder.feed(data))
        return self._pending.pop(0)

    async def _request(self, method: str, params: dict[str, Any]) -> int:
        rid = self._next_id
        self._next_id += 1
        self._writer.write(wire.encode(wire.request(rid, method, params)))
        try:
            await self._writer.drain()
        except OSError as exc:
            raise DaemonUnavailable(f"the daemon's connection broke: {exc}") from None
        return rid

    async def call(self, method: str, **params: Any) -> Any:
        rid = await self._request(method, params)
        while True:
            response = wire.response_to(rid, await self.recv())
            if response is not None and response[0] == "result":
                return response[1]

    async def events(self, since: int, types: list[str] | None = None, follow: bool = True,
                     until: int | None = None) -> AsyncIterator[dict[str, Any]]:
        """The records after ``since``: history, then live with ``follow``.

        ``not_found`` (the log was compacted past ``since``) raises :class:`Compacted`;
        ``too_slow`` (we fell behind the daemon's buffer) raises :class:`DaemonUnavailable`,
        since the cure is the same: reconnect from the last position the stream confirmed.
        ``until``: stop after that seq (a bounded read of history).
        """
        params: dict[str, Any] = {"since": since, "follow": follow}
        if types:
            params["types"] = types
        rid = await self._request("events", params)
        while True:
            try:
                response = wire.response_to(rid, await self.recv())
            except wire.RemoteError as exc:
                if exc.code == "not_found":
                    match = _OLDEST.search(exc.message)
                    if match:
                        raise Compacted(since, int(match.group(1)), exc.message) from None
                if exc.code in ("too_slow", "not_found", "unavailable", "internal"):
                    raise DaemonUnavailable(f"events: {exc}") from None
                raise
            if response is None or response[0] == "result":
                continue
            if response[0] == "end":
                return
            record = response[1]
            yield record
            if until is not None and record.get("seq", 0) >= until:
                return
