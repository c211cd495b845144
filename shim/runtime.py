"""What the shim asks of a runtime: create the container's init, start it, signal it, clean up.

The server owns everything else (reaping, output, events, the socket), so a runtime is small:
:mod:`shim.runtime_process` forks and execs a plain process; an OCI runtime (runc/crun) runs
``runc create`` with the shim's pipes as stdio and lets the init be reparented to the shim,
which is a subreaper. Runtime calls are synchronous and run inside the shim's loop; a runtime
that runs helper commands (``runc start``) may wait for them itself: the shim reaps with
``waitpid(-1)`` only between calls, so it cannot steal a helper's status.
"""

from __future__ import annotations

from typing import Any, Protocol


class CreateFailed(Exception):
    """The container could not be created; the message names the call and the path."""


class ExecFailed(Exception):
    """The command could not be executed; the init exits with status 127."""

    def __init__(self, errno: int, message: str) -> None:
        super().__init__(message)
        self.errno = errno


class Runtime(Protocol):
    pid: int

    def create(self, spec: dict[str, Any], stdout: int, stderr: int) -> int:
        """Create the init with *stdout*/*stderr* as its output, stopped before the user's
        program runs; return its pid. Raises :class:`CreateFailed`."""
        ...

    def start(self) -> None:
        """Let the init run the user's program. Raises :class:`ExecFailed`."""
        ...

    def kill(self, signal: int, all: bool) -> None:
        """Signal the init, or with *all* every process of the container."""
        ...

    def delete(self) -> None:
        """Release what the runtime holds (pipes, runc state), after the init has exited."""
        ...


def make_runtime(spec: dict[str, Any], directory: str) -> Runtime:
    """The runtime named by ``spec["runtime"]``: ``process`` here; ``runc``, ``crun`` or the
    path of a runc-compatible binary through :mod:`shim.runtime_oci`. *directory* is the
    shim's own (``ROOT/shims/ID``), where a runtime keeps its files."""
    name = spec.get("runtime") or "process"
    if name == "process":
        from shim.runtime_process import ProcessRuntime

        return ProcessRuntime()
    from shim.runtime_oci import OciRuntime

    return OciRuntime(spec, directory)
