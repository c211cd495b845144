"""The container's output, written in the CRI log format and rotated by renaming.

``<RFC3339Nano> stdout|stderr F|P <text>``: ``F`` ends a line, ``P`` is a piece of a longer one
(a line over :data:`MAX_LINE`, or output cut at EOF without a newline), so a reader can join
pieces back. Rotation renames ``container.log`` -> ``.1`` -> ``.2`` ... and opens a new file;
it never truncates in place, so a ``logs -f`` reader holding the old file loses nothing.

A write error (a full disk: ENOSPC) drops the lines and counts them; it never raises, because
the container must not stop or block because its log cannot be written.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable

from events.timefmt import rfc3339_bytes

#: Longest piece of a line written as one record; longer lines become several ``P`` records.
MAX_LINE = 16 * 1024


class CriLog:
    """Appends records for both streams to one file; :meth:`feed` takes whatever a pipe read
    returned and keeps an unfinished line until its newline (or :data:`MAX_LINE`) arrives."""

    def __init__(self, path: str, max_size: int, keep: int,
                 warn: Callable[..., None] | None = None, max_line: int = MAX_LINE) -> None:
        self.path = path
        self.max_size = max(int(max_size), 4096)
        self.keep = max(int(keep), 0)
        self.max_line = max_line
        self.dropped_lines = 0
        self.written_lines = 0
        self._warn = warn
        self._partial: dict[bytes, bytes] = {b"stdout": b"", b"stderr": b""}
        self._fd = -1
        self._size = 0
        self._open()

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
                           | os.O_NOFOLLOW, 0o640)
        self._size = os.fstat(self._fd).st_size

    def feed(self, stream: bytes, data: bytes) -> None:
        """Add output of *stream* (``b"stdout"``/``b"stderr"``) and write every whole record.

        The common case (no line over :data:`MAX_LINE`, no rotation due) is one split and one
        join, both in C: the shim must keep up with a container writing as fast as it can.
        """
        lines = (self._partial[stream] + data).split(b"\n")
        rest = lines.pop()  # after the last newline: an unfinished line
        records: list[tuple[bytes, bytes]] = []
        if lines and max(map(len, lines)) <= self.max_line:
            prefix = rfc3339_bytes(time.time_ns()) + b" " + stream + b" F "
            blob = prefix + (b"\n" + prefix).join(lines) + b"\n"
            if self._size + len(blob) <= self.max_size:
                self._flush(blob, len(lines))
            else:
                records = [(b"F", line) for line in lines]
        else:
            n = self.max_line
            for line in lines:  # long lines: P pieces of MAX_LINE, then the F remainder
                last = (len(line) - 1) // n * n if line else 0
                records += [(b"P", line[i : i + n]) for i in range(0, last, n)]
                records.append((b"F", line[last:]))
        while len(rest) > self.max_line:  # a line longer than MAX_LINE: a piece of it now
            records.append((b"P", rest[: self.max_line]))
            rest = rest[self.max_line :]
        self._partial[stream] = rest
        if records:
            self._write(stream, records)

    def finish(self, stream: bytes) -> None:
        """EOF on *stream*: write an unfinished line as a ``P`` record rather than lose it."""
        rest = self._partial[stream]
        self._partial[stream] = b""
        if rest:
            self._write(stream, [(b"P", rest)])

    def _write(self, stream: bytes, records: list[tuple[bytes, bytes]]) -> None:
        prefix = rfc3339_bytes(time.time_ns()) + b" " + stream + b" "
        batch = bytearray()
        count = 0
        for tag, text in records:
            record = prefix + tag + b" " + text + b"\n"
            if self._size + len(batch) + len(record) > self.max_size and self._size + len(batch):
                self._flush(batch, count)
                batch.clear()
                count = 0
                self._rotate()
            batch += record
            count += 1
        self._flush(batch, count)

    def _flush(self, batch: bytes | bytearray, count: int) -> None:
        if not batch:
            return
        view = memoryview(batch)
        try:
            while view:
                written = os.write(self._fd, view)
                self._size += written
                view = view[written:]
            self.written_lines += count
        except OSError as exc:
            self.dropped_lines += count
            if self._warn is not None and self.dropped_lines == count:  # first drop only
                self._warn("log_write_failed", path=self.path, error=str(exc))

    def _rotate(self) -> None:
        """container.log.(keep-1) -> .keep, ..., container.log -> .1; a fresh container.log."""
        os.close(self._fd)
        try:
            if self.keep == 0:
                os.unlink(self.path)
            else:
                for n in range(self.keep - 1, 0, -1):
                    with contextlib.suppress(FileNotFoundError):
                        os.rename(f"{self.path}.{n}", f"{self.path}.{n + 1}")
                os.rename(self.path, f"{self.path}.1")
        except OSError as exc:
            if self._warn is not None:
                self._warn("log_rotate_failed", path=self.path, error=str(exc))
        self._open()

    def close(self) -> None:
        for stream in self._partial:
            self.finish(stream)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
