"""The event log's on-disk format, in one place: segment headers, frames, encode, decode.

Sans-IO: everything here takes and returns bytes, so the writer (:mod:`events.log`), replay and
recovery (:mod:`events.segment`), and verify/repair (:mod:`events.verify`) read the format
through the same few functions, and the version is checked in one place
(:func:`parse_header`). ``docs/design.md`` section 3 describes the format byte by byte.

A *frame* is the unit a CRC covers. In format 1 a frame is one record:
``u32 length | u32 crc32(payload) | payload``. :func:`parse_frames` walks as many whole, valid
frames as a buffer holds and returns their payloads as a list (no generator per frame: replay
of a million events goes through it); one msgpack ``Unpacker`` then decodes a whole run of
payloads at once, far cheaper than ``unpackb`` per record.
"""

from __future__ import annotations

import os
import struct
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import msgpack

from events.model import Event, InvalidEvent

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_RECORD",
    "CorruptLog",
    "Header",
    "LogVersionError",
    "all_zero",
    "decode_record",
    "encode_batch",
    "encode_header",
    "find_valid_frame",
    "parse_frames",
    "parse_header",
    "read_version",
]

#: The segment format this code writes. Older versions stay readable; newer ones are refused.
FORMAT_VERSION = 1
MAGIC = b"TETHRLOG"
_PREFIX = struct.Struct(">8sI")  # magic, version: the part every version shares
PREFIX_SIZE = _PREFIX.size
_HEADER_V1 = struct.Struct(">8sIQI")  # magic, version, first_seq, crc32 of the preceding 20 bytes
HEADER_SIZE = _HEADER_V1.size
#: Bytes enough to hold the header of any version this code reads.
MAX_HEADER = _HEADER_V1.size
_REC = struct.Struct(">II")  # payload length, crc32 of payload
REC_HEADER = _REC.size
#: Largest payload accepted. Above the wire's 16 MiB frame limit (no event can be larger than the
#: request that caused it), far below anything a damaged length field could make us allocate.
MAX_RECORD = 32 * 1024 * 1024

_crc32 = zlib.crc32
_rec_unpack = _REC.unpack_from
_rec_pack = _REC.pack
_u32_unpack = struct.Struct(">I").unpack_from


class CorruptLog(Exception):
    """Damage that is not a torn tail: records after it exist, so cutting would lose history."""

    def __init__(self, path: str | os.PathLike[str], offset: int, what: str) -> None:
        self.path = str(path)
        self.offset = offset
        self.what = what
        super().__init__(
            f"event log is corrupt: {self.path} at byte offset {offset}: {what}. "
            "Valid records follow the damage, so it is not a torn tail and nothing was cut. "
            "Run `python -m events verify ROOT` to see the damage, then "
            "`python -m events repair ROOT` (or start supervisord with --repair) to keep every "
            "record before it; the cut bytes are kept in a .broken file."
        )


class LogVersionError(Exception):
    """A segment written by a newer Tether, in a format this version cannot read."""

    def __init__(self, path: str | os.PathLike[str], version: int) -> None:
        self.path = str(path)
        self.version = version
        super().__init__(
            f"{self.path} is an event-log segment of format version {version}; this Tether "
            f"reads versions up to {FORMAT_VERSION}. Upgrade Tether to read this log."
        )


# -- segment header -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Header:
    """A segment's header, checked against the seq its file name gives."""

    version: int
    first_seq: int
    size: int  # bytes: records start here


def encode_header(first_seq: int) -> bytes:
    """The header of a new segment, in the current format."""
    body = _PREFIX.pack(MAGIC, FORMAT_VERSION) + struct.pack(">Q", first_seq)
    return body + struct.pack(">I", _crc32(body))


def read_version(head: bytes, path: str | os.PathLike[str]) -> int | None:
    """The format version ``head`` claims, None if it is too short or not ours.

    Raises :class:`LogVersionError` for a version newer than this code: checked first, so a
    newer segment is always refused as such, never reported as damage.
    """
    if len(head) < PREFIX_SIZE:
        return None
    magic, version = _PREFIX.unpack_from(head, 0)
    if magic != MAGIC:
        return None
    if version > FORMAT_VERSION:
        raise LogVersionError(path, version)
    return int(version)


