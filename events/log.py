"""The durable event log: segments of framed records under ``ROOT/events/``.

The log is the only source of truth of the system, so every design choice here is about never
losing an acknowledged event and never silently presenting a shorter history:

* A segment is named by the seq of its first record (``00000000000000000001.seg``) so a reader
  finds where ``since`` lives by a binary search on file names, without opening anything.
* A segment starts with a header: ``magic (8) | u32 version`` (stable across every version, so a
  newer format is always recognised and refused with :class:`LogVersionError`), then for
  version 1 ``u64 first_seq | u32 crc32`` of the bytes before it.
* A record is ``u32 length | u32 crc32(payload) | payload`` (big-endian), the payload being
  ``msgpack(event.to_record())``. Seqs are gap-free across records and segments.
* :meth:`EventLog.append` writes a whole batch and calls ``fdatasync`` once (group commit); on
  failure it cuts the segment back to where the batch began, so a full disk never leaves a
  partial record that could later pass for corruption.
* The active segment is followed by zeros written ahead (:data:`PREALLOC`); a length of 0
  marks the end of the records. Zeros are cut when a segment is closed (roll, close, open),
  so only the last segment can end in them.
* Opening recovers: a bad record that is the last thing in the last segment is a torn tail
  (a crash mid-append) and is cut off with a warning; damage followed by a valid record is
  corruption, and the log refuses to open (:class:`CorruptLog`) rather than lose history.

Opening checks the frames and CRCs of the last segment only (a 1 M-event log opens in about a
third of a second); every other record is checked (CRC, seq continuity) when
:meth:`EventLog.read` passes over it, and :func:`verify` checks them all. The module logs with
stdlib :mod:`logging`: the events package stays light.

Known limit: after a *power loss* (not a process crash: the page cache survives those), the
pages of the one batch whose fdatasync had not returned may reach the disk in any order, so
its tail can have a hole followed by whole records. By the rule above that reads as
corruption (refuse, ``--repair`` cuts it), never as a silent cut of acknowledged events. A
batch-start flag in the spare high bits of the length field would let a later format version
tell that case apart.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import struct
import threading
import time
import zlib
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import msgpack

from events.model import Event, InvalidEvent
from events.snapshot import CorruptSnapshot, SnapshotVersionError, read_snapshot, write_snapshot

__all__ = [
    "FORMAT_VERSION",
    "CorruptLog",
    "CorruptSnapshot",
    "EventLog",
    "LogBusy",
    "LogVersionError",
    "Problem",
    "RepairReport",
    "SnapshotVersionError",
    "VerifyReport",
    "read_events",
    "read_snapshot",
    "repair",
    "verify",
    "write_snapshot",
]

logger = logging.getLogger("tether.events.log")

#: The segment format this code writes. Older versions stay readable; newer ones are refused.
FORMAT_VERSION = 1
MAGIC = b"TETHRLOG"
_PREFIX = struct.Struct(">8sI")  # magic, version: the part every version shares
_HEADER_V1 = struct.Struct(">8sIQI")  # magic, version, first_seq, crc32 of the preceding 20 bytes
HEADER_SIZE = _HEADER_V1.size
_REC = struct.Struct(">II")  # payload length, crc32 of payload
REC_HEADER = _REC.size
#: Largest payload accepted. Above the wire's 16 MiB frame limit (no event can be larger than the
#: request that caused it), far below anything a damaged length field could make us allocate.
MAX_RECORD = 32 * 1024 * 1024
#: Read size for replay: big reads amortise syscalls; 1 MiB keeps the working set in cache
#: (measured: 256 KiB to 4 MiB are within noise of each other here).
CHUNK = 1024 * 1024
#: Zeros written ahead of the active segment's end. Overwriting blocks that already exist lets
#: fdatasync flush data alone; an append that grows the file also commits the inode's new size
#: to the journal, which measured 25-45 % slower here (7 KiB: 200 -> 148 us median) with a
#: longer tail. Half a MiB keeps the one slower batch that extends it rare (every ~5,000 events).
PREALLOC = 512 * 1024
_ZEROS = bytes(PREALLOC)
_SEG_RE = re.compile(r"^(\d{20})\.seg$")
_LOCK_NAME = "LOCK"


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


class LogBusy(Exception):
    """Another process (or another EventLog) has this log open for writing."""


def segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}.seg"


def _header(first_seq: int) -> bytes:
    body = _PREFIX.pack(MAGIC, FORMAT_VERSION) + struct.pack(">Q", first_seq)
    return body + struct.pack(">I", zlib.crc32(body))


def list_segments(events_dir: Path) -> list[tuple[int, Path]]:
    """``(first_seq, path)`` of every segment file, ascending; other files are ignored."""
    try:
        names = os.listdir(events_dir)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        m = _SEG_RE.match(name)
        if m:
            found.append((int(m.group(1)), events_dir / name))
    found.sort()
    return found


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a new, renamed or deleted file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


# -- decoding -----------------------------------------------------------------------------------

_unpackb = msgpack.unpackb
_crc32 = zlib.crc32
_rec_unpack = _REC.unpack_from
_len_unpack = struct.Struct(">I").unpack_from

# Event is a frozen, slotted dataclass: its __init__ pays object.__setattr__ per field. Replay
# builds a million of them, so it sets the slots directly, which is three times faster. The
# shortcut is used only while the dataclass has exactly the fields it was written for.
_new = object.__new__
_FIELDS = ["seq", "time", "type", "id", "data"]
_FAST = (
    [f.name for f in fields(Event)] == _FIELDS
    and all(hasattr(Event.__dict__.get(k), "__set__") for k in _FIELDS)
    # append() builds the record map itself; only while it is exactly what to_record() gives
    and list(Event(1, 2, "t", "i", {}).to_record().items())
    == [("seq", 1), ("time", 2), ("type", "t"), ("id", "i"), ("data", {})]
)
if _FAST:
    _set_seq, _set_time, _set_type, _set_id, _set_data = (
        Event.__dict__[k].__set__ for k in ("seq", "time", "type", "id", "data")
    )

    def _make_event(d: dict[str, Any]) -> Event:
        ev = _new(Event)
        _set_seq(ev, d["seq"])
        _set_time(ev, d["time"])
        _set_type(ev, d["type"])
        _set_id(ev, d["id"])
        _set_data(ev, d["data"])
        return ev

    def _build_event(seq: int, stamp: int, etype: str, eid: str, data: dict[str, Any]) -> Event:
        ev = _new(Event)
        _set_seq(ev, seq)
        _set_time(ev, stamp)
        _set_type(ev, etype)
        _set_id(ev, eid)
        _set_data(ev, data)
        return ev
else:  # pragma: no cover - the model changed; stay correct, just slower

    def _make_event(d: dict[str, Any]) -> Event:
        return Event(d["seq"], d["time"], d["type"], d["id"], d["data"])

    _build_event = Event


def _decode_record(payload: bytes | memoryview) -> Event:
    """Decode one payload strictly; raises InvalidEvent for anything that is not an event."""
    try:
        record = _unpackb(payload, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise InvalidEvent(f"record is not valid msgpack: {exc}") from None
    return Event.from_record(record)


def _record_at(buf: bytes, pos: int, end: int) -> tuple[Event | None, int, str]:
    """Parse the record at ``pos``: ``(event, next_pos, "")`` or ``(None, pos, why)``."""
    if pos + REC_HEADER > end:
        return None, pos, f"partial record header ({end - pos} of {REC_HEADER} bytes)"
    length, crc = _rec_unpack(buf, pos)
    if length == 0 or length > MAX_RECORD:
        return None, pos, f"implausible record length {length}"
    stop = pos + REC_HEADER + length
    if stop > end:
        return None, pos, f"partial record ({end - pos - REC_HEADER} of {length} payload bytes)"
    payload = memoryview(buf)[pos + REC_HEADER : stop]
    if _crc32(payload) != crc:
        return None, pos, "record checksum mismatch"
    try:
        return _decode_record(payload), stop, ""
    except InvalidEvent as exc:
        return None, pos, str(exc)


def _find_valid_record(buf: bytes, start: int, end: int, min_seq: int) -> int | None:
    """Offset of the first valid record at or after ``start`` whose seq is plausible, or None.

    Used after a bad record: the bad one's length field may itself be damaged, so we cannot
    trust it to tell where the next record starts; every byte offset is tried. A record found
    here means the damage is in the middle of the history, not a torn tail.
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
            ev = _decode_record(mv[q + REC_HEADER : q + REC_HEADER + length])
        except InvalidEvent:
            continue
        if min_seq <= ev.seq <= max_seq:
            return q
    return None


