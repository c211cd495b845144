"""Health checks (docker's HEALTHCHECK) run by the shim, in its loop, whether the daemon is up
or not.

Every ``interval`` after the previous check ended (the first one ``interval`` after the task
started), ``sh -c CMD`` runs inside the container as an internal exec (:class:`shim.execs.Execs`:
the process runtime's namespaces, cgroup, env, cwd and user; ``runc exec`` for OCI). Its stdout
and stderr share one pipe; the first :data:`OUTPUT_LIMIT` bytes are kept, the rest is read and
dropped. At ``timeout`` the check is killed, its whole tree (its process group and every
descendant found in ``/proc``), and counts as a failure with exit code -1; the shim reaps it, so a
check never leaves a process or a zombie. The rules (:func:`events.policy.health_status_after`)
turn each result into a status; the owner hears of every result and publishes a change.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from events.domain import HealthStatus
from events.policy import health_status_after
from shim.osutil import descendants
from shim.runtime import ExecFailed

if TYPE_CHECKING:
    from events.domain import HealthSpec
    from shim.execs import Exec, Execs
    from shim.loop import Loop, Timer

#: Output kept per check (docker keeps 4 KiB too).
OUTPUT_LIMIT = 4096
#: Results kept for ``state`` (docker keeps 5).
KEEP_RESULTS = 5
#: The exit code recorded for a check that was killed at its timeout or could not run.
FAILED_TO_RUN = -1


class HealthChecker:
    """The checks of one container, across its tasks: :meth:`begin` when a task starts,
    :meth:`end` when it ends. ``on_result(result, changed)`` follows every check."""

    def __init__(self, spec: HealthSpec, loop: Loop, execs: Execs,
                 process: Callable[[], dict[str, Any]],
                 on_result: Callable[[dict[str, Any], bool], None],
                 log: Callable[..., None]) -> None:
        self.spec = spec
        self.loop = loop
        self.execs = execs
        self.process = process  # the container's env, cwd and user, at the time of the check
        self.on_result = on_result
        self.log = log
        self.status: str = HealthStatus.STARTING.value
        self.failing_streak = 0
        self.results: list[dict[str, Any]] = []
        self._started = 0.0  # monotonic: when the task started (start_period)
        self._timer: Timer | None = None
        self._timeout: Timer | None = None
        self._check: Exec | None = None
        self._began = 0
        self._timed_out = False
        self._group = False  # the check leads its own process group
        self._n = 0

    def state(self) -> dict[str, Any]:
        return {"status": self.status, "failing_streak": self.failing_streak,
                "log": list(self.results)}

    def begin(self) -> None:
        """A task started: ``starting`` again, the first check after one interval."""
        self.end()
        self.status = HealthStatus.STARTING.value
        self.failing_streak = 0
        self._started = time.monotonic()
        self._timer = self.loop.call_later(self.spec["interval"], self._run)

    def end(self) -> None:
        """The task ended: no further check; one in flight is killed (and its result ignored)."""
        for timer in (self._timer, self._timeout):
            if timer is not None:
                timer.cancel()
        self._timer = self._timeout = None
        if self._check is not None:
            self._kill(self._check)
            self._check = None

    def _run(self) -> None:
        self._timer = None
        self._n += 1
        self._began = time.time_ns()
        self._timed_out = False
        process = {**self.process(), "command": ["sh", "-c", self.spec["cmd"]]}
        try:
            check = self.execs.spawn(f"_health.{self._n}", process, on_exit=self._done,
                                     capture=OUTPUT_LIMIT)
        except ExecFailed as exc:
            self._record(FAILED_TO_RUN, f"the health check could not run: {exc}")
            return
        self._check = check
        self._group = _leads_group(check.pid)
        self._timeout = self.loop.call_later(self.spec["timeout"], self._time_out)

    def _time_out(self) -> None:
        self._timeout = None
        if self._check is not None:
            self._timed_out = True
            self._kill(self._check)

    def _kill(self, check: Exec) -> None:
        """SIGKILL the check's whole tree; the reaper collects it (and :meth:`_done` ignores a
        check that is no longer current)."""
        for pid in [*descendants(check.pid), check.pid]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if self._group:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(check.pid, signal.SIGKILL)

    def _done(self, check: Exec, status: int) -> None:
        if check is not self._check:
            return  # killed by end(): its task is gone
        self._check = None
        if self._group:  # what the check left in its group goes with it
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(check.pid, signal.SIGKILL)
        if self._timeout is not None:
            self._timeout.cancel()
            self._timeout = None
        output = bytes(check.captured).decode(errors="replace")
        if self._timed_out:
            self._record(FAILED_TO_RUN, f"the health check timed out after "
                         f"{self.spec['timeout']:g} s; {output}".rstrip("; "))
        elif os.WIFSIGNALED(status):
            self._record(128 + os.WTERMSIG(status), output)
        else:
            self._record(os.WEXITSTATUS(status), output)

    def _record(self, exit_code: int, output: str) -> None:
        result = {"start": self._began, "end": time.time_ns(), "exit_code": exit_code,
                  "output": output}
        self.results = [*self.results[-(KEEP_RESULTS - 1):], result]
        in_start_period = (self.status == HealthStatus.STARTING
                           and time.monotonic() - self._started < self.spec["start_period"])
        before = self.status
        self.status, self.failing_streak = health_status_after(
            self.status, passed=exit_code == 0, streak=self.failing_streak,
            retries=self.spec["retries"], in_start_period=in_start_period)
        self._timer = self.loop.call_later(self.spec["interval"], self._run)
        self.on_result(result, self.status != before)


def _leads_group(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return int(stat[stat.rindex(b")") + 2 :].split()[2]) == pid
