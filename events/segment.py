"""Reading segments: the full check (recovery, verify, repair) and the fast replay.

Both read the format through :mod:`events.codec` only. :func:`scan_segment` checks every frame
and record of one segment and tells a torn tail (damage with nothing valid after it) from
corruption (a valid frame follows the damage); :func:`quick_scan` is its fast path for the
clean case, run on every open. :func:`iter_events` replays segments in order for
:meth:`EventLog.read <events.log.EventLog.read>` and :func:`read_events`.
"""

from __future__ import annotations

import logging
import os
import re
from bisect import bisect_right
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from events import codec
from events.codec import CorruptLog
from events.model import Event, InvalidEvent

__all__ = [
    "CHUNK",
    "SegmentScan",
    "iter_events",
    "list_segments",
    "quick_scan",
    "read_events",
    "scan_segment",
    "segment_name",
]

logger = logging.getLogger("tether.events.log")

#: Read size for replay: big reads amortise syscalls; 1 MiB keeps the working set in cache
#: (measured: 256 KiB to 4 MiB are within noise of each other here).
CHUNK = 1024 * 1024
_SEG_RE = re.compile(r"^(\d{20})\.seg$")


def segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}.seg"


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


def check_version(path: Path) -> None:
    """Raise :class:`LogVersionError` if ``path`` is a segment of a newer format."""
    with open(path, "rb") as f:
        codec.read_version(f.read(codec.PREFIX_SIZE), path)


# -- the full check ---------------------------------------------------------------------------


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
    valid_after: int | None = None  # offset of a valid frame after the damage: corruption
    header_ok: bool = False

    @property
    def last_seq(self) -> int:
        return self.first_seq + self.count - 1

    @property
    def torn(self) -> bool:
        """Damage with nothing valid after it: what a crash mid-append leaves."""
        return self.damage is not None and self.valid_after is None


def scan_segment(path: Path, first_seq: int, data: bytes | None = None) -> SegmentScan:
    """Check every frame and record of one segment. Raises LogVersionError for a newer format."""
    if data is None:
        data = path.read_bytes()
    scan = SegmentScan(path=path, first_seq=first_seq, size=len(data))
    end = len(data)
    hdr = codec.parse_header(data, first_seq, path)
    if isinstance(hdr, str):
        scan.damage = hdr
        if end > codec.MAX_HEADER:
            scan.valid_after = codec.find_valid_frame(None, data, 0, end, first_seq)
        return scan
    scan.version = hdr.version
    scan.header_ok = True
    pos = hdr.size
    seq = first_seq
    if pos < end:
        bodies, count, stop, why, sound = codec.parse_frames(hdr, data, pos, end, seq)
        k, bad = _check_records(bodies, seq, count)
        if bad:
            # A frame whose CRC holds but whose records are not the events expected. A wrong
            # seq is never a torn tail; an undecodable record is judged like a bad CRC.
            pos = codec.frame_offset(hdr, data, pos, k)
            scan.end, scan.count, scan.damage = pos, _records_before(hdr, data, hdr.size,
                                                                     pos), bad
            scan.valid_after = (pos if bad.startswith("seq ")
                                else codec.find_valid_frame(hdr, data, pos + 1, end,
                                                            first_seq + scan.count))
            return scan
        seq += count
        pos = stop
        if pos < end and not codec.all_zero(data, pos, end):
            # zeros: space written ahead of the records, the clean end of the segment
            scan.damage = why or codec.partial_frame(hdr, data, pos, end)
            scan.valid_after = pos if sound else codec.find_valid_frame(hdr, data, pos + 1,
                                                                        end, seq)
    scan.end = pos
    scan.count = seq - first_seq
    return scan


def _check_records(bodies: list[memoryview], seq: int, count: int) -> tuple[int, str]:
    """Decode ``bodies`` (``count`` records, the first numbered ``seq``) strictly: ``(index,
    why)`` of the first record that is not the event expected, ``(count, "")`` if all are."""
    unpacker = codec.new_unpacker(sum(len(b) for b in bodies))
    unpacker.feed(b"".join(bodies))
    k = 0
    try:
        for record in unpacker:
            if k == count:
                return k - 1, "a frame holds more records than its header says"
            try:
                ev = Event.from_record(record)
            except InvalidEvent as exc:
                return k, str(exc)
            if ev.seq != seq + k:
                return k, f"seq {ev.seq} where {seq + k} was expected (a gap or a duplicate)"
            k += 1
    except ValueError as exc:  # msgpack's errors are ValueErrors
        return min(k, count - 1), f"record is not valid msgpack: {exc}"
    if k != count:
        return max(k - 1, 0), "a frame holds fewer records than its header says"
    return count, ""


def _records_before(hdr: codec.Header, data: bytes, pos: int, offset: int) -> int:
    """Records in the frames from ``pos`` up to ``offset`` (a frame boundary)."""
    _, count, _, _, _ = codec.parse_frames(hdr, data, pos, offset, 0)
    if hdr.version == 1:
        return count
    n = 0
    while pos < offset:  # format 2: counts from the headers (seqs may be what is wrong)
        size = codec.frame_size(hdr, data, pos, offset)
        assert size is not None
        seqs = codec.batch_seqs(hdr, data, pos, offset)
        assert seqs is not None
        n += seqs[1] - seqs[0] + 1
        pos += size
    return n


