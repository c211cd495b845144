"""The durable event log: segments of batches of records under ``ROOT/events/``.

The log is the only source of truth of the system, so every design choice here is about never
losing an acknowledged event and never silently presenting a shorter history. The bytes on disk
are :mod:`events.codec`'s (``docs/design.md`` section 3 has them byte by byte); replay and the
recovery scan are :mod:`events.segment`'s, ``verify``/``repair`` :mod:`events.verify`'s.

* A segment is named by the seq of its first record (``00000000000000000001.seg``) so a reader
  finds where ``since`` lives by a binary search on file names, without opening anything.
* :meth:`EventLog.append` writes one *batch* (one frame, one CRC over all of it, seeded with
  the segment's random salt) and calls ``fdatasync`` once (group commit); on failure it cuts
  the segment back to where the batch began, so a full disk never leaves a partial batch.
* The active segment is followed by zeros written ahead (:data:`PREALLOC`); zeros where a
  batch should start mark the end of the records. Zeros are cut when a segment is closed
  (roll, close, open), so only the last segment can end in them.
* Opening recovers. Only the last batch of the last segment can be unsynced (a batch is
  synced before the next one is written, a segment before the next one is created), and a
  crash may leave it in any state: whole, partly written, or -- after a power loss -- with its
  pages on disk in any order (a hole, then whole records). Any damage with no valid batch
  after it is that batch: it is cut with a warning naming the seqs its header claimed, its
  bytes kept in ``<segment>.torn``. Damage followed by a valid batch, a valid batch with the
  wrong seq, or damage in a segment before the last is corruption: the log refuses to open
  (:class:`CorruptLog`) rather than lose history; ``repair`` cuts it on an operator's word.
* Format-1 segments (one CRC per record, before format 2) are read, verified and repaired
  alike; a log whose last segment is format 1 goes on in a new format-2 segment.

Opening checks the frames and CRCs of the last segment only (a 1 M-event log opens in about a
third of a second); every other record is checked (CRC, seq continuity) when
:meth:`EventLog.read` passes over it, and :func:`verify` checks them all. The module logs with
stdlib :mod:`logging`: the events package stays light. (Just over our usual length: it is one
class, the writer with its recovery, whose invariants are read together.)

Known limit: a cut never removes an acknowledged event *if the storage keeps fdatasync's
promise*: callers, and subscribers, only hear of a batch after its fdatasync returned, and only
the batch whose fdatasync had not returned can be torn. A bit that rots in the last batch after
it was synced (or a disk that acknowledged a flush it had not made) looks exactly like a torn
write, so that batch is cut too, its seqs are given to the next events, and a subscriber that
saw the old ones would see different events under the same seqs. The ``.torn`` file is then
the only copy of the lost events; the warning says so. Rot anywhere else is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from events import codec
from events.codec import (
    FORMAT_VERSION,
    HEADER_SIZE,
    MAGIC,
    MAX_RECORD,
    REC_HEADER,
    CorruptLog,
    LogVersionError,
)
from events.fileio import OS, FileIO
from events.model import Event
from events.segment import (
    SegmentScan,
    check_version,
    iter_events,
    list_segments,
    quick_scan,
    read_events,
    scan_segment,
    segment_name,
)
from events.snapshot import CorruptSnapshot, SnapshotVersionError, read_snapshot, write_snapshot
from events.verify import (
    LOCK_NAME,
    LogBusy,
    Problem,
    RepairReport,
    VerifyReport,
    broken_path,
    repair,
    repair_dir,
    verify,
)

__all__ = [
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_RECORD",
    "PREALLOC",
    "REC_HEADER",
    "CorruptLog",
    "CorruptSnapshot",
    "EventLog",
    "LogBusy",
    "LogVersionError",
    "Problem",
    "RepairReport",
    "SegmentScan",
    "SnapshotVersionError",
    "VerifyReport",
    "list_segments",
    "read_events",
    "read_snapshot",
    "repair",
    "scan_segment",
    "segment_name",
    "verify",
    "write_snapshot",
]

logger = logging.getLogger("tether.events.log")

#: Zeros written ahead of the active segment's end. Overwriting blocks that already exist lets
#: fdatasync flush data alone; an append that grows the file also commits the inode's new size
#: to the journal, which measured 25-45 % slower here (7 KiB: 200 -> 148 us median) with a
#: longer tail. Half a MiB keeps the one slower batch that extends it rare (every ~5,000 events).
PREALLOC = 512 * 1024
_ZEROS = bytes(PREALLOC)


class EventLog:
    """The append-only log of one Tether root. Create it with :meth:`open`.

    One writer per root: :meth:`open` takes an exclusive ``flock`` on ``ROOT/events/LOCK``
    (released by the kernel if the process dies), so a second daemon cannot interleave records.
    """

    _root: Path
    _dir: Path
    _io: FileIO
    _segment_size: int
    _lock: threading.Lock
    _encoder: codec.Encoder
    _fd: int
    _lock_fd: int
    _segs: list[int]
    _end: int
    _alloc_end: int
    _prealloc: int
    _last_seq: int
    _needs_truncate: bool
    _salt: int
    _new_salt: int

    def __init__(self, *_: Any, **__: Any) -> None:
        raise TypeError("use EventLog.open(root)")

    @classmethod
    def open(cls, root: str | os.PathLike[str], *, segment_size: int = 64 * 1024 * 1024,
             repair: bool = False, io: FileIO = OS) -> EventLog:
        """Open (creating if needed) ``ROOT/events``, recovering from a crash mid-append.

        ``segment_size`` bounds a segment (the unit of compaction); 64 MiB keeps the number of
        files small and a segment scan on open well under a second. With ``repair=True``
        :func:`repair` cuts corruption first (keeping the cut bytes); without it corruption
        raises :class:`CorruptLog`. ``io`` is where every change to the files goes (tests
        record it).
        """
        self = object.__new__(cls)
        self._root = Path(root)
        self._dir = self._root / "events"
        self._io = io
        if not self._dir.is_dir():
            # The directory's entry must be as durable as the first append in it.
            self._root.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                io.mkdir(self._dir)
            io.fsync_dir(self._root)
        self._segment_size = segment_size
        self._lock = threading.Lock()
        self._encoder = codec.Encoder()
        self._fd = -1
        self._lock_fd = os.open(self._dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                                0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise LogBusy(f"{self._dir} is open for writing by another process "
                          "(is supervisord already running with this --root?)") from None
        try:
            if repair:
                report = repair_dir(self._dir, io)
                if report.changed:
                    logger.warning("%s", report.describe())
            self._recover()
        except BaseException:
            self._close_fds()
            raise
        return self

    # -- recovery

    def _recover(self) -> None:
        io = self._io
        segs = list_segments(self._dir)
        for _, path in segs[:-1]:
            check_version(path)
        popped = False
        while True:
            if not segs:
                io.close(self._create_segment(1))
                segs = [(1, self._dir / segment_name(1))]
            first, path = segs[-1]
            data = path.read_bytes()
            scan = quick_scan(path, first, data)
            if scan.damage is not None and (not scan.torn or popped):
                # popped: a segment before the last was closed (synced) before the next one was
                # created, so a crash cannot have torn it
                raise CorruptLog(path, scan.end, scan.damage)
            if scan.damage is not None and not scan.header_ok:
                # A crash while creating this segment (nothing in it was ever acknowledged), or
                # a header damaged with nothing valid after it. Keep anything that is not just a
                # partial header, for an operator to look at.
                if data.strip(b"\0") and not _could_be_partial_header(data, first):
                    kept = broken_path(path)
                    io.rename(path, kept)
                    logger.warning("event log: %s: %s and no valid record after it; moved to %s",
                                   path, scan.damage, kept)
                else:
                    logger.warning("event log: %s: %s (torn while being created); rewriting it",
                                   path, scan.damage)
                    io.unlink(path)
                io.fsync_dir(self._dir)
                if len(segs) > 1:
                    segs.pop()
                    popped = True
                    continue
                io.close(self._create_segment(first))
                continue
            if scan.damage is not None:
                self._keep_torn_tail(scan, data)
            break
        fd = io.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            if scan.size != scan.end:
                io.ftruncate(fd, scan.end)
            # Bytes written before a crash but never synced are now part of the history: make
            # them durable before anyone is told about them.
            io.fdatasync(fd)
        except BaseException:
            io.close(fd)
            raise
        self._fd = fd
        self._segs = [s for s, _ in segs]
        self._end = scan.end
        self._alloc_end = scan.end  # file size: the zero tail (if any) was cut above
        self._prealloc = min(PREALLOC, self._segment_size)
        self._last_seq = scan.last_seq
        self._needs_truncate = False
        hdr = codec.parse_header(data, first, path)
        assert not isinstance(hdr, str)  # the scan checked it
        self._salt = hdr.salt
        if hdr.version != FORMAT_VERSION:
            self._upgrade_active(scan)

    def _keep_torn_tail(self, scan: SegmentScan, data: bytes) -> None:
        """Before a torn tail is cut: say what it claimed to be and keep its bytes aside.

        The tail was never acknowledged if the storage kept its promise (fdatasync); if it did
        not, or a bit rotted in the last batch (which looks exactly like a torn write), these
        bytes are the only copy of acknowledged events: they go to ``<segment>.torn``.
        """
        hdr = codec.parse_header(data, scan.first_seq, scan.path)
        claim = None if isinstance(hdr, str) else codec.batch_seqs(hdr, data, scan.end,
                                                                   len(data))
        stop = len(data[: scan.size].rstrip(b"\0"))  # not the zeros written ahead...
        size = None if isinstance(hdr, str) else codec.frame_size(hdr, data, scan.end, len(data))
        if size is not None and scan.end + size <= len(data):
            stop = max(stop, scan.end + size)  # ...but all the batch its header describes
        tail = data[scan.end : stop]
        kept = None
        if tail:
            kept = broken_path(scan.path, ".torn")
            fd = self._io.open(kept, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                self._io.write_all(fd, tail, 0)
                self._io.fsync(fd)
            finally:
                self._io.close(fd)
            self._io.fsync_dir(self._dir)
        logger.warning(
            "event log: %s: torn tail at byte offset %d (%s%s); cutting %d bytes (an append "
            "that was never acknowledged)%s",
            scan.path, scan.end, scan.damage,
            f"; its header claims seqs {claim[0]}..{claim[1]}" if claim else "",
            scan.size - scan.end, f"; kept in {kept}" if kept else "")

    def _upgrade_active(self, scan: SegmentScan) -> None:
        """The last segment is of an older format: continue in a new segment of this one.

        An empty old segment is replaced (a new one cannot take its name: names are first
        seqs) through a temp file and a rename, so a crash leaves one or the other, whole.
        """
        io = self._io
        first = self._last_seq + 1
        if scan.count:
            self._roll()
        else:
            tmp = self._dir / (segment_name(first) + ".new")
            with contextlib.suppress(FileNotFoundError):
                io.unlink(tmp)
            salt = codec.new_salt()
            fd = io.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                io.write_all(fd, codec.encode_header(first, salt), 0)
                io.fdatasync(fd)
                io.rename(tmp, self._dir / segment_name(first))
                io.fsync_dir(self._dir)
            except BaseException:
                io.close(fd)
                raise
            io.close(self._fd)
            self._fd, self._salt = fd, salt
            self._end = self._alloc_end = codec.HEADER_SIZE
        logger.info("event log: continuing in a format-%d segment from seq %d",
                    FORMAT_VERSION, first)

    def _create_segment(self, first_seq: int) -> int:
        """Create a segment holding only its header, durably (file and directory entry)."""
        io = self._io
        path = self._dir / segment_name(first_seq)
        fd = io.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        salt = codec.new_salt()
        try:
            io.write_all(fd, codec.encode_header(first_seq, salt), 0)
            io.fdatasync(fd)
            io.fsync_dir(self._dir)
        except BaseException:
            io.close(fd)
            with contextlib.suppress(OSError):
                io.unlink(path)
            raise
        self._new_salt = salt
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
            io = self._io
            if self._needs_truncate:  # a previous failure could not cut its partial batch
                io.ftruncate(self._fd, self._end)
                self._needs_truncate = False
                self._alloc_end = self._end
            if self._end >= self._segment_size and self._last_seq >= self._segs[-1]:
                self._roll()
            blob, events = self._encoder.encode(items, self._last_seq, time_ns, self._salt)
            if self._end + len(blob) > self._alloc_end and self._prealloc:
                self._extend(self._end + len(blob))
            try:
                io.write_all(self._fd, blob, self._end)
                io.fdatasync(self._fd)
            except OSError:
                self._undo_partial()
                raise
            self._end += len(blob)
            self._last_seq = events[-1].seq
            return events

    def _undo_partial(self) -> None:
        io = self._io
        try:
            io.ftruncate(self._fd, self._end)  # also gives back the space written ahead
            self._alloc_end = self._end
            io.fdatasync(self._fd)
        except OSError:
            self._needs_truncate = True  # retried before the next append writes anything

    def _extend(self, need: int) -> None:
        """Write zeros from the allocated end to past ``need`` (not synced: the batch's
        fdatasync covers them). On a full disk, give the space back and let this batch (and
        the rest of the segment) grow the file as it goes: ENOSPC then comes from the batch's
        own write, which :meth:`append` undoes cleanly."""
        io = self._io
        target = need + self._prealloc
        pos = self._alloc_end
        try:
            while pos < target:
                pos += io.pwrite(self._fd, memoryview(_ZEROS)[: min(PREALLOC, target - pos)], pos)
        except OSError:
            self._prealloc = 0
            try:
                io.ftruncate(self._fd, self._end)
            except OSError:
                self._needs_truncate = True
            self._alloc_end = self._end
            return
        self._alloc_end = target

    def _cut_zero_tail(self) -> None:
        """Make the active segment end exactly at its last record, durably."""
        if self._alloc_end != self._end:
            self._io.ftruncate(self._fd, self._end)
            self._alloc_end = self._end
            self._io.fdatasync(self._fd)

    def _roll(self) -> None:
        # Closed segments end at their last record: only the last one may have a zero tail.
        self._cut_zero_tail()
        first = self._last_seq + 1
        fd = self._create_segment(first)  # on failure the current segment stays active
        old = self._fd
        self._fd = fd
        self._salt = self._new_salt
        self._segs.append(first)
        self._end = self._alloc_end = HEADER_SIZE
        self._prealloc = min(PREALLOC, self._segment_size)
        self._io.close(old)

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
        return iter_events(self._dir, firsts, since, active_end)

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
                self._io.unlink(path)
                # one at a time, oldest first: whatever a crash keeps of a compaction is
                # still a log without a gap, on any file system
                self._io.fsync_dir(self._dir)
                deleted.append(path)
                self._segs.pop(0)
        return deleted

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                with contextlib.suppress(OSError):  # tidiness only: open cuts it anyway
                    self._cut_zero_tail()
            self._close_fds()

    def _close_fds(self) -> None:
        if self._fd >= 0:
            self._io.close(self._fd)
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


def _could_be_partial_header(data: bytes, first_seq: int) -> bool:
    """Is ``data`` (zeros aside) a prefix of what creating segment ``first_seq`` writes?"""
    head = data.rstrip(b"\0")
    if len(head) > codec.MAX_HEADER:
        return False
    if codec.encode_header_v1(first_seq).startswith(head):
        return True
    # format 2: magic, version and first seq are known, the salt and the CRC are not
    known = codec.encode_header(first_seq, 0)[:20]
    return known.startswith(head[:20])
