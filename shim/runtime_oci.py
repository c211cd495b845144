"""The OCI runtimes (runc, crun) behind the shim's :class:`~shim.runtime.Runtime` interface.

A thin adapter over :class:`shim.oci.OCIRuntime` (the OCI engineer's driver): ``runc create``
with the shim's pipes as the container's stdio; ``runc create`` exits and the container init
is reparented to the shim (a subreaper), whose reaper gets its real exit status. Its files live
in the shim's directory: ``bundle/`` (a generated config.json), ``init.pid``, ``runtime.log``;
the runtime's state in ``ROOT/runc`` (or ``ROOT/crun``).

Runtime commands run synchronously inside the shim's loop (subprocess waits for its own
child); the shim reaps with ``waitpid(-1)`` only between calls, so it never steals their status.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from shim import oci
from shim.runtime import CreateFailed, ExecFailed


class OciRuntime:
    def __init__(self, spec: dict[str, Any], directory: str) -> None:
        self.pid = 0
        self.id: str = spec["id"]
        self.dir = directory
        root = os.path.dirname(os.path.dirname(os.path.abspath(directory)))  # ROOT/shims/ID
        try:
            binary = oci.resolve_runtime(spec["runtime"])
            self.rt = oci.OCIRuntime(binary, oci.state_root(root, binary),
                                     os.path.join(directory, "runtime.log"))
        except oci.OCIError as exc:
            raise CreateFailed(str(exc)) from None
        self._created = False

    def create(self, spec: dict[str, Any], stdout: int, stderr: int) -> int:
        try:
            bundle = oci.prepare_bundle(spec, os.path.join(self.dir, "bundle"))
            self.pid = self.rt.create(self.id, bundle, os.path.join(self.dir, "init.pid"),
                                      stdout=stdout, stderr=stderr)
        except oci.OCIError as exc:
            raise CreateFailed(str(exc)) from None
        self._created = True
        return self.pid

    def start(self) -> None:
        try:
            self.rt.start(self.id)
        except oci.RuntimeFailed as exc:
            raise ExecFailed(0, str(exc)) from None

    def kill(self, signal: int, all: bool) -> None:
        """``runc kill [--all]``; a container that is already gone is not an error here."""
        with contextlib.suppress(oci.RuntimeFailed):
            self.rt.kill(self.id, signal, all=all)

    def delete(self) -> None:
        """``runc delete --force``: state and cgroup go; called once the init is reaped (or to
        clean up a failed start)."""
        if self._created:
            self._created = False
            with contextlib.suppress(oci.RuntimeFailed):
                self.rt.delete(self.id, force=True)
