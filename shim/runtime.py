"""What the shim asks of a runtime: create the container's init, start it, signal it, clean up.

A pure interface: the shim's server picks the implementation (:func:`shim.server.make_runtime`).
The server owns everything else (reaping, output, events, the socket), so a runtime is small:
:mod:`shim.runtime_process` forks and execs a plain process; an OCI runtime (runc/crun) runs
``runc create`` with the shim's pipes as stdio and lets the init be reparented to the shim,
which is a subreaper. Runtime calls are synchronous and run inside the shim's loop; a runtime
that runs helper commands (``runc start``) may wait for them itself: the shim reaps with
``waitpid(-1)`` only between calls, so it cannot steal a helper's status.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from shim.cgroups import OOMWatch


class CreateFailed(Exception):
    """The container could not be created; the message names the call and the path."""


class ExecFailed(Exception):
    """The command could not be executed; the init exits with status 127. ``reason`` is the
    short form recorded with the exit (``No such file or directory: nosuchcmd``)."""

    def __init__(self, errno: int, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.errno = errno
        self.reason = reason or message


class Runtime(Protocol):
    pid: int

    def create(self, spec: dict[str, Any], stdout: int, stderr: int, start: bool = False
               ) -> int:
        """Create the init with *stdout*/*stderr* as its output, stopped before the user's
        program runs; return its pid. Raises :class:`CreateFailed`. With *start*, the task is
        started right after (the single create-and-start request): a runtime may do both in
        one step (``runc run --detach``); :meth:`start` then only completes it."""
        ...

    def start(self) -> None:
        """Let the init run the user's program. Raises :class:`ExecFailed`."""
        ...

    def kill(self, signal: int, all: bool) -> None:
        """Signal the init, or with *all* every process of the container."""
        ...

    def oom_watch(self) -> OOMWatch | None:
        """After :meth:`create`: a watch on the container's memory cgroup (its fd goes into
        the shim's selector), or None when there is no cgroup to watch."""
        ...

    def exec(self, exec_id: str, process: dict[str, Any], stdout: int, stderr: int) -> int:
        """Run another process in the running container (``process``: command, env, cwd,
        user) with *stdout*/*stderr* as its output; return its pid, a child of the shim once
        this returns (the shim reaps it). Raises :class:`ExecFailed` with the reason."""
        ...

    def exited(self) -> None:
        """The init has been reaped: release what can go now (``runc delete``), so an exited
        container holds no runtime state while its shim waits for ``delete``."""
        ...

    def delete(self) -> None:
        """Release what the runtime holds (pipes, runc state, cgroup): when the shim ends, and
        before the next task of a restart is created (the runtime is used again after it)."""
        ...

    def container_process(self, spec: dict[str, Any]) -> dict[str, Any]:
        """The container's ``env``, ``cwd`` and ``user``: the defaults of an exec and of the
        health checks (an OCI bundle's own ``process``, else the spec's)."""
        ...
