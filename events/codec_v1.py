"""Format 1 of the log's segments (read only): one frame per record.

A record frame is ``u32 length | u32 crc32(payload) | payload``, big-endian, after a 24-byte
segment header (:func:`events.codec.encode_header_v1`). Nothing writes format 1 any more; a
log whose last segment is format 1 continues in a format-2 segment. :mod:`events.codec`
dispatches here for a segment whose header says version 1.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

import msgpack  # type: ignore[import-untyped]  # it ships no type information

from events.model import InvalidEvent
from events.records import MAX_RECORD, Item, decode_record

__all__ = ["REC_HEADER", "encode_records_v1", "find_record", "frame_offset", "frame_size",
           "parse_frames", "partial_frame", "skip_frames"]

_REC = struct.Struct(">II")  # payload length, crc32 of payload
REC_HEADER = _REC.size
_rec_unpack = _REC.unpack_from
_rec_pack = _REC.pack
_u32_unpack = struct.Struct(">I").unpack_from
_crc32 = zlib.crc32


def parse_frames(buf: bytes, pos: int, end: int
              ) -> tuple[list[memoryview], int, int, str | None, bool]:
    payloads: list[memoryview] = []
    add = payloads.append
    mv = memoryview(buf)
    rec_unpack = _rec_unpack
    crc32 = _crc32
    while pos + REC_HEADER <= end:
        length, crc = rec_unpack(buf, pos)
        if not 0 < length <= MAX_RECORD:
            return payloads, len(payloads), pos, f"implausible record length {length}", False
        stop = pos + REC_HEADER + length
        if stop > end:
            break
        payload = mv[pos + REC_HEADER : stop]
        if crc32(payload) != crc:
            return payloads, len(payloads), pos, "record checksum mismatch", False
        add(payload)
        pos = stop
    return payloads, len(payloads), pos, None, False


def skip_frames(buf: bytes, pos: int, end: int, records: int) -> tuple[int, int]:
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


def frame_offset(buf: bytes, pos: int, records: int) -> int:
    for _ in range(records):
        (length,) = _u32_unpack(buf, pos)
        pos += REC_HEADER + length
    return pos


def frame_size(buf: bytes, pos: int, end: int) -> int | None:
    return REC_HEADER + int(_u32_unpack(buf, pos)[0]) if pos + REC_HEADER <= end else None


def partial_frame(buf: bytes, pos: int, end: int) -> str:
    if pos + REC_HEADER > end:
        return f"partial record header ({end - pos} of {REC_HEADER} bytes)"
    (length,) = _u32_unpack(buf, pos)
    return f"partial record ({end - pos - REC_HEADER} of {length} payload bytes)"


def find_record(buf: bytes, start: int, end: int, min_seq: int) -> int | None:
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


def encode_records_v1(items: Sequence[Item], last_seq: int, time_ns: int) -> bytes:
    """Format-1 records, as Tether before format 2 wrote them (tests of the reader)."""
    out = []
    for k, (etype, eid, data) in enumerate(items):
        payload = msgpack.packb({"seq": last_seq + 1 + k, "time": time_ns, "type": etype,
                                 "id": eid, "data": data}, use_bin_type=True)
        out.append(_rec_pack(len(payload), _crc32(payload)) + payload)
    return b"".join(out)
