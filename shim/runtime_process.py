"""The process runtime: the container is a plain fork + exec of the spec's command.

Two pipes make create and start separate, observable steps:

* the *sync* pipe: the child, fully set up (session, stdio, cwd, limits, user), blocks reading
  it; ``start`` writes one byte. EOF (the shim died before ``start``) makes the child exit
  without running anything.
* the *status* pipe (close-on-exec in the child): the child writes ``R`` once set up, or an
  error record ``errno NUL stage NUL message``; after ``start``, EOF means the exec
  succeeded, and an error record means it failed. So an exec failure is an error for the
  caller, never a container that looks running.

Limits (``spec["limits"]``, root only) go into a cgroup made before the fork
(``tether/ID-INSTANCE`` in each hierarchy, as runc's): the child joins it before anything else,
so every later process of the container is inside too; it is removed when the shim ends.
``spec["init"]`` puts a tini (``-s``: a subreaper when it is not pid 1) in front of the command,
so the container's orphans are reaped inside it; with a pid namespace tini is its pid 1.

``exec`` forks another child that enters the init's namespaces (``setns`` on
``/proc/INIT/ns/*``) and cgroup before it execs. No second fork is needed for the pid
namespace: the shim unshared it for its children, so every child it forks is born inside.

Every fork path ends in ``os._exit`` inside ``finally``: a failure in the child never returns
into the shim's code.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from events import shim_api
from shim.osutil import close_fds, descendants, libc, read_to_eof, session_of, unshare
from shim.runtime import CreateFailed, ExecFailed

if TYPE_CHECKING:
    from shim.cgroups import Cgroup, OOMWatch

#: unshare(2) flags by the names spec["namespaces"] uses.
NAMESPACES = {"mount": 0x00020000, "uts": 0x04000000, "ipc": 0x08000000,
              "net": 0x40000000, "pid": 0x20000000}
#: /proc/PID/ns/ file names, in the order exec enters them (mount last, as nsenter does).
NS_FILES = {"uts": "uts", "ipc": "ipc", "net": "net", "mount": "mnt"}
#: Walks of the shim's tree by a kill of everything (see :meth:`ProcessRuntime.kill`): a fork
#: bomb can outrun any number; a cgroup (limits, as root) catches what the walks miss.
KILL_ALL_ROUNDS = 8
_RESET_SIGNALS = ("SIGPIPE", "SIGHUP", "SIGINT", "SIGXFSZ", "SIGCHLD", "SIGTERM", "SIGQUIT")


def _report_error(status_w: int, stage: str, exc: BaseException) -> None:
    """In a forked child: tell the shim which step failed and why (read by :func:`_parse_error`);
    the child then ends in ``os._exit(127)``."""
    if isinstance(exc, OSError):
        data = f"{exc.errno or 0}\0{stage}\0{exc.strerror or exc}"
    else:
        data = f"0\0{stage}\0{exc!r}"
    with contextlib.suppress(OSError):
        os.write(status_w, data.encode())


def _reset_signals() -> None:
    """In a forked child: the shim's signal set-up (wakeup fd, handlers, mask) is not inherited
    by what the child execs."""
    signal.set_wakeup_fd(-1)
    for name in _RESET_SIGNALS:
        signal.signal(getattr(signal, name), signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


def _become_user(user: dict[str, Any]) -> None:
    """In a forked child: drop to ``user`` (no supplementary groups), gid first."""
    os.setgroups([])
    os.setgid(int(user.get("gid", user["uid"])))
    os.setuid(int(user["uid"]))


def _parse_error(data: bytes) -> tuple[str, int, str]:
    number, _, rest = data.partition(b"\0")
    stage, _, message = rest.partition(b"\0")
    return stage.decode(errors="replace"), int(number or 0), message.decode(errors="replace")


def _init_command(command: list[str]) -> list[str]:
    """``[tini, "-s", "--", *command]``: a static tini when there is one, else tini on PATH."""
    from shim.oci import BundleError, find_init  # only with init: oci's imports cost start-up

    try:
        tini = find_init()
    except BundleError:
        import shutil

        tini = shutil.which("tini") or ""
        if not tini:
            raise CreateFailed("init requested but no tini found (tini-static or tini on PATH):"
                               " install tini, or run without --init") from None
    return [tini, "-s", "--", *command]


def cgroup_name(spec: dict[str, Any]) -> str:
    """``tether/ID-INSTANCE``, the path runc gets too (:func:`shim.oci.default_cgroups_path`)."""
    return f"tether/{spec['id']}-{spec['instance']}"


def _make_cgroup(spec: dict[str, Any]) -> Cgroup | None:
    """The container's cgroup with its limits, when the spec has any (root only)."""
    limits = {k: v for k, v in (spec.get("limits") or {}).items() if v is not None}
    if not limits:
        return None
    if os.geteuid() != 0:
        raise CreateFailed(f"limits {limits} need root (cgroups); run the daemon as root or "
                           "drop --memory/--cpus/--pids-limit")
    from shim.cgroups import Cgroup, CgroupError

    try:
        return Cgroup.create(cgroup_name(spec), limits)
    except CgroupError as exc:
        raise CreateFailed(f"cgroup for limits {limits}: {exc}") from None


