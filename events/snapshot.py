"""The snapshot: the daemon's folded state at some seq, so recovery replays only the tail.

``ROOT/snapshot`` is ``magic (8) | u32 version | u32 crc32(payload) | u64 len(payload) |
payload``, the payload being ``msgpack({"seq": seq, "state": state})``. It is written to a temp
file, fsynced, renamed over the old one and the directory fsynced: a crash at any moment leaves
either the old snapshot or the new one, whole. A damaged snapshot is reported, never guessed
at: the caller can always fall back to replaying the log from the start (if not compacted).
"""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]  # it ships no type information

from events.fileio import OS, FileIO

__all__ = ["SNAPSHOT_VERSION", "CorruptSnapshot", "SnapshotVersionError", "read_snapshot",
           "snapshot_path", "write_snapshot"]

SNAPSHOT_VERSION = 1
_MAGIC = b"TETHSNAP"
_HEADER = struct.Struct(">8sIIQ")
_TMP_PREFIX = "snapshot.tmp."


class CorruptSnapshot(Exception):
    """The snapshot file exists but cannot be trusted (truncated, checksum, bad content)."""

    def __init__(self, path: str | os.PathLike[str], what: str) -> None:
        self.path = str(path)
        self.what = what
        super().__init__(f"snapshot {self.path} is damaged: {what}. Move it aside to rebuild the "
                         "state by replaying the whole event log.")


class SnapshotVersionError(CorruptSnapshot):
    """A snapshot written by a newer Tether; a subclass so one ``except`` covers both."""

    def __init__(self, path: str | os.PathLike[str], version: int) -> None:
        self.version = version
        Exception.__init__(self, f"snapshot {path} has format version {version}; this Tether "
                                 f"reads up to {SNAPSHOT_VERSION}. Upgrade Tether, or move the "
                                 "snapshot aside to rebuild the state from the event log.")
        self.path = str(path)
        self.what = f"unknown format version {version}"


def snapshot_path(root: str | os.PathLike[str]) -> Path:
    return Path(root) / "snapshot"


def write_snapshot(root: str | os.PathLike[str], seq: int, state: Any, io: FileIO = OS) -> None:
    """Durably replace ``ROOT/snapshot`` with ``state`` as of ``seq``; ``io`` is where every
    change to the files goes (tests record it)."""
    root = Path(root)
    payload = msgpack.packb({"seq": seq, "state": state}, use_bin_type=True)
    data = _HEADER.pack(_MAGIC, SNAPSHOT_VERSION, zlib.crc32(payload), len(payload)) + payload
    for stale in root.glob(_TMP_PREFIX + "*"):  # left by a crash mid-write; never read
        with contextlib.suppress(OSError):
            io.unlink(stale)
    tmp = root / f"{_TMP_PREFIX}{os.getpid()}"
    fd = io.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        io.write_all(fd, data, 0)
        io.fsync(fd)
    except BaseException:
        io.close(fd)
        with contextlib.suppress(OSError):
            io.unlink(tmp)
        raise
    io.close(fd)
    io.rename(tmp, snapshot_path(root))
    io.fsync_dir(root)


def read_snapshot(root: str | os.PathLike[str]) -> tuple[int, Any] | None:
    """``(seq, state)`` of the snapshot, None when there is none; damage raises CorruptSnapshot."""
    path = snapshot_path(root)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if len(data) < 12:
        raise CorruptSnapshot(path, f"only {len(data)} bytes, shorter than its header")
    magic, version = struct.unpack_from(">8sI", data)
    if magic != _MAGIC:
        raise CorruptSnapshot(path, "bad magic (not a Tether snapshot)")
    if version > SNAPSHOT_VERSION:
        raise SnapshotVersionError(path, version)
    if len(data) < _HEADER.size:
        raise CorruptSnapshot(path, "truncated header")
    _, _, crc, length = _HEADER.unpack_from(data)
    payload = memoryview(data)[_HEADER.size :]
    if len(payload) != length:
        raise CorruptSnapshot(path, f"payload is {len(payload)} bytes, header says {length}")
    if zlib.crc32(payload) != crc:
        raise CorruptSnapshot(path, "checksum mismatch")
    try:
        body = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise CorruptSnapshot(path, f"not valid msgpack: {exc}") from None
    if not isinstance(body, dict) or not isinstance(body.get("seq"), int) or "state" not in body:
        raise CorruptSnapshot(path, "content is not a {seq, state} map")
    return body["seq"], body["state"]