# -- scanning whole segments (recovery, verify, repair) ------------------------------------------


@dataclass
class SegmentScan:
    """What a full check of one segment found. ``end`` is where the valid prefix stops."""

    path: Path
    first_seq: int
    version: int | None = None
    count: int = 0
    end: int = 0
    size: int = 0
    damage: str | None = None  # what is wrong at ``end``; None when the segment is clean
    valid_after: int | None = None  # offset of a valid record after the damage: corruption
    header_ok: bool = False

    @property
    def last_seq(self) -> int:
        return self.first_seq + self.count - 1

    @property
    def torn(self) -> bool:
        """Damage with nothing valid after it: what a crash mid-append leaves."""
        return self.damage is not None and self.valid_after is None


def scan_segment(path: Path, first_seq: int, data: bytes | None = None) -> SegmentScan:
    """Check every record of one segment. Raises LogVersionError for a newer format."""
    if data is None:
        data = path.read_bytes()
    scan = SegmentScan(path=path, first_seq=first_seq, size=len(data))
    end = len(data)
    if end >= _PREFIX.size:
        magic, version = _PREFIX.unpack_from(data, 0)
        if magic == MAGIC and version > FORMAT_VERSION:
            raise LogVersionError(path, version)
    expected_header = _header(first_seq)
    if end < HEADER_SIZE:
        scan.damage = f"partial segment header ({end} of {HEADER_SIZE} bytes)"
        return scan
    if data[:HEADER_SIZE] != expected_header:
        magic, version = _PREFIX.unpack_from(data, 0)
        if magic != MAGIC:
            scan.damage = "bad segment magic (not a Tether event-log segment)"
        elif version < 1:
            scan.damage = f"bad segment format version {version}"
        else:
            scan.damage = "bad segment header (checksum or first seq does not match its name)"
        scan.valid_after = _find_valid_record(data, 0, end, first_seq)
        return scan
    scan.version = FORMAT_VERSION
    scan.header_ok = True
    pos = HEADER_SIZE
    seq = first_seq
    while pos < end:
        ev, nxt, why = _record_at(data, pos, end)
        if ev is not None and ev.seq != seq:
            why = f"seq {ev.seq} where {seq} was expected (a gap or a duplicate)"
            scan.damage = why
            scan.valid_after = pos  # a valid record with the wrong seq is never a torn tail
            break
        if ev is None:
            if _all_zero(data, pos, end):
                break  # space written ahead of the records: the clean end of the segment
            scan.damage = why
            scan.valid_after = _find_valid_record(data, pos + 1, end, seq)
            break
        pos = nxt
        seq += 1
    scan.end = pos
    scan.count = seq - first_seq
    return scan


