"""The event record as stored in the log, in every format: ``msgpack(event.to_record())``.

Decoding is the hot path of replay (a million events), so :func:`make_event` builds events
without the dataclass's ``__init__``; :func:`pack_records` is the writer's half: it checks each
item, numbers it, packs it and builds its :class:`Event`, all or nothing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

import msgpack  # type: ignore[import-untyped]  # it ships no type information

from events.model import Event, InvalidEvent

__all__ = ["FAST", "MAX_RECORD", "Item", "decode_record", "make_event", "new_unpacker",
           "pack_records"]

#: Largest payload accepted. Above the wire's 16 MiB frame limit (no event can be larger than the
#: request that caused it), far below anything a damaged length field could make us allocate.
MAX_RECORD = 32 * 1024 * 1024

Item = tuple[str, str, dict[str, Any]]

_unpackb = msgpack.unpackb

# Event is a frozen, slotted dataclass: its __init__ pays object.__setattr__ per field. Replay
# builds a million of them, so it sets the slots directly, which is three times faster. The
# shortcut is used only while the dataclass has exactly the fields it was written for.
_new = object.__new__
_FIELDS = ["seq", "time", "type", "id", "data"]
FAST = (
    [f.name for f in fields(Event)] == _FIELDS
    and all(hasattr(Event.__dict__.get(k), "__set__") for k in _FIELDS)
    # pack_records builds the record map itself; only while it is exactly what to_record() gives
    and list(Event(1, 2, "t", "i", {}).to_record().items())
    == [("seq", 1), ("time", 2), ("type", "t"), ("id", "i"), ("data", {})]
)
if FAST:
    _set_seq, _set_time, _set_type, _set_id, _set_data = (
        Event.__dict__[k].__set__ for k in ("seq", "time", "type", "id", "data")
    )

    def make_event(d: dict[str, Any]) -> Event:
        """An Event from a decoded record map; KeyError/TypeError if it is not one."""
        ev: Event = _new(Event)
        _set_seq(ev, d["seq"])
        _set_time(ev, d["time"])
        _set_type(ev, d["type"])
        _set_id(ev, d["id"])
        _set_data(ev, d["data"])
        return ev

    def build_event(seq: int, stamp: int, etype: str, eid: str, data: dict[str, Any]) -> Event:
        ev: Event = _new(Event)
        _set_seq(ev, seq)
        _set_time(ev, stamp)
        _set_type(ev, etype)
        _set_id(ev, eid)
        _set_data(ev, data)
        return ev
else:  # pragma: no cover - the model changed; stay correct, just slower

    def make_event(d: dict[str, Any]) -> Event:
        return Event(d["seq"], d["time"], d["type"], d["id"], d["data"])

    def build_event(seq: int, stamp: int, etype: str, eid: str, data: dict[str, Any]) -> Event:
        return Event(seq, stamp, etype, eid, data)


def decode_record(payload: bytes | memoryview) -> Event:
    """Decode one payload strictly; raises InvalidEvent for anything that is not an event."""
    try:
        record = _unpackb(payload, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise InvalidEvent(f"record is not valid msgpack: {exc}") from None
    return Event.from_record(record)


def new_unpacker(size: int) -> msgpack.Unpacker:
    """The decoder of a run of payloads (``size`` bytes): strict about nothing but size."""
    return msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=max(size, 1024))


def pack_records(pack: Any, items: Sequence[Item], last_seq: int, time_ns: int | None
                 ) -> tuple[list[bytes], list[Event]]:
    """Pack ``items`` numbered from ``last_seq + 1`` with ``pack`` (a msgpack Packer's); their
    payloads and events. ValueError/TypeError for an invalid item, before anything is
    returned (the batch is all or nothing)."""
    stamp = time.time_ns() if time_ns is None else time_ns
    seq = last_seq
    events: list[Event] = []
    parts: list[bytes] = []
    add = parts.append
    fast = FAST
    for etype, eid, data in items:
        if not isinstance(etype, str) or not etype:
            raise ValueError(f"event type must be a non-empty string, got {etype!r}")
        if not isinstance(eid, str):
            raise ValueError(f"event id must be a string, got {eid!r}")
        if not isinstance(data, dict):
            raise ValueError(f"event data must be a dict, got {type(data).__name__}")
        seq += 1
        ev = build_event(seq, stamp, etype, eid, data)
        payload = pack({"seq": seq, "time": stamp, "type": etype, "id": eid,
                        "data": data} if fast else ev.to_record())
        if len(payload) > MAX_RECORD:
            raise ValueError(f"event {etype} of {len(payload)} bytes exceeds the "
                             f"{MAX_RECORD}-byte record limit")
        add(payload)
        events.append(ev)
    return parts, events
