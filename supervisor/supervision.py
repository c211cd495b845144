"""The daemon's side of supervision: it decides only where no shim exists.

A shim is the only decider of policy restarts while it lives (docs/design.md, section 8). The
daemon applies the policy (:mod:`supervisor.decide`) in the three cases where no shim can:

* after a **reboot** (the task's ``boot_id`` is not this boot's): the task ended with the
  previous boot; its end is recorded once (status unknown, ``reason``), then docker's rule says
  whether the container starts again;
* when a shim is **gone** and its task has ended (lost, or exited by itself): the policy
  applies as if the shim had seen the end, unless the shim already recorded its decision;
* when a container is **restarting** and its shim is gone (lost in its back-off, or the
  daemon's own decision interrupted by a crash): the daemon starts the next task at the
  recorded ``start_at``.

Every decision is appended (``container.restart`` / ``container.giveup``, by ``daemon``) before
it is carried out, and carrying it out re-reads the record under the container's lock: a
daemon killed at any moment finds either no decision (and makes it) or the decision (and
carries it out), never both, so no restart is doubled or lost.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from typing import Any

import structlog
import trio

from events import shim_api
from events.domain import ContainerState, ErrorCode
from events.procfs import is_running, starttime
from supervisor import adopt, decide
from supervisor.core import Core, Item
from supervisor.errors import ApiError
from supervisor.lifecycle import Lifecycle
from supervisor.links import watch_lost_task
from supervisor.projection import Container
from supervisor.shims import read_task_record, shim_dir

__all__ = ["Supervision"]

log = structlog.get_logger("supervisord.supervision")

CREATED = ContainerState.CREATED
RUNNING = ContainerState.RUNNING
RESTARTING = ContainerState.RESTARTING
STOPPED = ContainerState.STOPPED

_NS = 1_000_000_000
#: A restart the daemon could not carry out for a passing reason (the disk was full, a shim
#: did not answer) is tried again after this long, then twice as long, up to the cap.
RETRY_DELAY = 1.0
#: How long a shim that closed its connection may take to drop its lock (it exits right after).
EXITING_GRACE = 2.0
RETRY_MAX = 60.0
#: The errors that say the task cannot start however often it is tried (the spec's cwd or
#: runtime is wrong): the daemon gives up rather than loop.
PERMANENT = frozenset({ErrorCode.INVALID, ErrorCode.START_FAILED})


def jitter() -> float:
    """The back-off's ±10 % (containers that failed together do not restart in lock-step)."""
    return random.uniform(0.9, 1.1)


