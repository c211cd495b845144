"""What ``/proc`` says of a process, and of the host's boot: read in one place.

A pid alone does not name a process for long: it is reused. ``(pid, starttime)`` does (the start
time in clock ticks since boot, field 22 of ``/proc/PID/stat``), and that is how the daemon
recognises the task of a lost shim, and the shim launcher a shim it started. The command name in
``/proc/PID/stat`` is in parentheses and may itself contain spaces and parentheses, so the fields
are read after the *last* ``)``.

:func:`boot_id` is the kernel's random id of this boot: a change means the host rebooted, so every
shim and container of the previous boot is gone. ``TETHER_BOOT_ID``, when set, stands in for it,
so that tests can simulate a reboot.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

__all__ = ["ProcStat", "boot_id", "group_members", "is_running", "process_table",
           "processes_naming", "read_stat", "starttime"]

BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"


class ProcStat:
    """The fields of ``/proc/PID/stat`` that Tether uses."""

    __slots__ = ("ppid", "session", "starttime", "state")

    def __init__(self, state: str, ppid: int, starttime: int, session: int) -> None:
        self.state = state  # R, S, D, Z (zombie), X (dead), T, ...
        self.ppid = ppid
        self.starttime = starttime
        self.session = session

    @property
    def alive(self) -> bool:
        """Running or sleeping: not a zombie waiting for its parent, not dead."""
        return self.state not in ("Z", "X")


def read_stat(pid: int) -> ProcStat | None:
    """The process's stat, or None when there is no such process (or /proc cannot tell)."""
    if not pid or pid < 0:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        fields = data[data.rindex(b")") + 2 :].split()
        return ProcStat(fields[0].decode(), int(fields[1]), int(fields[19]), int(fields[3]))
    except (OSError, ValueError, IndexError):
        return None


def is_running(pid: int | None) -> bool:
    """Alive and not a zombie (an exited process its parent has not reaped has stopped)."""
    stat = read_stat(pid or 0)
    return stat is not None and stat.alive


def starttime(pid: int | None) -> int | None:
    """The process's start time (clock ticks since boot): with the pid, its identity."""
    stat = read_stat(pid or 0)
    return None if stat is None else stat.starttime


def _stat_fields() -> Iterator[tuple[int, list[bytes]]]:
    """``(pid, the fields of /proc/PID/stat after the command name)`` of every process."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                data = f.read()
            yield int(entry), data[data.rindex(b")") + 2 :].split()
        except (OSError, ValueError):
            continue


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, command line with spaces for NULs) of every live process: what the tests'
    leak guard and the benches' clean-up look through for what they started."""
    table: dict[int, tuple[int, str]] = {}
    for pid, fields in _stat_fields():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            table[pid] = (int(fields[1]), cmd)
        except (OSError, ValueError, IndexError):
            continue
    return table


def group_members(pgid: int) -> list[tuple[int, int]]:
    """``(pid, starttime)`` of the live processes of process group ``pgid`` (field 5 of
    ``/proc/PID/stat``). While any member lives the kernel hands ``pgid`` to no new process."""
    return [(pid, int(fields[19])) for pid, fields in _stat_fields()
            if len(fields) > 19 and fields[2] == b"%d" % pgid and fields[0] not in (b"Z", b"X")]


def ticks_at(wall_ns: int) -> int:
    """A wall-clock time (``time.time_ns()``) in the clock of :func:`starttime`: clock ticks
    since boot (through ``/proc/uptime`` now; a wall-clock jump in between shifts it)."""
    with open("/proc/uptime", "rb") as f:
        uptime = float(f.read().split()[0])
    age = time.time() - wall_ns / 1e9
    return int((uptime - age) * os.sysconf("SC_CLK_TCK"))


def processes_naming(text: str) -> list[int]:
    """Pids of the live processes whose command line contains ``text``, and of all their
    descendants (a shim's container need not name the root), never this process."""
    table = process_table()
    me = os.getpid()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: list[int] = []
    seen: set[int] = set()
    stack = [pid for pid, (_, cmd) in table.items() if text in cmd]
    while stack:
        pid = stack.pop()
        if pid in seen or pid == me:
            continue
        seen.add(pid)
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def boot_id() -> str:
    """This boot's id: ``TETHER_BOOT_ID`` when set (tests), else the kernel's."""
    forced = os.environ.get("TETHER_BOOT_ID")
    if forced:
        return forced
    try:
        with open(BOOT_ID_PATH) as f:
            return f.read().strip()
    except OSError:
        return ""
