"""The calls by which the event log and the snapshot change files, behind one object.

Everything that makes the log or the snapshot durable goes through a :class:`FileIO`: every
write, truncate, fdatasync/fsync, create, rename and unlink. The default, :data:`OS`, is the
operating system itself. The crash-state explorer (``tests/crash_explorer.py``) passes a
subclass that records each call, then rebuilds on real directories every state a process crash
or a power loss could leave after any of them (the way Supervisor passes every OS call through
one object so its policy code can be tested). Reads do not go through it: they change nothing a
crash could leave half done.
"""

from __future__ import annotations

import os

from events import durable

__all__ = ["OS", "FileIO"]


class FileIO:
    """The operating system's file calls, one method each (``os`` semantics and errors)."""

    def open(self, path: str | os.PathLike[str], flags: int, mode: int = 0o644) -> int:
        return os.open(path, flags, mode)

    def close(self, fd: int) -> None:
        os.close(fd)

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        return os.pwrite(fd, data, offset)

    def write_all(self, fd: int, data: bytes | memoryview, offset: int) -> None:
        """``pwrite`` until every byte is written (a short write is retried from where it
        stopped; an error is raised with part of ``data`` possibly written)."""
        view = memoryview(data)
        while view:
            n = self.pwrite(fd, view, offset)
            view = view[n:]
            offset += n

    def ftruncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def fdatasync(self, fd: int) -> None:
        os.fdatasync(fd)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def rename(self, src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        os.rename(src, dst)

    def unlink(self, path: str | os.PathLike[str]) -> None:
        os.unlink(path)

    def mkdir(self, path: str | os.PathLike[str]) -> None:
        """Create a directory (its entry is durable once the parent is fsynced)."""
        os.mkdir(path)

    def fsync_dir(self, path: str | os.PathLike[str]) -> None:
        """Make a directory's entries (a new, renamed or deleted file) durable."""
        durable.fsync_dir(path)


#: The real thing: what the log and the snapshot use unless told otherwise.
OS = FileIO()