def parse_header(data: bytes, first_seq: int, path: str | os.PathLike[str]) -> Header | str:
    """The header at the start of ``data`` for a segment named ``first_seq``, or why not.

    Raises :class:`LogVersionError` for a newer format.
    """
    version = read_version(data, path)
    if len(data) < HEADER_SIZE:
        return f"partial segment header ({len(data)} of {HEADER_SIZE} bytes)"
    if version is None:
        return "bad segment magic (not a Tether event-log segment)"
    if version < 1:
        return f"bad segment format version {version}"
    if data[:HEADER_SIZE] != encode_header(first_seq):
        return "bad segment header (checksum or first seq does not match its name)"
    return Header(version, first_seq, HEADER_SIZE)


# -- frames -------------------------------------------------------------------------------------


def parse_frames(hdr: Header, buf: bytes, pos: int, end: int
                 ) -> tuple[list[memoryview], int, str | None]:
    """Walk the whole, valid frames of ``buf[pos:end]``.

    Returns ``(payloads, stop, why)``: the payload of every frame passed, where the walk
    stopped, and ``why`` when it stopped at a bad frame (``None``: at ``end``, or at a frame
    that continues past ``end`` -- more bytes are needed, or the segment ends in a partial
    frame). Zeros where a frame should start are reported as a bad frame: the caller tells
    the space written ahead of the records (:func:`all_zero` to the end) from damage.
    """
    payloads: list[memoryview] = []
    add = payloads.append
    mv = memoryview(buf)
    rec_unpack = _rec_unpack
    crc32 = _crc32
    while pos + REC_HEADER <= end:
        length, crc = rec_unpack(buf, pos)
        if not 0 < length <= MAX_RECORD:
            return payloads, pos, f"implausible record length {length}"
        stop = pos + REC_HEADER + length
        if stop > end:
            break
        payload = mv[pos + REC_HEADER : stop]
        if crc32(payload) != crc:
            return payloads, pos, "record checksum mismatch"
        add(payload)
        pos = stop
    return payloads, pos, None


def skip_frames(hdr: Header, buf: bytes, pos: int, end: int, records: int) -> tuple[int, int]:
    """Hop over up to ``records`` records from ``pos`` without checking them (replay ``since``):
    ``(pos, records hopped)``. Stops early at anything odd; :func:`parse_frames` reports it."""
    hopped = 0
    u32 = _u32_unpack
    while hopped < records and pos + REC_HEADER <= end:
        (length,) = u32(buf, pos)
        if not 0 < length <= MAX_RECORD:
            break
        stop = pos + REC_HEADER + length
        if stop > end:
            break
        hopped += 1
        pos = stop
    return pos, hopped


def frame_offset(hdr: Header, buf: bytes, pos: int, records: int) -> int:
    """Offset of the frame holding the ``records``-th record after ``pos`` (frames that
    :func:`parse_frames` already passed): where a record that fails to decode is reported."""
    for _ in range(records):
        (length,) = _u32_unpack(buf, pos)
        pos += REC_HEADER + length
    return pos


def partial_frame(hdr: Header, buf: bytes, pos: int, end: int) -> str:
    """Describe the frame at ``pos`` that continues past ``end``."""
    if pos + REC_HEADER > end:
        return f"partial record header ({end - pos} of {REC_HEADER} bytes)"
    (length,) = _u32_unpack(buf, pos)
    return f"partial record ({end - pos - REC_HEADER} of {length} payload bytes)"


