"""Which recovered ``running`` containers ``ps`` may show ``running`` before reconciliation.

After a start, ``ps`` shows a container whose task may still run as ``unknown`` until
reconciliation (:mod:`supervisor.recovery`) has heard from its shim. For most containers the
kernel can already tell what reconciliation will find about their state: the task the log
records is running. The early server (:mod:`supervisor.early`) shows a container ``running``
at once when, without waking its shim:

* the log says ``running``, not stopped by hand nor given up (reconciliation sends those a
  stop again, or decides), and its task was created in this boot (else the task ended with
  the boot: reconciliation applies the policy);
* the record's shim still lives: its directory's lock is held (:data:`SHIM_LOCK`, the rule of
  :func:`shim_alive`, never through a symlink);
* the record's task pid is a live process (not a zombie) whose parent is the record's shim
  pid: the shim is the task's parent (a child subreaper), so it is that shim's task.

Events the shim has not delivered yet cannot change that state while the task lives (its exit
would end it: a live task has none); they may change other fields of the row (health, an OOM
count), as events do at any time. Reconciliation still links such a container's shim as for
any other, and records what it reports. Every other container stays ``unknown`` until
reconciled. Nothing here writes, kills or connects: it reads ``/proc`` and tests a lock.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterable
from pathlib import Path

from events import shim_api
from events.domain import ContainerState
from events.procfs import read_stat
from supervisor.projection import Container

__all__ = ["SHIM_LOCK", "provable", "proven_running", "shim_alive", "task_runs"]

#: The lock a shim holds on its directory for as long as it runs.
SHIM_LOCK = shim_api.LOCK_FILE

RUNNING = ContainerState.RUNNING


def provable(c: Container, this_boot: str, previous_boot: str | None) -> bool:
    """Whether the record alone allows ``c`` to be proven running (see the docstring)."""
    boot = c.boot_id or previous_boot
    return (c.state == RUNNING and not c.stopped_by_user and not c.gave_up
            and c.instance is not None and bool(c.pid) and bool(c.shim_pid)
            and not (boot and boot != this_boot))


def shim_alive(directory: Path) -> bool:
    """Does a shim live in ``directory``? It holds the directory's lock for as long as it runs
    (the kernel drops the lock with the process, however it ends). Never through a symlink
    (the directory's or the lock's): a lock held elsewhere is no shim of ours. Here, not in
    :mod:`supervisor.shims`: the early server asks before trio is loaded."""
    if os.path.islink(directory) or os.path.islink(directory.parent):
        return False
    try:
        fd = os.open(directory / SHIM_LOCK, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return False
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the lock if we got it
    return False


def _shim_holds_lock(shims: str, cid: str) -> bool:
    """:func:`shim_alive` for ``SHIMS/ID``; a directory that cannot be read proves nothing."""
    try:
        return shim_alive(Path(shims) / cid)
    except OSError:
        return False


def _runs(shims: str, c: Container) -> bool:
    stat = read_stat(c.pid or 0)
    return (stat is not None and stat.alive and stat.ppid == c.shim_pid
            and _shim_holds_lock(shims, c.id))


def task_runs(root: Path, c: Container) -> bool:
    """Whether ``c``'s recorded task runs, a child of its recorded shim, which lives."""
    shims = os.fspath(root / "shims")
    return not os.path.islink(shims) and _runs(shims, c)


def proven_running(root: Path, containers: Iterable[Container], this_boot: str,
                   previous_boot: str | None) -> set[str]:
    """The ids of ``containers`` proven running (see the docstring)."""
    shims = os.fspath(root / "shims")
    if os.path.islink(shims):
        return set()
    return {c.id for c in containers
            if provable(c, this_boot, previous_boot) and _runs(shims, c)}