def quick_scan(path: Path, first_seq: int, data: bytes) -> SegmentScan:
    """:func:`scan_segment` for the common, clean case, fast enough to run on every open.

    Checks the header and every frame's CRC (and, in format 2, every batch's first seq) but
    decodes only the last record, whose seq must then be ``first_seq + count - 1`` (each record
    is re-checked by :meth:`EventLog.read` when replayed). Anything unexpected falls back to
    the full scan, which explains it.
    """
    end = len(data)
    hdr = codec.parse_header(data, first_seq, path)
    if isinstance(hdr, str):
        return scan_segment(path, first_seq, data)
    bodies, count, pos, _, _ = codec.parse_frames(hdr, data, hdr.size, end, first_seq)
    if pos != end and not codec.all_zero(data, pos, end):
        return scan_segment(path, first_seq, data)
    if count and hdr.version == 1:
        try:
            ev = codec.decode_record(bodies[-1])
        except InvalidEvent:
            return scan_segment(path, first_seq, data)
        if ev.seq != first_seq + count - 1:
            return scan_segment(path, first_seq, data)
    return SegmentScan(path=path, first_seq=first_seq, version=hdr.version, count=count,
                       end=pos, size=end, header_ok=True)


# -- replay -----------------------------------------------------------------------------------


def iter_events(events_dir: Path, firsts: list[int], since: int,
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


class _SeqMismatch(Exception):
    pass


def _iter_segment(path: Path, first: int, since: int, limit: int | None,
                  offline_tail: bool) -> Generator[Event, None, int]:
    """Replay one segment; returns the seq of its last record.

    Hot loop of replay: per chunk, :func:`codec.parse_frames` walks the frames and checks the
    CRCs, then one msgpack Unpacker decodes every record of the chunk.
    """
    with open(path, "rb", buffering=0) as f:
        hdr = codec.parse_header(f.read(codec.MAX_HEADER), first, path)
        if isinstance(hdr, str):
            raise CorruptLog(path, 0, "bad segment header")
        f.seek(hdr.size)
        if limit is None:
            limit = os.fstat(f.fileno()).st_size
        base = hdr.size  # file offset of buf[0]
        seq = first  # seq of the next record
        skip = max(0, since - first + 1)
        buf = b""
        make = codec.make_event
        parse = codec.parse_frames
        need = CHUNK
        while True:
            want = limit - base - len(buf)
            chunk = f.read(min(need, want)) if want > 0 else b""
            if not chunk:
                if buf and not codec.all_zero(buf, 0, len(buf)):
                    if offline_tail:
                        logger.warning("event log: %s: partial frame at byte offset %d "
                                       "(torn tail); replay stops there", path, base)
                        return seq - 1
                    raise CorruptLog(path, base, "segment ends in a partial frame")
                return seq - 1
            buf = buf + chunk if buf else chunk
            end = len(buf)
            pos = 0
            if skip:  # whole frames before ``since``: hop over them
                pos, hopped = codec.skip_frames(hdr, buf, 0, end, skip)
                skip -= hopped
                seq += hopped
            run_start, run_seq = pos, seq
            bodies, count, pos, bad, _ = parse(hdr, buf, pos, end, seq)
            if bodies:
                unpacker = codec.new_unpacker(end)
                unpacker.feed(b"".join(bodies))
                # Only decoding errors are expected here; an exception thrown into this generator
                # by its consumer (gen.throw) would also be reported as damage: nobody does that.
                try:
                    if skip:  # ``since`` falls inside this run's first frame
                        for _ in range(min(skip, count)):
                            unpacker.skip()
                        seq += min(skip, count)
                        skip -= min(skip, count)
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
                    k = seq - run_seq
                    off = base + codec.frame_offset(hdr, buf, run_start, k)
                    what = (f"seq {_seq_at(bodies, k)} where {seq} was expected "
                            "(a gap or a duplicate)") if isinstance(exc, _SeqMismatch) \
                        else str(exc)
                    raise CorruptLog(path, off, what) from None
                if seq - run_seq != count:
                    k = min(seq - run_seq, count - 1)
                    raise CorruptLog(path, base + codec.frame_offset(hdr, buf, run_start, k),
                                     "a frame does not hold exactly the records it says")
            if bad:
                if _zeros_to_end(f, buf, pos, limit - base - end):
                    return seq - 1  # space written ahead of the records
                raise CorruptLog(path, base + pos, bad)
            buf = buf[pos:]
            base += pos
            size = codec.frame_size(hdr, buf, 0, len(buf))  # a frame longer than a chunk
            need = max(CHUNK, size - len(buf)) if size is not None else CHUNK


def _seq_at(bodies: list[memoryview], k: int) -> object:
    """The seq record ``k`` of ``bodies`` claims (for an error message)."""
    unpacker = codec.new_unpacker(sum(len(b) for b in bodies))
    unpacker.feed(b"".join(bodies))
    try:
        for _ in range(k):
            unpacker.skip()
        record = unpacker.unpack()
        return record.get("seq") if isinstance(record, dict) else "?"
    except Exception:  # any decoding failure: this only feeds a message
        return "?"


def _zeros_to_end(f: BinaryIO, buf: bytes, pos: int, unread: int) -> bool:
    """Are ``buf[pos:]`` and the ``unread`` bytes left in ``f`` all zeros?"""
    if not codec.all_zero(buf, pos, len(buf)):
        return False
    while unread > 0:
        chunk = f.read(min(CHUNK, unread))
        if not chunk:
            break
        if not codec.all_zero(chunk, 0, len(chunk)):
            return False
        unread -= len(chunk)
    return True


def read_events(root: str | os.PathLike[str], since: int = 0) -> Iterator[Event]:
    """Read-only replay for offline tools: no lock, no recovery, nothing written.

    A torn tail of the last segment ends the replay with a warning; corruption raises
    :class:`CorruptLog` after every event before it has been yielded.
    """
    events_dir = Path(root) / "events"
    firsts = [s for s, _ in list_segments(events_dir)]
    return iter_events(events_dir, firsts, since, None)