def find_valid_frame(hdr: Header | None, buf: bytes, start: int, end: int,
                     min_seq: int) -> int | None:
    """Offset of the first valid frame at or after ``start`` whose seq is plausible, or None.

    Used after a bad frame: its length field may itself be damaged, so it cannot tell where
    the next frame starts; every byte offset is tried. A frame found here means the damage is
    in the middle of the history, not a torn tail.
    """
    max_seq = min_seq + (end - start)  # every record takes more than one byte
    mv = memoryview(buf)
    for q in range(start, end - REC_HEADER):
        length, crc = _rec_unpack(buf, q)
        if length == 0 or length > MAX_RECORD or q + REC_HEADER + length > end:
            continue
        if _crc32(mv[q + REC_HEADER : q + REC_HEADER + length]) != crc:
            continue
        try:
            ev = decode_record(mv[q + REC_HEADER : q + REC_HEADER + length])
        except InvalidEvent:
            continue
        if min_seq <= ev.seq <= max_seq:
            return q
    return None


def all_zero(buf: bytes, start: int, end: int) -> bool:
    return buf.count(0, start, end) == end - start


# -- records ----------------------------------------------------------------------------------

_unpackb = msgpack.unpackb

# Event is a frozen, slotted dataclass: its __init__ pays object.__setattr__ per field. Replay
# builds a million of them, so it sets the slots directly, which is three times faster. The
# shortcut is used only while the dataclass has exactly the fields it was written for.
_new = object.__new__
_FIELDS = ["seq", "time", "type", "id", "data"]
FAST = (
    [f.name for f in fields(Event)] == _FIELDS
    and all(hasattr(Event.__dict__.get(k), "__set__") for k in _FIELDS)
    # encode_batch builds the record map itself; only while it is exactly what to_record() gives
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

    def _build_event(seq: int, stamp: int, etype: str, eid: str, data: dict[str, Any]) -> Event:
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

    def _build_event(seq: int, stamp: int, etype: str, eid: str, data: dict[str, Any]) -> Event:
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


def seq_of(payload: bytes | memoryview) -> object:
    """The seq a payload claims, for an error message; "?" if it does not decode."""
    try:
        record = _unpackb(payload, raw=False, strict_map_key=False)
        return record.get("seq") if isinstance(record, dict) else "?"
    except Exception:  # any decoding failure: this only feeds a message
        return "?"


# -- encoding ---------------------------------------------------------------------------------

Item = tuple[str, str, dict[str, Any]]


class Encoder:
    """Turns a batch of ``(type, id, data)`` items into the bytes to append and their events.

    Holds one msgpack Packer (reused: cheaper than ``packb`` per record). Not thread-safe: the
    log encodes under its lock.
    """

    def __init__(self) -> None:
        self._packer = msgpack.Packer(use_bin_type=True)

    def encode(self, items: Sequence[Item], last_seq: int, time_ns: int | None
               ) -> tuple[bytes, list[Event]]:
        """Frames for ``items`` numbered from ``last_seq + 1``; ValueError/TypeError for an
        invalid item, before anything is returned (the batch is all or nothing)."""
        stamp = time.time_ns() if time_ns is None else time_ns
        seq = last_seq
        events: list[Event] = []
        parts: list[bytes] = []
        pack = self._packer.pack
        rec_pack = _rec_pack
        crc32 = _crc32
        fast = FAST
        for etype, eid, data in items:
            if not isinstance(etype, str) or not etype:
                raise ValueError(f"event type must be a non-empty string, got {etype!r}")
            if not isinstance(eid, str):
                raise ValueError(f"event id must be a string, got {eid!r}")
            if not isinstance(data, dict):
                raise ValueError(f"event data must be a dict, got {type(data).__name__}")
            seq += 1
            ev = _build_event(seq, stamp, etype, eid, data)
            payload = pack({"seq": seq, "time": stamp, "type": etype, "id": eid,
                            "data": data} if fast else ev.to_record())
            if len(payload) > MAX_RECORD:
                raise ValueError(f"event {etype} of {len(payload)} bytes exceeds the "
                                 f"{MAX_RECORD}-byte record limit")
            parts.append(rec_pack(len(payload), crc32(payload)))
            parts.append(payload)
            events.append(ev)
        return b"".join(parts), events


def encode_batch(items: Sequence[Item], last_seq: int, time_ns: int | None = None) -> bytes:
    """The bytes :class:`Encoder` appends for ``items`` (tests and tools)."""
    return Encoder().encode(items, last_seq, time_ns)[0]
