"""Offline checks of the whole log: :func:`verify` (read-only) and :func:`repair`.

Both judge damage the way opening the log does (:mod:`events.segment`): damage with nothing
valid after it in the last segment is a torn tail, opening cuts it; anything else is
corruption, which :func:`repair` cuts only when an operator asks (``python -m events repair`` or
``supervisord --repair``), keeping every cut byte in a ``.broken`` file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from dataclasses import dataclass, field
from pathlib import Path

from events import codec
from events.fileio import OS, FileIO
from events.segment import SegmentScan, list_segments, scan_segment, segment_name

__all__ = ["LOCK_NAME", "LogBusy", "Problem", "RepairReport", "VerifyReport", "broken_path",
           "repair", "repair_dir", "verify"]

LOCK_NAME = "LOCK"


class LogBusy(Exception):
    """Another process (or another EventLog) has this log open for writing."""


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
    formats: dict[int, int] = field(default_factory=dict)  # format version -> segments
    #: bytes a cut kept aside: ``.torn`` (a torn tail cut on open), ``.broken`` (repair)
    evidence: list[Path] = field(default_factory=list)

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
    events_dir = report.root / "events"
    scans = _scan_all(events_dir)
    report.segments = len(scans)
    with contextlib.suppress(FileNotFoundError):
        report.evidence = sorted(p for p in events_dir.iterdir()
                                 if ".seg.torn" in p.name or ".seg.broken" in p.name)
    for i, (scan, gap) in enumerate(scans):
        is_last = i == len(scans) - 1
        if scan.version is not None:
            report.formats[scan.version] = report.formats.get(scan.version, 0) + 1
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
                problem.what += (" (torn tail: an append whose fdatasync never returned; the "
                                 "next open cuts it and keeps its bytes in a .torn file)")
                report.warnings.append(problem)
            else:
                report.problems.append(problem)
    return report


def repair(root: str | os.PathLike[str], io: FileIO = OS) -> RepairReport:
    """Cut the log at its first damage, keeping a gap-free prefix.

    The bytes cut from the damaged segment go to ``<segment>.broken`` and every later segment
    is renamed to ``<segment>.broken`` (they cannot be kept without a gap); files and directory
    are fsynced. Do not run it while supervisord is running (it takes the writer's lock).
    """
    events_dir = Path(root) / "events"
    events_dir.mkdir(parents=True, exist_ok=True)
    lock_fd = os.open(events_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LogBusy(f"{events_dir} is open for writing by another process; stop "
                          "supervisord before repairing") from None
        return repair_dir(events_dir, io)
    finally:
        os.close(lock_fd)


def repair_dir(events_dir: Path, io: FileIO = OS) -> RepairReport:
    """:func:`repair` for a caller that holds the writer's lock (``EventLog.open``)."""
    report = RepairReport(root=events_dir.parent)
    scans = _scan_all(events_dir)
    cut_at: int | None = None
    for i, (scan, gap) in enumerate(scans):
        if gap is not None:
            report.cut = Problem(scan.path, 0, gap)
            cut_at = i
            _move_aside(io, scan.path, report)
            break
        if scan.damage is not None:
            report.cut = Problem(scan.path, scan.end, scan.damage)
            cut_at = i
            if not scan.header_ok:
                _move_aside(io, scan.path, report)
            else:
                _cut_segment(io, scan, report)
            break
        report.last_seq = scan.last_seq
    if cut_at is None:
        return report
    for scan, _ in scans[cut_at + 1 :]:
        _move_aside(io, scan.path, report)
    if not list_segments(events_dir):
        # Keep numbering where it was: subscribers hold seqs as cursors.
        first = scans[cut_at][0].first_seq
        fd = io.open(events_dir / segment_name(first),
                     os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            io.write_all(fd, codec.encode_header(first, codec.new_salt()), 0)
            io.fdatasync(fd)
        finally:
            io.close(fd)
        report.last_seq = first - 1
    io.fsync_dir(events_dir)
    return report


def broken_path(path: Path, suffix: str = ".broken") -> Path:
    """``path`` + ``suffix``, numbered if that exists already: evidence is never overwritten."""
    candidate = path.with_name(path.name + suffix)
    n = 1
    while candidate.exists():
        candidate = path.with_name(f"{path.name}{suffix}.{n}")
        n += 1
    return candidate


def _move_aside(io: FileIO, path: Path, report: RepairReport) -> None:
    target = broken_path(path)
    io.rename(path, target)
    report.broken_files.append(target)


def _cut_segment(io: FileIO, scan: SegmentScan, report: RepairReport) -> None:
    target = broken_path(scan.path)
    with open(scan.path, "rb") as f:
        f.seek(scan.end)
        cut = f.read()
    fd = io.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        io.write_all(fd, cut, 0)
        io.fsync(fd)
    finally:
        io.close(fd)
    fd = io.open(scan.path, os.O_RDWR | os.O_CLOEXEC)
    try:
        io.ftruncate(fd, scan.end)
        io.fsync(fd)
    finally:
        io.close(fd)
    report.broken_files.append(target)
    report.last_seq = scan.last_seq