def quick_scan(path: Path, first_seq: int, data: bytes) -> SegmentScan:
    """:func:`scan_segment` for the common, clean case, fast enough to run on every open.

    Checks the header and every frame's CRC but decodes only the last record, whose seq must
    then be ``first_seq + count - 1`` (each record is re-checked by :meth:`EventLog.read`
    when replayed). Anything unexpected falls back to the full scan, which explains it.
    """
    end = len(data)
    if end < HEADER_SIZE or data[:HEADER_SIZE] != _header(first_seq):
        return scan_segment(path, first_seq, data)
    mv = memoryview(data)
    pos = HEADER_SIZE
    last = -1
    count = 0
    while pos + REC_HEADER <= end:
        length, crc = _rec_unpack(data, pos)
        stop = pos + REC_HEADER + length
        if length == 0 or length > MAX_RECORD or stop > end:
            break
        if _crc32(mv[pos + REC_HEADER : stop]) != crc:
            break
        last = pos
        pos = stop
        count += 1
    if pos != end and not _all_zero(data, pos, end):
        return scan_segment(path, first_seq, data)
    if count:
        ev, _, _ = _record_at(data, last, end)
        if ev is None or ev.seq != first_seq + count - 1:
            return scan_segment(path, first_seq, data)
    return SegmentScan(path=path, first_seq=first_seq, version=FORMAT_VERSION, count=count,
                       end=pos, size=end, header_ok=True)


# -- the log --------------------------------------------------------------------------------


