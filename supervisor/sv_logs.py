"""A container's output as Supervisor's byte logs: the stdout (or stderr) stream alone.

Tether keeps both streams in one CRI file per container (``container.log``, rotated to
``container.log.1`` ...: see :mod:`events.shim_api`). Supervisor's clients read a process's
stdout or stderr log as bytes by offset. This module rebuilds that byte stream from the CRI
records of one stream (both, for a program with ``redirect_stderr``): the text of each record,
plus a newline for a record that ends a line. Offsets count bytes of that stream across the
kept files, oldest first; when rotation drops the oldest file the stream's start moves on, as
Supervisor's own rotated logs do.

:func:`read` and :func:`tail` have the semantics of Supervisor's ``readFile``/``tailFile``
(``readProcessStdoutLog``, ``tailProcessStdoutLog``); :func:`follow` is ``/logtail``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

__all__ = ["follow", "read", "records_bytes", "stream_bytes", "tail"]

CONTAINER_LOG = "container.log"


def records_bytes(data: bytes, channels: frozenset[bytes]) -> tuple[bytes, bytes]:
    """The stream bytes of the whole CRI lines in *data*, and the unfinished rest of it."""
    out = []
    *lines, rest = data.split(b"\n")
    for line in lines:
        parts = line.split(b" ", 3)
        if len(parts) < 3 or parts[1] not in channels:
            continue
        text = parts[3] if len(parts) == 4 else b""
        out.append(text if parts[2] == b"P" else text + b"\n")
    return b"".join(out), rest


def _files(directory: Path) -> list[Path]:
    rotated = [p for p in directory.glob(CONTAINER_LOG + ".*") if p.suffix[1:].isdigit()]
    rotated.sort(key=lambda p: -int(p.suffix[1:]))  # larger N is older
    return [*rotated, directory / CONTAINER_LOG]


def stream_bytes(directory: Path, channels: frozenset[bytes], need: int | None = None
                 ) -> tuple[bytes, bool]:
    """The stream over the kept files; with *need*, only the newest files that hold at least
    *need* bytes of it (``(bytes, complete)``: complete is False when older files were not
    read)."""
    chunks: list[bytes] = []
    total = 0
    files = _files(directory)
    for i, path in enumerate(reversed(files)):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        text, _ = records_bytes(data, channels)
        chunks.append(text)
        total += len(text)
        if need is not None and total >= need and i < len(files) - 1:
            return b"".join(reversed(chunks)), False
    return b"".join(reversed(chunks)), True


def read(directory: Path, channels: frozenset[bytes], offset: int, length: int) -> bytes:
    """Supervisor's ``readFile``: *length* bytes from *offset*; a negative offset reads that
    many bytes from the end (then length must be 0); length 0 reads to the end. ValueError
    ``BAD_ARGUMENTS`` for the combinations Supervisor refuses."""
    if offset < 0:
        if length:
            raise ValueError("BAD_ARGUMENTS")
        data, _ = stream_bytes(directory, channels, need=-offset)
        return data[offset:]
    if length < 0:
        raise ValueError("BAD_ARGUMENTS")
    data, _ = stream_bytes(directory, channels)
    return data[offset:] if length == 0 else data[offset:offset + length]


def tail(directory: Path, channels: frozenset[bytes], offset: int, length: int
         ) -> tuple[bytes, int, bool]:
    """Supervisor's ``tailFile``: ``(bytes, next offset, overflow)``."""
    data, _ = stream_bytes(directory, channels)
    size = len(data)
    overflow = False
    if size > offset + length:
        overflow = True
        offset = size - 1
    if offset + length > size:
        if offset > size - 1:
            length = 0
        offset = size - length
    offset = max(offset, 0)
    length = max(length, 0)
    return (data[offset:offset + length] if length else b""), size, overflow


async def follow(directory: Path, channels: frozenset[bytes], head: int,
                 sleep: Callable[[float], Awaitable[object]],
                 poll: float = 0.1) -> AsyncIterator[bytes]:
    """``tail -f``: the last *head* bytes, then new output as it is written, across
    rotations (a rotated file is finished before the new one is read), until cancelled."""
    current = directory / CONTAINER_LOG
    data, _ = stream_bytes(directory, channels, need=head)
    if data:
        yield data[-head:]
    f = None
    inode = None
    try:
        try:
            f = open(current, "rb")  # noqa: SIM115 - held open to follow
            f.seek(0, os.SEEK_END)
            inode = os.fstat(f.fileno()).st_ino
        except FileNotFoundError:
            f = None
        rest = b""
        while True:
            if f is None:
                try:
                    f = open(current, "rb")  # noqa: SIM115
                    inode = os.fstat(f.fileno()).st_ino
                    rest = b""
                except FileNotFoundError:
                    await sleep(poll)
                    continue
            chunk = f.read()
            if chunk:
                text, rest = records_bytes(rest + chunk, channels)
                if text:
                    yield text
                continue
            try:
                now_stat = os.stat(current)
            except FileNotFoundError:
                now_stat = None
            if now_stat is not None and now_stat.st_ino == inode and now_stat.st_size < f.tell():
                f.seek(0)  # cleared (clearProcessLogs truncates it): read it from the start
                rest = b""
                continue
            if now_stat is None or now_stat.st_ino != inode:
                f.close()
                f = None
                continue
            await sleep(poll)
    finally:
        if f is not None:
            f.close()