class ProcessRuntime:
    def __init__(self) -> None:
        self.pid = 0  # the init while it lives; the server sets 0 once it has reaped it
        self._sync_w = -1
        self._status_r = -1
        self._command: list[str] = []
        self._namespaces: list[str] = []
        self.cgroup: Cgroup | None = None
        self.session = 0  # the current run's session (its init's pid, kept once reaped)
        #: In a shared shim (:mod:`shim.group`): the sessions of the other members' runs.
        #: Then the shim's tree is not all ours: a kill of everything takes only our session.
        self.others: Callable[[], set[int]] | None = None

    def create(self, spec: dict[str, Any], stdout: int, stderr: int, start: bool = False
               ) -> int:
        """Fork the init, set up and waiting for :meth:`start` (*start* changes nothing here:
        the start is one byte on a pipe, and it keeps an exec failure the caller's error)."""
        command = spec.get("command") or []
        if not command or not all(isinstance(a, str) for a in command):
            raise CreateFailed(f"spec command must be a non-empty list of strings: {command!r}")
        self._command = list(command)
        namespaces = list(spec.get("namespaces") or [])
        unknown = [n for n in namespaces if n not in NAMESPACES]
        if unknown:
            raise CreateFailed(f"unknown namespaces {unknown}; known: {sorted(NAMESPACES)}")
        self._namespaces = list(namespaces)
        if spec.get("init"):
            spec = {**spec, "command": _init_command(self._command)}
        self.cgroup = _make_cgroup(spec)
        try:
            return self._create(spec, namespaces, stdout, stderr)
        except BaseException:
            self._remove_cgroup()
            raise

    def _create(self, spec: dict[str, Any], namespaces: list[str], stdout: int,
                stderr: int) -> int:
        if "pid" in namespaces:
            # A new pid namespace applies to the caller's *next* child: so the shim unshares
            # it and the container init becomes pid 1 of it, while the shim stays outside.
            try:
                unshare(NAMESPACES["pid"])
            except OSError as exc:
                raise CreateFailed(str(exc)) from None
            namespaces.remove("pid")
        sync_r, sync_w = os.pipe()
        status_r, status_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(sync_w)
                os.close(status_r)
                self._child(spec, namespaces, stdout, stderr, sync_r, status_w, self.cgroup)
            finally:
                os._exit(127)
        os.close(sync_r)
        os.close(status_w)
        self.pid, self._sync_w, self._status_r = pid, sync_w, status_r
        self.session = pid  # the child calls setsid
        first = os.read(status_r, 1)
        if first != b"R":
            stage, number, message = _parse_error(first + read_to_eof(status_r))
            os.waitpid(pid, 0)
            self.delete()
            raise CreateFailed(f"{stage}: {message or shim_api.CHILD_LOST}"
                               f" (errno {number})")
        return pid

    @staticmethod
    def _child(spec: dict[str, Any], namespaces: list[str], stdout: int, stderr: int,
               sync_r: int, status_w: int, cgroup: Cgroup | None) -> None:
        """Runs in the forked child; returns only to ``os._exit(127)``."""
        stage = "setup"
        try:
            if cgroup is not None:
                stage = "join cgroup"
                cgroup.join()  # first: every process the container makes is inside
            _reset_signals()
            stage = "setsid"
            os.setsid()  # its own session and process group: kill(all) signals the group
            stage = "open(/dev/null)"
            null = os.open("/dev/null", os.O_RDONLY)
            stage = "dup2"
            os.dup2(null, 0)
            os.dup2(stdout, 1)
            os.dup2(stderr, 2)
            close_fds({sync_r, status_w})
            os.set_inheritable(status_w, False)
            for name in namespaces:
                stage = f"unshare({name})"
                unshare(NAMESPACES[name])
            if spec.get("rlimits"):
                import resource

                for name, (soft, hard) in spec["rlimits"].items():
                    stage = f"setrlimit(RLIMIT_{name.upper()})"
                    resource.setrlimit(getattr(resource, "RLIMIT_" + name.upper()),
                                       (int(soft), int(hard)))
            cwd = spec.get("cwd") or "/"
            stage = f"chdir({cwd})"
            os.chdir(cwd)
            user = spec.get("user")
            if user:
                stage = "setgroups/setgid/setuid"
                _become_user(user)
            os.write(status_w, b"R")
            stage = "wait for start"
            if os.read(sync_r, 1) != b"S":
                os._exit(0)  # the shim went away before start: run nothing
            os.close(sync_r)
            command = spec["command"]
            stage = f"exec {command[0]!r}"
            os.execvpe(command[0], command, dict(spec.get("env") or {}))
        except BaseException as exc:
            _report_error(status_w, stage, exc)

    def start(self) -> None:
        try:
            os.write(self._sync_w, b"S")
        except OSError as exc:
            raise ExecFailed(exc.errno or 0, f"write(sync pipe): {exc.strerror}") from None
        finally:
            os.close(self._sync_w)
            self._sync_w = -1
        data = read_to_eof(self._status_r)
        os.close(self._status_r)
        self._status_r = -1
        if data:
            stage, number, message = _parse_error(data)
            what = self._command[0] if stage.startswith("exec ") else stage
            raise ExecFailed(number, f"execvpe({self._command!r}) failed in {stage}: "
                             f"[Errno {number}] {message}", reason=f"{message}: {what}")

    def kill(self, signal: int, all: bool) -> None:
        """*all*: the init's process group, then every other process of the shim's tree (a
        descendant that left the group is still ours: orphans are reparented to the shim).
        Once the init is reaped only the tree is used: its pid (the group id) may be reused."""
        if self.pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, signal)
        if not all:
            return
        if self.pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal)
        # A process may fork between the walk and its signal: its child, orphaned by the
        # SIGKILL, lands on the shim (a subreaper). Walk again until a walk finds nobody new.
        signalled: set[int] = set()
        for _ in range(KILL_ALL_ROUNDS):
            found = [pid for pid in self._tree() if pid not in signalled]
            if not found:
                break
            for pid in found:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal)
            signalled.update(found)
        if self.cgroup is not None:  # also what left the shim's tree (a daemonized child)
            self.cgroup.kill_all(signal)

    def _tree(self) -> list[int]:
        """The processes of the shim's tree that are this container's: all of them in a shim
        of its own; in a shared one, those of this container's session (a process that made a
        session of its own escapes: a cgroup, with limits, catches it). Once another member's
        run has our session's id (ours is gone, its pid reused), nothing of ours is left."""
        pids = descendants(os.getpid())
        if self.others is None:
            return pids
        if not self.session or self.session in self.others():
            return []
        return [pid for pid in pids if session_of(pid) == self.session]

    def oom_watch(self) -> OOMWatch | None:
        if self.cgroup is None or "memory" not in self.cgroup.paths:
            return None
        return self.cgroup.oom_watch()

    def exited(self) -> None:
        """The cgroup goes now if the init was its last process; otherwise (orphans outlive
        an init without a pid namespace) in :meth:`delete`, after they are killed."""
        if self.cgroup is None or self.cgroup.pids():
            return
        from shim.cgroups import CgroupError

        with contextlib.suppress(CgroupError):  # still busy for a moment: delete retries
            self.cgroup.remove(timeout=0.05)
            self.cgroup = None

    def exec(self, exec_id: str, process: dict[str, Any], stdout: int, stderr: int) -> int:
        command = process["command"]
        ns_fds: list[tuple[str, int]] = []
        status_r, status_w = os.pipe()
        try:
            for name, file in NS_FILES.items():
                if name in self._namespaces:
                    path = f"/proc/{self.pid}/ns/{file}"
                    try:
                        ns_fds.append((name, os.open(path, os.O_RDONLY | os.O_CLOEXEC)))
                    except OSError as exc:
                        raise ExecFailed(exc.errno or 0, f"open {path}: {exc.strerror}") from None
            try:
                pid = os.fork()
            except OSError as exc:  # ENOMEM: the pid namespace's init just exited
                raise ExecFailed(exc.errno or 0, f"exec {exec_id}: fork: {exc.strerror}"
                                 ) from None
            if pid == 0:
                try:
                    os.close(status_r)
                    self._exec_child(process, ns_fds, stdout, stderr, status_w, self.cgroup)
                finally:
                    os._exit(127)
        except BaseException:
            os.close(status_r)
            raise
        finally:
            for _, fd in ns_fds:
                os.close(fd)
            os.close(status_w)
        data = read_to_eof(status_r)
        os.close(status_r)
        if data:
            os.waitpid(pid, 0)
            stage, number, message = _parse_error(data)
            raise ExecFailed(number, f"exec {exec_id}: {command!r} failed in {stage}: "
                             f"[Errno {number}] {message}")
        return pid

    @staticmethod
    def _exec_child(process: dict[str, Any], ns_fds: list[tuple[str, int]], stdout: int,
                    stderr: int, status_w: int, cgroup: Cgroup | None) -> None:
        """Runs in the forked child; returns only to ``os._exit(127)``."""
        stage = "setup"
        try:
            _reset_signals()
            if cgroup is not None:
                stage = "join cgroup"
                cgroup.join()
            for name, fd in ns_fds:
                stage = f"setns({name})"
                if libc().setns(fd, 0) != 0:
                    import ctypes

                    err = ctypes.get_errno()
                    raise OSError(err, os.strerror(err))
            os.setsid()
            stage = "dup2"
            null = os.open("/dev/null", os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(stdout, 1)
            os.dup2(stderr, 2)
            close_fds({status_w})
            cwd = process.get("cwd") or "/"
            stage = f"chdir({cwd})"
            os.chdir(cwd)
            user = process.get("user")
            if user:
                stage = "setgroups/setgid/setuid"
                _become_user(user)
            command = process["command"]
            stage = f"exec {command[0]!r}"
            os.execvpe(command[0], command, dict(process.get("env") or {}))
        except BaseException as exc:
            _report_error(status_w, stage, exc)

    def container_process(self, spec: dict[str, Any]) -> dict[str, Any]:
        return {"env": dict(spec.get("env") or {}), "cwd": spec.get("cwd"),
                "user": spec.get("user")}

    def delete(self) -> None:
        for attr in ("_sync_w", "_status_r"):
            fd = getattr(self, attr)
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, attr, -1)
        self._remove_cgroup()

    def _remove_cgroup(self) -> None:
        """rmdir the cgroup; one still in use stays, named in the error for the log.

        The shared ``tether`` parent is never pruned: another shim's runc or crun may be
        between its mkdir of the parent and of its own directory (measured: crun then fails
        with ENOENT), and nothing can lock against that. An empty parent costs nothing."""
        if self.cgroup is None:
            return
        cgroup, self.cgroup = self.cgroup, None
        cgroup.remove()  # CgroupError names the directory and what is left in it
