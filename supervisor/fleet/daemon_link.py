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

    async def _fill(self) -> None:
        """Until at least one whole message is buffered."""
        while not self._pending:
            try:
                data = await self._reader.read(2**20)
            except OSError as exc:
                raise DaemonUnavailable(f"the daemon's connection broke: {exc}") from None
            if not data:
                raise DaemonUnavailable("the daemon closed the connection")
            self._pending.extend(self._decoder.feed(data))

    async def recv(self) -> dict[str, Any]:
        await self._fill()
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

    async def event_batches(self, since: int, types: list[str] | None = None,
                            follow: bool = True) -> AsyncIterator[list[dict[str, Any]]]:
        """The records after ``since``, history then live with ``follow``, in batches: every
        record already received comes in one list, so a caller can hand a whole batch to the
        broker in one write rather than one write per event.

        ``not_found`` (the log was compacted past ``since``) raises :class:`Compacted`;
        ``too_slow`` (we fell behind the daemon's buffer) raises :class:`DaemonUnavailable`,
        since the cure is the same: reconnect from the last position the stream confirmed.
        """
        params: dict[str, Any] = {"since": since, "follow": follow}
        if types:
            params["types"] = types
        rid = await self._request("events", params)
        while True:
            await self._fill()
            batch: list[dict[str, Any]] = []
            try:
                while self._pending:
                    response = wire.response_to(rid, self._pending.pop(0))
                    if response is None or response[0] == "result":
                        continue
                    if response[0] == "end":
                        if batch:
                            yield batch
                        return
                    batch.append(response[1])
            except wire.RemoteError as exc:
                if batch:  # what came before the error is good
                    yield batch
                raise self._stream_error(exc, since) from None
            if batch:
                yield batch

    @staticmethod
    def _stream_error(exc: wire.RemoteError, since: int) -> Exception:
        if exc.code == "not_found":
            match = _OLDEST.search(exc.message)
            if match:
                return Compacted(since, int(match.group(1)), exc.message)
        if exc.code in ("too_slow", "not_found", "unavailable", "internal"):
            return DaemonUnavailable(f"events: {exc}")
        return exc

    async def events(self, since: int, types: list[str] | None = None, follow: bool = True,
                     until: int | None = None) -> AsyncIterator[dict[str, Any]]:
        """:meth:`event_batches` one record at a time; ``until``: stop after that seq."""
        async for batch in self.event_batches(since, types, follow):
            for record in batch:
                yield record
                if until is not None and record.get("seq", 0) >= until:
                    return
