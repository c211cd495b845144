"""The shim: its pieces put together, the reaper, and the end of its life.

:class:`Shim` owns one of each: the loop (:mod:`shim.loop`: selectors, timers, signals,
connections and backpressure), the outbox (:mod:`shim.outbox`), the container's output
(:class:`shim.execs.InitOutput`) and exec sessions (:class:`shim.execs.Execs`), the task
(:mod:`shim.task`: the state machine, exits, stops, restarts, health) and the socket methods
(:mod:`shim.handlers`). A request that must wait (``wait``, ``stop``, ``delete`` with force) is
parked and answered when the exit is processed; every other request of every connection keeps
being served meanwhile.

Reaping: SIGCHLD wakes the loop, and a ``waitpid(-1, WNOHANG)`` loop reaps the init, the exec'd
processes and health checks, and every orphan reparented to the shim (a subreaper).

Ordering guarantees (the reasons this process exists):

* the exit file is written (fsynced, renamed) right *after* the ``task.exit`` event is queued
  (the daemon records the event while the file is fsynced) and *before* any waiter is
  answered; a shim killed between the two has told the daemon, if one was listening;
* every event stays in the outbox until ``ack``; each new ``events`` stream gets all of them
  first, then live ones;
* a ``stop`` is carried out by the shim's own timer: it completes if the caller goes away.

The shim ends on ``delete``, on ``shutdown``, or by itself once the container is stopped for
good (:attr:`shim.task.Task.settled`) and every event is acknowledged (:meth:`Shim.maybe_retire`):
then it kills what is left of the container, ends every ``events`` stream, removes its socket,
``address`` and ``shim.pid`` files, and exits; the exit file and the logs stay.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from events import shim_api
from shim import osutil
from shim.execs import Execs, InitOutput
from shim.handlers import Handlers
from shim.logs import CriLog
from shim.loop import Loop
from shim.outbox import Outbox
from shim.task import Task

if TYPE_CHECKING:
    from shim.loop import Conn
    from shim.osutil import Diag
    from shim.runtime import Runtime


def make_runtime(spec: dict[str, Any], directory: str) -> Runtime:
    """The runtime named by ``spec["runtime"]``: ``process`` (fork + exec), or ``runc``,
    ``crun`` or the path of a runc-compatible binary. *directory* is the shim's own
    (``ROOT/shims/ID``), where a runtime keeps its files."""
    name = spec.get("runtime") or "process"
    if name == "process":
        from shim.runtime_process import ProcessRuntime

        return ProcessRuntime()
    from shim.runtime_oci import OciRuntime

    return OciRuntime(spec, directory)


class Shim:
    """One container's shim. With *loop*, a member of a shared shim (:mod:`shim.group`): the
    group's loop serves its socket beside the others', and it ends alone (:meth:`leave`)."""

    def __init__(self, directory: str, spec: dict[str, Any], listener: socket.socket,
                 address: str, runtime: Runtime, diag: Diag, loop: Loop | None = None) -> None:
        self.dir = directory
        # Our files are removed through this fd, never by path: once `rm` has removed the
        # directory, a new shim of the same id may have made its own there while we end
        # (a slow end on a loaded machine), and by path we would remove its files.
        self.dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.spec = spec
        self.id: str = spec["id"]
        self.address = address
        self.runtime = runtime
        self.diag = diag
        self.done = False
        self.retiring = False  # ending by itself: stopped for good, everything acknowledged
        self.orphans_reaped = 0
        #: the first task was started by the shim's first request (``--run``), not by a
        #: ``start`` the daemon sent once its record was durable (``state`` reports it)
        self.started_by_run = False
        log_conf = spec.get("log") or {}
        self.log = CriLog(os.path.join(directory, shim_api.CONTAINER_LOG),
                          log_conf.get("max_size", 16 << 20), log_conf.get("keep", 3),
                          warn=lambda event, **kw: diag.log("warning", event, **kw))
        self.shared = loop is not None
        if loop is None:
            loop = Loop(listener, diag.log, self._on_message, self._on_close, self._on_drained,
                        self._reap)
        else:
            loop.listen(listener, self)
        self.loop = loop
        self.outbox = Outbox(self.loop.send)
        self.output = InitOutput(self.loop, self.log)
        self.execs = Execs(self.loop, runtime, self.outbox, diag.log)
        self.task = Task(directory, spec, address, runtime, self.loop, self.outbox, self.output,
                         self.execs, diag)
        self.task.reap_all = self._reap_all
        self.task.on_settled = self.maybe_retire
        self.handlers = Handlers(self)

    def create(self, start: bool = False, created: Callable[[int], None] | None = None,
               watch_oom: bool = True) -> dict[str, Any]:
        """Create the container's first task (stopped before exec; with *start*, started
        too): what the ready map says of it, ``{"task_pid", "created_at"}`` and, started,
        ``started_at`` or ``exec_error``. Its events are queued. *created*: see
        :meth:`shim.task.Task.run`. Without *watch_oom*, the caller calls
        ``task.watch_oom()`` once it has reported ready, before the loop runs (the watch is
        then set up while the daemon records the start)."""
        if not start:
            return {"task_pid": self.task.create(watch_oom=watch_oom),
                    "created_at": self.task.created_at}
        self.started_by_run = True
        started = self.task.run(created, watch_oom=watch_oom)
        ready = {"task_pid": started.pop("pid"), "created_at": self.task.created_at}
        ready.update(started)
        return ready

    def abort(self) -> None:
        self.task.abort()

    def run(self) -> None:
        """Serve until delete, shutdown or retirement; then flush, clean up and leave."""
        self.loop.run(lambda: self.done or self.task.deleting)
        self._finish()
        self.close_dir()

    def maybe_retire(self) -> None:
        """End by ourselves once nothing can run again without a new shim and the daemon has
        every event (while it is down, wait: the outbox must be delivered)."""
        if self.task.settled and self.outbox.empty and not self.done:
            self.diag.log("info", "retire", reason="stopped for good, every event acknowledged")
            self.retiring = self.done = True

    # -- the loop's callbacks -----------------------------------------------------------------

    def _on_message(self, conn: Conn, message: dict[str, Any]) -> None:
        self.handlers.on_message(conn, message)

    def _on_close(self, conn: Conn) -> None:
        self.outbox.forget(conn)
        self.task.forget(conn)
        self.execs.forget(conn)

    def _on_drained(self, conn: Conn) -> None:
        if self.execs.running:
            self.execs.drained(conn)

    def _reap(self) -> None:
        osutil.reap_each(self._reaped)

    def _reaped(self, pid: int, status: int) -> None:
        if self.execs.exited(pid, status):
            return
        if self.task.is_init(pid):
            self.task.reaped(pid, status)
        else:
            self.orphans_reaped += 1

    def _reap_all(self, timeout: float) -> None:
        """Reap every child left (after a SIGKILL of them all), waiting at most *timeout*."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid:
                self._reaped(pid, status)
            else:
                time.sleep(0.002)

    # -- the end ------------------------------------------------------------------------------

    def _finish(self) -> None:
        if self.shared:  # the pid there is the group's: nobody may kill it for this member
            self._remove_pid_files()
        self.outbox.end_streams()
        self.execs.end()
        if self.shared:
            self.loop.close_owner(self)
        else:
            self.loop.close_all()
        if os.path.dirname(self.address) == os.path.abspath(self.dir):
            self._unlink_own(os.path.basename(self.address))
        else:  # the short fallback path outside ROOT (a hash of the directory's path)
            with contextlib.suppress(OSError):
                os.unlink(self.address)
        self.task.close()
        # shutdown(force) of a running task: it runs on without its shim
        leave_running = not (self.task.deleting or self.retiring) and \
            self.task.state.value == "running"
        if self.task.deleting or self.retiring:
            # nothing of a deleted, or stopped-for-good, container may stay: kill what is ours
            self.runtime.kill(signal.SIGKILL, True)
            self.task.reap_all(2.0)
        if self.retiring:  # nobody may reach (or, by a reused pid, kill) a shim that is gone
            self._remove_pid_files()
        self.output.close()
        if not leave_running:
            try:
                self.runtime.delete()
            except Exception as exc:
                self.diag.log("warning", "runtime_delete_failed", error=str(exc))
        self.diag.log("info", "shim_exit", orphans_reaped=self.orphans_reaped,
                      log_dropped=self.log.dropped_lines, retired=self.retiring)

    def _remove_pid_files(self) -> None:
        for name in (shim_api.ADDRESS_FILE, shim_api.PID_FILE):
            self._unlink_own(name)

    def _unlink_own(self, name: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=self.dir_fd)

    def close_dir(self) -> None:
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1

    def leave(self) -> None:
        """A member of a shared shim ends (delete, shutdown, settled): as a shim's end, for
        this container only; the group serves the others on."""
        try:
            self._finish()
        finally:
            self.close_dir()