class EventLog:
    """The append-only log of one Tether root. Create it with :meth:`open`.

    One writer per root: :meth:`open` takes an exclusive ``flock`` on ``ROOT/events/LOCK``
    (released by the kernel if the process dies), so a second daemon cannot interleave records.
    """

    def __init__(self, *_: Any, **__: Any) -> None:
        raise TypeError("use EventLog.open(root)")

    @classmethod
    def open(cls, root: str | os.PathLike[str], *, segment_size: int = 64 * 1024 * 1024,
             repair: bool = False) -> EventLog:
        """Open (creating if needed) ``ROOT/events``, recovering from a crash mid-append.

        ``segment_size`` bounds a segment (the unit of compaction); 64 MiB keeps the number of
        files small and a segment scan on open well under a second. With ``repair=True``
        :func:`repair` cuts corruption first (keeping the cut bytes); without it corruption
        raises :class:`CorruptLog`.
        """
        self = object.__new__(cls)
        self._root = Path(root)
        self._dir = self._root / "events"
        self._dir.mkdir(parents=True, exist_ok=True)
        self._segment_size = segment_size
        self._lock = threading.Lock()
        self._packer = msgpack.Packer(use_bin_type=True)  # reused: cheaper than packb per record
        self._fd = -1
        self._lock_fd = os.open(self._dir / _LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                                0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise LogBusy(f"{self._dir} is open for writing by another process "
                          "(is supervisord already running with this --root?)") from None
        try:
            if repair:
                report = _repair_dir(self._dir)
                if report.changed:
                    logger.warning("%s", report.describe())
            self._recover()
        except BaseException:
            self._close_fds()
            raise
        return self

    # -- recovery

    def _recover(self) -> None:
        segs = list_segments(self._dir)
        for _, path in segs[:-1]:
            _check_version(path)
        while True:
            if not segs:
                os.close(self._create_segment(1))
                segs = [(1, self._dir / segment_name(1))]
            first, path = segs[-1]
            data = path.read_bytes()
            scan = quick_scan(path, first, data)
            if scan.damage is not None and not scan.torn:
                assert scan.valid_after is not None
                raise CorruptLog(path, scan.end, scan.damage)
            if scan.damage is not None and not scan.header_ok:
                # A crash while creating this segment (nothing in it was ever acknowledged), or
                # a header damaged with nothing valid after it. Keep anything that is not just a
                # partial header, for an operator to look at.
                if data.strip(b"\0") and not _header(first).startswith(data.rstrip(b"\0")):
                    kept = _broken_path(path)
                    os.rename(path, kept)
                    logger.warning("event log: %s: %s and no valid record after it; moved to %s",
                                   path, scan.damage, kept)
                else:
                    logger.warning("event log: %s: %s (torn while being created); rewriting it",
                                   path, scan.damage)
                    path.unlink()
                fsync_dir(self._dir)
                if len(segs) > 1:
                    segs.pop()
                    continue
                os.close(self._create_segment(first))
                continue
            if scan.damage is not None:
                logger.warning(
                    "event log: %s: torn tail at byte offset %d (%s); cutting %d bytes "
                    "(an append that was never acknowledged)",
                    path, scan.end, scan.damage, scan.size - scan.end)
            break
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            if scan.size != scan.end:
                os.ftruncate(fd, scan.end)
            # Bytes written before a crash but never synced are now part of the history: make
            # them durable before anyone is told about them.
            os.fdatasync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._segs = [s for s, _ in segs]
        self._end = scan.end
        self._alloc_end = scan.end  # file size: the zero tail (if any) was cut above
        self._prealloc = min(PREALLOC, self._segment_size)
        self._last_seq = scan.last_seq
        self._needs_truncate = False

    def _create_segment(self, first_seq: int) -> int:
        """Create a segment holding only its header, durably (file and directory entry)."""
        path = self._dir / segment_name(first_seq)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            _pwrite_all(fd, _header(first_seq), 0)
            os.fdatasync(fd)
            fsync_dir(self._dir)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        return fd

    # -- properties

    @property
    def root(self) -> Path:
        return self._root

    @property
    def last_seq(self) -> int:
        """Seq of the last durable event; 0 for an empty log."""
        return self._last_seq

    @property
    def first_seq(self) -> int:
        """Seq of the oldest event still kept (after compaction, earlier ones are gone)."""
        with self._lock:
            return self._segs[0]

    # -- writing

    def append(self, items: Sequence[tuple[str, str, dict[str, Any]]],
               time_ns: int | None = None) -> list[Event]:
        """Append a batch durably (one fdatasync) and return its events, seqs assigned.

        On ``OSError`` (ENOSPC, EIO) the segment is cut back to where the batch began,
        ``last_seq`` is unchanged and the error is re-raised; the log stays usable.
        Invalid items raise ValueError/TypeError before anything is written.
        """
        with self._lock:
            if self._fd < 0:
                raise ValueError("event log is closed")
            if not items:
                return []
            if self._needs_truncate:  # a previous failure could not cut its partial batch
                os.ftruncate(self._fd, self._end)
                self._needs_truncate = False
                self._alloc_end = self._end
            stamp = time.time_ns() if time_ns is None else time_ns
            seq = self._last_seq
            events: list[Event] = []
            parts: list[bytes] = []
            pack = self._packer.pack
            rec_pack = _REC.pack
            fast = _FAST
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
                parts.append(rec_pack(len(payload), _crc32(payload)))
                parts.append(payload)
                events.append(ev)
            blob = b"".join(parts)
            if self._end >= self._segment_size and self._last_seq >= self._segs[-1]:
                self._roll()
            if self._end + len(blob) > self._alloc_end and self._prealloc:
                self._extend(self._end + len(blob))
            try:
                _pwrite_all(self._fd, blob, self._end)
                os.fdatasync(self._fd)
            except OSError:
                self._undo_partial()
                raise
            self._end += len(blob)
            self._last_seq = seq
            return events

    def _undo_partial(self) -> None:
        try:
            os.ftruncate(self._fd, self._end)  # also gives back the space written ahead
            self._alloc_end = self._end
            os.fdatasync(self._fd)
        except OSError:
            self._needs_truncate = True  # retried before the next append writes anything

    def _extend(self, need: int) -> None:
        """Write zeros from the allocated end to past ``need`` (not synced: the batch's
        fdatasync covers them). On a full disk, give the space back and let this batch (and
        the rest of the segment) grow the file as it goes: ENOSPC then comes from the batch's
        own write, which :meth:`append` undoes cleanly."""
        target = need + self._prealloc
        pos = self._alloc_end
        try:
            while pos < target:
                pos += os.pwrite(self._fd, memoryview(_ZEROS)[: min(PREALLOC, target - pos)], pos)
        except OSError:
            self._prealloc = 0
            try:
                os.ftruncate(self._fd, self._end)
            except OSError:
                self._needs_truncate = True
            self._alloc_end = self._end
            return
        self._alloc_end = target

    def _cut_zero_tail(self) -> None:
        """Make the active segment end exactly at its last record, durably."""
        if self._alloc_end != self._end:
            os.ftruncate(self._fd, self._end)
            self._alloc_end = self._end
            os.fdatasync(self._fd)

    def _roll(self) -> None:
        # Closed segments end at their last record: only the last one may have a zero tail.
        self._cut_zero_tail()
        first = self._last_seq + 1
        fd = self._create_segment(first)  # on failure the current segment stays active
        old = self._fd
        self._fd = fd
        self._segs.append(first)
        self._end = self._alloc_end = HEADER_SIZE
        self._prealloc = min(PREALLOC, self._segment_size)
        os.close(old)

    # -- reading

    def segments(self) -> list[tuple[int, Path]]:
        """``(first_seq, path)`` of every segment, ascending."""
        with self._lock:
            return [(s, self._dir / segment_name(s)) for s in self._segs]

    def read(self, since: int = 0) -> Iterator[Event]:
        """Every event with ``seq > since``, in order, up to the last durable one now.

        The segments and the durable end are fixed when this is called, so appends racing with
        the iteration are never half-seen. Events compacted away are not returned: compare
        :attr:`first_seq`. Damage met on the way raises :class:`CorruptLog`.
        """
        with self._lock:
            if self._fd < 0:
                raise ValueError("event log is closed")
            firsts = list(self._segs)
            active_end = self._end
        return _iter_events(self._dir, firsts, since, active_end)

    # -- maintenance

    def compact(self, keep_from_seq: int) -> list[Path]:
        """Delete segments whose every record has ``seq < keep_from_seq``; never the active one.

        Call it with the seq of a durable snapshot + 1: everything the daemon needs to rebuild
        its state (snapshot + the records after it) stays.
        """
        deleted: list[Path] = []
        with self._lock:
            while len(self._segs) > 1 and self._segs[1] <= keep_from_seq:
                path = self._dir / segment_name(self._segs[0])
                path.unlink()
                deleted.append(path)
                self._segs.pop(0)
            if deleted:
                fsync_dir(self._dir)
        return deleted

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                with contextlib.suppress(OSError):  # tidiness only: open cuts it anyway
                    self._cut_zero_tail()
            self._close_fds()

    def _close_fds(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<EventLog {str(self._dir)!r} last_seq={self._last_seq}>"


def _check_version(path: Path) -> None:
    with open(path, "rb") as f:
        head = f.read(_PREFIX.size)
    if len(head) == _PREFIX.size:
        magic, version = _PREFIX.unpack(head)
        if magic == MAGIC and version > FORMAT_VERSION:
            raise LogVersionError(path, version)


def _iter_events(events_dir: Path, firsts: list[int], since: int,
                 active_end: int | None) -> Iterator[Event]:
    """Replay from the segment holding ``since + 1``; ``active_end`` bounds the last segment.

    ``active_end=None`` is the offline reader's mode (no writer): the last segment is read to
    its end and a partial record there ends the replay (a torn tail, left for open to cut).
    """
    if not firsts:
        return
    idx = max(bisect_right(firsts, since + 1) - 1, 0)
    prev_last: int | None = None
    for i in range(idx, len(firsts)):
        first = firsts[i]
        path = events_dir / segment_name(first)
        if prev_last is not None and first != prev_last + 1:
            raise CorruptLog(path, 0, f"gap between segments: the previous one ends at seq "
                                      f"{prev_last}, this one starts at {first}")
        is_last = i == len(firsts) - 1
        if not (is_last and active_end is None):
            limit = active_end if is_last else None
            prev_last = yield from _iter_segment(path, first, since, limit, offline_tail=False)
            continue
        try:
            yield from _iter_segment(path, first, since, None, offline_tail=True)
        except CorruptLog as exc:
            # Offline, nobody has cut a torn tail yet: tell it from corruption like open would.
            scan = scan_segment(path, first)
            if scan.end != exc.offset or not scan.torn:
                raise
            logger.warning("event log: %s: torn tail at byte offset %d (%s); replay stops there",
                           path, scan.end, scan.damage)


def _iter_segment(path: Path, first: int, since: int, limit: int | None,
                  offline_tail: bool) -> Iterator[Event]:
    """Replay one segment; returns the seq of its last record.

    Hot loop of replay: per chunk, a first pass walks the frames and checks CRCs, then one
    msgpack Unpacker decodes all payloads of the chunk (far cheaper than unpackb per record).
    """
    with open(path, "rb", buffering=0) as f:
        head = f.read(HEADER_SIZE)
        if head != _header(first):
            if len(head) >= _PREFIX.size:
                magic, version = _PREFIX.unpack_from(head, 0)
                if magic == MAGIC and version > FORMAT_VERSION:
                    raise LogVersionError(path, version)
            raise CorruptLog(path, 0, "bad segment header")
        if limit is None:
            limit = os.fstat(f.fileno()).st_size
        base = HEADER_SIZE  # file offset of buf[0]
        seq = first  # seq of the next record
        skip = max(0, since - first + 1)
        buf = b""
        rec_unpack = _rec_unpack
        rec_len = _len_unpack
        crc32 = _crc32
        make = _make_event
        while True:
            want = limit - base - len(buf)
            chunk = f.read(min(CHUNK, want)) if want > 0 else b""
            if not chunk:
                if buf and not _all_zero(buf, 0, len(buf)):
                    if offline_tail:
                        logger.warning("event log: %s: partial record at byte offset %d "
                                       "(torn tail); replay stops there", path, base)
                        return seq - 1
                    raise CorruptLog(path, base, "segment ends in a partial record")
                return seq - 1
            buf = buf + chunk if buf else chunk
            end = len(buf)
            mv = memoryview(buf)
            pos = 0
            payloads: list[memoryview] = []
            add = payloads.append
            chunk_seq = seq  # seq of the record at buf[0]
            while skip and pos + REC_HEADER <= end:  # records before ``since``: hop over them
                (length,) = rec_len(buf, pos)
                if not 0 < length <= MAX_RECORD:
                    break  # the loop below reports it (or finds the zeros written ahead)
                stop = pos + REC_HEADER + length
                if stop > end:
                    break
                skip -= 1
                seq += 1
                pos = stop
            first_decoded = seq
            bad = ""  # damage found at ``pos``: raised once the records before it are yielded
            while pos + REC_HEADER <= end:
                length, crc = rec_unpack(buf, pos)
                if not 0 < length <= MAX_RECORD:
                    bad = f"implausible record length {length}"
                    break
                stop = pos + REC_HEADER + length
                if stop > end:
                    break
                payload = mv[pos + REC_HEADER : stop]
                if crc32(payload) != crc:
                    bad = "record checksum mismatch"
                    break
                add(payload)
                pos = stop
            if payloads:
                unpacker = msgpack.Unpacker(raw=False, strict_map_key=False,
                                            max_buffer_size=max(end, 1024))
                unpacker.feed(b"".join(payloads))
                # Only decoding errors are expected here; an exception thrown into this generator
                # by its consumer (gen.throw) would also be reported as damage: nobody does that.
                try:
                    for d in unpacker:
                        try:
                            if d["seq"] != seq:
                                raise _SeqMismatch
                            ev = make(d)
                        except (KeyError, TypeError):
                            ev = Event.from_record(d)
                            if ev.seq != seq:
                                raise _SeqMismatch from None
                        seq += 1
                        yield ev
                except (_SeqMismatch, InvalidEvent, ValueError) as exc:
                    off = base + _offset_of(buf, 0, chunk_seq, seq)
                    what = (f"seq {_seq_in(payloads, seq - first_decoded)} where {seq} was "
                            "expected (a gap or a duplicate)") if isinstance(exc, _SeqMismatch) \
                        else str(exc)
                    raise CorruptLog(path, off, what) from None
                if seq - first_decoded != len(payloads):
                    raise CorruptLog(path, base + _offset_of(buf, 0, chunk_seq, seq),
                                     "record payload is not exactly one msgpack object")
            if bad:
                if _zeros_to_end(f, buf, pos, limit - base - end):
                    return seq - 1  # space written ahead of the records
                raise CorruptLog(path, base + pos, bad)
            buf = buf[pos:]
            base += pos


def _all_zero(buf: bytes, start: int, end: int) -> bool:
    return buf.count(0, start, end) == end - start


def _zeros_to_end(f: Any, buf: bytes, pos: int, unread: int) -> bool:
    """Are ``buf[pos:]`` and the ``unread`` bytes left in ``f`` all zeros?"""
    if not _all_zero(buf, pos, len(buf)):
        return False
    while unread > 0:
        chunk = f.read(min(CHUNK, unread))
        if not chunk:
            break
        if not _all_zero(chunk, 0, len(chunk)):
            return False
        unread -= len(chunk)
    return True


class _SeqMismatch(Exception):
    pass


def _offset_of(buf: bytes, start: int, start_seq: int, seq: int) -> int:
    """Offset in ``buf`` of record ``seq``, walking frames from ``start`` (seq ``start_seq``)."""
    pos = start
    for _ in range(seq - start_seq):
        (length,) = struct.unpack_from(">I", buf, pos)
        pos += REC_HEADER + length
    return pos


def _seq_in(payloads: list[memoryview], n: int) -> object:
    try:
        return _unpackb(payloads[n], raw=False, strict_map_key=False).get("seq")
    except Exception:
        return "?"


def read_events(root: str | os.PathLike[str], since: int = 0) -> Iterator[Event]:
    """Read-only replay for offline tools: no lock, no recovery, nothing written.

    A torn tail of the last segment ends the replay with a warning; corruption raises
    :class:`CorruptLog` after every event before it has been yielded.
    """
    events_dir = Path(root) / "events"
    firsts = [s for s, _ in list_segments(events_dir)]
    return _iter_events(events_dir, firsts, since, None)


# -- verify and repair ----------------------------------------------------------------------


@dataclass
class Problem:
    path: Path
    offset: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}: byte offset {self.offset}: {self.what}"


@dataclass
class VerifyReport:
    """What :func:`verify` found. ``ok`` is False for corruption; a torn tail is a warning
    (opening the log cuts it; it only ever holds an append that was not acknowledged)."""

    root: Path
    segments: int = 0
    records: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class RepairReport:
    root: Path
    cut: Problem | None = None  # where the log was cut, and why
    broken_files: list[Path] = field(default_factory=list)
    last_seq: int = 0

    @property
    def changed(self) -> bool:
        return self.cut is not None

    def describe(self) -> str:
        if self.cut is None:
            return f"event log {self.root}: nothing to repair (last seq {self.last_seq})"
        kept = ", ".join(str(p) for p in self.broken_files) or "nothing"
        return (f"event log repaired: cut at {self.cut}; the log now ends at seq "
                f"{self.last_seq}; cut bytes kept in {kept}")


def _scan_all(events_dir: Path) -> list[tuple[SegmentScan, str | None]]:
    """Scan every segment; each with a gap description when it does not follow its predecessor."""
    out: list[tuple[SegmentScan, str | None]] = []
    prev: SegmentScan | None = None
    for first, path in list_segments(events_dir):
        scan = scan_segment(path, first)
        gap = None
        if prev is not None and first != prev.last_seq + 1:
            gap = (f"gap between segments: the previous one ends at seq {prev.last_seq}, "
                   f"this one starts at {first}")
        out.append((scan, gap))
        prev = scan
    return out


def verify(root: str | os.PathLike[str]) -> VerifyReport:
    """Check every record of every segment (CRC, decoding, seq continuity); read-only."""
    report = VerifyReport(root=Path(root))
    scans = _scan_all(report.root / "events")
    report.segments = len(scans)
    for i, (scan, gap) in enumerate(scans):
        is_last = i == len(scans) - 1
        if gap is not None:
            report.problems.append(Problem(scan.path, 0, gap))
        if scan.count:
            if report.first_seq is None:
                report.first_seq = scan.first_seq
            report.last_seq = scan.last_seq
            report.records += scan.count
        if scan.damage is not None:
            problem = Problem(scan.path, scan.end, scan.damage)
            if scan.torn and is_last:
                problem.what += " (torn tail: cut on the next open, nothing acknowledged lost)"
                report.warnings.append(problem)
            else:
                report.problems.append(problem)
    return report


def repair(root: str | os.PathLike[str]) -> RepairReport:
    """Cut the log at its first damage, keeping a gap-free prefix.

    The bytes cut from the damaged segment go to ``<segment>.broken`` and every later segment
    is renamed to ``<segment>.broken`` (they cannot be kept without a gap); files and directory
    are fsynced. Do not run it while supervisord is running (it takes the writer's lock).
    """
    events_dir = Path(root) / "events"
    events_dir.mkdir(parents=True, exist_ok=True)
    lock_fd = os.open(events_dir / _LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LogBusy(f"{events_dir} is open for writing by another process; stop "
                          "supervisord before repairing") from None
        return _repair_dir(events_dir)
    finally:
        os.close(lock_fd)


def _repair_dir(events_dir: Path) -> RepairReport:
    report = RepairReport(root=events_dir.parent)
    scans = _scan_all(events_dir)
    cut_at: int | None = None
    for i, (scan, gap) in enumerate(scans):
        if gap is not None:
            report.cut = Problem(scan.path, 0, gap)
            cut_at = i
            _move_aside(scan.path, report)
            break
        if scan.damage is not None:
            report.cut = Problem(scan.path, scan.end, scan.damage)
            cut_at = i
            if not scan.header_ok:
                _move_aside(scan.path, report)
            else:
                _cut_segment(scan, report)
            break
        report.last_seq = scan.last_seq
    if cut_at is None:
        return report
    for scan, _ in scans[cut_at + 1 :]:
        _move_aside(scan.path, report)
    if not list_segments(events_dir):
        # Keep numbering where it was: subscribers hold seqs as cursors.
        first = scans[cut_at][0].first_seq
        fd = os.open(events_dir / segment_name(first),
                     os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            _pwrite_all(fd, _header(first), 0)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        report.last_seq = first - 1
    fsync_dir(events_dir)
    return report


def _broken_path(path: Path) -> Path:
    candidate = path.with_name(path.name + ".broken")
    n = 1
    while candidate.exists():
        candidate = path.with_name(f"{path.name}.broken.{n}")
        n += 1
    return candidate


def _move_aside(path: Path, report: RepairReport) -> None:
    target = _broken_path(path)
    os.rename(path, target)
    report.broken_files.append(target)


def _cut_segment(scan: SegmentScan, report: RepairReport) -> None:
    target = _broken_path(scan.path)
    with open(scan.path, "rb") as f:
        f.seek(scan.end)
        cut = f.read()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        _pwrite_all(fd, cut, 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    fd = os.open(scan.path, os.O_RDWR | os.O_CLOEXEC)
    try:
        os.ftruncate(fd, scan.end)
        os.fsync(fd)
    finally:
        os.close(fd)
    report.broken_files.append(target)
    report.last_seq = scan.last_seq
