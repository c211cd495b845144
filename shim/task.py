"""The container's task, through its successive runs: one state machine, one decider.

The shim runs one task at a time and, under a restart policy, the next one after the last
ended. Its state is one of :class:`TaskState`; :data:`TRANSITIONS` is the only place a state
changes (:meth:`Task._move`), and :data:`REQUESTS` says in which states each request is allowed,
so every refusal is the same explicit ``conflict`` ("cannot start a task that is running"), as
containerd's ``init_state.go`` has one type per state. Beside the state, the task owns:

* the exit record of the latest run (written to the exit file, fsynced and renamed, right
  *after* ``task.exit`` is queued, so the daemon's fdatasync of the event overlaps the file's
  fsyncs, and *before* any waiter is answered: an exit is always in the file or told);
* the parked ``wait``/``stop``/``delete`` replies, answered at the exit;
* a stop's SIGKILL deadline (a loop timer: the stop completes if the caller goes away);
* the restart decision (:func:`events.policy.decide`, shared with the daemon), the back-off
  timer, and ``final``: a ``stop`` or ``delete`` made it stopped by hand, so no policy restart
  follows, whatever the policy;
* the health checker (:mod:`shim.health`) and the OOM watch, both per run.

Events, in this order for a policy restart: ``task.exit``, ``container.restart`` {attempt, delay,
reason, by: "shim", start_at}, then ``task.create`` and ``task.start`` of the next run; when the
policy gives up, ``task.exit`` then ``container.giveup`` {attempts, reason, exit_status}.
Once the container is stopped for good (policy ``no``, a success under ``on-failure``, given up,
stopped by hand) the task is *settled*: the shim ends once its outbox is acknowledged.

(Longer than our usual module: the state table, the policy and the requests that move it are
one machine, read together; split, each part would reach into the others' state.)
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from collections.abc import Callable
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from events import policy, procfs, shim_api, wire
from events.domain import RestartPolicy
from shim.loop import ShimError, park
from shim.runtime import CreateFailed, ExecFailed

if TYPE_CHECKING:
    from events.domain import ExitRecord, HealthSpec, RestartSpec
    from shim.cgroups import OOMWatch
    from shim.execs import Execs, InitOutput
    from shim.health import HealthChecker
    from shim.loop import Conn, Loop, Timer
    from shim.osutil import Diag
    from shim.outbox import Outbox
    from shim.runtime import Runtime

#: A handler's result that will be sent later (the request is parked).
PENDING: Any = object()
#: How long the loop may wait for a failed start's init, or for leftovers before a restart.
REAP_GRACE = 2.0
#: Events waiting for the daemon past which a restart waits at least ``max_delay``: a crash
#: loop with no back-off while the daemon is down would otherwise grow the outbox (memory) by
#: hundreds of events a second; slowed, it adds a few a minute.
OUTBOX_BACKLOG = 1000


class TaskState(StrEnum):
    """The shim's task. ``restarting``: the last run ended, the next one waits out its back-off."""

    NEW = "new"
    CREATED = "created"
    RUNNING = "running"
    STOPPED = "stopped"
    RESTARTING = "restarting"


class Move(StrEnum):
    CREATE = "create"  # a run's init is created (stopped before the user's program)
    START = "start"  # the user's program runs
    EXIT = "exit"  # the init was reaped
    BACK_OFF = "back off"  # the policy restarts it after a delay
    SETTLE = "settle"  # a back-off ends without a next run (stop, delete, a failed create)


S = TaskState
#: Every state change there is; anything else is a bug (:class:`InvalidMove`).
TRANSITIONS: dict[tuple[TaskState, Move], TaskState] = {
    (S.NEW, Move.CREATE): S.CREATED,
    (S.RESTARTING, Move.CREATE): S.CREATED,
    (S.CREATED, Move.START): S.RUNNING,
    (S.CREATED, Move.EXIT): S.STOPPED,  # killed before start, or its exec failed
    (S.RUNNING, Move.EXIT): S.STOPPED,
    (S.STOPPED, Move.BACK_OFF): S.RESTARTING,
    (S.RESTARTING, Move.SETTLE): S.STOPPED,
}
#: The states in which each request that needs one is allowed (the others take any state).
#: ``kill`` with ``all`` and ``delete``/``shutdown`` with ``force`` are allowed everywhere.
REQUESTS: dict[str, frozenset[TaskState]] = {
    "start": frozenset({S.CREATED}),
    "exec": frozenset({S.RUNNING}),
    "kill": frozenset({S.CREATED, S.RUNNING}),
    "delete": frozenset({S.NEW, S.CREATED, S.STOPPED, S.RESTARTING}),
    "shutdown": frozenset({S.NEW, S.STOPPED, S.RESTARTING}),
}
_REFUSALS = {
    "kill": ("not_found", "the task has exited"),
    "delete": ("conflict", "the task is running; stop it first or delete with force"),
    "shutdown": ("conflict", "the task is {state}; shutdown would leave it without its shim: "
                 "delete it, or shutdown with force"),
}


