"""Supervisor (the other project) on the same machine: what supervisord warns about at start.

Tether's commands have Supervisor's names (``supervisord``, ``supervisorctl``) and its Python
package's name (``supervisor``), on purpose: people move over with their habits. On a machine
that also has Supervisor (Debian's ``supervisor`` package, a pip install), which one a bare
``supervisorctl`` runs depends on PATH, and Supervisor's answers at its own default socket.
Nothing here changes what runs; it tells the operator, once, at start-up:

* a Supervisor daemon answers on one of its default paths (:data:`SUPERVISOR_SOCKETS`, or its
  pidfile names a live process): its ``supervisorctl`` controls that daemon, not Tether;
* the ``supervisorctl`` found first on PATH is not the one installed beside this supervisord.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from collections.abc import Iterable, Sequence

__all__ = ["SUPERVISOR_PIDFILES", "SUPERVISOR_SOCKETS", "other_supervisors", "path_shadowing",
           "warnings"]

#: Where Supervisor listens by default: Debian's package, then upstream's sample config.
SUPERVISOR_SOCKETS = ("/run/supervisor.sock", "/var/run/supervisor.sock", "/tmp/supervisor.sock")
SUPERVISOR_PIDFILES = ("/run/supervisord.pid", "/var/run/supervisord.pid",
                       "/tmp/supervisord.pid")


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _listener_pid(path: str) -> int | None:
    """The pid of the process accepting on the unix socket *path* (0 if unknown), or None if
    nothing answers there."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(path)
        creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        return int.from_bytes(creds[:4], sys.byteorder)
    except PermissionError:
        return 0  # someone's socket we may not use: still someone's
    except OSError:
        return None
    finally:
        s.close()


def other_supervisors(sockets: Sequence[str] = SUPERVISOR_SOCKETS,
                      pidfiles: Sequence[str] = SUPERVISOR_PIDFILES) -> list[str]:
    """One sentence per live Supervisor-compatible daemon at these paths (ourselves excluded)."""
    found: list[str] = []
    pids: set[int] = set()
    for path in sockets:
        pid = _listener_pid(path)
        if pid is None or pid == os.getpid():
            continue
        pids.add(pid)
        who = f"pid {pid}: {_cmdline(pid) or '?'}" if pid else "a process we may not inspect"
        found.append(f"{path} answers ({who})")
    for path in pidfiles:
        try:
            with open(path) as f:
                pid = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        command = _cmdline(pid)
        if pid in pids or pid == os.getpid() or "supervisord" not in command:
            continue
        pids.add(pid)
        found.append(f"{path} names a running supervisord (pid {pid}: {command})")
    return found


def path_shadowing(names: Iterable[str] = ("supervisorctl", "supervisord"),
                   bindir: str | None = None, path: str | None = None) -> list[str]:
    """The commands for which a bare name on PATH finds another program than the one in
    *bindir* (where this supervisord's own commands are: the venv's ``bin``). A name PATH does
    not find at all is no warning: a service runs its commands by path."""
    bindir = os.path.realpath(bindir or os.path.dirname(sys.argv[0]) or ".")
    out = []
    for name in names:
        ours = os.path.join(bindir, name)
        if not os.access(ours, os.X_OK):
            continue  # started some other way (python -m): nothing to compare with
        first = shutil.which(name, path=path)
        if first is not None and os.path.realpath(first) != os.path.realpath(ours):
            out.append(f"{name} on PATH is {first}, not {ours}")
    return out


def warnings() -> list[str]:
    """Everything worth a warning at supervisord's start (cheap: a few stats and connects)."""
    notes = [f"another Supervisor-compatible daemon: {s}; its supervisorctl (Supervisor's) "
             "controls it, not Tether" for s in other_supervisors()]
    shadowed = path_shadowing()
    if shadowed:
        bindir = os.path.dirname(os.path.realpath(sys.argv[0]))
        notes.append("; ".join(shadowed) + f": run Tether's by path ({bindir}/supervisorctl) "
                     f"or put {bindir} first on PATH (e.g. source {os.path.dirname(bindir)}"
                     "/bin/activate)")
    return notes
