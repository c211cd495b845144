"""Files that other processes (or the next boot) read: written whole or not at all.

One home for the atomic write (temp file in the same directory -> fsync -> rename -> fsync of
the directory) and for the directory fsync that makes a created, renamed or removed entry
durable. Standard library only: the shim imports this module. The event log and the snapshot
go through :class:`events.fileio.FileIO` instead (the crash-state explorer records their calls),
whose real directory fsync is this one.
"""

from __future__ import annotations

import os

__all__ = ["fsync_dir", "write_atomic"]


def write_atomic(path: str | os.PathLike[str], data: bytes, mode: int = 0o600,
                 durable: bool = True) -> None:
    """Write *data* so that readers see the old file or the whole new one, never a torn one.

    temp file in the same directory -> fsync -> rename -> fsync of the directory, so the rename
    itself survives a power loss. Without *durable*, no fsync (~0.7 ms less, two of them): for
    a file that is worthless after a power loss anyway (regenerated on every start, or naming
    a process that cannot have survived it); readers still never see a torn file.
    """
    path = os.fspath(path)
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.tmp.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        try:  # noqa: SIM105 (contextlib is one more import for every shim)
            os.unlink(tmp)
        except OSError:
            pass
        raise
    os.close(fd)
    os.rename(tmp, path)
    if durable:
        fsync_dir(directory or ".")


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory so that entries created, renamed or removed in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
