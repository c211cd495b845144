"""The process runtime: the container is a plain fork + exec of the spec's command.

Two pipes make create and start separate, observable steps:

* the *sync* pipe: the child, fully set up (session, stdio, cwd, limits, user), blocks reading
  it; ``start`` writes one byte. EOF (the shim died before ``start``) makes the child exit
  without running anything.
* the *status* pipe (close-on-exec in the child): the child writes ``R`` once set up, or an
  error record ``errno NUL stage NUL message``; after ``start``, EOF means the exec
  succeeded, and an error record means it failed. So an exec failure is an error for the
  caller, never a container that looks running.

Every fork path ends in ``os._exit`` inside ``finally``: a failure in the child never returns
into the shim's code.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Any

from shim.osutil import close_fds, descendants, unshare
from shim.runtime import CreateFailed, ExecFailed

#: unshare(2) flags by the names spec["namespaces"] uses.
NAMESPACES = {"mount": 0x00020000, "uts": 0x04000000, "ipc": 0x08000000,
              "net": 0x40000000, "pid": 0x20000000}
_RESET_SIGNALS = ("SIGPIPE", "SIGHUP", "SIGINT", "SIGXFSZ", "SIGCHLD", "SIGTERM", "SIGQUIT")


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_error(data: bytes) -> tuple[str, int, str]:
    number, _, rest = data.partition(b"\0")
    stage, _, message = rest.partition(b"\0")
    return stage.decode(errors="replace"), int(number or 0), message.decode(errors="replace")


class ProcessRuntime:
    def __init__(self) -> None:
        self.pid = 0  # the init while it lives; the server sets 0 once it has reaped it
        self._sync_w = -1
        self._status_r = -1
        self._command: list[str] = []

    def create(self, spec: dict[str, Any], stdout: int, stderr: int) -> int:
        command = spec.get("command") or []
        if not command or not all(isinstance(a, str) for a in command):
            raise CreateFailed(f"spec command must be a non-empty list of strings: {command!r}")
        self._command = list(command)
        namespaces = list(spec.get("namespaces") or [])
        unknown = [n for n in namespaces if n not in NAMESPACES]
        if unknown:
            raise CreateFailed(f"unknown namespaces {unknown}; known: {sorted(NAMESPACES)}")
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
                self._child(spec, namespaces, stdout, stderr, sync_r, status_w)
            finally:
                os._exit(127)
        os.close(sync_r)
        os.close(status_w)
        self.pid, self._sync_w, self._status_r = pid, sync_w, status_r
        first = os.read(status_r, 1)
        if first != b"R":
            stage, number, message = _parse_error(first + _read_all(status_r))
            os.waitpid(pid, 0)
            self.delete()
            raise CreateFailed(f"{stage}: {message or 'the child died during setup'}"
                               f" (errno {number})")
        return pid

    @staticmethod
    def _child(spec: dict[str, Any], namespaces: list[str], stdout: int, stderr: int,
               sync_r: int, status_w: int) -> None:
        """Runs in the forked child; returns only to ``os._exit(127)``."""
        stage = "setup"
        try:
            signal.set_wakeup_fd(-1)
            for name in _RESET_SIGNALS:
                signal.signal(getattr(signal, name), signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, set())
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
                os.setgroups([])
                os.setgid(int(user.get("gid", user["uid"])))
                os.setuid(int(user["uid"]))
            os.write(status_w, b"R")
            stage = "wait for start"
            if os.read(sync_r, 1) != b"S":
                os._exit(0)  # the shim went away before start: run nothing
            os.close(sync_r)
            command = spec["command"]
            stage = f"exec {command[0]!r}"
            os.execvpe(command[0], command, dict(spec.get("env") or {}))
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.write(status_w, f"{exc.errno or 0}\0{stage}\0{exc.strerror or exc}".encode())
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.write(status_w, f"0\0{stage}\0{exc!r}".encode())

    def start(self) -> None:
        try:
            os.write(self._sync_w, b"S")
        except OSError as exc:
            raise ExecFailed(exc.errno or 0, f"write(sync pipe): {exc.strerror}") from None
        finally:
            os.close(self._sync_w)
            self._sync_w = -1
        data = _read_all(self._status_r)
        os.close(self._status_r)
        self._status_r = -1
        if data:
            stage, number, message = _parse_error(data)
            raise ExecFailed(number, f"execvpe({self._command!r}) failed in {stage}: "
                             f"[Errno {number}] {message}")

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
        for pid in descendants(os.getpid()):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal)

    def delete(self) -> None:
        for attr in ("_sync_w", "_status_r"):
            fd = getattr(self, attr)
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, attr, -1)
