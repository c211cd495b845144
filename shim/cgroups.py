"""Resource limits and OOM detection for a container, through the kernel's cgroup files.

Used by the shim for the *process* runtime as root (runc and crun make their own cgroups; the
shim only *watches* theirs for OOM kills, via :meth:`Cgroup.from_pid`). Standard library only:
this module runs inside every shim.

Layouts (read from ``/proc/self/mountinfo``, never guessed from paths):

* **v1** (and *hybrid*: v1 controllers plus a controller-less cgroup2 at
  ``/sys/fs/cgroup/unified``, as on this project's machines): one directory per controller,
  ``<mount of memory>/tether/ID``, ``<mount of cpu>/tether/ID``, ``<mount of pids>/tether/ID``.
  The controllers we limit live in v1 there, so the unified tree is ignored.
* **v2** (the unified hierarchy mounted at ``/sys/fs/cgroup`` with the controllers in it): one
  directory ``<mount>/tether/ID``; the parent enables the controllers in ``cgroup.subtree_control``.

How the shim uses it (process runtime)::

    cg = Cgroup.create(f"tether/{id}", spec["limits"])   # before the fork
    pid = os.fork()
    if pid == 0:            # child: first thing, so every later child is inside too
        cg.join()            # writes "0" to each cgroup.procs: os.open/os.write only
        ...exec...
    watch = cg.oom_watch()   # an fd for the shim's selector; on readable: watch.read()
    ...after the container's last process is gone: watch.close(); cg.remove()

OOM detection: the kernel OOM-kills with SIGKILL, so an exit status of 137 alone cannot tell an
OOM from ``kill -9``. :class:`OOMWatch` gives an fd that becomes readable when the cgroup hits
its limit (v1: an eventfd registered on ``memory.oom_control``; v2: inotify on
``memory.events``) and :meth:`OOMWatch.read` answers with the number of *new* OOM kills from the
kernel's own counter (``oom_kill``), so spurious wake-ups (v1 signals the eventfd when the cgroup
is removed) never become false ``task.oom`` events.

(Longer than our usual module: both layouts, the limits and the OOM watch are read together
whenever one of them changes, and every module a shim imports costs every shim its pages.)
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

__all__ = [
    "CONTROLLERS",
    "CPU_PERIOD_US",
    "Cgroup",
    "CgroupError",
    "Layout",
    "OOMWatch",
    "detect_layout",
    "parse_mountinfo",
    "prune_parents",
]

#: The controllers Tether limits; a cgroup is made in each (v1) so every container is also
#: countable (pids) and OOM-watchable (memory) even without a limit.
CONTROLLERS = ("memory", "cpu", "pids")
#: CFS period: 100 ms, the kernel's and runc's default; quota = cpus * period.
CPU_PERIOD_US = 100_000


_NO_MOUNTS: Mapping[str, Any] = {}


class CgroupError(Exception):
    """A cgroup operation failed; the message names the operation and the path."""


class Mount(NamedTuple):
    """One cgroup mount from mountinfo: where it is, which subtree it shows, what it holds.

    NamedTuples, not dataclasses: ``dataclasses`` imports ``inspect`` (~6 ms of every OCI
    shim's start-up)."""

    mountpoint: str
    root: str               # the cgroup path shown at mountpoint ("/" outside a container)
    version: int            # 1 or 2
    controllers: frozenset[str]


class Layout(NamedTuple):
    """Which hierarchy holds each controller we use.

    ``version`` is 1 when our controllers are in v1 hierarchies (pure v1 or hybrid), 2 when
    they are in the unified one. ``hybrid`` is True when a cgroup2 is mounted *beside* v1
    (crun 1.8 refuses to run then; see :mod:`shim.oci`).
    """

    version: int
    mounts: Mapping[str, Mount] = _NO_MOUNTS  # controller -> mount (v1); read-only
    unified: Mount | None = None
    hybrid: bool = False

    def mount_for(self, controller: str) -> Mount | None:
        if self.version == 2:
            return self.unified
        return self.mounts.get(controller)


def _unescape(text: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040)."""
    if "\\" not in text:
        return text
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and text[i + 1 : i + 4].isdigit() and i + 4 <= len(text):
            out.append(chr(int(text[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Mount]:
    """Every cgroup (v1) and cgroup2 mount in a ``/proc/*/mountinfo`` text that is visible:
    a mount covered by a later one on the same mountpoint (as :func:`shim.oci`'s private view
    for crun covers cgroup2 with a tmpfs) is not."""
    entries: dict[str, tuple[str, str, str]] = {}
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        mountpoint = _unescape(fields[4])
        entries.pop(mountpoint, None)  # covered: the later mount is on top
        entries[mountpoint] = (rfields[0], _unescape(fields[3]), rfields[2])
    mounts = []
    for mountpoint, (fstype, root, super_options) in entries.items():
        if fstype == "cgroup2":
            controllers: frozenset[str] = frozenset()
            with contextlib.suppress(OSError), \
                    open(os.path.join(mountpoint, "cgroup.controllers")) as f:
                controllers = frozenset(f.read().split())
            mounts.append(Mount(mountpoint, root, 2, controllers))
        elif fstype == "cgroup":
            options = set(super_options.split(","))
            named = {o for o in options if o.startswith("name=")}
            known = {"rw", "ro", "relatime", "noexec", "nosuid", "nodev", "clone_children",
                     "xattr", "noprefix", "cpuset_v2_mode", "favordynmods"}
            controllers = frozenset((options - known - named) | named)
            mounts.append(Mount(mountpoint, root, 1, controllers))
    return mounts


def detect_layout(mountinfo: str | None = None) -> Layout:
    """The cgroup layout this process sees (or the one described by *mountinfo*)."""
    if mountinfo is None:
        with open("/proc/self/mountinfo") as f:
            mountinfo = f.read()
    mounts = parse_mountinfo(mountinfo)
    v1: dict[str, Mount] = {}
    unified: Mount | None = None
    for m in mounts:
        if m.version == 1:
            for c in m.controllers:
                v1.setdefault(c, m)
        elif unified is None or m.mountpoint == "/sys/fs/cgroup":
            unified = m
    hybrid = bool(v1) and unified is not None
    if any(c in v1 for c in CONTROLLERS) or unified is None:
        return Layout(1, v1, unified, hybrid)
    return Layout(2, {}, unified, hybrid)


def _write(path: str, data: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise CgroupError(f"open {path}: {exc.strerror}") from None
    try:
        os.write(fd, data.encode())
    except OSError as exc:
        raise CgroupError(f"write {data!r} to {path}: {exc.strerror}") from None
    finally:
        os.close(fd)


def _read(path: str) -> str:
    """A cgroup file's text, through ``os.read``: a shim reads the OOM counter on its exit path,
    and the io layer's first use in a forked shim (a text wrapper, its decoder) costs more than
    the read itself."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode()


def _counter(text: str, key: str) -> int:
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return 0


class Cgroup:
    """One container's cgroup: a directory per controller (v1) or one directory (v2).

    Built by :meth:`create` (the process runtime makes and limits it) or :meth:`from_pid` /
    :meth:`open` (runc's or crun's cgroup, only watched and read).
    """

    def __init__(self, layout: Layout, paths: Mapping[str, str], owned: bool) -> None:
        self.layout = layout
        #: controller -> directory; on v2 every controller maps to the same directory.
        self.paths = dict(paths)
        self.owned = owned
        # Precomputed so that join() in a forked child does only os.open/os.write/os.close.
        self._procs_files = sorted({os.path.join(p, "cgroup.procs") for p in self.paths.values()})

    def __repr__(self) -> str:
        return f"Cgroup({sorted(set(self.paths.values()))})"

    # -- making one -------------------------------------------------------------------------

    @classmethod
    def create(cls, name: str, limits: Mapping[str, Any] | None = None, *,
               layout: Layout | None = None) -> Cgroup:
        """Make ``name`` (e.g. ``"tether/ID"``, relative to each hierarchy's root) and apply
        *limits* (``{"memory": bytes, "cpus": float, "pids": n}``). On any failure what was
        made is removed again, so a failed create leaves no directory behind."""
        layout = layout or detect_layout()
        name = name.strip("/")
        if not name or ".." in name.split("/"):
            raise CgroupError(f"bad cgroup name {name!r}")
        paths: dict[str, str] = {}
        if layout.version == 2:
            if layout.unified is None:
                raise CgroupError("no cgroup2 mount found in /proc/self/mountinfo")
            base = layout.unified.mountpoint
            wanted = [c for c in CONTROLLERS if c in layout.unified.controllers]
            _enable_v2_controllers(base, name, wanted)
            paths = dict.fromkeys(wanted or CONTROLLERS, os.path.join(base, name))
        else:
            missing = [c for c in CONTROLLERS if c not in layout.mounts]
            if missing:
                raise CgroupError(f"cgroup v1 controllers not mounted: {', '.join(missing)} "
                                  "(see /proc/self/mountinfo)")
            for c in CONTROLLERS:
                paths[c] = os.path.join(layout.mounts[c].mountpoint, name)
        cg = cls(layout, paths, owned=True)
        made: list[str] = []
        try:
            for path in dict.fromkeys(paths.values()):
                _mkdir_cgroup(path)
                made.append(path)
            cg.set_limits(limits or {})
        except BaseException:
            for path in reversed(made):
                with contextlib.suppress(OSError):
                    os.rmdir(path)
            raise
        return cg

    @classmethod
    def from_pid(cls, pid: int, *, layout: Layout | None = None) -> Cgroup:
        """The cgroup *pid* is in (e.g. runc's container init, right after ``runc create``)."""
        layout = layout or detect_layout()
        try:
            text = _read(f"/proc/{pid}/cgroup")
        except OSError as exc:
            raise CgroupError(f"read /proc/{pid}/cgroup: {exc.strerror}") from None
        paths: dict[str, str] = {}
        for line in text.splitlines():
            _, controllers, path = line.split(":", 2)
            names = controllers.split(",") if controllers else []
            for c in CONTROLLERS:
                mount = layout.mount_for(c)
                if mount is None:
                    continue
                if (mount.version == 2 and not controllers) or c in names:
                    paths[c] = _join_mount(mount, path)
        return cls(layout, paths, owned=False)

    @classmethod
    def open(cls, name: str, *, layout: Layout | None = None) -> Cgroup:
        """An existing cgroup by name (e.g. runc's ``linux.cgroupsPath`` ``/tether/ID``)."""
        layout = layout or detect_layout()
        paths = {}
        for c in CONTROLLERS:
            mount = layout.mount_for(c)
            if mount is not None:
                paths[c] = _join_mount(mount, "/" + name.strip("/"))
        return cls(layout, paths, owned=False)

    # -- limits and membership --------------------------------------------------------------

    def set_limits(self, limits: Mapping[str, Any]) -> None:
        """Write the limits that are set (None or absent = leave the kernel default).

        No swap limit on v1 (``memory.memsw``): it exists only with swap accounting, and these
        machines have no swap; on v2 ``memory.swap.max`` is left alone for the same reason.
        """
        memory, cpus, pids = limits.get("memory"), limits.get("cpus"), limits.get("pids")
        v2 = self.layout.version == 2
        if memory is not None:
            path = self._file("memory", "memory.max" if v2 else "memory.limit_in_bytes")
            _write(path, str(int(memory)))
        if cpus is not None:
            quota = max(1000, int(float(cpus) * CPU_PERIOD_US))
            if v2:
                _write(self._file("cpu", "cpu.max"), f"{quota} {CPU_PERIOD_US}")
            else:
                _write(self._file("cpu", "cpu.cfs_period_us"), str(CPU_PERIOD_US))
                _write(self._file("cpu", "cpu.cfs_quota_us"), str(quota))
        if pids is not None:
            _write(self._file("pids", "pids.max"), str(int(pids)))

    def _file(self, controller: str, name: str) -> str:
        try:
            return os.path.join(self.paths[controller], name)
        except KeyError:
            raise CgroupError(f"controller {controller!r} is not available for {self!r} "
                              "(not mounted or not enabled)") from None

    def join(self) -> None:
        """Move the calling process into this cgroup (every controller).

        Meant for the forked child before it execs: it writes ``0`` (= "me") to each
        ``cgroup.procs`` with bare os calls, so it is safe right after ``fork``. Raises
        OSError (the child reports it and exits 127)."""
        for path in self._procs_files:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)

    def add(self, pid: int) -> None:
        """Move *pid* into this cgroup (from the parent; prefer :meth:`join` in the child,
        which leaves no window where the container runs outside its limits)."""
        for path in self._procs_files:
            _write(path, str(pid))

    def pids(self) -> list[int]:
        """Every process in the cgroup (all containers' processes, any depth in v1 pids)."""
        found: set[int] = set()
        for path in self._procs_files:
            with contextlib.suppress(FileNotFoundError):
                found.update(int(x) for x in _read(path).split())
        return sorted(found)

    def kill_all(self, sig: int) -> int:
        """Signal every process in the cgroup; returns how many were signalled."""
        count = 0
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
                count += 1
        return count

    # -- OOM --------------------------------------------------------------------------------

    def oom_kills(self) -> int:
        """The kernel's count of OOM kills in this cgroup (0 when it cannot be read)."""
        mem = self.paths.get("memory")
        if mem is None:
            return 0
        name = "memory.events" if self.layout.version == 2 else "memory.oom_control"
        try:
            return _counter(_read(os.path.join(mem, name)), "oom_kill")
        except (OSError, ValueError):
            return 0

    def oom_watch(self, fresh: bool = False) -> OOMWatch:
        """An fd-backed watch for OOM kills (see :class:`OOMWatch`). *fresh*: the cgroup was
        made for the process being watched, so every kill its counter holds is news (one can
        come before the watch exists: ``runc run`` starts the program at once)."""
        mem = self.paths.get("memory")
        if mem is None:
            raise CgroupError(f"no memory controller for {self!r}: cannot watch for OOM")
        if self.layout.version == 2:
            fd = _inotify_watch(os.path.join(mem, "memory.events"))
        else:
            fd = _v1_oom_eventfd(mem)
        return OOMWatch(self, fd, 0 if fresh else None)

    # -- removal ----------------------------------------------------------------------------

    def remove(self, timeout: float = 2.0) -> None:
        """rmdir every directory, retrying while the kernel still counts exiting processes
        (EBUSY for a moment after the last one is reaped). Gone already is fine.

        Raises :class:`CgroupError` naming the directory if it is still busy after *timeout*
        (processes left: kill them first, e.g. :meth:`kill_all`)."""
        deadline = time.monotonic() + timeout
        for path in dict.fromkeys(self.paths.values()):
            delay = 0.001
            while True:
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        left = self.pids()
                        raise CgroupError(f"rmdir {path}: {exc.strerror}"
                                          + (f" (processes left: {left})" if left else ""))\
                            from None
                    time.sleep(delay)
                    delay = min(delay * 2, 0.05)

    def exists(self) -> bool:
        return any(os.path.isdir(p) for p in self.paths.values())


def prune_parents(name: str, *, layout: Layout | None = None) -> None:
    """rmdir the empty parents of ``name`` (``tether`` of ``tether/ID``), quietly: another
    container may be using them, which is fine (ENOTEMPTY/EBUSY)."""
    layout = layout or detect_layout()
    parts = name.strip("/").split("/")[:-1]
    mounts = {m.mountpoint for m in [*layout.mounts.values(), layout.unified] if m is not None}
    for mountpoint in mounts:
        for i in range(len(parts), 0, -1):
            try:
                os.rmdir(os.path.join(mountpoint, *parts[:i]))
            except OSError:
                break


def _join_mount(mount: Mount, cgroup_path: str) -> str:
    """The directory of cgroup path *cgroup_path* (as in /proc/PID/cgroup) under *mount*."""
    rel = cgroup_path
    if mount.root != "/" and (rel == mount.root or rel.startswith(mount.root + "/")):
        rel = rel[len(mount.root):]
    return os.path.join(mount.mountpoint, rel.lstrip("/"))


def _mkdir_cgroup(path: str) -> None:
    """mkdir with parents, tolerating a concurrent prune of an empty parent (ENOENT: retry)."""
    for _ in range(5):
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.mkdir(path)
            return
        except FileExistsError:
            raise CgroupError(f"mkdir {path}: cgroup exists (another container with this id?)")\
                from None
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise CgroupError(f"mkdir {path}: {exc.strerror}") from None
    raise CgroupError(f"mkdir {path}: parent keeps disappearing")


def _enable_v2_controllers(base: str, name: str, controllers: Iterable[str]) -> None:
    """v2: a child gets a controller only if every ancestor lists it in subtree_control."""
    wanted = " ".join(f"+{c}" for c in controllers)
    if not wanted:
        return
    current = base
    for part in name.split("/")[:-1]:
        _write(os.path.join(current, "cgroup.subtree_control"), wanted)
        current = os.path.join(current, part)
        os.makedirs(current, exist_ok=True)
    _write(os.path.join(current, "cgroup.subtree_control"), wanted)


# -- the fds behind OOMWatch ----------------------------------------------------------------

_EFD_CLOEXEC = os.O_CLOEXEC
_EFD_NONBLOCK = os.O_NONBLOCK


def _v1_oom_eventfd(memory_dir: str) -> int:
    """cgroup v1 notification API: ``"<eventfd> <fd of memory.oom_control>"`` written to
    ``cgroup.event_control`` makes the kernel signal the eventfd on every OOM in the cgroup."""
    control = os.path.join(memory_dir, "memory.oom_control")
    efd = os.eventfd(0, _EFD_CLOEXEC | _EFD_NONBLOCK)
    try:
        try:
            cfd = os.open(control, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise CgroupError(f"open {control}: {exc.strerror}") from None
        try:
            _write(os.path.join(memory_dir, "cgroup.event_control"), f"{efd} {cfd}")
        finally:
            os.close(cfd)  # the kernel keeps its own reference for the registration
    except BaseException:
        os.close(efd)
        raise
    return efd


_IN_MODIFY = 0x2
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_libc: Any = None


def _inotify_watch(path: str) -> int:
    """An inotify fd that becomes readable when *path* (a v2 ``memory.events``) changes:
    the kernel sends a modify event on every counter change."""
    import ctypes  # only here (cgroup v2): ~2 ms of start-up otherwise

    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    fd: int = _libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        raise CgroupError(f"inotify_init1: {os.strerror(err)}")
    if _libc.inotify_add_watch(fd, os.fsencode(path), _IN_MODIFY) < 0:
        err = ctypes.get_errno()
        os.close(fd)
        raise CgroupError(f"inotify_add_watch {path}: {os.strerror(err)}")
    return fd


class OOMWatch:
    """An fd for the shim's selector; readable when the cgroup may have had an OOM kill.

    On readable call :meth:`read`: it drains the fd and returns how many OOM kills happened
    since the last call, from the kernel counter (0 for a spurious wake-up, e.g. the v1 eventfd
    fires when the cgroup is removed: unregister the fd first, :meth:`close`, then remove).
    Read the counter *before* the runtime removes the cgroup (``runc delete``): after that it
    is gone.
    """

    def __init__(self, cgroup: Cgroup, fd: int, seen: int | None = None) -> None:
        self.cgroup = cgroup
        self.fd = fd
        self._seen = cgroup.oom_kills() if seen is None else seen

    def fileno(self) -> int:
        return self.fd

    def read(self) -> int:
        # Drain: one u64 for the eventfd, any number of inotify records; EAGAIN = empty.
        with contextlib.suppress(BlockingIOError):
            while os.read(self.fd, 4096) and self.cgroup.layout.version == 2:
                pass
        count = self.cgroup.oom_kills()
        new, self._seen = max(0, count - self._seen), max(count, self._seen)
        return new

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> OOMWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

