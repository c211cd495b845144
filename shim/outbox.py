"""The shim's outbox: every event it publishes, kept until the daemon acknowledges it.

Each event gets the next ``shim_seq`` (one sequence for the whole life of the shim, across the
successive tasks it runs). An ``events`` stream first gets every event not yet acknowledged,
then live ones; ``ack {seq}`` drops everything up to *seq* (clamped to the last seq, so a later
event is never dropped by mistake). Nothing here does I/O but through ``send``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from events import wire

if TYPE_CHECKING:
    from shim.loop import Conn


class Outbox:
    def __init__(self, send: Callable[[Conn, dict[str, Any]], None]) -> None:
        self._send = send
        self.seq = 0  # the last seq given
        self.acked = 0
        self.events: list[dict[str, Any]] = []
        self.streams: list[tuple[Conn, int]] = []  # (connection, request id) of each stream

    def next_seq(self) -> int:
        """Reserve a seq (the exit record carries its seq before the event is published)."""
        self.seq += 1
        return self.seq

    def publish(self, etype: str, data: dict[str, Any], seq: int | None = None) -> int:
        number = seq or self.next_seq()
        event = {"seq": number, "type": etype, "data": data}
        self.events.append(event)
        for conn, rid in list(self.streams):
            self._send(conn, wire.item(rid, event))
        return number

    def subscribe(self, conn: Conn, rid: int) -> None:
        for event in self.events:
            self._send(conn, wire.item(rid, event))
        if conn.open:
            self.streams.append((conn, rid))

    def ack(self, seq: int) -> None:
        self.acked = max(self.acked, min(seq, self.seq))
        self.events = [e for e in self.events if e["seq"] > self.acked]

    def forget(self, conn: Conn) -> None:
        self.streams = [s for s in self.streams if s[0] is not conn]

    def end_streams(self) -> None:
        """The shim is ending: every stream gets its end frame."""
        for conn, rid in self.streams:
            self._send(conn, wire.end(rid))
        self.streams = []

    @property
    def empty(self) -> bool:
        return not self.events
