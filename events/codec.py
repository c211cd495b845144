"""The event log's on-disk format, in one place: segment headers, frames, encode, decode.

Sans-IO: everything here takes and returns bytes, so the writer (:mod:`events.log`), replay and
recovery (:mod:`events.segment`), and verify/repair (:mod:`events.verify`) read the format
through the same few functions, and the version is checked in one place
(:func:`read_version`). ``docs/design.md`` section 3 describes the format byte by byte.

A *frame* is the unit a CRC covers and a crash keeps or loses whole:

* format 2 (written): one frame per :meth:`EventLog.append <events.log.EventLog.append>`, a
  *batch*: ``magic | crc32 | u32 length | u32 count | u64 first_seq | records``, the CRC
  covering everything after it and seeded with the segment's random salt. A power loss that
  leaves the one unsynced batch half on disk (pages in any order, a hole then whole records)
  fails that batch's CRC, so it reads as "never committed", like a SQLite WAL transaction
  without its commit frame, and is cut; a valid batch after damage means real corruption.
* format 1 (read only): one frame per record, ``u32 length | u32 crc32(payload) | payload``.

:func:`parse_frames` walks as many whole, valid frames as a buffer holds and returns their
bodies as a list (no generator per frame: replay of a million events goes through it); one
msgpack ``Unpacker`` then decodes a whole run of bodies at once, far cheaper than ``unpackb``
per record. A record is ``msgpack(event.to_record())`` in both formats.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import msgpack  # type: ignore[import-untyped]  # it ships no type information

from events import codec_v1 as v1
from events.codec_v1 import REC_HEADER, encode_records_v1
from events.model import Event
from events.records import (
    MAX_RECORD,
    Item,
    decode_record,
    make_event,
    new_unpacker,
    pack_records,
)

__all__ = [
    "BATCH_HEADER",
    "BATCH_MAGIC",
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "HEADER_SIZE_V1",
    "MAGIC",
    "MAX_RECORD",
    "REC_HEADER",
    "CorruptLog",
    "Encoder",
    "Header",
    "LogVersionError",
    "all_zero",
    "decode_record",
    "encode_batch",
    "encode_header",
    "encode_header_v1",
    "encode_records_v1",
    "find_valid_frame",
    "make_event",
    "new_unpacker",
    "parse_frames",
    "parse_header",
    "read_version",
]

#: The segment format this code writes. Older versions stay readable; newer ones are refused.
FORMAT_VERSION = 2
MAGIC = b"TETHRLOG"
_PREFIX = struct.Struct(">8sI")  # magic, version: the part every version shares
PREFIX_SIZE = _PREFIX.size
_HEADER_V1 = struct.Struct(">8sIQI")  # magic, version, first_seq, crc32 of the preceding 20 bytes
HEADER_SIZE_V1 = _HEADER_V1.size
_HEADER_V2 = struct.Struct(">8sIQII")  # magic, version, first_seq, salt, crc32 of the first 24
HEADER_SIZE = _HEADER_V2.size
#: Bytes enough to hold the header of any version this code reads.
MAX_HEADER = max(HEADER_SIZE, HEADER_SIZE_V1)
#: Format 2 batch: magic, crc32 (salted) of everything after it, body length, count, first seq.
BATCH_MAGIC = b"\xb7TB\x02"
_BATCH = struct.Struct(">4sIIIQ")
BATCH_HEADER = _BATCH.size
_BATCH_TAIL = struct.Struct(">IIQ")  # the part of the batch header after magic and crc
#: Largest batch body: what one append may write (and a damaged length field may claim).
MAX_BATCH = 1024 * 1024 * 1024

_crc32 = zlib.crc32
_batch_unpack = _BATCH.unpack_from
_tail_pack = _BATCH_TAIL.pack


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
    size: int  # bytes: frames start here
    salt: int = 0  # format 2: seeds every batch CRC of the segment


def new_salt() -> int:
    return int.from_bytes(os.urandom(4), "big")


def encode_header(first_seq: int, salt: int) -> bytes:
    """The header of a new segment, in the current format."""
    body = _PREFIX.pack(MAGIC, FORMAT_VERSION) + struct.pack(">QI", first_seq, salt)
    return body + struct.pack(">I", _crc32(body))


def encode_header_v1(first_seq: int) -> bytes:
    """A format-1 header: only to recognise one (and for tests); nothing writes format 1."""
    body = _PREFIX.pack(MAGIC, 1) + struct.pack(">Q", first_seq)
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
    size = HEADER_SIZE_V1 if version == 1 else HEADER_SIZE
    if len(data) < size:
        return f"partial segment header ({len(data)} of {size} bytes)"
    if version is None:
        return "bad segment magic (not a Tether event-log segment)"
    if version < 1:
        return f"bad segment format version {version}"
    if version == 1:
        if data[:size] != encode_header_v1(first_seq):
            return "bad segment header (checksum or first seq does not match its name)"
        return Header(1, first_seq, size)
    _, _, seq, salt, crc = _HEADER_V2.unpack_from(data, 0)
    if crc != _crc32(memoryview(data)[: size - 4]) or seq != first_seq:
        return "bad segment header (checksum or first seq does not match its name)"
    return Header(version, first_seq, size, salt)


# -- frames -------------------------------------------------------------------------------------


def parse_frames(hdr: Header, buf: bytes, pos: int, end: int, seq: int
                 ) -> tuple[list[memoryview], int, int, str | None, bool]:
    """Walk the whole, valid frames of ``buf[pos:end]``, the first holding record ``seq``.

    Returns ``(bodies, records, stop, why, sound)``: the body of every frame passed, how many
    records they hold, where the walk stopped, and ``why`` when it stopped at a bad frame
    (``None``: at ``end``, or at a frame that continues past ``end`` -- more bytes are needed,
    or the segment ends in a partial frame). ``sound`` says the bad frame passed its checksum
    (a wrong seq): no crash leaves that, so it is never a torn tail. Zeros where a frame should
    start are reported as a bad frame: the caller tells the space written ahead of the records
    (:func:`all_zero` to the end) from damage. Format-1 records' seqs are checked when they
    are decoded; format-2 batches carry theirs in the header.
    """
    if hdr.version == 1:
        return v1.parse_frames(buf, pos, end)
    bodies: list[memoryview] = []
    add = bodies.append
    mv = memoryview(buf)
    unpack = _batch_unpack
    crc32 = _crc32
    salt = hdr.salt
    first = seq
    while pos + BATCH_HEADER <= end:
        magic, crc, length, count, batch_seq = unpack(buf, pos)
        if magic != BATCH_MAGIC:
            return bodies, seq - first, pos, "no batch header where one should start", False
        if not 0 < count <= length <= MAX_BATCH:
            return bodies, seq - first, pos, f"implausible batch ({count} records in " \
                f"{length} bytes)", False
        stop = pos + BATCH_HEADER + length
        if stop > end:
            break
        if crc32(mv[pos + 8 : stop], salt) != crc:
            return bodies, seq - first, pos, "batch checksum mismatch", False
        if batch_seq != seq:
            return bodies, seq - first, pos, (f"batch of seq {batch_seq} where {seq} was "
                                             "expected (a gap or a duplicate)"), True
        add(mv[pos + BATCH_HEADER : stop])
        seq += count
        pos = stop
    return bodies, seq - first, pos, None, False


def skip_frames(hdr: Header, buf: bytes, pos: int, end: int, records: int) -> tuple[int, int]:
    """Hop over whole frames holding at most ``records`` records from ``pos`` without checking
    them (replay ``since``): ``(pos, records hopped)``. Stops early at anything odd;
    :func:`parse_frames` reports it."""
    if hdr.version == 1:
        return v1.skip_frames(buf, pos, end, records)
    hopped = 0
    while pos + BATCH_HEADER <= end:
        magic, _, length, count, _ = _batch_unpack(buf, pos)
        if magic != BATCH_MAGIC or not 0 < count <= length <= MAX_BATCH:
            break
        stop = pos + BATCH_HEADER + length
        if stop > end or hopped + count > records:
            break
        hopped += count
        pos = stop
    return pos, hopped


def frame_offset(hdr: Header, buf: bytes, pos: int, records: int) -> int:
    """Offset of the frame holding the ``records``-th record after ``pos`` (frames that
    :func:`parse_frames` already passed): where a record that fails to decode is reported."""
    if hdr.version == 1:
        return v1.frame_offset(buf, pos, records)
    while True:
        _, _, length, count, _ = _batch_unpack(buf, pos)
        if records < count:
            return pos
        records -= count
        pos += BATCH_HEADER + length


def frame_size(hdr: Header, buf: bytes, pos: int, end: int) -> int | None:
    """Bytes the frame at ``pos`` takes, from its header (None: the header is not all there)."""
    if hdr.version == 1:
        return v1.frame_size(buf, pos, end)
    if pos + BATCH_HEADER > end:
        return None
    return BATCH_HEADER + int(_batch_unpack(buf, pos)[2])


def partial_frame(hdr: Header, buf: bytes, pos: int, end: int) -> str:
    """Describe the frame at ``pos`` that continues past ``end``."""
    if hdr.version == 1:
        return v1.partial_frame(buf, pos, end)
    if pos + BATCH_HEADER > end:
        return f"partial batch header ({end - pos} of {BATCH_HEADER} bytes)"
    length = _batch_unpack(buf, pos)[2]
    return f"partial batch ({end - pos - BATCH_HEADER} of {length} bytes)"


def batch_seqs(hdr: Header, buf: bytes, pos: int, end: int) -> tuple[int, int] | None:
    """``(first, last)`` seq a format-2 batch header at ``pos`` claims, if it looks like one
    (for the warning that names what a torn-tail cut removes)."""
    if hdr.version == 1 or pos + BATCH_HEADER > end:
        return None
    magic, _, length, count, first = _batch_unpack(buf, pos)
    if magic != BATCH_MAGIC or not 0 < count <= length:
        return None
    return int(first), int(first + count - 1)


def find_valid_frame(hdr: Header | None, buf: bytes, start: int, end: int,
                     min_seq: int) -> int | None:
    """Offset of the first valid frame at or after ``start`` whose seq is plausible, or None.

    Used after a bad frame: its length field may itself be damaged, so it cannot tell where
    the next frame starts; every byte offset is tried. A frame found here means the damage is
    in the middle of the history, not a torn tail. ``hdr=None`` (the segment header itself is
    damaged, so neither the format nor the salt is known) looks for either format's frames,
    and takes a format-2 batch on its structure alone: refusing wrongly is safe, cutting
    wrongly is not.
    """
    if hdr is None or hdr.version == 1:
        found = v1.find_record(buf, start, end, min_seq)
        if hdr is not None or found is not None:
            return found
    mv = memoryview(buf)
    q = buf.find(BATCH_MAGIC, start, end)
    while q != -1:
        if q + BATCH_HEADER <= end:
            _, crc, length, count, first = _batch_unpack(buf, q)
            stop = q + BATCH_HEADER + length
            if (0 < count <= length and stop <= end and min_seq <= first
                    and (hdr is None or _crc32(mv[q + 8 : stop], hdr.salt) == crc)):
                return q
        q = buf.find(BATCH_MAGIC, q + 1, end)
    return None


def all_zero(buf: bytes, start: int, end: int) -> bool:
    return buf.count(0, start, end) == end - start


# -- encoding ---------------------------------------------------------------------------------

class Encoder:
    """Turns a batch of ``(type, id, data)`` items into the frame to append and its events.

    Holds one msgpack Packer (reused: cheaper than ``packb`` per record). Not thread-safe: the
    log encodes under its lock.
    """

    def __init__(self) -> None:
        self._packer = msgpack.Packer(use_bin_type=True)

    def encode(self, items: Sequence[Item], last_seq: int, time_ns: int | None, salt: int
               ) -> tuple[bytes, list[Event]]:
        """One batch frame for ``items`` numbered from ``last_seq + 1``; ValueError/TypeError
        for an invalid item, before anything is returned (the batch is all or nothing)."""
        parts, events = pack_records(self._packer.pack, items, last_seq, time_ns)
        body = b"".join(parts)
        if len(body) > MAX_BATCH:
            raise ValueError(f"a batch of {len(body)} bytes exceeds the {MAX_BATCH}-byte limit")
        tail = _tail_pack(len(body), len(events), last_seq + 1)
        crc = _crc32(body, _crc32(tail, salt))
        return b"".join((BATCH_MAGIC, crc.to_bytes(4, "big"), tail, body)), events


def encode_batch(items: Sequence[Item], last_seq: int, salt: int, time_ns: int | None = None
                 ) -> bytes:
    """The frame :class:`Encoder` appends for ``items`` (tests and tools)."""
    return Encoder().encode(items, last_seq, time_ns, salt)[0]