class InvalidMove(Exception):
    """A state change the table does not have: a bug in the shim, never a client's error."""


def check(request: str, state: TaskState) -> None:
    """Raise the request's refusal when *state* does not allow it."""
    if state in REQUESTS.get(request, frozenset(TaskState)):
        return
    code, text = _REFUSALS.get(request, ("conflict", "cannot {request} a task that is {state}"))
    raise ShimError(code, text.format(request=request, state=state.value))


def _jitter() -> float:
    """A back-off's jitter, uniform in [0.9, 1.1). From ``os.urandom``, not :mod:`random`:
    that module reseeds itself in every forked child (a fork handler), which costs every
    launcher-forked shim ~0.1 MB of pages it would otherwise share (bench/shim_pages.py)."""
    return 0.9 + 0.2 * int.from_bytes(os.urandom(4), "big") / 2**32


class Task:
    def __init__(self, directory: str, spec: dict[str, Any], address: str, runtime: Runtime,
                 loop: Loop, outbox: Outbox, output: InitOutput, execs: Execs, diag: Diag
                 ) -> None:
        self.dir = directory
        self.spec = spec
        self.instance: str = spec["instance"]
        self.address = address
        self.runtime = runtime
        self.loop = loop
        self.outbox = outbox
        self.output = output
        self.execs = execs
        self.diag = diag
        self.restart: RestartSpec = policy.restart_spec(spec.get("restart"), "spec restart")
        health: HealthSpec | None = policy.health_spec(spec.get("health"), "spec health")
        self.stop_signal = int(spec.get("stop_signal") or signal.SIGTERM)
        self.stop_timeout = policy.seconds(spec.get("stop_timeout", 10.0), "spec stop_timeout")
        self.state = TaskState.NEW
        self.pid = 0
        self.created_at = 0  # unix ns, of the current run
        self.runtime_at = 0  # unix ns: the runtime's create (or run) returned
        self.started_at = 0
        self.exit: ExitRecord | None = None  # the latest run's
        self.exec_error: dict[str, Any] | None = None
        self.final = False  # stopped by hand (stop, delete): no policy restart follows
        self.settled = False  # stopped for good: the shim may end once its outbox is acked
        self.deleting = False
        # restarts in a row (the last decision's); a shim the daemon started to carry on a lost
        # shim's crash loop goes on counting where that one was (spec restart_attempt)
        self.attempt = int(spec.get("restart_attempt") or 0)
        #: the first task was created and started by the shim's own first request (``run``),
        #: before the daemon recorded it: the task file says so (its restarts' too)
        self.started_by_run = False
        self.create_seq = 0  # the shim_seq of the current run's task.create
        self.start_at: int | None = None  # unix ns: when the pending restart runs
        self.gave_up = False
        self.unhealthy = False  # this run is being stopped because it is unhealthy
        self._unstartable = False  # the start request's exec failed: not for the policy
        self.on_settled: Callable[[], None] = lambda: None
        #: reap every child (bounded): the server's, which knows execs and orphans
        self.reap_all: Callable[[float], None] = lambda timeout: None
        self._waiters: list[tuple[Conn, int, str]] = []  # (conn, rid, "wait"|"delete")
        self._stop_timer: Timer | None = None
        self._backoff: Timer | None = None
        self._oom: OOMWatch | None = None
        self.health: HealthChecker | None = None
        if health is not None:
            from shim.health import HealthChecker

            self.health = HealthChecker(health, loop, execs, self.container_process,
                                        self._health_result, diag.log)

    def _move(self, move: Move) -> None:
        to = TRANSITIONS.get((self.state, move))
        if to is None:
            raise InvalidMove(f"cannot {move.value} a task that is {self.state.value}")
        self.state = to

    def container_process(self) -> dict[str, Any]:
        """The container's env, cwd and user: the defaults of ``exec`` and health checks."""
        return self.runtime.container_process(self.spec)

    # -- one run: create, start, exit ---------------------------------------------------------

    def create(self, start: bool = False, watch_oom: bool = True) -> int:
        """Create the next run's init (stopped before exec) and publish ``task.create``.
        *start*: :meth:`start` follows at once (the runtime may do both in one step).
        Without *watch_oom* the caller calls :meth:`watch_oom` before its loop runs."""
        out_w, err_w = self.output.open()
        try:
            self.pid = self.runtime.create(self.spec, out_w, err_w, start)
        finally:
            os.close(out_w)
            os.close(err_w)
        self.runtime_at = time.time_ns()  # shim.log's ready line: where a start's time went
        if watch_oom:
            self._watch_oom()
        self._move(Move.CREATE)
        self.created_at = time.time_ns()
        self.started_at = 0
        self.unhealthy = False
        self.create_seq = self.outbox.publish("task.create", {
            "pid": self.pid, "shim_pid": os.getpid(), "address": self.address,
            "instance": self.instance, "created_at": self.created_at})
        self.diag.log("info", "task_created", pid=self.pid, command=self.spec.get("command"))
        return self.pid

    def watch_oom(self) -> None:
        """The OOM watch of a task created without it (:meth:`create`), once its start is
        reported: before the shim's loop runs, so before any exit is processed, and an OOM
        kill before the watch existed is still told (the run's cgroup is its own: the watch
        counts every kill in it), before the exit it caused as ever."""
        if self._oom is None and self.state in (TaskState.CREATED, TaskState.RUNNING):
            self._watch_oom()

    def run(self, created: Callable[[int], None] | None = None, watch_oom: bool = True
            ) -> dict[str, Any]:
        """The first task, created and started in one request (``shim start --run``, or the
        launcher's ``start`` with ``start``): ``{"pid", "started_at"}``, or ``{"pid",
        "exec_error"}`` when the command could not be executed (as the ``start`` method's
        error: its exit, 127, is recorded and published; no policy restart follows).
        *created* is told the init's pid before it is let run (the starter must be able to
        end it if this shim dies before it reports ready)."""
        pid = self.create(start=True, watch_oom=watch_oom)
        if created is not None:
            created(pid)
        # its trace before it runs: should this shim and its starter both die before the run
        # is recorded, start-up finds the task by this file and ends it (no one was told of
        # it: supervisor.adopt.end_unrecorded_run)
        self.started_by_run = True
        self._write_task_file()
        try:
            return self.start(by_request=True)
        except ShimError as exc:
            return {"pid": pid, "exec_error": str(exc)}

    def start(self, by_request: bool = False) -> dict[str, Any]:
        """Let the created init run the user's program. *by_request*: the ``start`` method (the
        user's command): if the program cannot be executed the caller gets the error and the
        policy does not restart it (docker's behaviour); a later task's exec failure is an
        exit (127) like any other, and the policy decides."""
        check("start", self.state)
        try:
            self.runtime.start()
        except ExecFailed as exc:
            if exc.errno == errno.EPIPE:  # the created init is gone (a kill): nothing ran
                self._reap_failed_start()
                raise ShimError("conflict", "cannot start: the task ended before it started "
                                "(it was killed while created)") from None
            self.exec_error = {"errno": exc.errno, "message": str(exc), "reason": exc.reason}
            self.diag.log("error", "exec_failed", **self.exec_error)
            self._unstartable = by_request
            self._reap_failed_start()
            raise ShimError("exec_failed", f"{exc} (errno {exc.errno})") from None
        self._move(Move.START)
        self.started_at = time.time_ns()
        self.exec_error = None
        if not by_request:  # our own restart: leave a trace before anyone may hear of it
            self._write_task_file()
        self.outbox.publish("task.start", {"pid": self.pid, "started_at": self.started_at})
        if self.health is not None:
            self.health.begin()
        return {"pid": self.pid, "started_at": self.started_at}

    def _write_task_file(self) -> None:
        try:
            shim_api.write_task_file(self.dir, {
                "instance": self.instance, "shim_seq": self.create_seq, "pid": self.pid,
                "starttime": procfs.starttime(self.pid), "attempt": self.attempt,
                "started_by_run": self.started_by_run})
        except OSError as exc:  # a full disk: the task runs; only this trace is missing
            self.diag.log("error", "task_file_failed", dir=self.dir, error=str(exc))

    def _reap_failed_start(self) -> None:
        """After a failed start the init is exiting (127): reap it now, so the exit is
        recorded before the error reply. A runtime whose init lingers gets SIGKILL after
        :data:`REAP_GRACE`: the loop must never block on it."""
        deadline = time.monotonic() + REAP_GRACE
        flags = os.WNOHANG
        pid = self.pid
        with contextlib.suppress(ChildProcessError):
            while True:
                reaped, status = os.waitpid(pid, flags)
                if reaped:
                    self.reaped(reaped, status)
                    return
                if time.monotonic() > deadline:
                    self.runtime.kill(signal.SIGKILL, True)
                    flags = 0
                time.sleep(0.001)

    def is_init(self, pid: int) -> bool:
        return pid == self.pid and self.state in (TaskState.CREATED, TaskState.RUNNING)

    def reaped(self, pid: int, status: int) -> None:
        """The init of the current run exited: record, tell, answer, then decide."""
        self.runtime.pid = 0  # reaped: its pid may be reused, never signal it again
        exit_status, sig = shim_api.exit_status_of(status)
        self.output.drain()  # the output it wrote before exiting goes first
        self._on_oom()  # an OOM kill is told before the exit it caused
        if self.health is not None:
            self.health.end()
        seq = self.outbox.next_seq()
        record: ExitRecord = {"pid": pid, "exit_status": exit_status, "signal": sig,
                              "exited_at": time.time_ns(), "shim_seq": seq,
                              "instance": self.instance}
        if self.exec_error is not None:  # this run's command could not start: say why
            record["reason"] = f"exec_failed: {self.exec_error['reason']}"
        data: dict[str, Any] = {"pid": pid, "exit_status": exit_status, "signal": sig,
                "exited_at": record["exited_at"]}
        if "reason" in record:
            data["reason"] = record["reason"]
        # The event goes out first, so that the daemon's fdatasync of it overlaps the exit
        # file's fsyncs below instead of following them. Nothing is lost by the order: the
        # event stays in the outbox until acknowledged, and a shim killed before the file is
        # durable either delivered the event (the daemon has it) or did not (as before, the
        # task's end is then unknown). Waiters are answered only once the file is written.
        self.outbox.publish("task.exit", data, seq)
        try:
            shim_api.write_exit_file(self.dir, dict(record))
        except OSError as exc:  # told anyway: the status is in memory and in the event
            self.diag.log("error", "exit_file_failed", dir=self.dir, error=str(exc))
        self.exit = record
        self._move(Move.EXIT)
        self._cancel_stop()
        self.diag.log("info", "task_exit", **record)
        waiters, self._waiters = self._waiters, []
        self._close_oom()
        deleting = any(kind == "delete" for _, _, kind in waiters)
        if deleting:
            # A delete's caller removes our directory as soon as it has the reply (the
            # runtime's --log file is in it): the runtime's state must be gone before then.
            self.deleting = self.final = True
            self._runtime_exited()
        self._answer(waiters)
        self._runtime_exited()  # after stop/wait replies: they are not delayed by the clean-up
        self._decide()

    def _answer(self, waiters: list[tuple[Conn, int, str]]) -> None:
        for conn, rid, _ in waiters:
            conn.pending -= 1
            self.loop.send(conn, wire.reply(rid, dict(self.exit or {})))

    def _runtime_exited(self) -> None:
        """The runtime's clean-up after the init's exit (``runc delete``); runs once."""
        try:
            self.runtime.exited()
        except Exception as exc:
            self.diag.log("warning", "runtime_cleanup_failed", error=str(exc))

    # -- the policy ---------------------------------------------------------------------------

    def _decide(self) -> None:
        record = self.exit or {}
        ran_for = (record.get("exited_at", 0) - (self.started_at or self.created_at)) / 1e9
        decision = policy.decide(self.restart, exit_status=record.get("exit_status"),
                                 streak=self.attempt, ran_for=max(0.0, ran_for),
                                 stopped_by_user=self.final, unhealthy=self.unhealthy,
                                 jitter=_jitter())
        self.diag.log("info", "policy", decision=repr(decision))
        if self._unstartable:
            self.diag.log("info", "policy", decision="no restart: the start request's command "
                          "could not be executed (the caller has the error)")
            self._settle()
            return
        if decision.restart:
            self._back_off(decision)
            return
        if decision.give_up:
            self.gave_up = True
            self.outbox.publish("container.giveup", {
                "attempts": decision.attempt, "reason": decision.reason,
                "exit_status": record.get("exit_status")})
        self._settle()

    def _back_off(self, decision: policy.Decision) -> None:
        # what is left of the run (orphans, execs, a check) goes now: the next run starts clean
        self.runtime.kill(signal.SIGKILL, True)
        if len(self.outbox.events) > OUTBOX_BACKLOG and decision.delay < self.restart["max_delay"]:
            decision.delay = self.restart["max_delay"]
            decision.reason += (f" (slowed to max_delay: {len(self.outbox.events)} events wait "
                                "for the daemon)")
        self._move(Move.BACK_OFF)
        self.attempt = decision.attempt
        self.start_at = time.time_ns() + int(decision.delay * 1e9)
        self.outbox.publish("container.restart", {
            "attempt": decision.attempt, "delay": round(decision.delay, 3),  # ms: people read it
            "reason": decision.reason, "by": "shim", "start_at": self.start_at})
        self._backoff = self.loop.call_later(decision.delay, self._restart_now)

    def _restart_now(self) -> None:
        """The back-off is over: the next run, created and started from the same spec."""
        self._backoff = None
        self.start_at = None
        self.reap_all(REAP_GRACE)  # the last run's leftovers, killed at the decision
        try:
            self.runtime.delete()  # the last run's cgroup, pipes, runtime state
        except Exception as exc:
            self.diag.log("warning", "runtime_delete_failed", error=str(exc))
        try:
            self.create()
        except (CreateFailed, OSError) as exc:
            self.diag.log("error", "restart_create_failed", error=str(exc))
            self._move(Move.SETTLE)
            self.gave_up = True
            self.outbox.publish("container.giveup", {
                "attempts": self.attempt, "exit_status": (self.exit or {}).get("exit_status"),
                "reason": f"the next task could not be created: {exc}"})
            self._settle()
            return
        with contextlib.suppress(ShimError):  # an exec failure is an exit (127): decided again
            self.start()

    def _settle(self) -> None:
        self.settled = True
        self.start_at = None
        self.on_settled()

    # -- requests -----------------------------------------------------------------------------

    def kill(self, sig: int, all: bool) -> None:
        if not all:
            check("kill", self.state)
        self.runtime.kill(sig, all)

    def stop(self, conn: Conn, rid: int, timeout: float, sig: int) -> Any:
        """Stopped by hand: final first (a pending back-off is cancelled), then the signal."""
        self.final = True
        if self.state is TaskState.RESTARTING:
            self._cancel_backoff()
        if self.state in (TaskState.STOPPED, TaskState.NEW):
            if not self.settled:
                self._settle()
            return dict(self.exit or {})
        self._park(conn, rid, "wait")
        self._signal_stop(sig, timeout)
        return PENDING

    def _signal_stop(self, sig: int, timeout: float) -> None:
        when = time.monotonic() + timeout
        if self._stop_timer is None or when < self._stop_timer.when:
            if self._stop_timer is not None:
                self._stop_timer.cancel()
            self._stop_timer = self.loop.call_later(timeout, self._escalate)
        self.diag.log("info", "stop", pid=self.pid, signal=sig, timeout=timeout)
        self.runtime.kill(sig if timeout > 0 else signal.SIGKILL, timeout <= 0)

    def _escalate(self) -> None:
        self._stop_timer = None
        self.diag.log("info", "stop_escalated", pid=self.pid, signal=signal.SIGKILL)
        self.runtime.kill(signal.SIGKILL, True)

    def _cancel_stop(self) -> None:
        if self._stop_timer is not None:
            self._stop_timer.cancel()
            self._stop_timer = None

    def _cancel_backoff(self) -> None:
        if self._backoff is not None:
            self._backoff.cancel()
            self._backoff = None
        self._move(Move.SETTLE)

    def wait(self, conn: Conn, rid: int) -> Any:
        if self.state not in (TaskState.CREATED, TaskState.RUNNING):
            return dict(self.exit or {})
        self._park(conn, rid, "wait")
        return PENDING

    def delete(self, conn: Conn, rid: int, force: bool) -> Any:
        if not force:
            check("delete", self.state)
        self.final = True
        if self.state is TaskState.RESTARTING:
            self._cancel_backoff()
        if self.state in (TaskState.STOPPED, TaskState.NEW):
            self.deleting = True
            if self.state is TaskState.STOPPED:
                # what the run left (orphans) dies before the reply, not only as the shim
                # ends: a shim killed in between would leave them to nobody, the daemon
                # having recorded the delete
                self.runtime.kill(signal.SIGKILL, True)
            return dict(self.exit or {})
        self._park(conn, rid, "delete")
        self.runtime.kill(signal.SIGKILL, True)
        return PENDING

    def shutdown(self, force: bool) -> None:
        if not force:
            check("shutdown", self.state)
        if self.state is TaskState.RESTARTING and self._backoff is not None:
            self._backoff.cancel()  # the daemon starts the next run at start_at

    def _park(self, conn: Conn, rid: int, kind: str) -> None:
        park(conn)
        self._waiters.append((conn, rid, kind))

    def forget(self, conn: Conn) -> None:
        self._waiters = [w for w in self._waiters if w[0] is not conn]

    # -- health and OOM -----------------------------------------------------------------------

    def _health_result(self, result: dict[str, Any], changed: bool) -> None:
        health = self.health
        assert health is not None
        if changed:
            self.outbox.publish("container.health", {
                "status": health.status, "failing_streak": health.failing_streak,
                "exit_code": result["exit_code"], "output": result["output"]})
            self.diag.log("info", "health", status=health.status,
                          failing_streak=health.failing_streak)
        if (health.status == "unhealthy" and health.spec["restart"] and not self.unhealthy
                and self.state is TaskState.RUNNING
                and self.restart["policy"] != RestartPolicy.NO):
            self.unhealthy = True  # the policy sees a failure, whatever the status
            self._signal_stop(self.stop_signal, self.stop_timeout)

    def _watch_oom(self) -> None:
        """Watch this run's memory cgroup; without one (no cgroup, no memory controller, not
        root) the container runs unwatched and shim.log says why."""
        try:
            self._oom = self.runtime.oom_watch()
        except Exception as exc:
            self.diag.log("warning", "oom_watch_unavailable", error=str(exc))
            return
        if self._oom is not None:
            self.loop.watch(self._oom.fileno(), lambda fd: self._on_oom())

    def _on_oom(self) -> None:
        if self._oom is None:
            return
        kills = self._oom.read()
        if kills:
            self.diag.log("warning", "oom_kill", pid=self.pid, kills=kills)
            self.outbox.publish("task.oom", {})

    def _close_oom(self) -> None:
        """Before the cgroup goes: v1 signals the eventfd on removal (a spurious wake-up)."""
        if self._oom is not None:
            self.loop.unwatch(self._oom.fileno())
            self._oom.close()
            self._oom = None

    def abort(self) -> None:
        """Undo a half-made start (failure before ready, e.g. its starter went away): nothing
        may be left running, a task started with the create (``shim start --run``) included."""
        if self.state in (TaskState.CREATED, TaskState.RUNNING):
            self.runtime.kill(signal.SIGKILL, True)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
        self._close_oom()
        self.runtime.delete()

    def close(self) -> None:
        """The shim is ending."""
        for timer in (self._stop_timer, self._backoff):
            if timer is not None:
                timer.cancel()
        if self.health is not None:
            self.health.end()
        self._close_oom()

    def report(self) -> dict[str, Any]:
        """The task's part of ``state``."""
        return {
            "pid": self.pid, "status": self.state.value, "exit": self.exit,
            "exec_error": self.exec_error,
            # the current task's times (unix ns, 0 while unknown): a daemon that adopts this
            # shim (its log lost the task's record) shows them
            "created_at": self.created_at, "started_at": self.started_at,
            "restart": {"policy": self.restart["policy"], "attempt": self.attempt,
                        "start_at": self.start_at, "gave_up": self.gave_up,
                        "final": self.final},
            "health": None if self.health is None else self.health.state(),
        }