class Supervision:
    """Decides and carries out the daemon's restarts (see the module's docstring)."""

    def __init__(self, core: Core, lifecycle: Lifecycle) -> None:
        self.core = core
        self.lifecycle = lifecycle
        self._nursery: trio.Nursery | None = None
        #: the restarts being carried out: (container, its restart count at the decision)
        self._pending: set[tuple[str, int]] = set()
        core.on_shim_gone(self.shim_gone)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """The tasks that carry out restarts and finish interrupted stops live here."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def _spawn(self, fn: Any, *args: Any) -> None:
        assert self._nursery is not None, "supervision is not running"
        self._nursery.start_soon(fn, *args)

    # -- entry points --------------------------------------------------------------------------

    def shim_gone(self, cid: str, instance: str) -> None:
        """A link's shim is gone and its task's end recorded (the link is ending: act in a
        task of our own). Most shims that go are a container stopped for good whose shim
        ended by itself (it removes its pid file then; a SIGKILLed one cannot): nothing to
        decide, so no task for them."""
        c = self.core.container(cid)
        if (c is not None and c.state == STOPPED and c.instance == instance
                and decide.stopped_for_good(c)
                and not (shim_dir(self.core.root, cid) / shim_api.PID_FILE).exists()):
            return
        self._spawn(self._after_shim_gone, cid, instance)

    async def recover(self, cid: str, previous_boot: str | None) -> None:
        """Recovery's part for one container not linked to a live shim of its task: a reboot,
        a restart to carry out, a decision no one made."""
        c = self.core.container(cid)
        if c is None:
            return
        if self.rebooted(c, previous_boot):
            await self._after_reboot(cid)
        elif c.state == RESTARTING:
            self.schedule(cid)
        elif c.state == STOPPED:
            async with self.core.lock(cid):
                await self._decide(cid)

    def rebooted(self, c: Container, previous_boot: str | None) -> bool:
        """Was ``c``'s task created in another boot? (Its own ``boot_id``, else that of the
        daemon that ran before: a log from before boot ids; unknown: no.)"""
        boot = c.boot_id or previous_boot
        return bool(boot) and boot != self.core.boot_id

    def resend_stop(self, cid: str) -> None:
        """A stop by hand is recorded but its container still runs (the daemon died during
        the stop): send the stop again."""
        self._spawn(self._resend_stop, cid)

    def finish_start(self, cid: str) -> None:
        """A restart's task was created but not started (the daemon died in between)."""
        self._spawn(self._finish_start, cid)

    def schedule(self, cid: str) -> None:
        """Carry out ``cid``'s recorded restart at its ``start_at`` (once per decision)."""
        c = self.core.container(cid)
        if c is None or c.state != RESTARTING:
            return
        key = (cid, c.restarts)
        if key not in self._pending:
            self._pending.add(key)
            self._spawn(self._carry_out, cid, c.restarts)

    # -- deciding ------------------------------------------------------------------------------

    async def _after_shim_gone(self, cid: str, instance: str) -> None:
        async with self.core.lock(cid):
            c = self.core.container(cid)
            if c is None or c.instance != instance:
                return  # removed, or a newer task runs
            if await self._our_shim_lives(c):
                return  # it decides
            await self._decide(cid)

    async def _our_shim_lives(self, c: Container) -> bool:
        """Is a shim alive in ``c``'s directory that decides for it? Its own shim does. A
        stranger (another instance) that was recorded once (:func:`adopt.recorded_once`) is
        adopted (the log lost its record) and then decides; one no record named (a start the
        daemon died in before recording it) is ended. A shim that does not answer is given
        :data:`EXITING_GRACE` to finish exiting (a shim that retires closes its connection
        before it drops its lock), then left running, never killed: the daemon cannot tell
        what it is."""
        if not self.core.shims.alive(c.id):
            return False
        try:
            state = await self.core.shims.call(c.id, "state")
        except ApiError:
            state = None
        if not isinstance(state, dict):
            with trio.move_on_after(EXITING_GRACE):
                while self.core.shims.alive(c.id):
                    await trio.sleep(0.02)
            if not self.core.shims.alive(c.id):
                return False
            log.error("a live shim in the container's directory does not answer: left "
                      "running (not killed); nothing is decided for the container until it "
                      "answers or ends", id=c.id)
            return True
        if state.get("instance") == c.instance:
            return True
        if adopt.should_adopt(state, self.core.history_may_be_lost):
            if not await adopt.adopt(self.core, c.id, state, "another shim than the log's "
                                     "runs the container: the log lost its record"):
                log.error("a live shim the log does not know runs in the container's "
                          "directory and cannot be adopted: left running", id=c.id,
                          its_instance=state.get("instance"))
            return True
        what = await self.core.shims.end_task(c.id)
        log.warning("ended a shim the log does not know in a container's directory (no record "
                    "named it)", id=c.id, action=what, its_instance=state.get("instance"))
        return False

    async def _decide(self, cid: str) -> None:
        """Apply the policy to ``cid``, whose shim is gone (the caller holds the lock)."""
        c = self.core.container(cid)
        if c is None or await self._account_for_unseen_task(c):
            return
        if c.state == RESTARTING:
            self.schedule(cid)
            return
        if c.state != STOPPED or c.stopped_by_user or c.gave_up:
            return
        verdict = decide.decision(c, jitter())
        if verdict.restart:
            now = time.time_ns()
            await self.core.append([("container.restart", cid, {
                "attempt": verdict.attempt, "delay": verdict.delay, "reason": verdict.reason,
                "by": "daemon", "start_at": now + int(verdict.delay * _NS)})])
            log.info("restart decided (no shim)", id=cid, attempt=verdict.attempt,
                     delay=round(verdict.delay, 3), reason=verdict.reason)
            self.schedule(cid)
        elif verdict.give_up:
            await self.core.append([("container.giveup", cid, {
                "attempts": verdict.attempt, "reason": verdict.reason,
                "exit_status": c.exit_status, "by": "daemon"})])
            log.info("gave up (no shim)", id=cid, reason=verdict.reason)

    async def _account_for_unseen_task(self, c: Container) -> bool:
        """A task the lost shim started but never delivered (its task file names a task the
        log does not have, and that pid still runs it): record it as the shim's restart and
        watch it, instead of starting a second one. True when one was found."""
        record = read_task_record(self.core.root, c.id)
        if record is None or c.instance is None or record.get("instance") != c.instance:
            return False
        seq, pid, started = record.get("shim_seq"), record.get("pid"), record.get("starttime")
        if (not isinstance(seq, int) or seq <= c.seen.get(c.instance, 0)
                or not isinstance(pid, int) or not is_running(pid)
                or starttime(pid) != started):
            return False  # the log has it, or it is gone: nothing runs unseen
        if c.stopped_by_user:
            # the user's stop came first and is final: the task should not run at all
            log.warning("ending a task its lost shim started after a stop by hand", id=c.id,
                        pid=pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
            return False
        now = time.time_ns()
        items: list[Item] = []
        if c.state == STOPPED:
            items.append(("container.restart", c.id, {
                "attempt": int(record.get("attempt") or 0), "delay": 0.0, "by": "shim",
                "start_at": now,
                "reason": "recovered from the lost shim's task file (its restart was never "
                          "delivered)"}))
        if c.state in (STOPPED, RESTARTING):
            items.append(("task.create", c.id, {
                "pid": pid, "instance": c.instance, "shim_pid": c.shim_pid,
                "address": c.address, "boot_id": self.core.boot_id}))
        if c.state in (STOPPED, RESTARTING, CREATED):
            items.append(("task.start", c.id, {"pid": pid, "instance": c.instance}))
        if not items:
            return False
        items.append(("shim.lost", c.id, {
            "reason": "the shim was lost with a task it had not delivered (its task file)",
            "instance": c.instance, "pid": pid, "task_alive": True, "task_starttime": started,
            "state": RUNNING}))
        await self.core.append(items)
        log.warning("a lost shim's undelivered task recorded; watching it", id=c.id, pid=pid)
        self._spawn(self._watch_unseen, c.id, c.instance, pid, started)
        return True

    async def _watch_unseen(self, cid: str, instance: str, pid: int, started: int) -> None:
        await watch_lost_task(self.core, cid, instance, pid, started)
        self.shim_gone(cid, instance)

    async def _after_reboot(self, cid: str) -> None:
        async with self.core.lock(cid):
            c = self.core.container(cid)
            if c is None:
                return
            if c.state in (CREATED, RUNNING):
                await self.core.append([("task.exit", cid, {
                    "pid": c.pid, "exit_status": None, "signal": None,
                    "exited_at": time.time_ns(), "instance": c.instance,
                    "reason": "host rebooted: the task ended with the previous boot"})])
                c = self.core.container(cid)
            if c is None:
                return
            if c.state == RESTARTING:
                self.schedule(cid)
            elif c.state == STOPPED and decide.restart_after_reboot(c):
                await self.core.append([("container.restart", cid, {
                    "attempt": 0, "delay": 0.0, "by": "daemon", "start_at": time.time_ns(),
                    "reason": f"host rebooted: restart policy "
                              f"{decide.restart_spec(c)['policy']}"})])
                log.info("restart decided after a reboot", id=cid)
                self.schedule(cid)

    # -- carrying out --------------------------------------------------------------------------

    async def _carry_out(self, cid: str, decided: int) -> None:
        """Start ``cid``'s next task at its recorded ``start_at`` unless something else
        happened to it meanwhile (a stop, a restart by command, its removal): ``decided``,
        the restart count at the decision, tells this decision from a later one."""
        def superseded(state: Any) -> bool:
            c = state.containers.get(cid)
            return c is None or c.state != RESTARTING or c.restarts != decided

        try:
            delay = RETRY_DELAY
            while True:
                c = self.core.container(cid)
                if c is None or superseded(self.core.state):
                    return
                if c.start_at is not None:
                    with trio.move_on_after(max(0.0, (c.start_at - time.time_ns()) / _NS)):
                        await self.core.wait_until(superseded)
                        return
                try:
                    if await self._start_next(cid, decided):
                        return
                except ApiError as exc:
                    if exc.code in PERMANENT:
                        await self._give_up(cid, decided, exc)
                        return
                    log.warning("could not carry out a restart; trying again", id=cid,
                                error=exc.message, retry_in=delay)
                    await trio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX)
        finally:
            self._pending.discard((cid, decided))

    async def _start_next(self, cid: str, decided: int) -> bool:
        """True once done (or no longer ours to do)."""
        async with self.core.lock(cid):
            c = self.core.container(cid)
            if c is None or c.state != RESTARTING or c.restarts != decided:
                return True
            if await self._our_shim_lives(c):
                return True  # the shim carries out its own decision
            await self.lifecycle.new_task(cid, autostart=True, attempt=c.attempt)
            log.info("restart carried out", id=cid, attempt=c.attempt)
            await self._start_created(cid)
            return True

    async def _start_created(self, cid: str) -> None:
        try:
            await self.lifecycle.start(cid, by_user=False)
        except ApiError as exc:
            # exec_failed: the exit (127) is recorded, and the policy decides what follows
            log.warning("the restarted task did not start", id=cid, error=exc.message)

    async def _give_up(self, cid: str, decided: int, exc: ApiError) -> None:
        async with self.core.lock(cid):
            c = self.core.container(cid)
            if c is None or c.state != RESTARTING or c.restarts != decided:
                return
            await self.core.append([("container.giveup", cid, {
                "attempts": c.attempt, "exit_status": c.exit_status, "by": "daemon",
                "reason": f"the next task cannot start: {exc.message}"})])
            log.error("gave up restarting: the task cannot start", id=cid, error=exc.message)

    async def _finish_start(self, cid: str) -> None:
        async with self.core.lock(cid):
            c = self.core.container(cid)
            if c is not None and c.state == CREATED and c.autostart:
                log.info("finishing the start of a restarted task", id=cid)
                await self._start_created(cid)

    async def _resend_stop(self, cid: str) -> None:
        async with self.core.lock(cid):
            c = self.core.container(cid)
            if c is None or not c.stopped_by_user:
                return
            log.info("sending a recorded stop again", id=cid, state=c.state)
            try:
                await self.lifecycle.stop(cid, c.stop_timeout, "stop")
            except ApiError as exc:
                log.warning("the recorded stop could not be sent again", id=cid,
                            error=exc.message)
