"""The OCI runtimes (runc, crun) behind the shim's :class:`~shim.runtime.Runtime` interface.

A thin adapter over :class:`shim.oci.OciCli` (the runtime's command line): ``runc create`` with the
shim's pipes as the container's stdio; ``runc create`` exits and the container init is
reparented to the shim (a subreaper), whose reaper gets its real exit status. Its files live in
the shim's directory: ``bundle/`` (a generated config.json), ``init.pid``, ``exec/`` (an exec's
process.json and pid file, removed once read), ``runtime.log``; the runtime's state in
``ROOT/runc`` (or ``ROOT/crun``).

Runtime commands run synchronously inside the shim's loop (:mod:`shim.command` waits for its
child by pid); the shim reaps with ``waitpid(-1)`` only between calls, so it never steals
their status.

Why each choice:

* a plain stop signals the init by pid (``os.kill``: 7 ms less than ``runc kill``); the init
  is the shim's unreaped child, so the pid cannot have been reused. ``all`` uses
  ``runc kill --all`` (the whole cgroup);
* ``runc delete`` *without* ``--force`` once the init is reaped (:meth:`exited`): ~10 ms
  instead of ~100 ms, and an exited container leaves no runtime state or cgroup behind;
* crun on a hybrid cgroup layout: the shim hides the cgroup2 mount once, for itself, in a
  private mount namespace (:func:`shim.oci.hide_unified_cgroup`), rather than in every crun
  command's preexec (stop 9.5 ms instead of 22 ms, bench/oci.py). Only the shim's view changes.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any

from shim import oci
from shim.runtime import CreateFailed, ExecFailed

if TYPE_CHECKING:
    from shim.cgroups import OOMWatch


class OciRuntime:
    def __init__(self, spec: dict[str, Any], directory: str) -> None:
        self.pid = 0
        self.id: str = spec["id"]
        self.spec = spec
        self.dir = directory
        root = os.path.dirname(os.path.dirname(os.path.abspath(directory)))  # ROOT/shims/ID
        try:
            binary = oci.resolve_runtime(spec["runtime"])
            hide = oci.needs_private_cgroup_view(binary)
            if hide and os.geteuid() == 0:
                from shim.cgroups import detect_layout

                layout = detect_layout()
                mountpoint = layout.unified.mountpoint if layout.unified else None
                try:
                    oci.hide_unified_cgroup(mountpoint or "/sys/fs/cgroup/unified")
                except OSError as exc:
                    raise CreateFailed(f"{binary}: hiding the cgroup2 mount in a private mount "
                                       f"namespace failed: {exc}") from None
            # hidden above (or nothing to hide): the driver need not read the mount table
            # again; not root: it says why crun cannot run here
            self.rt = oci.OciCli(binary, oci.state_root(root, binary),
                                     os.path.join(directory, "runtime.log"),
                                     hide_unified=None if hide and os.geteuid() != 0 else False)
        except oci.OCIError as exc:
            raise CreateFailed(str(exc)) from None
        self._created = False
        self._started = False  # created by ``runc run``: already running
        self._bundle: str | None = None
        self._process: dict[str, Any] | None = None

    def create(self, spec: dict[str, Any], stdout: int, stderr: int, start: bool = False
               ) -> int:
        """``runc create`` (with *start*: ``runc run --detach``, one runtime process instead
        of two); a restart's next task is created from the same bundle (prepared once: the
        user's own, or the config.json generated for the first task)."""
        try:
            if self._bundle is None:
                self._bundle = oci.prepare_bundle(spec, os.path.join(self.dir, "bundle"))
                self._delete_stale()
            make = self.rt.run if start else self.rt.create
            self.pid = make(self.id, self._bundle, os.path.join(self.dir, "init.pid"),
                            stdout=stdout, stderr=stderr)
        except oci.OCIError as exc:
            raise CreateFailed(str(exc)) from None
        self._created = True
        self._started = start
        return self.pid

    def _delete_stale(self) -> None:
        """A container of our id left under the runtime's root by an earlier shim of this id
        that was killed (only one shim of an id lives: we hold its lock; the daemon starts a
        new one once it counts the old task ended) would make the runtime refuse ours
        ("container with id exists"): ``delete --force`` it first. One ``stat`` otherwise."""
        if self.rt.root is not None and os.path.isdir(os.path.join(self.rt.root, self.id)):
            with contextlib.suppress(oci.RuntimeFailed):
                self.rt.delete(self.id, force=True, missing_ok=True)

    def container_process(self, spec: dict[str, Any]) -> dict[str, Any]:
        """The bundle's own ``process`` (env, cwd, user): what a user's bundle sets applies to
        an exec and a health check too; for a generated bundle it is the spec's."""
        if self._process is None:
            process: dict[str, Any] = {"env": dict(spec.get("env") or {}),
                                       "cwd": spec.get("cwd"), "user": spec.get("user")}
            if self._bundle is not None and spec.get("bundle"):
                with contextlib.suppress(oci.OCIError, TypeError, ValueError):
                    config = oci.load_config(self._bundle).get("process") or {}
                    env = dict(item.partition("=")[::2] for item in config.get("env") or [])
                    user = config.get("user") or {}
                    process = {"env": env, "cwd": config.get("cwd") or "/",
                               "user": {"uid": int(user.get("uid", 0)),
                                        "gid": int(user.get("gid", 0))}}
            self._process = process
        return dict(self._process)

    def oom_watch(self) -> OOMWatch | None:
        """A watch on the cgroup the runtime put the init in (read from /proc/PID/cgroup).
        After ``runc run`` the program already runs, and may have been OOM-killed before the
        watch exists: the cgroup is this shim's first task's own (a new instance's path), so
        every kill it counted is reported."""
        from shim.cgroups import Cgroup

        return Cgroup.from_pid(self.pid).oom_watch(fresh=self._started)

    def start(self) -> None:
        if self._started:  # ``runc run`` started it already
            self._started = False
            return
        try:
            self.rt.start(self.id)
        except oci.RuntimeFailed as exc:
            raise ExecFailed(0, str(exc)) from None

    def kill(self, signal: int, all: bool) -> None:
        """The init by pid, or ``runc kill --all``; a container already gone is no error."""
        if not all and self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal)
            return
        if self._created:
            with contextlib.suppress(oci.RuntimeFailed):
                self.rt.kill(self.id, signal, all=True)

    def exec(self, exec_id: str, process: dict[str, Any], stdout: int, stderr: int) -> int:
        """``runc exec --detach`` with a process.json; the exec'd process is reparented to
        the shim when the runtime exits, before this returns."""
        directory = os.path.join(self.dir, "exec")
        path = os.path.join(directory, f"{exec_id}.json")
        pid_file = os.path.join(directory, f"{exec_id}.pid")
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            oci.write_json(path, oci.make_process(
                process["command"], process.get("env"), process.get("cwd"),
                process.get("user"), self.spec.get("rlimits") or {}))
            return self.rt.exec(self.id, path, pid_file, stdout=stdout, stderr=stderr)
        except oci.OCIError as exc:
            raise ExecFailed(0, str(exc)) from None
        finally:
            for name in (path, pid_file):
                with contextlib.suppress(OSError):
                    os.unlink(name)

    def exited(self) -> None:
        """``runc delete`` (no ``--force``: the init is reaped, so the runtime sees it
        stopped); if that fails, ``--force``, so nothing is left either way."""
        if not self._created:
            return
        self._created = False
        try:
            self.rt.delete(self.id, missing_ok=True)
        except oci.RuntimeFailed:
            with contextlib.suppress(oci.RuntimeFailed):
                self.rt.delete(self.id, force=True, missing_ok=True)

    def delete(self) -> None:
        """When the shim ends: ``runc delete --force`` if the container was not deleted at its
        exit (a failed start, a forced delete still running)."""
        if self._created:
            self._created = False
            with contextlib.suppress(oci.RuntimeFailed):
                self.rt.delete(self.id, force=True, missing_ok=True)


def delete_lost(root: str, container_id: str, runtime: str) -> int:
    """``python -I -m shim cleanup``: ``delete --force`` the runtime container *container_id*
    under the Tether root *root*, for the daemon once that container's shim is gone (killed):
    the shim deletes its container when its task exits, a lost one never does, so the
    runtime's state (and its cgroup) would stay, and a new container of that id would be
    refused ("container with id exists"). ``delete --force`` also ends whatever the container
    still runs (the whole cgroup). Exit 0 when nothing is left (deleted, or there was none),
    1 with the runtime's words on stderr."""
    import sys

    directory = os.path.join(root, "shims", container_id)
    log = os.path.join(directory, "runtime.log") if os.path.isdir(directory) else os.devnull
    try:
        binary = oci.resolve_runtime(runtime)
        cli = oci.OciCli(binary, oci.state_root(root, binary), log)
        cli.delete(container_id, force=True, missing_ok=True)
    except oci.OCIError as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    return 0
